# Stage 3: soft prompt tuning of frozen PLMs (the source prompts), evaluation, summary.


rule train_prompt:
    input:
        tokens=TOKENS,
        model=lambda w: model_inputs(w.model),
    output:
        prompt=f"{PROMPT}/prompt.safetensors",
        curve=f"{PROMPT}/curve.parquet",
        meta=f"{PROMPT}/meta.json",
    params:
        args=lambda w: args(
            model_spec=model_spec(config, w.model),
            task_spec=task_spec(config, w.task),
            settings=pt_settings(config, w.task),
            seed=int(w.seed),
        ),
        files=files(inputs={"tokenized": "tokens"}, side={"checkpoint": checkpoint_path("{model}/{task}/seed{seed}")}),
    conda:
        ENV_FILE
    log:
        log_path("train_prompt", "{model}-{task}-seed{seed}"),
    benchmark:
        bench_path("train_prompt", "{model}-{task}-seed{seed}")
    threads: THREADS
    resources:
        gpu=gpu,
        gpu_model=gpu_model,
        mem_mb=lambda w, attempt: 4000 * attempt,
        runtime=lambda w, attempt: 120 * attempt,
    shell:
        step("train-prompt")


rule evaluate_prompt:
    """Test score of a prompt, and the prompt as a PEFT prompt-tuning adapter (PeftModel.from_pretrained
    on the same base model): both need the model loaded, so one job does both."""
    input:
        prompt=f"{PROMPT}/prompt.safetensors",
        tokens=TOKENS,
        model=lambda w: model_inputs(w.model),
    output:
        predictions=f"{EVAL}/predictions.parquet",
        scores=f"{EVAL}/scores.json",
        peft_config=f"{PROMPT}/peft/adapter_config.json",
        peft_weights=f"{PROMPT}/peft/adapter_model.safetensors",
    params:
        args=lambda w: args(
            model_spec=model_spec(config, w.model),
            task_spec=task_spec(config, w.task),
            batch_size=pt_settings(config, w.task)["eval_batch_size"],
        ),
        files=files(inputs={"prompt": "prompt", "tokenized": "tokens"}, skip=("peft_config", "peft_weights"),
                    side={"peft_dir": f"{PROMPT}/peft"}),
    conda:
        ENV_FILE
    log:
        log_path("evaluate_prompt", "{model}-{task}-seed{seed}"),
    benchmark:
        bench_path("evaluate_prompt", "{model}-{task}-seed{seed}")
    threads: THREADS
    resources:
        gpu=gpu,
        gpu_model=gpu_model,
        mem_mb=lambda w, attempt: 4000 * attempt,
        runtime=lambda w, attempt: 60 * attempt,
    shell:
        step("evaluate-prompt")


RUNS = dict(model=MODELS, task=TASKS, seed=SEEDS)
PT_SUMMARY = dict(
    metas=expand(f"{PROMPT}/meta.json", **RUNS),
    curves=expand(f"{PROMPT}/curve.parquet", **RUNS),
    scores=expand(f"{EVAL}/scores.json", **RUNS),
    table="results/tables/prompt_tuning.parquet",
    scores_figure="results/figures/prompt_tuning_scores.png",
    curves_figure="results/figures/prompt_tuning_curves.png",
    data=expand(DATA, task=TASKS),  # their metadata's k_shot_shortfall: a column of the table
)


rule summarise_prompts:
    input:
        metas=PT_SUMMARY["metas"],
        curves=PT_SUMMARY["curves"],
        scores=PT_SUMMARY["scores"],
        data=PT_SUMMARY["data"],
    output:
        table=reported(PT_SUMMARY["table"], "prompt_tuning_table", "1. Prompt tuning", table="per run"),
        scores_figure=reported(PT_SUMMARY["scores_figure"], "prompt_tuning_scores", "1. Prompt tuning",
                               figure="test scores"),
        curves_figure=reported(PT_SUMMARY["curves_figure"], "prompt_tuning_curves", "1. Prompt tuning",
                               figure="training curves"),
    params:
        args=args(),
        files=files(inputs=["metas", "curves", "scores", "data"]),
    conda:
        ENV_FILE
    log:
        log_path("summarise_prompts", "all"),
    benchmark:
        bench_path("summarise_prompts", "all")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        step("summarise-prompts")


rule source_prompts:
    """Target: every source prompt of the grid, evaluated, summarised and exported for PEFT."""
    input:
        rules.summarise_prompts.output,
        expand(f"{PROMPT}/peft/adapter_model.safetensors", **RUNS),
