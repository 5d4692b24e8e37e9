"""Soft prompt tuning of a frozen PLM (Lester et al.; Su et al.): the shared method every paper builds on.

``config`` (settings), ``model`` (prompt wrapper, init, artifact), ``steps`` (train/evaluate, called by rules),
``report`` (summary table and figures). Kept import-light: nothing is re-exported here.
"""
