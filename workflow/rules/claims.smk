# Stage: the papers' claims (resources/claims.yaml), each judged on this run's summary tables with a
# 95% interval and a verdict (docs/reproduction.md). Reads only tables: a claim whose table this
# config does not build is "not run", with the config keys that would add it.

from pipeline_steps.claims.measures import TABLE_NAMES
from pipeline_steps.claims.spec import claims_path, load_claims

CLAIMS_FILE = str(claims_path(config["claims"]["file"]))  # relative: to the workdir, else to the repository
try:
    load_claims(CLAIMS_FILE)  # a broken claims file stops the run before any job
except UserError as e:
    raise WorkflowError(str(e)) from None

CLAIMS = dict(table="results/tables/claims.parquet", figure="results/figures/claims.png")
# every summary table the claims can read -> its path, kept where this config's stage targets build it
_STAGE_OUTPUTS = {str(p) for paper in PAPERS for target in paper.targets for p in getattr(rules, target).input}
_STAGE_OUTPUTS |= {DP.TABLES["efficiency"]} if DP.grid(config) else set()  # read by the DynSAN summary
CLAIM_TABLES = {name: f"results/tables/{name}.parquet" for name in TABLE_NAMES}
CLAIM_TABLES = {name: path for name, path in CLAIM_TABLES.items() if path in _STAGE_OUTPUTS}
# split sizes (the one-seed intervals) of the tasks whose tables carry no test size
_CLAIM_TASKS = set(TASKS) | ({t for p in config["projector"]["pairs"] for t in p["eval_tasks"]} if PAIRS else set())
_CLAIM_TASKS |= set(config["fpt"]["tasks"]) if "fpt" in CLAIM_TABLES else set()
_CLAIM_TASKS |= set(config["lpt"]["tasks"]) if "lpt" in CLAIM_TABLES else set()
CLAIM_DATA = {t: DATA.format(task=t) for t in sorted(_CLAIM_TASKS)}


rule judge_claims:
    input:
        tables=list(CLAIM_TABLES.values()),
        data=list(CLAIM_DATA.values()),
        claims=CLAIMS_FILE,
    output:
        table=reported(CLAIMS["table"], "claims_table", "0. Claims", table="claims"),
        figure=reported(CLAIMS["figure"], "claims_figure", "0. Claims", figure="claims by verdict"),
    params:
        args=args(claims=CLAIMS_FILE, tables=CLAIM_TABLES, data=CLAIM_DATA,
                  task_kinds={t: spec["kind"] for t, spec in config["tasks"].items() if spec.get("kind")},
                  model_sources={m: spec["source"] for m, spec in config["models"].items()}),  # tables, data: by name
        files=files(),
    conda:
        ENV_FILE
    log:
        log_path("judge_claims", "all"),
    benchmark:
        bench_path("judge_claims", "all")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        step("claims")


rule claims:
    """Target: the claims table and figure (builds every stage whose tables the claims read)."""
    input:
        rules.judge_claims.output,
