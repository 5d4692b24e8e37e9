# LPT (Late Prompt Tuning): a generated prompt inserted at layer k; the PLM below k runs without
# autograd. One job per (model, task, seed, method): profile (step time, peak memory) in the
# fresh job process, train, score the test split. "pt" is input prompt tuning on the same settings.

from planning.lpt import lpt_grid, lpt_late, lpt_settings  # the science: pipeline_steps/lpt/
from pipeline_steps.lpt.config import LPT_METHODS

LPT_GRID = lpt_grid(config)
LPT_RUN = "results/lpt/{model}/{task}/seed{seed}/{method}"
LPT_FILES = {"weights": "weights.safetensors", "curve": "curve.parquet", "meta": "meta.json",
             "predictions": "predictions.parquet", "scores": "scores.json"}


rule lpt_run:
    input:
        tokens=TOKENS,
        model=lambda w: model_inputs(w.model),
    output:
        **{k: f"{LPT_RUN}/{f}" for k, f in LPT_FILES.items()},
    wildcard_constraints:
        method="|".join(("pt",) + LPT_METHODS),
    params:
        args=lambda w: args(
            model_spec=model_spec(config, w.model),
            task_spec=task_spec(config, w.task),
            settings=lpt_settings(config, w.task, w.method),
            seed=int(w.seed),
            method=w.method,
            late=lpt_late(config, w.task, w.method),
            profile=config["lpt"]["profile_steps"],
        ),
        files=files(inputs={"tokenized": "tokens"}, side={"checkpoint": checkpoint_path("lpt/{model}/{task}/seed{seed}/{method}")}),
    conda:
        ENV_FILE
    log:
        log_path("lpt_run", "{model}-{task}-seed{seed}-{method}"),
    benchmark:
        bench_path("lpt_run", "{model}-{task}-seed{seed}-{method}")
    threads: THREADS
    resources:
        gpu=gpu,
        gpu_model=gpu_model,
        mem_mb=lambda w, attempt: 4000 * attempt,
        runtime=120,
    shell:
        step("lpt-run")


LPT_SUMMARY = dict(
    metas=expand(f"{LPT_RUN}/meta.json", model=LPT_GRID["models"], task=LPT_GRID["tasks"], seed=LPT_GRID["seeds"],
                 method=LPT_GRID["methods"]),
    table="results/tables/lpt.parquet",
    figure="results/figures/lpt_score_vs_step_time.png",
)


rule summarise_lpt:
    input:
        metas=LPT_SUMMARY["metas"],
    output:
        table=reported(LPT_SUMMARY["table"], "lpt_table", "6. LPT", table="per run"),
        figure=reported(LPT_SUMMARY["figure"], "lpt_score_vs_step_time", "6. LPT", figure="score vs step time"),
    params:
        args=args(),
        files=files(inputs=["metas"]),
    conda:
        ENV_FILE
    log:
        log_path("summarise_lpt", "all"),
    benchmark:
        bench_path("summarise_lpt", "all")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        step("summarise-lpt")


rule lpt:
    """Target: the LPT grid (lpt.models x lpt.tasks x seeds), its PT baselines and summary."""
    input:
        rules.summarise_lpt.output if LPT_SUMMARY["metas"] else [],
