"""The ``claims`` step: every claim of ``resources/claims.yaml`` judged on a run's tables.

Writes ``results/tables/claims.parquet`` (one row per claim and setting; a claim without rows in
this run gets one ``not run`` row saying which config keys add them) and a figure: the verdicts per
paper, then each claim's effect with its 95% interval against the claimed side, the paper's own
number beside it where the paper gives one in the same unit.
"""
from __future__ import annotations

import logging
import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import parquet_provenance, read_parquet, stable_hash, write_parquet
from .measures import TABLE_NAMES, Context
from .spec import load_claims
from .verdict import NOT_RUN, VERDICTS, effect_interval, null_text, verdict

log = logging.getLogger(__name__)

COLUMNS = ["claim_id", "paper", "claim", "where", "models", "tasks", "shots", "detail", "effect_name", "effect",
           "ci_low", "ci_high", "claimed", "verdict", "n_seeds", "n_test", "interval", "paper_value",
           "paper_result", "paper_verified", "setting_matches_paper", "note", "config_hash"]
VERDICT_COLORS = {"reproduced": "#2e7d32", "not reproduced": "#c62828", "inconclusive": "#f9a825",
                  "not run": "#9e9e9e"}


def split_sizes(data: dict) -> dict:
    """task -> {split: rows} from the prepared data tables (``split`` column only)."""
    out = {}
    for task, path in data.items():
        if Path(path).exists():
            counts = read_parquet(path)["split"].value_counts()
            out[task] = {str(k): int(v) for k, v in counts.items()}
    return out


def _paper_value(result: dict, setting: dict) -> float:
    by = result.get("by") or {}
    for value in setting["detail"].values():
        for key, number in by.items():
            if str(value) == key or str(value).startswith(key + " "):
                return float(number)
    return math.nan if result.get("value") is None else float(result["value"])


def _matches_paper(result: dict, setting: dict, model_sources: dict) -> bool:
    """The run's setting is the paper's: its models (by source, e.g. roberta-base) and its tasks are
    among those the paper's number holds for."""
    paper = result.get("setting") or {}
    if not paper.get("tasks") or not setting["tasks"] or (paper.get("models") and not setting["models"]):
        return False
    sources = {model_sources.get(m, m) for m in setting["models"]}
    return sources <= set(paper.get("models") or []) and set(setting["tasks"]) <= set(paper["tasks"])


def judge(spec: dict, ctx: Context, model_sources: dict | None = None, config_hash: str = "") -> pd.DataFrame:
    """The claims table of ``spec`` (a loaded claims file) over the tables of ``ctx``."""
    from .measures import MEASURES

    model_sources = model_sources or {}
    rows = []
    for claim in spec["claims"]:
        result = claim["paper_result"]
        base = {"claim_id": claim["id"], "paper": claim["paper"], "claim": claim["claim"], "where": claim["where"],
                "effect_name": claim["effect"], "claimed": null_text(claim["test"]),
                "paper_result": result["text"], "paper_verified": bool(result["verified"]),
                "config_hash": config_hash}
        measurements = MEASURES[claim["measure"]](ctx, **claim["params"])
        if not measurements:
            rows.append({**base, "models": "", "tasks": "", "shots": None, "detail": "", "effect": math.nan,
                         "ci_low": math.nan, "ci_high": math.nan, "verdict": NOT_RUN, "n_seeds": 0, "n_test": None,
                         "interval": "", "paper_value": _paper_value(result, {"detail": {}}),
                         "setting_matches_paper": False, "note": f"no rows in this run; add them with {claim['adds']}"})
            continue
        for m in measurements:
            iv = effect_interval(m)
            rows.append({**base, "models": ",".join(m.setting["models"]), "tasks": ",".join(m.setting["tasks"]),
                         "shots": m.setting["shots"],
                         "detail": ", ".join(f"{k}={v}" for k, v in m.setting["detail"].items()),
                         "effect": iv["effect"], "ci_low": iv["ci_low"], "ci_high": iv["ci_high"],
                         "verdict": verdict(iv["ci_low"], iv["ci_high"], claim["test"]), "n_seeds": iv["n_seeds"],
                         "n_test": m.n_test, "interval": iv["interval"],
                         "paper_value": _paper_value(result, m.setting),
                         "setting_matches_paper": _matches_paper(result, m.setting, model_sources), "note": m.note})
    df = pd.DataFrame(rows).reindex(columns=COLUMNS)
    for col in ("effect", "ci_low", "ci_high", "paper_value"):
        df[col] = df[col].astype("float64")
    for col in ("shots", "n_seeds", "n_test"):
        df[col] = df[col].astype("Int64")
    return df


def evaluate(*, claims: str, tables: dict, data: dict, task_kinds: dict, model_sources: dict, table: str,
             figure: str) -> pd.DataFrame:
    """Step ``claims``: ``tables`` maps table names (``measures.TABLE_NAMES``) to the paths this run
    writes, ``data`` task -> prepared data (split sizes for the one-seed intervals). A table the run
    did not make is simply absent: its claims are ``not run``."""
    from ..errors import UserError

    unknown = sorted(set(tables) - set(TABLE_NAMES))
    if unknown:
        raise UserError(f"claims: unknown table name(s) {unknown}; known: {', '.join(TABLE_NAMES)}")
    spec = load_claims(claims)
    present = {name: path for name, path in tables.items() if Path(path).exists()}
    ctx = Context(tables=present, task_kinds=task_kinds, split_sizes=split_sizes(data))
    provenance = {name: parquet_provenance(path) for name, path in sorted(present.items())}
    config_hash = stable_hash([spec, task_kinds, model_sources, ctx.split_sizes, provenance])
    df = judge(spec, ctx, model_sources, config_hash)
    write_parquet(df, table, metadata={
        "step": "claims", "config_hash": config_hash, "claims_file": str(claims), "claims_hash": stable_hash(spec),
        "interval": "95%: t over seeds; one seed: test-set sampling error (docs/reproduction.md)",
        "tables": provenance})
    plot_claims(df, figure)
    counts = df["verdict"].value_counts()
    log.info("claims: %s", ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS))
    for _, r in df.iterrows():
        log.info("  %-40s %-15s %9.3g [%.3g, %.3g] %s", r["claim_id"], r["verdict"], r["effect"], r["ci_low"],
                 r["ci_high"], _label(r, 100))
    return df


def _label(r, width: int = 58) -> str:
    """A row's setting in a few words: models, tasks (when few), shots, the detail's values."""
    detail = [part.split("=", 1)[-1] for part in r["detail"].split(", ") if part]
    parts = [p for p in (r["models"], r["tasks"].replace(",", " ") if r["tasks"].count(",") < 2 else "",
                         "" if pd.isna(r["shots"]) else f"{r['shots']}-shot", *detail) if p]
    return textwrap.shorten(" | ".join(parts) or "(not run)", width, placeholder="...")


def plot_claims(df: pd.DataFrame, path: str) -> None:
    """Top: verdicts per paper (stacked counts of claim rows). Below: one panel per claim, each
    setting's effect with its 95% interval (colour = verdict), the claimed side shaded, the paper's
    number as a black diamond where it is in the same unit."""
    from ..figures import pyplot, save_figure

    plt = pyplot()
    claims = list(dict.fromkeys(df["claim_id"]))
    ncols = 3
    nrows = math.ceil(len(claims) / ncols)
    heights = [1.0 + 0.18 * df["paper"].nunique()] + [
        0.9 + 0.28 * max(int((df["claim_id"] == c).sum()) for c in claims[i * ncols:(i + 1) * ncols])
        for i in range(nrows)]
    fig = plt.figure(figsize=(21, sum(heights) + 0.6))
    grid = fig.add_gridspec(nrows + 1, ncols, height_ratios=heights, hspace=0.9, wspace=1.0, top=0.95, bottom=0.03)
    ax = fig.add_subplot(grid[0, :])
    papers = list(dict.fromkeys(df["paper"]))
    counts = df.groupby(["paper", "verdict"]).size().unstack(fill_value=0).reindex(index=papers, fill_value=0)
    left = np.zeros(len(papers))
    for v in VERDICTS:
        n = counts[v].to_numpy() if v in counts else np.zeros(len(papers))
        ax.barh(range(len(papers)), n, left=left, color=VERDICT_COLORS[v], label=v)
        left += n
    ax.set_yticks(range(len(papers)), papers)
    ax.invert_yaxis()
    ax.set_xlabel("claim rows (one per claim and setting)")
    ax.set_title("Claims by verdict", loc="left")
    ax.legend(ncol=4, fontsize=8, loc="lower right")
    for i, claim in enumerate(claims):
        ax = fig.add_subplot(grid[1 + i // ncols, i % ncols])
        part = df[df["claim_id"] == claim].reset_index(drop=True)
        first = part.iloc[0]
        y = np.arange(len(part))
        for j, r in part.iterrows():
            color = VERDICT_COLORS[r["verdict"]]
            if np.isfinite(r["ci_low"]) and np.isfinite(r["ci_high"]):
                ax.plot([r["ci_low"], r["ci_high"]], [j, j], color=color, lw=2.5)
            if np.isfinite(r["effect"]):
                ax.plot(r["effect"], j, "o", color=color, ms=5)
            if np.isfinite(r["paper_value"]):
                ax.plot(r["paper_value"], j, "D", mfc="black" if r["setting_matches_paper"] else "none", mec="black",
                        ms=5)
        claimed = first["claimed"]
        if claimed.startswith("in ["):
            lo, hi = (float(v) for v in claimed[4:-1].split(","))
            ax.axvspan(lo, hi, color="#2e7d32", alpha=0.08)
            for v in (lo, hi):
                ax.axvline(v, color="grey", lw=0.8, ls="--")
        else:
            null = float(claimed.split()[1])
            ax.axvline(null, color="grey", lw=0.8, ls="--")
            lim = ax.get_xlim()
            ax.axvspan(null, max(lim[1], null + 1e-9) if claimed[0] == ">" else min(lim[0], null - 1e-9),
                       color="#2e7d32", alpha=0.08)
            ax.set_xlim(lim)
        ax.set_yticks(y, [_label(r, 48) for _, r in part.iterrows()], fontsize=6)
        ax.set_ylim(len(part) - 0.5, -0.5)
        ax.tick_params(axis="x", labelsize=7)
        ax.set_xlabel("\n".join(textwrap.wrap(f"{first['effect_name']} (claimed {claimed})", 70)), fontsize=7)
        ax.set_title(f"{claim}", fontsize=8, loc="left")
    fig.suptitle("The papers' claims on this run: effect with 95% interval (colour: verdict); "
                 "shaded: the claimed side; diamond: the paper's number (filled: same setting)", fontsize=10)
    save_figure(fig, path)
