import json
import subprocess
import sys


from pipeline_steps.cli import STEPS, main, resolve_step


def test_every_step_resolves_to_a_function():
    for name in STEPS:
        assert callable(resolve_step(name)), name


def test_user_error_is_one_line_without_traceback(tmp_path):
    spec = {"name": "t", "source": {"path": str(tmp_path / "nope.csv")}, "text_fields": ["text"], "label_field": "label",
            "label_names": ["a", "b"], "template": "{text_a} {mask}", "label_words": {"a": ["x"], "b": ["y"]}}
    out = tmp_path / "out.parquet"
    res = subprocess.run([sys.executable, "-m", "pipeline_steps", "prepare-data", "--args",
                          json.dumps({"spec": spec, "output": str(out)})], capture_output=True, text=True)
    assert res.returncode == 2
    assert "error:" in res.stderr and "nope.csv" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()


def test_unknown_step_and_bad_json(capsys):
    assert main(["no-such-step"]) == 2
    assert "unknown step" in capsys.readouterr().err
    assert main(["prepare-data", "--args", "{not json"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
