"""Every step entry point turns an argument mistake into a UserError (issue #12; docs/robustness.md).

The demo's real arguments come from a Snakemake dry run of the shipped config (``-n -p`` prints
each job's ``python -m pipeline_steps STEP --args JSON``); for every step in ``cli.STEPS`` the
argument check accepts them, then refuses them with one value broken at a time (missing, unknown,
wrong type, empty text, NaN, a spec without a key), naming the step and the argument.
"""
from __future__ import annotations

import inspect
import json
import math
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_steps.cli import STEPS, check_args, resolve_step
from pipeline_steps.errors import UserError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo_args(tmp_path_factory) -> dict[str, dict]:
    wd = tmp_path_factory.mktemp("dry-run")
    (wd / "config.yaml").write_text((REPO / "config.yaml").read_text())
    res = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), "-d", str(wd),
                          "-n", "-p", "--cores", "2"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    found = {}
    for line in res.stdout.splitlines():
        m = re.search(r"-m pipeline_steps (\S+) --threads \d+ --args (.*?) > logs/", line)
        if m and m.group(1) not in found:
            settings, flag, paths = shlex.split(m.group(2))  # --args SETTINGS --files PATHS (merged by the CLI)
            assert flag == "--files"
            found[m.group(1)] = {**json.loads(settings), **json.loads(paths)}
    return found


def _wrong_type(value):
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, (int, float)):
        return "many"
    if isinstance(value, str):
        return 123
    if isinstance(value, dict):
        return ["not", "a", "mapping"]
    if isinstance(value, list):
        return "not a list"
    return None


def breaks(args: dict, fn):
    """(description, argument the message must name, broken args): one value broken at a time."""
    params = inspect.signature(fn).parameters
    yield "unknown argument", "lernrate", {**args, "lernrate": 0.1}
    for arg, value in args.items():
        if arg == "threads":
            continue
        if params[arg].default is inspect.Parameter.empty:
            yield f"missing {arg}", arg, {k: v for k, v in args.items() if k != arg}
        if value is not None:
            yield f"{arg} of another type", arg, {**args, arg: _wrong_type(value)}
        if isinstance(value, str):
            yield f"empty {arg}", arg, {**args, arg: ""}
        if isinstance(value, dict):
            numbers = [k for k, v in value.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if numbers:
                yield f"NaN in {arg}.{numbers[0]}", arg, {**args, arg: {**value, numbers[0]: math.nan}}
        if arg == "spec" or arg.endswith("_spec"):
            for key in ("template", "label_names", "source", "name"):
                if key in value:
                    yield f"{arg} without {key}", arg, {**args, arg: {k: v for k, v in value.items() if k != key}}
                    break


@pytest.mark.parametrize("step", sorted(STEPS))
def test_each_step_refuses_one_broken_argument_at_a_time(demo_args, step):
    if step not in demo_args:
        pytest.skip(f"step {step} is not in the demo's DAG")
    fn = resolve_step(step)
    check_args(step, fn, demo_args[step])  # the demo's own arguments pass
    problems, n = [], 0
    for what, arg, broken in breaks(demo_args[step], fn):
        n += 1
        try:
            check_args(step, fn, broken)
        except UserError as e:
            msg = str(e)
            if not msg.startswith(f"step {step}") or arg not in msg or "\n" in msg:
                problems.append(f"{what}: message does not name '{arg}': {msg}")
            continue
        except Exception as e:  # noqa: BLE001 - the point of the test
            problems.append(f"{what}: {type(e).__name__}: {e}")
            continue
        problems.append(f"{what}: accepted")
    assert n >= 3 and not problems, "\n".join(problems)


def test_cli_prints_one_error_line(tmp_path):
    def run(*argv):
        return subprocess.run([sys.executable, "-m", "pipeline_steps", *argv], capture_output=True, text=True,
                              cwd=REPO, timeout=120)

    for argv, fragment in [
        (["prepare-data", "--args", "[1, 2]"], "must be a JSON object"),
        (["prepare-data", "--args", json.dumps({"spec": {}, "output": str(tmp_path / "x.parquet")})],
         "argument 'spec'"),
        (["summarise-prompts", "--args", json.dumps({"metas": [], "scores": [], "curves": [], "table": 1,
                                                     "scores_figure": "a.png", "curves_figure": "b.png"})],
         "argument 'table' must be str"),
        (["build-model", "--args", json.dumps({"source": "tiny:bert"})], "missing argument(s) ['out_dir']"),
    ]:
        res = run(*argv)
        lines = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
        assert res.returncode == 2 and len(lines) == 1 and fragment in lines[0], res.stderr[-1500:]
        assert "Traceback" not in res.stderr
    assert not list(tmp_path.iterdir())
