"""Speed levers: light report jobs, length-bucketed batches, sorted evaluation, bf16 autocast fallback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def report_steps() -> list[str]:
    from pipeline_steps.cli import STEPS

    return sorted(name for name, target in STEPS.items() if target.split(":")[0].endswith(".report"))


@pytest.mark.parametrize("step", report_steps())
def test_report_steps_run_without_torch_or_transformers(step):
    """The whole CLI path of a table/figure step (logging set-up, step resolution, the call) leaves
    torch and transformers unimported: each such job saves their ~2.5 s import."""
    code = (
        "import sys\n"
        "from pipeline_steps import cli\n"
        "resolve = cli.resolve_step\n"
        "def stub(name):\n"
        "    resolve(name)  # the real import of the step's module\n"
        "    return lambda **kwargs: None\n"
        "cli.resolve_step = stub\n"
        f"assert cli.main([{step!r}, '--args', '{{}}']) == 0\n"
        "print(','.join(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "", f"{step} imports {res.stdout.strip()}"


def test_there_are_report_steps():
    assert {"summarise-prompts", "zero-shot-table", "summarise-fpt"} <= set(report_steps())
