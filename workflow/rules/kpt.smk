# KPT (knowledgeable prompt-tuning, docs/kpt.md): one job per (model, task, knowledge base, seed, setting)
# running every verbalizer variant with the model loaded once; setting = zero-shot or {k}shot-{mode}.

from planning.kpt import (FILES as KPT_FILES, RUN as KPT_RUN, SETTING as KPT_SETTING,
                          TOKENS_AT_LENGTH as KPT_TOKENS, kb_inputs, kb_spec, kpt_grid, kpt_prompt_settings,
                          kpt_settings, kpt_tokens, parse_setting, run_paths)

KPT_JOBS = kpt_grid(config)


rule kpt_tokenize:
    """A task tokenized at kpt.prompt_tuning.max_length, where it differs from the task's own."""
    input:
        data=DATA,
        model=lambda w: model_inputs(w.model),
    output:
        output=KPT_TOKENS,
    wildcard_constraints:
        length=r"[0-9]+",
    params:
        files=files(inputs={"data_path": "data"}),
        args=lambda w: args(
            model_spec=model_spec(config, w.model),
            task_spec=task_spec(config, w.task),
            max_length=int(w.length),
        ),
    conda:
        ENV_FILE
    log:
        log_path("kpt_tokenize", "{task}-{model}-len{length}"),
    benchmark:
        bench_path("kpt_tokenize", "{task}-{model}-len{length}")
    threads: 1
    resources:
        mem_mb=lambda w, attempt: 2000 * attempt,
        runtime=lambda w, attempt: 30 * attempt,
    shell:
        step("tokenize")


rule kpt_run:
    input:
        tokens=lambda w: kpt_tokens(config, w.task, w.model, TOKENS),
        model=lambda w: model_inputs(w.model),
        kb=lambda w: kb_inputs(config, w.kb),
    output:
        **{k: f"{KPT_RUN}/{f}" for k, f in KPT_FILES.items()},
    wildcard_constraints:
        kb=NAME,
        setting=KPT_SETTING,
    params:
        args=lambda w: args(
            model_spec=model_spec(config, w.model),
            task_spec=task_spec(config, w.task),
            kb=kb_spec(config, w.kb),
            settings=kpt_settings(config, w.task),
            prompt_tuning=kpt_prompt_settings(config, w.task),
            seed=int(w.seed),
            shots=parse_setting(w.setting)[0],
            mode=parse_setting(w.setting)[1],
            variants=config["kpt"]["variants"],
        ),
        files=files(inputs={"tokenized": "tokens"},
                    side={"checkpoint_dir": f"{CHECKPOINTS}/kpt/{{model}}/{{task}}/{{kb}}/seed{{seed}}/{{setting}}"}),
    conda:
        ENV_FILE
    log:
        log_path("kpt_run", "{model}-{task}-{kb}-seed{seed}-{setting}"),
    benchmark:
        bench_path("kpt_run", "{model}-{task}-{kb}-seed{seed}-{setting}")
    threads: THREADS
    resources:
        gpu=gpu,
        gpu_model=gpu_model,
        mem_mb=lambda w, attempt: 4000 * attempt,
        runtime=lambda w, attempt: 120 * attempt,
    shell:
        step("kpt-run")


KPT_SUMMARY = dict(
    scores=[run_paths(j)["scores"] for j in KPT_JOBS],
    words=[run_paths(j)["words"] for j in KPT_JOBS],
    metas=[run_paths(j)["meta"] for j in KPT_JOBS],
    table="results/tables/kpt.parquet",
    shots_figure="results/figures/kpt_score_vs_shots.png",
    ablation_figure="results/figures/kpt_ablation.png",
    words_figure="results/figures/kpt_words.png",
)


rule summarise_kpt:
    input:
        scores=KPT_SUMMARY["scores"],
        words=KPT_SUMMARY["words"],
        metas=KPT_SUMMARY["metas"],
    output:
        table=report(KPT_SUMMARY["table"], caption="../report/kpt_table.rst", category="KPT"),
        shots_figure=report(KPT_SUMMARY["shots_figure"], caption="../report/kpt_score_vs_shots.rst", category="KPT"),
        ablation_figure=report(KPT_SUMMARY["ablation_figure"], caption="../report/kpt_ablation.rst", category="KPT"),
        words_figure=report(KPT_SUMMARY["words_figure"], caption="../report/kpt_words.rst", category="KPT"),
    params:
        args=args(),
        files=files(inputs=["scores", "words", "metas"]),
    conda:
        ENV_FILE
    log:
        log_path("summarise_kpt", "all"),
    benchmark:
        bench_path("summarise_kpt", "all")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        step("summarise-kpt")


rule kpt:
    """Target: the KPT grid (kpt.models x kpt.tasks x knowledge bases x seeds x shots), table and figures."""
    input:
        rules.summarise_kpt.output if KPT_JOBS else [],
