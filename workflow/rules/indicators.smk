# Stage: transferability indicators (Su et al., section 5). Per model, every prompt's binary FFN
# activation mask on the empty input; then the pairwise indicator table; then its Spearman
# correlation with zero-shot transfer (needs results/tables/transfer_zero_shot.parquet).

IND = config["indicators"]
ACTIVATIONS = "results/indicators/{model}/activations.safetensors"
INDICATOR_TABLE = "results/tables/indicators.parquet"
TRANSFER_ZERO_SHOT = "results/tables/transfer_zero_shot.parquet"  # built by rule transfer_zero_shot
INDICATOR_CORRELATION = dict(
    table="results/tables/indicator_correlation.parquet",
    figure="results/figures/indicator_correlation.png",
)
# every source prompt of the grid: (model, task, seed, path)
IND_RUNS = [
    dict(model=m, task=t, seed=s, prompt=f"{PROMPT}/prompt.safetensors".format(model=m, task=t, seed=s))
    for m in MODELS
    for t in TASKS
    for s in SEEDS
]


rule indicator_activations:
    input:
        prompts=lambda w: [r["prompt"] for r in IND_RUNS if r["model"] == w.model],
        model=lambda w: model_inputs(w.model),
    output:
        output=ACTIVATIONS,
    params:
        args=lambda w: args(
            model_spec=model_spec(config, w.model),
            prompts=[dict(task=r["task"], seed=r["seed"], path=r["prompt"]) for r in IND_RUNS if r["model"] == w.model],
        ),
        files=files(),
    conda:
        ENV_FILE
    log:
        log_path("indicator_activations", "{model}"),
    benchmark:
        bench_path("indicator_activations", "{model}")
    threads: THREADS
    resources:
        gpu=gpu,
        gpu_model=gpu_model,
        mem_mb=lambda w, attempt: 4000 * attempt,
        runtime=30,
    shell:
        step("indicator-activations")


rule indicator_table:
    input:
        activations=expand(ACTIVATIONS, model=MODELS),
        prompts=[r["prompt"] for r in IND_RUNS],
    output:
        table=reported(INDICATOR_TABLE, "indicators_table", "3. Transferability indicators", table="indicators"),
    params:
        args=args(
            runs=IND_RUNS,  # prompt paths with their model, task and seed
            activations={m: ACTIVATIONS.format(model=m) for m in MODELS},
            window=IND["window"],
            stride=IND["stride"],
        ),
        files=files(),
    conda:
        ENV_FILE
    log:
        log_path("indicator_table", "all"),
    benchmark:
        bench_path("indicator_table", "all")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        step("indicator-table")


rule indicator_correlation:
    input:
        indicators=INDICATOR_TABLE,
        transfer=TRANSFER_ZERO_SHOT,
    output:
        table=reported(INDICATOR_CORRELATION["table"], "indicator_correlation_table", "3. Transferability indicators",
                       table="correlation"),
        figure=reported(INDICATOR_CORRELATION["figure"], "indicator_correlation", "3. Transferability indicators",
                        figure="indicators vs transfer"),
    params:
        args=args(),
        files=files(inputs=["indicators", "transfer"]),
    conda:
        ENV_FILE
    log:
        log_path("indicator_correlation", "all"),
    benchmark:
        bench_path("indicator_correlation", "all")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        step("indicator-correlation")


rule indicators:
    """Target: the pairwise indicator table and its correlation with zero-shot transfer
    (the correlation needs pairs of different tasks: two tasks or more in the grid)."""
    input:
        INDICATOR_TABLE,
        *(INDICATOR_CORRELATION.values() if len(TASKS) > 1 else []),
