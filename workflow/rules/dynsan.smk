# DynSAN (Zhuang & Wang, ACL 2019): multi-passage reading comprehension with token-level dynamic
# self-attention. Data once per task; one training job per (task, variant, seed) (resumable); an
# evaluation job per run; one efficiency sweep; one summary (tables, figures). See docs/dynsan.md.

from pipeline_steps.dynsan.config import dynsan_task_spec
from planning.files import dynsan_task_files
import planning.dynsan as DP  # a module namespace: its DATA, RUN, ... must not shadow common.smk's names

DYNSAN = config["dynsan"]
DYNSAN_GPU = 1 if DYNSAN["device"] == "cuda" else 0
DYNSAN_GPU_MODEL = DYNSAN["gpu_model"] if DYNSAN["device"] == "cuda" else None
DYNSAN_SUMMARY = DP.summary_inputs(config)


wildcard_constraints:
    dtask=NAME,
    variant=NAME,


rule dynsan_prepare:
    input:
        lambda w: dynsan_task_files(config, w.dtask),  # local data and word-vector files
    output:
        **{k: f"{DP.DATA}/{f}" for k, f in DP.DATA_FILES.items()},
    params:
        args=lambda w: args(**dynsan_task_spec(config, w.dtask)),
        files=files(),
    conda:
        ENV_FILE
    log:
        log_path("dynsan_prepare", "{dtask}"),
    benchmark:
        bench_path("dynsan_prepare", "{dtask}")
    threads: 1
    resources:
        mem_mb=lambda w, attempt: 4000 * attempt,
        runtime=lambda w, attempt: 60 * attempt,
    shell:
        step("dynsan-prepare")


rule dynsan_train:
    input:
        tokens=f"{DP.DATA}/tokens.parquet",
        vocab=f"{DP.DATA}/vocab.safetensors",
    output:
        **{k: f"{DP.RUN}/{f}" for k, f in DP.RUN_FILES.items()},
    params:
        args=lambda w: args(**DP.run_args(config, dict(w.items()))),
        files=files(inputs=["tokens", "vocab"], side={"checkpoint": DP.CHECKPOINT}),
    conda:
        ENV_FILE
    log:
        log_path("dynsan_train", "{dtask}-{variant}-seed{seed}"),
    benchmark:
        bench_path("dynsan_train", "{dtask}-{variant}-seed{seed}")
    threads: THREADS
    resources:
        gpu=DYNSAN_GPU,
        gpu_model=DYNSAN_GPU_MODEL,
        mem_mb=lambda w, attempt: 8000 * attempt,
        runtime=lambda w, attempt: 720 * attempt,
    shell:
        step("dynsan-train")


rule dynsan_evaluate:
    input:
        weights=f"{DP.RUN}/weights.safetensors",
        tokens=f"{DP.DATA}/tokens.parquet",
        vocab=f"{DP.DATA}/vocab.safetensors",
    output:
        **{k: f"{DP.RUN}/{f}" for k, f in DP.EVAL_FILES.items()},
    params:
        args=args(gate_examples=DYNSAN["run"]["gate_examples"], device=DYNSAN["device"], dtype=DYNSAN["dtype"]),
        files=files(inputs=["weights", "tokens", "vocab"]),
    conda:
        ENV_FILE
    log:
        log_path("dynsan_evaluate", "{dtask}-{variant}-seed{seed}"),
    benchmark:
        bench_path("dynsan_evaluate", "{dtask}-{variant}-seed{seed}")
    threads: THREADS
    resources:
        gpu=DYNSAN_GPU,
        gpu_model=DYNSAN_GPU_MODEL,
        mem_mb=lambda w, attempt: 8000 * attempt,
        runtime=lambda w, attempt: 60 * attempt,
    shell:
        step("dynsan-evaluate")


rule dynsan_efficiency:
    output:
        table=DP.TABLES["efficiency"],
    params:
        args=args(device=DYNSAN["device"], dtype=DYNSAN["dtype"], **DYNSAN["efficiency"]),
        files=files(),
    conda:
        ENV_FILE
    log:
        log_path("dynsan_efficiency", "all"),
    benchmark:
        bench_path("dynsan_efficiency", "all")
    threads: THREADS
    resources:
        gpu=DYNSAN_GPU,
        gpu_model=DYNSAN_GPU_MODEL,
        mem_mb=lambda w, attempt: 16000 * attempt,
        runtime=lambda w, attempt: 60 * attempt,
    shell:
        step("dynsan-efficiency")


rule dynsan_summarise:
    input:
        metas=[r["meta"] for r in DYNSAN_SUMMARY["runs"]],
        scores=[r["scores"] for r in DYNSAN_SUMMARY["runs"]],
        curves=[r["curve"] for r in DYNSAN_SUMMARY["runs"]],
        tokens=list(DYNSAN_SUMMARY["tokens"].values()),
        gates=list(DYNSAN_SUMMARY["gates"].values()),
        efficiency=DP.TABLES["efficiency"],
    output:
        table=report(DP.TABLES["table"], caption="../report/dynsan_table.rst", category="DynSAN"),
        scores_figure=report(DP.FIGURES["scores_figure"], caption="../report/dynsan_scores.rst", category="DynSAN"),
        curves_figure=report(DP.FIGURES["curves_figure"], caption="../report/dynsan_curves.rst", category="DynSAN"),
        efficiency_figure=report(DP.FIGURES["efficiency_figure"], caption="../report/dynsan_efficiency.rst",
                                 category="DynSAN"),
        gates_figure=report(DP.FIGURES["gates_figure"], caption="../report/dynsan_gates.rst", category="DynSAN"),
    params:
        args=args(runs=DYNSAN_SUMMARY["runs"], tokens=DYNSAN_SUMMARY["tokens"], gates=DYNSAN_SUMMARY["gates"]),  # paths by run/task
        files=files(inputs=["efficiency"]),
    conda:
        ENV_FILE
    log:
        log_path("dynsan_summarise", "all"),
    benchmark:
        bench_path("dynsan_summarise", "all")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        step("dynsan-summarise")


rule dynsan:
    """Target: DynSAN runs (dynsan.run.tasks x variants x seeds), efficiency sweep, tables and figures."""
    input:
        rules.dynsan_summarise.output if DP.grid(config) else [],
