# Models built by the workflow: MiniLM-L3 converted from ONNX (checked against the ONNX
# model's own output), MPNet-base assembled from its pinned, checksummed split-zip packages
# (optional: scripts/setup.sh --mpnet), and the tiny random-init test models.

BUILT_MODELS = {
    "minilm-l3": "embedded:minilm-l3",
    "mpnet-base": "embedded:mpnet-base",
    "tiny-bert": "tiny:bert",
    "tiny-roberta": "tiny:roberta",
    "tiny-t5": "tiny:t5",
}


rule build_model:
    output:
        [f"results/models/{{built}}/{f}" for f in ("config.json", "model.safetensors", "tokenizer.json", "provenance.json")],
    wildcard_constraints:
        built="|".join(BUILT_MODELS),
    params:
        args=lambda w: args(source=BUILT_MODELS[w.built]),
        files=files(side={"out_dir": "results/models/{built}"}),
    conda:
        ENV_FILE
    log:
        log_path("build_model", "{built}"),
    benchmark:
        bench_path("build_model", "{built}")
    threads: 1
    resources:
        mem_mb=3000,
        runtime=30,
    shell:
        step("build-model")
