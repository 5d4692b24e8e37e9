# Shared helpers: config validation, paths, resources and the one way rules call steps.
import json
import mimetypes
import os
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

sys.path.insert(0, str(Path(workflow.basedir).parent))  # pipeline_steps without installation, too
sys.path.insert(0, str(Path(workflow.basedir)))  # planning/: grids and paths of each stage

from pipeline_steps.config import validate
from pipeline_steps.checks import config_warnings, used_models, used_tasks
from pipeline_steps.specs import model_spec, pt_settings, task_spec
from pipeline_steps.errors import UserError
from pipeline_steps.models.registry import built_dir, built_files

try:
    validate(config, origin="config")
except UserError as e:
    raise WorkflowError(str(e)) from None
for _warning in config_warnings(config):  # valid, but not what it seems (docs/robustness.md)
    print(f"warning: {_warning}", file=sys.stderr)


def _per_name(query):
    """``query(config, name)`` computed once per name: input functions and params call these for every
    job (thousands in a large grid), and the config does not change while Snakemake plans. Callers only
    read the result (params go through ``args``), so one shared dict per name is safe."""
    memo = {}

    def cached(cfg, name):
        key = (id(cfg), name)
        if key not in memo:
            memo[key] = query(cfg, name)
        return memo[key]

    return cached


task_spec, model_spec, pt_settings = _per_name(task_spec), _per_name(model_spec), _per_name(pt_settings)

EXP = config["experiment"]
TASKS, MODELS, SEEDS = EXP["tasks"], EXP["models"], EXP["seeds"]
THREADS = config["threads"]
NAME = "[A-Za-z0-9][A-Za-z0-9_-]*"


wildcard_constraints:
    task=NAME,
    model=NAME,
    seed=r"\d+",


# Nothing in a DAG of embedded models and demo/local data may touch the network (every stage's
# models and tasks count: a hub task only KPT uses must still be allowed to download).
_offline = all(config["models"][m]["source"].startswith(("embedded:", "tiny:")) for m in used_models(config)) and all(
    "hub" not in config["tasks"][t]["source"] for t in used_tasks(config)
) and all("hub" not in config["dynsan"]["tasks"][t]["source"] for t in config["dynsan"]["run"]["tasks"])
if _offline:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


PYTHON = shlex.quote(sys.executable)  # the interpreter running Snakemake: the project's environment
REPO = shlex.quote(str(Path(workflow.basedir).parent))  # jobs import pipeline_steps from this checkout
ENV_FILE = "../../environment.yml"  # conda: directive of every rule (used with --sdm conda)


def step(name):
    """Shell command of a rule: one pipeline step, its settings from params.args and its paths from
    params.files (both JSON), log to {log}."""
    return (f"PYTHONPATH={REPO}${{{{PYTHONPATH:+:$PYTHONPATH}}}} {PYTHON} -m pipeline_steps {name} "
            f"--threads {{threads}} --args {{params.args:q}} --files {{params.files:q}} > {{log}} 2>&1")


def args(**kwargs):
    """JSON for params.args: the step's settings, and what Snakemake compares to decide on re-runs.

    Build it from wildcards only, and leave the paths to ``files``: Snakemake leaves params that are
    functions of input/output out of its params re-run trigger (paths are tracked as input and output).
    """
    return json.dumps(kwargs, sort_keys=True, default=str)


def _plain(value):
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else str(value)


def files(inputs=None, side=None, skip=(), shape=None):
    """params.files: the step's path arguments from the rule's own ``output`` (every named output, but
    ``skip``), ``inputs`` (step argument -> the rule's input name; a list: the same names; True: every
    named input but ``model``, the built model files, and ``skip``) and ``side`` files (step argument ->
    a pattern of a file that is neither input nor output, a checkpoint). Each path is written once: as
    the rule's input or output. ``shape``: a function that regroups that flat mapping into the step's
    arguments (FPT's previous-stage files)."""
    if isinstance(inputs, (list, tuple)):
        inputs = {name: name for name in inputs}

    def build(wildcards, input, output):
        out = {k: _plain(v) for k, v in output.items() if k not in skip}
        named = {k: k for k, _ in input.items() if k != "model" and k not in skip} if inputs is True else inputs
        out.update({arg: _plain(getattr(input, name)) for arg, name in (named or {}).items()})
        out.update({arg: fmt(pattern, wildcards) for arg, pattern in (side or {}).items()})
        return json.dumps(shape(out) if shape else out, sort_keys=True)

    return build


CHECKPOINTS = "results/checkpoints"


def checkpoint_path(pattern):
    """Where a training job keeps its resumable checkpoint (not an output: removed once the job is done)."""
    return f"{CHECKPOINTS}/{pattern}.safetensors"


def fmt(pattern, wildcards):
    return pattern.format(**dict(wildcards.items()))


def on_gpu(model):
    return config["models"][model]["device"] == "cuda"


def gpu(wildcards):
    """gpu=1 for jobs whose model runs on CUDA, 0 (no GPU request) on CPU."""
    return 1 if on_gpu(wildcards.model) else 0


def gpu_model_of(model):
    """The GPU type (models.<name>.gpu_model) a CUDA job asks the cluster for; None (no request) otherwise."""
    return config["models"][model].get("gpu_model") if on_gpu(model) else None


def gpu_model(wildcards):
    return gpu_model_of(wildcards.model)


def model_inputs(model):
    """Files a pipeline step builds for this model (empty for hub, local and embedded-L6 models)."""
    return built_files(config["models"][model]["source"])


DATA = "results/data/{task}/data.parquet"
TOKENS = "results/data/{task}/tokens-{model}.parquet"
PROMPT = "results/prompts/{model}/{task}/seed{seed}"
EVAL = "results/eval/{model}/{task}/seed{seed}"


mimetypes.add_type("application/vnd.apache.parquet", ".parquet")  # report items: tables download as Parquet


def reported(path, caption, category, **labels):
    """``path`` as a Snakemake report item: caption ``workflow/report/<caption>.rst``, one category per stage."""
    return report(path, caption=f"../report/{caption}.rst", category=category, labels=labels or None)


def log_path(rule_name, pattern):
    return f"logs/{rule_name}/{pattern}.log"


def bench_path(rule_name, pattern):
    return f"benchmarks/{rule_name}/{pattern}.tsv"
