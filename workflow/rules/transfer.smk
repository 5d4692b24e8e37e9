# Stage 4: cross-task prompt transfer (Su et al.): zero-shot transfer matrix and transfer as
# initialization (TPT).

ZERO_SHOT = "results/transfer/zero_shot/{model}/{task}.parquet"
TPT = "results/transfer/init/{model}/{task}/from-{source}/seed{seed}"
TPT_CFG = config["transfer"]["init"]
TPT_MODELS = TPT_CFG["models"] or MODELS
TPT_SOURCES = TPT_CFG["sources"] or TASKS
TPT_TARGETS = TPT_CFG["targets"] or TASKS
TPT_RUNS = [
    dict(model=m, source=s, task=t, seed=seed)
    for m in TPT_MODELS
    for s in TPT_SOURCES
    for t in TPT_TARGETS
    if s != t
    for seed in SEEDS
]


rule zero_shot_target:
    """Every source prompt of a model (and random prompts) on one target task, one model load."""
    input:
        prompts=lambda w: expand(f"{PROMPT}/prompt.safetensors", model=w.model, task=TASKS, seed=SEEDS),
        tokens=TOKENS,
        model=lambda w: model_inputs(w.model),
    output:
        output=ZERO_SHOT,
    params:
        files=files(inputs={"tokenized": "tokens"}),
        args=lambda w: args(
            model_spec=model_spec(config, w.model),
            target_spec=task_spec(config, w.task),
            prompts=[
                dict(task=t, seed=s, path=fmt(f"{PROMPT}/prompt.safetensors", dict(model=w.model, task=t, seed=s)))
                for t in TASKS
                for s in SEEDS
            ],
            random_seeds=config["transfer"]["random_seeds"],
            batch_size=pt_settings(config, w.task)["eval_batch_size"],
        ),
    conda:
        ENV_FILE
    log:
        log_path("zero_shot_target", "{model}-{task}"),
    benchmark:
        bench_path("zero_shot_target", "{model}-{task}")
    threads: THREADS
    resources:
        gpu=gpu,
        gpu_model=gpu_model,
        mem_mb=lambda w, attempt: 4000 * attempt,
        runtime=60,
    shell:
        step("zero-shot")


ZS_TABLE = dict(
    inputs=expand(ZERO_SHOT, model=MODELS, task=TASKS),
    table="results/tables/transfer_zero_shot.parquet",
    heatmap="results/figures/transfer_zero_shot.png",
)


rule transfer_zero_shot:
    input:
        inputs=ZS_TABLE["inputs"],
    output:
        table=reported(ZS_TABLE["table"], "transfer_zero_shot_table", "2. Cross-task transfer", table="zero-shot"),
        heatmap=reported(ZS_TABLE["heatmap"], "transfer_zero_shot", "2. Cross-task transfer", figure="zero-shot heatmap"),
    params:
        args=args(),
        files=files(inputs=["inputs"]),
    conda:
        ENV_FILE
    log:
        log_path("transfer_zero_shot", "all"),
    benchmark:
        bench_path("transfer_zero_shot", "all")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        step("zero-shot-table")


rule train_init_transfer:
    """Train the target task's prompt starting from a source task's prompt (same budget as PT)."""
    input:
        init=lambda w: fmt(f"{PROMPT}/prompt.safetensors", dict(w.items(), task=w.source)),
        tokens=TOKENS,
        model=lambda w: model_inputs(w.model),
    output:
        prompt=f"{TPT}/prompt.safetensors",
        curve=f"{TPT}/curve.parquet",
        meta=f"{TPT}/meta.json",
    wildcard_constraints:
        source=NAME,
    params:
        args=lambda w: args(
            model_spec=model_spec(config, w.model),
            task_spec=task_spec(config, w.task),
            settings=pt_settings(config, w.task),
            seed=int(w.seed),
        ),
        files=files(inputs={"init_from": "init", "tokenized": "tokens"},
                    side={"checkpoint": checkpoint_path("{model}/{task}/from-{source}-seed{seed}")}),
    conda:
        ENV_FILE
    log:
        log_path("train_init_transfer", "{model}-{source}-to-{task}-seed{seed}"),
    benchmark:
        bench_path("train_init_transfer", "{model}-{source}-to-{task}-seed{seed}")
    threads: THREADS
    resources:
        gpu=gpu,
        gpu_model=gpu_model,
        mem_mb=lambda w, attempt: 4000 * attempt,
        runtime=120,
    shell:
        step("train-prompt")


rule evaluate_init_transfer:
    input:
        prompt=f"{TPT}/prompt.safetensors",
        tokens=TOKENS,
        model=lambda w: model_inputs(w.model),
    output:
        predictions=f"{TPT}/predictions.parquet",
        scores=f"{TPT}/scores.json",
    wildcard_constraints:
        source=NAME,
    params:
        args=lambda w: args(
            model_spec=model_spec(config, w.model),
            task_spec=task_spec(config, w.task),
            batch_size=pt_settings(config, w.task)["eval_batch_size"],
        ),
        files=files(inputs={"prompt": "prompt", "tokenized": "tokens"}),
    conda:
        ENV_FILE
    log:
        log_path("evaluate_init_transfer", "{model}-{source}-to-{task}-seed{seed}"),
    benchmark:
        bench_path("evaluate_init_transfer", "{model}-{source}-to-{task}-seed{seed}")
    threads: THREADS
    resources:
        gpu=gpu,
        gpu_model=gpu_model,
        mem_mb=lambda w, attempt: 4000 * attempt,
        runtime=60,
    shell:
        step("evaluate-prompt")


TPT_TABLE = dict(
    runs=[
        dict(
            model=r["model"],
            source_task=r["source"],
            target_task=r["task"],
            seed=r["seed"],
            curve=f"{TPT}/curve.parquet".format(**r),
            scores=f"{TPT}/scores.json".format(**r),
            random_curve=f"{PROMPT}/curve.parquet".format(**r),
            random_scores=f"{EVAL}/scores.json".format(**r),
        )
        for r in TPT_RUNS
    ],
    fraction=TPT_CFG["fraction"],
    table="results/tables/transfer_init.parquet",
    figure="results/figures/transfer_init_curves.png",
)


rule transfer_init:
    input:
        [r[k] for r in TPT_TABLE["runs"] for k in ("curve", "scores", "random_curve", "random_scores")],
    output:
        table=reported(TPT_TABLE["table"], "transfer_init_table", "2. Cross-task transfer", table="TPT"),
        figure=reported(TPT_TABLE["figure"], "transfer_init_curves", "2. Cross-task transfer", figure="TPT curves"),
    params:
        args=args(runs=TPT_TABLE["runs"], fraction=TPT_TABLE["fraction"]),  # runs: paths with their task and seed
        files=files(),
    conda:
        ENV_FILE
    log:
        log_path("transfer_init", "all"),
    benchmark:
        bench_path("transfer_init", "all")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        step("transfer-init-table")


rule transfer:
    """Target: zero-shot transfer matrix and transfer as initialization (when transfer.init
    yields a pair of different tasks)."""
    input:
        rules.transfer_zero_shot.output,
        rules.transfer_init.output if TPT_RUNS else [],
