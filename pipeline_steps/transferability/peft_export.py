"""Export a soft prompt as a Hugging Face PEFT prompt-tuning adapter.

Our layout is PEFT's (virtual tokens before all input tokens, attention mask
extended with ones), so ``peft.PeftModel.from_pretrained(base_model, folder)``
reproduces our predictions once its outputs go through the same verbalizer
(``verbalize_peft_output``). Encoders are exported with task type
``FEATURE_EXTRACTION`` (the base model's own outputs: MLM logits or hidden
states), T5 with ``SEQ_2_SEQ_LM`` and one transformer submodule (the prompt
goes to the encoder only, as in our model).
"""
from __future__ import annotations

import logging

import torch

from ..io import write_json
from ..models.build import atomic_dir
from ..models.registry import resolve

log = logging.getLogger(__name__)


def write_adapter(hf_model, prompt: torch.Tensor, meta: dict, model_spec: dict, prompt_path: str, out_dir: str) -> dict:
    """Write ``prompt`` as ``adapter_config.json`` + ``adapter_model.safetensors`` (+ our provenance) into
    ``out_dir``, atomically. ``hf_model`` is wrapped in place by PEFT: use it for nothing else afterwards."""
    from peft import get_peft_model

    peft_model = get_peft_model(hf_model, peft_config_for(hf_model, prompt.shape[0], resolve(model_spec)))
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(prompt)
    info = {"step": "export_peft", "prompt": prompt_path, "model_source": model_spec["source"],
            "model": meta.get("model"), "task": meta.get("task"), "seed": meta.get("seed"),
            "verbalizer": meta.get("verbalizer"), "config_hash": meta.get("config_hash"),
            "note": "predictions need this project's verbalizer on top of the PEFT model's outputs"}
    with atomic_dir(out_dir) as tmp:
        peft_model.save_pretrained(tmp)
        write_json(info, tmp / "provenance.json")
    log.info("exported %s as a PEFT adapter to %s", prompt_path, out_dir)
    return info


def peft_config_for(hf_model, num_virtual_tokens: int, base_name: str):
    from peft import PromptTuningConfig, TaskType

    cfg = hf_model.config
    seq2seq = bool(getattr(cfg, "is_encoder_decoder", False))
    return PromptTuningConfig(
        task_type=TaskType.SEQ_2_SEQ_LM if seq2seq else TaskType.FEATURE_EXTRACTION,
        num_virtual_tokens=num_virtual_tokens,
        token_dim=cfg.d_model if seq2seq else cfg.hidden_size,
        num_transformer_submodules=1,
        num_attention_heads=cfg.num_heads if seq2seq else cfg.num_attention_heads,
        num_layers=cfg.num_layers if seq2seq else cfg.num_hidden_layers,
        base_model_name_or_path=base_name,
    )


@torch.no_grad()
def verbalize_peft_output(peft_model, verbalizer, batch: dict, num_virtual_tokens: int) -> torch.Tensor:
    """Class scores from a loaded PEFT model through our verbalizer (for checks and users)."""
    from ..verbalizers import EmbeddingVerbalizer

    base_cfg = peft_model.get_base_model().config
    if getattr(base_cfg, "is_encoder_decoder", False):
        start = base_cfg.decoder_start_token_id
        dec = torch.full((batch["input_ids"].shape[0], 1), start, dtype=torch.long)
        out = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=dec)
        return verbalizer.from_vocab_logits(out.logits[:, 0])
    out = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    pos = batch["mask_pos"] + num_virtual_tokens
    if isinstance(verbalizer, EmbeddingVerbalizer):
        mask = torch.cat([batch["attention_mask"].new_ones(len(pos), num_virtual_tokens), batch["attention_mask"]], 1)
        return verbalizer.from_hidden(out.last_hidden_state, mask, pos)
    logits = out.logits[torch.arange(len(pos)), pos]
    return verbalizer.from_vocab_logits(logits)
