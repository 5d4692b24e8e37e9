# Cross-model prompt transfer (Su et al.): a projector maps a source PLM's prompts to a target
# PLM; trained per (pair, objective, seed) and evaluated on the pair's eval tasks, zero-shot and
# as TPT initialization. Pairs and paths: workflow/planning/projection.py; the science:
# pipeline_steps/transferability/.
from planning import projection as projection_plan  # config checked with the rest in common.smk
from pipeline_steps.transferability.config import OBJECTIVES

PAIRS = projection_plan.pairs(config)
PROJ = "results/projection/{pair}/{objective}/seed{seed}"
PROJ_TASK = "results/projection/{pair}/{objective}/seed{seed}/{task}"
PROMPT_FILE = f"{PROMPT}/prompt.safetensors"


wildcard_constraints:
    pair=NAME,
    objective="|".join(OBJECTIVES),


rule train_projector:
    input:
        unpack(lambda w: projection_plan.projector_inputs(PAIRS[w.pair], w.objective, w.seed, PROMPT_FILE, TOKENS)),
        model=lambda w: model_inputs(PAIRS[w.pair]["target"]) if w.objective == "task" else [],
    output:
        projector=f"{PROJ}/projector.safetensors",
        curve=f"{PROJ}/curve.parquet",
        meta=f"{PROJ}/meta.json",
    params:
        args=lambda w: args(
            source_spec=model_spec(config, PAIRS[w.pair]["source"]),
            target_spec=model_spec(config, PAIRS[w.pair]["target"]),
            task_specs=[task_spec(config, t) for t in PAIRS[w.pair]["train_tasks"]],
            objective=w.objective,
            settings=projection_plan.projector_settings(config, w.objective),
            seed=int(w.seed),
        ),
        files=files(inputs=True),
    conda:
        ENV_FILE
    log:
        log_path("train_projector", "{pair}-{objective}-seed{seed}"),
    benchmark:
        bench_path("train_projector", "{pair}-{objective}-seed{seed}")
    threads: THREADS
    resources:
        # the distance objective runs no model: never a GPU
        gpu=lambda w: int(w.objective == "task" and on_gpu(PAIRS[w.pair]["target"])),
        gpu_model=lambda w: gpu_model_of(PAIRS[w.pair]["target"]) if w.objective == "task" else None,
        mem_mb=lambda w, attempt: 4000 * attempt,
        runtime=120,
    shell:
        step("train-projector")


rule evaluate_projection:
    """Zero-shot: the projected source prompt of a task, scored with the target model."""
    input:
        projector=f"{PROJ}/projector.safetensors",
        source_prompt=lambda w: projection_plan.model_path(PROMPT_FILE, PAIRS[w.pair], "source", w.task, w.seed),
        target_prompt=lambda w: projection_plan.model_path(PROMPT_FILE, PAIRS[w.pair], "target", w.task, w.seed),
        tokens=lambda w: projection_plan.model_path(TOKENS, PAIRS[w.pair], "target", w.task, w.seed),
        model=lambda w: model_inputs(PAIRS[w.pair]["target"]),
    output:
        prompt=f"{PROJ_TASK}/prompt.safetensors",
        predictions=f"{PROJ_TASK}/predictions.parquet",
        scores=f"{PROJ_TASK}/scores.json",
    params:
        args=lambda w: args(
            target_spec=model_spec(config, PAIRS[w.pair]["target"]),
            task_spec=task_spec(config, w.task),
            batch_size=pt_settings(config, w.task)["eval_batch_size"],
        ),
        files=files(inputs={"projector": "projector", "source_prompt": "source_prompt",
                            "target_prompt": "target_prompt", "tokenized": "tokens"}),
    conda:
        ENV_FILE
    log:
        log_path("evaluate_projection", "{pair}-{objective}-seed{seed}-{task}"),
    benchmark:
        bench_path("evaluate_projection", "{pair}-{objective}-seed{seed}-{task}")
    threads: THREADS
    resources:
        gpu=lambda w: int(on_gpu(PAIRS[w.pair]["target"])),
        gpu_model=lambda w: gpu_model_of(PAIRS[w.pair]["target"]),
        mem_mb=lambda w, attempt: 4000 * attempt,
        runtime=60,
    shell:
        step("evaluate-projection")


rule tpt_projected:
    """Transfer as initialization: prompt tuning of the target model from the projected prompt,
    with the task's prompt-tuning settings (those of the target's random-init run)."""
    input:
        init=f"{PROJ_TASK}/prompt.safetensors",
        tokens=lambda w: projection_plan.model_path(TOKENS, PAIRS[w.pair], "target", w.task, w.seed),
        model=lambda w: model_inputs(PAIRS[w.pair]["target"]),
    output:
        prompt=f"{PROJ_TASK}/tpt/prompt.safetensors",
        curve=f"{PROJ_TASK}/tpt/curve.parquet",
        meta=f"{PROJ_TASK}/tpt/meta.json",
    params:
        args=lambda w: args(
            model_spec=model_spec(config, PAIRS[w.pair]["target"]),
            task_spec=task_spec(config, w.task),
            settings=pt_settings(config, w.task),
            seed=int(w.seed),
        ),
        files=files(inputs={"tokenized": "tokens", "init_from": "init"},
                    side={"checkpoint": checkpoint_path("projection/{pair}/{objective}/seed{seed}/{task}")}),
    conda:
        ENV_FILE
    log:
        log_path("tpt_projected", "{pair}-{objective}-seed{seed}-{task}"),
    benchmark:
        bench_path("tpt_projected", "{pair}-{objective}-seed{seed}-{task}")
    threads: THREADS
    resources:
        gpu=lambda w: int(on_gpu(PAIRS[w.pair]["target"])),
        gpu_model=lambda w: gpu_model_of(PAIRS[w.pair]["target"]),
        mem_mb=lambda w, attempt: 4000 * attempt,
        runtime=120,
    shell:
        step("train-prompt")


PROJ_RUNS = projection_plan.summary_runs(PAIRS, config["projector"]["objectives"], SEEDS, PROJ, PROJ_TASK, PROMPT, EVAL)
PROJ_SUMMARY = dict(table="results/tables/cross_model.parquet", figure="results/figures/cross_model.png")


rule summarise_projection:
    input:
        [path for run in PROJ_RUNS for key, path in run.items() if key != "pair"],
    output:
        table=reported(PROJ_SUMMARY["table"], "cross_model_table", "4. Cross-model projection", table="projection"),
        figure=reported(PROJ_SUMMARY["figure"], "cross_model", "4. Cross-model projection", figure="projection scores"),
    params:
        args=args(runs=PROJ_RUNS, fraction=config["transfer"]["init"]["fraction"]),  # runs: paths with their pair, seed
        files=files(),
    conda:
        ENV_FILE
    log:
        log_path("summarise_projection", "all"),
    benchmark:
        bench_path("summarise_projection", "all")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        step("summarise-projection")


rule projection:
    """Target: cross-model projection of every configured pair (nothing when projector.pairs is empty)."""
    input:
        list(PROJ_SUMMARY.values()) if PAIRS else [],
