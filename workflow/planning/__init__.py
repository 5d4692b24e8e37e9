"""DAG planning of the workflow's stages: grids, artifact paths and which inputs a job needs.

Plain Python (no Snakemake import), one module per stage, imported by ``workflow/rules/<stage>.smk``
(``workflow/`` is on ``sys.path`` from ``common.smk``) and unit-tested on their own. The science they
plan for lives in ``pipeline_steps``.
"""
