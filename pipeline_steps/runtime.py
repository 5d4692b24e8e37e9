"""Shared set-up for steps that run a model: threads, device, seeds, logging, and the
(backbone, tokenizer, verbalizer) bundle for one model and task."""
from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from .errors import UserError
from .logsetup import setup_logging  # noqa: F401  (kept importable from here)
from .models.backbone import Backbone
from .models.registry import load_hf_model, load_tokenizer
from .verbalizers import Verbalizer, build_verbalizer

log = logging.getLogger(__name__)


def set_threads(n: int) -> None:
    torch.set_num_threads(max(1, int(n)))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


# Test-only switch: with PTW_CUDA_FALLBACK=cpu a model configured with device cuda runs on the CPU
# where no CUDA device is usable (e.g. a Slurm test node with fake GPU gres). Never set it for real runs.
CUDA_FALLBACK_ENV = "PTW_CUDA_FALLBACK"


def visible_devices() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")


def resolve_device(spec: dict) -> torch.device:
    if spec.get("device", "cpu") == "cuda":
        if not torch.cuda.is_available():
            if os.environ.get(CUDA_FALLBACK_ENV) == "cpu":
                log.warning("model '%s' asks for device cuda, but CUDA is not usable here "
                            "(CUDA_VISIBLE_DEVICES=%s); running on CPU because %s=cpu",
                            spec["name"], visible_devices(), CUDA_FALLBACK_ENV)
                return torch.device("cpu")
            raise UserError(f"model '{spec['name']}' asks for device cuda, but no CUDA device is visible "
                            f"(CUDA_VISIBLE_DEVICES={visible_devices()}); on a cluster, check that the job "
                            f"requested a GPU, or set device: cpu")
        return torch.device("cuda")
    return torch.device("cpu")


def cpu_bf16_supported() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 / AMX): where it does not, bf16
    autocast would be emulated and slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(spec: dict, device: torch.device):
    """Mixed precision when the model's dtype asks for it: on CUDA, and bfloat16 on CPUs with native
    bf16 (float32 with a warning elsewhere); a no-op for float32."""
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(spec.get("dtype", "float32"))
    if device.type == "cuda" and dtype is not None:
        return torch.autocast("cuda", dtype=dtype)
    if device.type == "cpu" and dtype is torch.bfloat16:
        if cpu_bf16_supported():
            return torch.autocast("cpu", dtype=torch.bfloat16)
        log.warning("model '%s' asks for dtype bfloat16, but this CPU has no native bf16: running in float32",
                    spec.get("name"))
    return torch.autocast("cpu", enabled=False)


@dataclass
class Bundle:
    backbone: Backbone
    tokenizer: object
    device: torch.device
    spec: dict

    def verbalizer(self, task_spec: dict) -> Verbalizer:
        return build_verbalizer(self.spec.get("verbalizer", "auto"), self.backbone, self.tokenizer,
                                task_spec["label_words"], task_spec["label_names"],
                                pooling=self.spec.get("pooling", "mask"),
                                scale=self.spec.get("embedding_scale", 20.0))

    @property
    def verbalizer_kind(self) -> str:
        kind = self.spec.get("verbalizer", "auto")
        return ("mlm" if self.backbone.has_mlm_head else "embedding") if kind == "auto" else kind


def load_bundle(model_spec: dict) -> Bundle:
    device = resolve_device(model_spec)
    tokenizer = load_tokenizer(model_spec)
    backbone = Backbone(load_hf_model(model_spec)).to(device)
    log.info("loaded model %s (%s, %d layers, hidden %d) on %s (CUDA_VISIBLE_DEVICES=%s)", model_spec["name"],
             type(backbone.hf).__name__, backbone.num_layers, backbone.hidden_size, device, visible_devices())
    return Bundle(backbone, tokenizer, device, model_spec)
