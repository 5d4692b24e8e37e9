"""pipeline_steps: the science behind the prompt-transfer Snakemake workflow.

Every rule of ``workflow/`` calls one function of this package through
``python -m pipeline_steps <step>``; each module also works on its own, without
Snakemake.
"""

__version__ = "0.1.0"
