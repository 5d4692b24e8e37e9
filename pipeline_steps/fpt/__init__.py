"""Fast Prompt Tuning (Huang et al., 2022): soft prompt tuning through progressively larger
partial PLMs.

A schedule is a list of stages, each a partial model size and a number of steps, ending
with the full model. Stage ``i`` trains the soft prompt (the same ``[L, d]`` tensor of
:mod:`.prompt_tuning`: partial models keep the hidden size) on a partial model built by
:mod:`pipeline_steps.models.partial`; at each expansion the prompt and the AdamW moments
carry over into the next, larger model. Sizes: ``layers`` (depth: a fraction or a number of
layers, chosen ``evenly`` or ``first``), ``ffn`` (width: a fraction or a number of FFN
neurons per layer, the top ones by mean absolute activation), or both (compound).

The verbalizer is frozen and shared by every stage. For the embedding verbalizer the class
vectors are, by default (``class_vectors: full``), the full model's encoding of the label
words, the target the final stage is evaluated against; ``partial`` encodes them with each
stage's partial model instead.

Files: ``config`` (schedule settings), ``model`` (stage models), ``steps`` (neuron scores, one stage:
what rules call), ``report`` (table and figure). Planning of the stage chain: ``workflow/planning/fpt.py``.
"""
