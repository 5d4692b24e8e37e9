# Stage 1: load each task, normalise, split, cache as Parquet; tokenise per (task, tokenizer).

from planning.files import task_files


rule prepare_data:
    input:
        lambda w: task_files(config, w.task),  # a local data file: changing it reruns the task
    output:
        output=DATA,
    params:
        args=lambda w: args(spec=task_spec(config, w.task)),
        files=files(),
    conda:
        ENV_FILE
    log:
        log_path("prepare_data", "{task}"),
    benchmark:
        bench_path("prepare_data", "{task}")
    threads: 1
    resources:
        mem_mb=lambda w, attempt: 2000 * attempt,
        runtime=lambda w, attempt: 30 * attempt,
    shell:
        step("prepare-data")


rule tokenize:
    input:
        data=DATA,
        model=lambda w: model_inputs(w.model),
    output:
        output=TOKENS,
    params:
        files=files(inputs={"data_path": "data"}),
        args=lambda w: args(
            model_spec=model_spec(config, w.model),
            task_spec=task_spec(config, w.task),
            max_length=pt_settings(config, w.task)["max_length"],
        ),
    conda:
        ENV_FILE
    log:
        log_path("tokenize", "{task}-{model}"),
    benchmark:
        bench_path("tokenize", "{task}-{model}")
    threads: 1
    resources:
        mem_mb=lambda w, attempt: 2000 * attempt,
        runtime=lambda w, attempt: 30 * attempt,
    shell:
        step("tokenize")
