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


def test_files_are_merged_with_args_and_a_key_in_both_is_refused(tmp_path, capsys):
    """Rules pass settings in --args and their input/output paths in --files; the step gets both."""
    src = tmp_path / "d.csv"
    src.write_text("text,label\n" + "".join(f"review {i},{'ab'[i % 2]}\n" for i in range(40)))
    spec = {"name": "t", "source": {"path": str(src)}, "text_fields": ["text"], "label_field": "label",
            "label_names": ["a", "b"], "template": "{text_a} {mask}", "label_words": {"a": ["x"], "b": ["y"]}}
    out = tmp_path / "out.parquet"
    assert main(["prepare-data", "--args", json.dumps({"spec": spec}), "--files", json.dumps({"output": str(out)})]) == 0
    assert out.exists()
    assert main(["prepare-data", "--args", json.dumps({"spec": spec, "output": str(out)}),
                 "--files", json.dumps({"output": str(out)})]) == 2
    assert "['output'] given in both --args and --files" in capsys.readouterr().err
    assert main(["prepare-data", "--files", "[1]"]) == 2
    assert "--args and --files must be JSON objects" in capsys.readouterr().err
