"""Measures: a run's tables -> one :class:`Measurement` per setting (model, tasks, method, ...).

Each measure is a function ``measure(ctx, **params) -> list[Measurement]``; ``resources/claims.yaml``
names it and gives its params. A measure returns no measurement when a table it reads is missing or
holds no rows for it (the claim is then ``not run``). Effects are in the units the claims file states:
score differences in points (x100), ratios as they are, rank correlations as rho.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..io import read_parquet
from .verdict import Measurement, binomial_se

TABLE_NAMES = ("prompt_tuning", "transfer_zero_shot", "transfer_init", "indicators", "indicator_correlation",
               "cross_model", "fpt", "lpt", "kpt", "dynsan", "dynsan_efficiency")


@dataclass
class Context:
    """What the measures read: the run's tables (name -> path, only those the run made), the task
    kinds and model sources from the config, and the size of each task's splits."""

    tables: dict
    task_kinds: dict = field(default_factory=dict)
    split_sizes: dict = field(default_factory=dict)
    _cache: dict = field(default_factory=dict)

    def table(self, name: str) -> pd.DataFrame | None:
        if name not in self._cache:
            path = self.tables.get(name)
            self._cache[name] = read_parquet(path) if path else None
        df = self._cache[name]
        return None if df is None or df.empty else df

    def n(self, task: str, split: str = "test") -> int | None:
        return self.split_sizes.get(task, {}).get(split)

    def kind(self, task: str) -> str | None:
        return self.task_kinds.get(task)


def _seeded(values: pd.DataFrame, column: str) -> dict:
    return {int(s): float(v) for s, v in zip(values["seed"], values[column]) if pd.notna(v)}


def _scores(df: pd.DataFrame, score) -> pd.Series:
    """The first finite column of ``score`` (a name or a list of names) per row."""
    names = [score] if isinstance(score, str) else list(score)
    out = pd.Series(np.nan, index=df.index)
    for name in names:
        if name in df.columns:
            out = out.fillna(df[name].astype(float))
    return out


def _filter(df: pd.DataFrame, where: dict | None, exclude: dict | None) -> pd.DataFrame:
    for col, value in (where or {}).items():
        if col not in df.columns:
            return df.iloc[0:0]
        df = df[df[col].isin(value if isinstance(value, list) else [value])]
    for col, value in (exclude or {}).items():
        if col in df.columns:
            df = df[~df[col].isin(value if isinstance(value, list) else [value])]
    return df


def _setting(row: dict, by: list[str], **extra) -> dict:
    """A measurement's setting from a group's keys: ``models``/``tasks`` lists, ``shots``, the rest as detail."""
    setting = {"models": [], "tasks": [], "shots": None, "detail": {}}
    for key, value in zip(by, row) if not isinstance(row, dict) else row.items():
        if key in ("model", "source_model", "target_model"):
            setting["models"].append(str(value))
        elif key in ("task", "target_task", "source_task"):
            setting["tasks"].append(str(value))
        elif key == "shots":
            setting["shots"] = int(value)
        else:
            setting["detail"][key] = value
    setting["detail"].update(extra)
    return setting


# --- prompt transferability --------------------------------------------------------------------------

def kind_gap(ctx: Context, performance: str = "transfer_gain") -> list[Measurement]:
    """Zero-shot transfer, per model: mean ``performance`` of same-kind (source, target) pairs minus
    that of other-kind pairs (tasks.<name>.kind; pairs with an unknown kind are left out). One seed:
    a Welch interval over the pairs."""
    zs = ctx.table("transfer_zero_shot")
    if zs is None or performance not in zs.columns:
        return []
    zs = zs[(zs["source_task"] != zs["target_task"]) & (zs["source_task"] != "random")]
    src, tgt = zs["source_task"].map(ctx.kind), zs["target_task"].map(ctx.kind)
    zs = zs.assign(same=src == tgt)[src.notna() & tgt.notna()]
    out = []
    for model, g in zs.groupby("model"):
        if g["same"].all() or not g["same"].any():
            continue
        per_seed, last = {}, None
        for seed, s in g.groupby("seed"):
            a, b = s.loc[s["same"], performance].dropna(), s.loc[~s["same"], performance].dropna()
            if len(a) and len(b):
                per_seed[int(seed)] = float(a.mean() - b.mean())
                last = (a, b)
        se = df = None
        if len(per_seed) == 1 and min(len(last[0]), len(last[1])) >= 2:
            va, vb = last[0].var(ddof=1) / len(last[0]), last[1].var(ddof=1) / len(last[1])
            se = math.sqrt(va + vb)
            df = (va + vb) ** 2 / (va ** 2 / (len(last[0]) - 1) + vb ** 2 / (len(last[1]) - 1)) if va + vb > 0 else None
        pairs = f"{int(g['same'].sum())} same-kind and {int((~g['same']).sum())} other-kind pairs"
        out.append(Measurement(
            setting=_setting({"model": model}, [], performance=performance),
            per_seed=per_seed, se=se, se_df=df, se_basis=f"Welch t over pairs ({pairs} in the seed)",
            note=pairs + " (all seeds)"))
        out[-1].setting["tasks"] = sorted(set(g["source_task"]) | set(g["target_task"]))
    return out


def _auc_se(auc: float, random_auc: float, n_dev: int | None) -> float | None:
    """Sampling error of ``auc / random_auc`` with both AUCs taken as accuracies on the dev set."""
    se = binomial_se(auc, random_auc, n_dev)
    return se / random_auc if se is not None and random_auc > 0 else None


def tpt_auc(ctx: Context, relation: str = "same") -> list[Measurement]:
    """Transfer as initialization: the AUC ratio (transferred-init run / random-init run) per (model,
    source, target) whose task kinds are the ``same`` (or ``other``)."""
    ti = ctx.table("transfer_init")
    if ti is None:
        return []
    out = []
    for (model, source, target), g in ti.groupby(["model", "source_task", "target_task"]):
        ks, kt = ctx.kind(source), ctx.kind(target)
        if ks is None or kt is None or (ks == kt) != (relation == "same"):
            continue
        first = g.iloc[0]
        out.append(Measurement(
            setting=_setting({"model": model, "source_task": source, "target_task": target}, []),
            per_seed=_seeded(g, "auc_ratio"), se=_auc_se(first["auc"], first["random_auc"], ctx.n(target, "dev")),
            se_basis=f"dev-set binomial of both AUCs, n={ctx.n(target, 'dev')}"))
    return out


def correlation(ctx: Context, indicator: str = "on", layers: str = "all",
                performance: str = "relative_score") -> list[Measurement]:
    """Spearman's rho of an indicator with zero-shot transfer per model, with the table's bootstrap
    interval over seeds and pairs."""
    ic = ctx.table("indicator_correlation")
    if ic is None:
        return []
    rows = ic[(ic["indicator"] == indicator) & (ic["layers"] == layers) & (ic["performance"] == performance)]
    zs = ctx.table("transfer_zero_shot")
    out = []
    for _, r in rows.iterrows():
        tasks = sorted(set(zs.loc[zs["model"] == r["model"], "target_task"])) if zs is not None else []
        out.append(Measurement(
            setting=_setting({"model": r["model"]}, [], indicator=indicator, layers=layers, performance=performance),
            point=float(r["spearman"]), interval=(float(r["ci_low"]), float(r["ci_high"])),
            interval_basis="95% percentile bootstrap over seeds, then pairs (the correlation table's)",
            n_seeds=int(r["n_seeds"]), note=f"{int(r['n_pairs'])} pairs"))
        out[-1].setting["tasks"] = tasks
    return out


def indicator_margin(ctx: Context, indicator: str = "on", layers: str = "all", rivals: list | None = None,
                     rival_layers: str = "input", performance: str = "relative_score",
                     n_boot: int = 1000) -> list[Measurement]:
    """Per model: rho(indicator) minus the largest rho among the ``rivals`` (the embedding indicators),
    with a paired bootstrap interval of that difference over seeds, then pairs."""
    from ..stats import bootstrap_spearman_difference
    from ..transferability.config import EMBEDDING_INDICATORS
    from ..transferability.report import merge_transfer, spearman

    ind, zs = ctx.table("indicators"), ctx.table("transfer_zero_shot")
    if ind is None or zs is None or performance not in zs.columns:
        return []
    rivals = list(rivals or EMBEDDING_INDICATORS)
    merged = merge_transfer(ind, zs)
    keys = ["model", "seed", "source_task", "target_task"]
    out = []
    for model, g in merged.groupby("model"):
        wide = g.pivot_table(index=keys[1:], columns=["indicator", "layers"], values="value", aggfunc="first")
        perf = g.groupby(keys[1:])[performance].first().reindex(wide.index)
        if (indicator, layers) not in wide.columns:
            continue
        present = [r for r in rivals if (r, rival_layers) in wide.columns]
        if not present:
            continue
        rho = {r: spearman(wide[(r, rival_layers)], perf)[0] for r in present}
        best = max(present, key=lambda r: -math.inf if math.isnan(rho[r]) else rho[r])
        own = spearman(wide[(indicator, layers)], perf)[0]
        seeds = wide.index.get_level_values("seed")
        lo, hi = bootstrap_spearman_difference(wide[(indicator, layers)], wide[(best, rival_layers)], perf,
                                               groups=seeds, n_boot=n_boot)
        out.append(Measurement(
            setting=_setting({"model": model}, [], performance=performance, best_rival=best),
            point=own - rho[best], interval=(lo, hi), n_seeds=int(pd.Series(seeds).nunique()),
            interval_basis="95% paired percentile bootstrap over seeds, then pairs",
            note=f"rho {indicator} {own:.2f} vs {best} {rho[best]:.2f}"))
        out[-1].setting["tasks"] = sorted(set(g["target_task"]))
    return out


def projected_vs_random(ctx: Context) -> list[Measurement]:
    """Cross-model projector, per (pair, objective, target task): the projected prompt's zero-shot
    test score minus the random prompts' score on the target model (points); needs the target model
    and task in the zero-shot transfer grid."""
    cm, zs = ctx.table("cross_model"), ctx.table("transfer_zero_shot")
    if cm is None or zs is None:
        return []
    floor = zs[zs["source_task"] == "random"].groupby(["model", "target_task"])["score"].mean()
    out = []
    for (pair, objective, target), g in cm.groupby(["pair", "objective", "target_task"]):
        model = g["target_model"].iloc[0]
        if (model, target) not in floor.index:
            continue
        f = float(floor[(model, target)])
        per_seed = {int(s): 100 * (float(v) - f) for s, v in zip(g["seed"], g["zero_shot_score"])}
        n = int(g["n_test"].iloc[0])
        se = binomial_se(float(g["zero_shot_score"].iloc[0]), f, n)
        out.append(Measurement(
            setting=_setting({"source_model": g["source_model"].iloc[0], "target_model": model,
                              "target_task": target}, [], objective=objective),
            per_seed=per_seed, se=None if se is None else 100 * se, se_basis=f"test-set binomial, n={n}", n_test=n))
    return out


def projected_tpt_auc(ctx: Context) -> list[Measurement]:
    """Projected prompts as initialization: AUC ratio per (pair, objective, target task)."""
    cm = ctx.table("cross_model")
    if cm is None or "auc_ratio" not in cm.columns:
        return []
    out = []
    for (pair, objective, target), g in cm[cm["auc_ratio"].notna()].groupby(["pair", "objective", "target_task"]):
        first = g.iloc[0]
        out.append(Measurement(
            setting=_setting({"source_model": first["source_model"], "target_model": first["target_model"],
                              "target_task": target}, [], objective=objective),
            per_seed=_seeded(g, "auc_ratio"), se=_auc_se(first["init_auc"], first["random_auc"], ctx.n(target, "dev")),
            se_basis=f"dev-set binomial of both AUCs, n={ctx.n(target, 'dev')}"))
    return out


# --- generic: differences and ratios between methods of one table ---------------------------------------

def _differences(g: pd.DataFrame, column: str, methods, b: str, percent: bool, n_test: int | None) -> list[dict]:
    """score(method) - score(b) per seed for each of ``methods`` present in ``g`` (column ``_score``):
    ``[{method, per_seed, se, n}]`` in points; ``se`` from the first common seed's two scores."""
    scale = 1.0 if percent else 100.0
    ref = g[g[column] == b].set_index("seed")["_score"]
    out = []
    for method in [methods] if isinstance(methods, str) else methods:
        mine = g[g[column] == method].set_index("seed")
        common = [s for s in mine.index if s in ref.index and pd.notna(mine.at[s, "_score"]) and pd.notna(ref[s])]
        if not common:
            continue
        n = n_test
        if "n_test" in mine.columns and pd.notna(mine["n_test"].iloc[0]):
            n = int(mine["n_test"].iloc[0])
        to_share = 0.01 if percent else 1.0  # scores as proportions for the binomial error
        se = binomial_se(to_share * float(mine.at[common[0], "_score"]), to_share * float(ref[common[0]]), n)
        out.append({"method": method, "n": n, "se": None if se is None else 100 * se,
                    "per_seed": {int(s): scale * (float(mine.at[s, "_score"]) - float(ref[s])) for s in common}})
    return out


def _scored_groups(ctx: Context, table: str, by: list, column: str, score, where: dict | None,
                   exclude: dict | None):
    """``(key, rows, n_test)`` per group of ``by`` of ``table``'s rows kept by ``where``/``exclude``,
    with the score in ``_score`` and the task's test size (None without a task column); nothing when
    the table or its method ``column`` is missing."""
    df = ctx.table(table)
    if df is None or column not in df.columns:
        return
    df = _filter(df, where, exclude)
    df = df.assign(_score=_scores(df, score))
    for key, g in df.groupby(by, dropna=False) if by else [((), df)]:
        key = key if isinstance(key, tuple) else (key,)
        task = dict(zip(by, key)).get("task")
        yield key, g, ctx.n(task) if task else None


def paired_difference(ctx: Context, table: str, by: list, column: str, a, b: str, score="score",
                      percent: bool = False, where: dict | None = None, exclude: dict | None = None) -> list[Measurement]:
    """Per group of ``by`` and per method ``a`` (a name or a list): score(a) - score(b) within each
    seed, in points (``percent``: the table's scores are already in points). One seed: test-set
    binomial error from the table's ``n_test`` or the task's test split."""
    out = []
    for key, g, n_test in _scored_groups(ctx, table, by, column, score, where, exclude):
        for d in _differences(g, column, a, b, percent, n_test):
            out.append(Measurement(setting=_setting(key, by, **{column: f"{d['method']} vs {b}"}),
                                   per_seed=d["per_seed"], se=d["se"], se_basis=f"test-set binomial, n={d['n']}",
                                   n_test=d["n"]))
    return out


def ratio(ctx: Context, table: str, by: list, column: str, methods: list, value: str,
          exact: bool = False) -> list[Measurement]:
    """Per group of ``by`` and per method: the table's ratio column ``value`` (e.g. FLOPs vs PT) per
    seed; ``exact``: a counted quantity, no interval needed."""
    df = ctx.table(table)
    if df is None or value not in df.columns:
        return []
    out = []
    for key, g in df[df[column].isin(methods)].groupby(by + [column]):
        out.append(Measurement(setting=_setting(key[:-1], by, **{column: key[-1]}), per_seed=_seeded(g, value),
                               exact=exact))
    return out


def largest_drop(ctx: Context, table: str, by: list, column: str, target: str, rivals: list, score="score",
                 percent: bool = False, where: dict | None = None) -> list[Measurement]:
    """"Removing ``target`` costs the most": per group, score(rival) - score(target) for the rival
    ablation closest to the target (smallest mean difference), in points; > 0 when the target
    ablation scores lowest. Needs the target and at least one rival in the group."""
    out = []
    for key, g, n_test in _scored_groups(ctx, table, by, column, score, where, None):
        diffs = _differences(g, column, rivals, target, percent, n_test)
        if not diffs:
            continue
        d = min(diffs, key=lambda d: np.mean(list(d["per_seed"].values())))
        out.append(Measurement(setting=_setting(key, by, **{column: f"{target} vs closest rival {d['method']}"}),
                               per_seed=d["per_seed"], se=d["se"], se_basis=f"test-set binomial, n={d['n']}",
                               n_test=d["n"], note=f"rivals present: {', '.join(x['method'] for x in diffs)}"))
    return out


# --- DynSAN efficiency ----------------------------------------------------------------------------------

def growth_exponent_gap(ctx: Context, value: str = "peak_memory_mb", gated: str = "gated",
                        full: str = "all") -> list[Measurement]:
    """The growth exponent (log-log slope against sequence length) of ``value`` for full attention
    minus that of gated selection, with a t interval from the two OLS slopes' standard errors."""
    from scipy.stats import t as student_t

    from ..stats import loglog_slope

    eff = ctx.table("dynsan_efficiency")
    if eff is None or value not in eff.columns:
        return []
    fits = {}
    for variant in (gated, full):
        part = eff[eff["variant"] == variant]
        if len(part):
            fits[variant] = loglog_slope(part["sequence_length"], part[value])
    if len(fits) < 2:
        return []
    (sg, eg, ng), (sf, ef, nf) = fits[gated], fits[full]
    dof = min(ng, nf) - 2
    half = float(student_t.ppf(0.975, dof)) * math.hypot(eg, ef) if dof >= 1 and np.isfinite(eg + ef) else math.nan
    gap = sf - sg
    lengths = sorted(int(v) for v in eff["sequence_length"].unique())
    return [Measurement(setting=_setting({}, [], value=value, lengths=f"{lengths[0]}..{lengths[-1]}"), point=gap,
                        interval=(gap - half, gap + half), n_seeds=1,
                        interval_basis=f"95% t from the OLS slopes' errors ({min(ng, nf)} lengths)",
                        note=f"exponent {full} {sf:.2f}, {gated} {sg:.2f}")]


MEASURES = {f.__name__: f for f in (kind_gap, tpt_auc, correlation, indicator_margin, projected_vs_random,
                                    projected_tpt_auc, paired_difference, ratio, largest_drop, growth_exponent_gap)}
