# FPT (Fast Prompt Tuning): the prompt is trained through progressively larger partial models.
# Every stage of a schedule is its own job, taking the previous stage's prompt and AdamW moments
# as input: stages cache and rerun incrementally, and can be given different resources.
# The "pt" method is the full-model baseline with the same total steps, run by the same step.
# Grid, schedules and stage paths: workflow/planning/fpt.py; the science: pipeline_steps/fpt/.

from planning.fpt import (FPT_FILES, FPT_RUN, FPT_SCORES, fpt_final_prompt, fpt_settings,
                          fpt_stage_args, fpt_stage_inputs, fpt_stage_paths, fpt_summary_inputs)

from pipeline_steps.fpt.config import METHODS as FPT_METHODS

FPT_METHOD = "|".join(("pt",) + tuple(FPT_METHODS))  # "pt": the full-model baseline run by the same step
FPT_STAGE = f"{FPT_RUN}/stage{{stage}}"
FPT_EVAL = f"{FPT_RUN}/eval"


rule fpt_ffn_scores:
    input:
        tokens=TOKENS,
        model=lambda w: model_inputs(w.model),
    output:
        output=FPT_SCORES,
    params:
        files=files(inputs={"tokenized": "tokens"}),
        args=lambda w: args(
            model_spec=model_spec(config, w.model),
            task_spec=task_spec(config, w.task),
            samples=config["fpt"]["score_samples"],
        ),
    conda:
        ENV_FILE
    log:
        log_path("fpt_ffn_scores", "{model}-{task}"),
    benchmark:
        bench_path("fpt_ffn_scores", "{model}-{task}")
    threads: THREADS
    resources:
        gpu=gpu,
        gpu_model=gpu_model,
        mem_mb=lambda w, attempt: 4000 * attempt,
        runtime=30,
    shell:
        step("fpt-scores")


rule fpt_stage:
    input:
        unpack(lambda w: dict(tokens=fmt(TOKENS, w), model=model_inputs(w.model),
                              **fpt_stage_inputs(config, dict(w.items())))),
    output:
        **{k: f"{FPT_STAGE}/{f}" for k, f in FPT_FILES.items()},
    wildcard_constraints:
        method=FPT_METHOD,
        stage=r"\d+",
    params:
        args=lambda w: args(
            model_spec=model_spec(config, w.model),
            task_spec=task_spec(config, w.task),
            **fpt_stage_args(config, dict(w.items())),
        ),
        files=files(inputs=True, side={"checkpoint": checkpoint_path("fpt/{model}/{task}/seed{seed}/{method}/stage{stage}")},
                    shape=fpt_stage_paths),
    conda:
        ENV_FILE
    log:
        log_path("fpt_stage", "{model}-{task}-seed{seed}-{method}-stage{stage}"),
    benchmark:
        bench_path("fpt_stage", "{model}-{task}-seed{seed}-{method}-stage{stage}")
    threads: THREADS
    resources:
        gpu=gpu,
        gpu_model=gpu_model,
        mem_mb=lambda w, attempt: 4000 * attempt,
        runtime=120,
    shell:
        step("fpt-stage")


rule fpt_evaluate:
    input:
        prompt=lambda w: fpt_final_prompt(config, dict(w.items())),
        tokens=TOKENS,
        model=lambda w: model_inputs(w.model),
    output:
        predictions=f"{FPT_EVAL}/predictions.parquet",
        scores=f"{FPT_EVAL}/scores.json",
    wildcard_constraints:
        method=FPT_METHOD,
    params:
        args=lambda w: args(
            model_spec=model_spec(config, w.model),
            task_spec=task_spec(config, w.task),
            batch_size=fpt_settings(config, w.task)["eval_batch_size"],
        ),
        files=files(inputs={"prompt": "prompt", "tokenized": "tokens"}),
    conda:
        ENV_FILE
    log:
        log_path("fpt_evaluate", "{model}-{task}-seed{seed}-{method}"),
    benchmark:
        bench_path("fpt_evaluate", "{model}-{task}-seed{seed}-{method}")
    threads: THREADS
    resources:
        gpu=gpu,
        gpu_model=gpu_model,
        mem_mb=lambda w, attempt: 4000 * attempt,
        runtime=60,
    shell:
        step("evaluate-prompt")


FPT_SUMMARY = dict(
    **fpt_summary_inputs(config),
    table="results/tables/fpt.parquet",
    stages_table="results/tables/fpt_stages.parquet",
    figure="results/figures/fpt_score_vs_flops.png",
)


rule summarise_fpt:
    input:
        metas=FPT_SUMMARY["metas"],
        scores=FPT_SUMMARY["scores"],
        stage_metas=FPT_SUMMARY["stage_metas"],
        curves=FPT_SUMMARY["curves"],
    output:
        table=reported(FPT_SUMMARY["table"], "fpt_table", "5. FPT", table="per run"),
        stages_table=reported(FPT_SUMMARY["stages_table"], "fpt_stages_table", "5. FPT", table="per stage"),
        figure=reported(FPT_SUMMARY["figure"], "fpt_score_vs_flops", "5. FPT", figure="score vs FLOPs"),
    params:
        args=args(),
        files=files(inputs=["metas", "scores", "stage_metas", "curves"]),
    conda:
        ENV_FILE
    log:
        log_path("summarise_fpt", "all"),
    benchmark:
        bench_path("summarise_fpt", "all")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        step("summarise-fpt")


rule fpt:
    """Target: the FPT grid (fpt.models x fpt.tasks x seeds), its PT baselines and summary."""
    input:
        rules.summarise_fpt.output if FPT_SUMMARY["metas"] else [],
