"""Tokenise a prepared task once per (task, tokenizer) and cache it as Parquet.

The template is rendered piece by piece: literal text and the mask token are
never truncated; only the text fields are cut (longest first) so the sequence,
special tokens included, fits ``max_length``. Output columns: ``idx``,
``split``, ``label``, ``input_ids`` (list<int32>), ``mask_pos`` (position of
the mask token; -1 for models without one).
"""
from __future__ import annotations

import string

import numpy as np
import pandas as pd

from ..checks import template_problem
from ..errors import UserError
from ..io import read_parquet, stable_hash, write_parquet


def mask_token(tokenizer) -> tuple[str, int]:
    if tokenizer.mask_token is not None:
        return tokenizer.mask_token, tokenizer.mask_token_id
    sentinel = "<extra_id_0>"  # T5: the first sentinel stands for the masked span
    tid = tokenizer.convert_tokens_to_ids(sentinel)
    if tid is None or tid == tokenizer.unk_token_id:
        raise UserError("the tokenizer has neither a mask token nor a T5 sentinel token")
    return sentinel, tid


def special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """Special tokens the tokenizer puts before and after a single sequence."""
    probe = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(probe) + 1):
        if full[start:start + len(probe)] == probe:
            return full[:start], full[start + len(probe):]
    return [], []


def parse_template(template: str) -> list[tuple[str, str]]:
    """``[(kind, value)]`` with kind in {lit, field}."""
    parts = []
    for literal, field, _, _ in string.Formatter().parse(template):
        if literal:
            parts.append(("lit", literal))
        if field is not None:
            parts.append(("field", field))
    return parts


class TemplateEncoder:
    def __init__(self, tokenizer, template: str, max_length: int, n_text_fields: int | None = None):
        if n_text_fields is None:
            n_text_fields = 2 if "{text_b}" in template else 1
        problem = template_problem(template, n_text_fields)
        if problem:  # the config check refuses these first; this guards direct calls
            raise UserError(f"template {template!r}: {problem}")
        self.tok = tokenizer
        self.parts = parse_template(template)
        self.max_length = max_length
        self.prefix, self.suffix = special_affixes(tokenizer)
        _, self.mask_id = mask_token(tokenizer)
        self.has_mask = tokenizer.mask_token is not None
        self.literal_ids = {v: tokenizer(v, add_special_tokens=False)["input_ids"]
                            for k, v in self.parts if k == "lit"}
        fixed = len(self.prefix) + len(self.suffix) + sum(map(len, self.literal_ids.values())) + 1
        if fixed + 2 > max_length:
            raise UserError(f"max_length {max_length} leaves no room for text: the template and special "
                            f"tokens alone take {fixed} tokens")
        self.budget = max_length - fixed

    def _fit(self, texts: dict[str, list[int]]) -> dict[str, list[int]]:
        texts = dict(texts)
        while sum(map(len, texts.values())) > self.budget:
            longest = max(texts, key=lambda k: len(texts[k]))
            texts[longest] = texts[longest][:-1]
        return texts

    def encode(self, text_a: str, text_b: str = "") -> tuple[list[int], int]:
        texts = {"text_a": self.tok(text_a, add_special_tokens=False)["input_ids"]}
        if any(v == "text_b" for k, v in self.parts if k == "field"):
            texts["text_b"] = self.tok(text_b, add_special_tokens=False)["input_ids"]
        texts = self._fit(texts)
        ids = list(self.prefix)
        mask_pos = -1
        for kind, value in self.parts:
            if kind == "lit":
                ids += self.literal_ids[value]
            elif value == "mask":
                mask_pos = len(ids) if self.has_mask else -1
                ids.append(self.mask_id)
            else:
                ids += texts[value]
        ids += self.suffix
        return ids, mask_pos


def tokenize_frame(df: pd.DataFrame, tokenizer, template: str, max_length: int,
                   n_text_fields: int | None = None) -> pd.DataFrame:
    enc = TemplateEncoder(tokenizer, template, max_length, n_text_fields)
    ids, pos = zip(*(enc.encode(a, b) for a, b in zip(df["text_a"], df["text_b"])))
    return pd.DataFrame({
        "idx": df["idx"].to_numpy(),
        "split": df["split"].to_numpy(),
        "label": df["label"].to_numpy(),
        "input_ids": [np.asarray(x, dtype=np.int32) for x in ids],
        "mask_pos": np.asarray(pos, dtype=np.int64),
    })


def run(data_path: str, output: str, model_spec: dict, task_spec: dict, max_length: int) -> pd.DataFrame:
    from ..models.registry import load_tokenizer
    from ..prompt_tuning.steps import check_label_words

    tok = load_tokenizer(model_spec)
    check_label_words(tok, task_spec, model_spec["name"])  # fails here, long before any training
    df = tokenize_frame(read_parquet(data_path), tok, task_spec["template"], max_length,
                        len(task_spec["text_fields"]))
    write_parquet(df, output, metadata={
        "step": "tokenize", "task": task_spec["name"], "model": model_spec["name"], "max_length": max_length,
        "spec_hash": stable_hash([task_spec, model_spec, max_length])})
    return df
