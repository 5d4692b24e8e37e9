"""EM and F1 exactly as the SQuAD v1.1 evaluation script defines them (x100 in the tables)."""
from __future__ import annotations

import re
import string
from collections import Counter

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation, drop the articles a/an/the, collapse whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def best_over_golds(metric, prediction: str, golds: list[str]) -> float:
    """The SQuAD script's max over the gold answers (0 when there is none)."""
    return max((metric(prediction, g) for g in golds), default=0.0)


def em_f1(predictions: list[str], golds: list[list[str]]) -> dict[str, float]:
    """Corpus EM and F1 (x100) of predictions against lists of gold answers."""
    n = len(predictions)
    if n == 0:
        return {"em": 0.0, "f1": 0.0}
    em = sum(best_over_golds(exact_match, p, g) for p, g in zip(predictions, golds))
    f = sum(best_over_golds(f1, p, g) for p, g in zip(predictions, golds))
    return {"em": 100.0 * em / n, "f1": 100.0 * f / n}
