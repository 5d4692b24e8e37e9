"""Prompt transferability (Su et al., NAACL 2022): does a soft prompt trained on one task, or on one
PLM, help another?

* zero-shot cross-task transfer and transfer as initialization (TPT): ``steps.zero_shot``,
  tables ``report.zero_shot_table`` / ``report.init_table`` (TPT runs are prompt tuning with ``init_from``);
* the cross-model projector (``model``: the perceptron; ``projection``: distance and task objectives;
  ``steps.train_projector`` / ``steps.evaluate_projection``; ``report.projection_table``);
* transferability indicators (``indicators``: embedding similarities and the overlap of activated FFN
  neurons, ON; ``steps.compute_activations`` / ``steps.indicator_table``; ``report.correlation``);
* PEFT export of prompts (``peft_export``; ``steps.export_peft``).

Files: ``config`` (settings and names), ``model`` (nn modules), ``steps`` (what rules call),
``report`` (tables and figures), plus the science modules ``indicators``, ``projection``, ``peft_export``.
"""
