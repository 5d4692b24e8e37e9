"""KPT, knowledgeable prompt-tuning (Hu et al., ACL 2022): label words expanded from a knowledge base,
refined (frequency, relevance, calibration, learnable weights) and aggregated per class.

``config`` (settings, variants), ``knowledge`` (knowledge bases and expansion), ``model`` (refinements and
the knowledgeable verbalizer), ``steps`` (zero-shot and few-shot jobs), ``report`` (table and figures).
Kept import-light: nothing is re-exported here.
"""
