"""Statistics of a benchmark: summaries over subjects and seeds, and paired tests against a reference.

Input: the tidy table of :mod:`sgnet_lightning.analysis.results` (one row per model x seed x fold x
subject x region x metric). Every test is run separately for each metric x region.

What is computed, and why this way:

- **Subject values** are the mean over a model's seeds (and folds) of one subject's value: the subject
  is the unit of sampling, seeds are repeated measurements of it. ``mean``/``sd`` (ddof 1) and the
  bootstrap CI are over these subject values.
- **Seed spread**: each seed's mean over subjects; ``seed_mean``/``seed_sd`` (ddof 1) are over seeds.
  This is the run-to-run noise that identical training runs show (nnU-Net reports up to ~2 Dice
  points); a difference smaller than it is not worth a claim.
- **CI**: 95 % percentile bootstrap of the mean, resampling subjects (``scipy.stats.bootstrap``,
  ``method="percentile"``, seeded). Percentile rather than BCa because BCa is undefined for
  degenerate samples (all Dice equal, n = 2), which a benchmark does produce.
- **Tests against the reference**, paired by subject on subject values (subjects both models have):
  Wilcoxon signed-rank (``scipy.stats.wilcoxon``, two-sided, ``zero_method="pratt"``: zero
  differences take part in the ranking and are then dropped, which is more conservative than
  dropping them first when integer metrics such as lesion counts tie often; scipy picks an exact
  distribution, an exact permutation over all sign flips for n <= 13 with ties or zeros, or the
  normal approximation with continuity correction above that); the paired t-test
  (``scipy.stats.ttest_rel``) beside it; Holm's step-down correction over the models compared with
  the reference (one family per metric x region).
- **Effect size**: matched-pairs rank-biserial correlation (Kerby 2014) of the paired differences,
  zero differences dropped: ``(R+ - R-) / (R+ + R-)`` with ``R+`` the rank sum of differences in the
  model's favour. Signed so that a POSITIVE value means the model is BETTER than the reference
  (differences of lower-is-better metrics such as HD95 are negated first). Range -1 .. 1.
- **Friedman** test across all models on the subjects every model has (``scipy.stats.friedmanchisquare``,
  three or more models).
- ``exceeds_seed_spread``: ``|mean_diff| > max(seed_sd of the model, seed_sd of the reference)``,
  i.e. the paired mean difference exceeds the seed-to-seed SD of both models; undefined (empty) when
  either has fewer than two seeds.

Degenerate cases (one seed, fewer than two subjects or pairs, all differences zero, constant
differences) give NaN and say why in the ``note`` column; nothing raises.
"""

from __future__ import annotations

import io
import itertools
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from sgnet_lightning.data.cache import atomic_write_json, atomic_write_text
from sgnet_lightning.errors import ConfigError
from sgnet_lightning.evaluation import METRICS, higher_is_better

ZERO_METHOD = "pratt"
CONFIDENCE_LEVEL = 0.95
DIFFERENCE_DECIMALS = 12
SEED_SPREAD_RULE = "|mean_diff| > max(seed_sd of model, seed_sd of reference)"

# Written into stats.json so the numbers can be read without this module at hand.
METHODS = {
    "subject_value": "mean over the model's seeds and folds of the subject's value",
    "sd": "sample SD (ddof 1) over subjects",
    "seed_sd": "sample SD (ddof 1) over seeds of each seed's mean over subjects",
    "ci": f"{CONFIDENCE_LEVEL:.0%} percentile bootstrap of the mean over subjects (scipy.stats.bootstrap)",
    "wilcoxon": f"scipy.stats.wilcoxon, two-sided, paired by subject, zero_method={ZERO_METHOD!r}",
    "wilcoxon_p_holm": "Holm step-down over the models compared with the reference, per metric x region",
    "effect_size": "matched-pairs rank-biserial correlation, zeros dropped; positive = model better",
    "ttest": "scipy.stats.ttest_rel, paired by subject",
    "friedman": "scipy.stats.friedmanchisquare over subjects that every model has",
    "exceeds_seed_spread": SEED_SPREAD_RULE,
    "pairwise": "Wilcoxon p (as above) for every pair of models, Holm over all pairs",
}

STATS_COLUMNS = [
    "metric", "region", "model", "reference", "higher_is_better",
    "n_subjects", "n_seeds", "mean", "sd", "ci_low", "ci_high", "seed_mean", "seed_sd",
    "n_pairs", "mean_diff", "wilcoxon_p", "wilcoxon_p_holm", "effect_size", "ttest_p",
    "friedman_stat", "friedman_p", "friedman_n_subjects", "exceeds_seed_spread", "note",
]  # fmt: skip


def subject_values(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds and folds of each model x metric x region x subject.

    Missing values (NaN) are left out of the mean; a subject with no value at all is dropped.
    Returns columns metric, region, model, subject, value.
    """
    values = df.dropna(subset=["value"])
    return values.groupby(["metric", "region", "model", "subject"], sort=False, as_index=False)[
        "value"
    ].mean()


def seed_means(df: pd.DataFrame) -> pd.DataFrame:
    """Each seed's mean over subjects (all folds pooled) per model x metric x region.

    Returns columns metric, region, model, seed, value.
    """
    values = df.dropna(subset=["value"])
    return values.groupby(["metric", "region", "model", "seed"], sort=False, as_index=False)[
        "value"
    ].mean()


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input order; NaN entries stay NaN and do not
    count towards the family size.

    scipy has no Holm correction (``false_discovery_control`` does BH/BY) and statsmodels is not a
    dependency, so it is written out: with the m defined p-values sorted ascending,
    ``p_adj(i) = max over j <= i of min(1, (m - j + 1) * p(j))`` (1-based ranks).
    """
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full_like(p, np.nan)
    defined = np.flatnonzero(~np.isnan(p))
    if defined.size == 0:
        return adjusted
    order = defined[np.argsort(p[defined], kind="stable")]
    m = order.size
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def rank_biserial(differences) -> float:
    """Matched-pairs rank-biserial correlation of paired differences (zeros dropped).

    ``(R+ - R-) / (R+ + R-)``, ranks of ``|d|`` with ties averaged. +1: every non-zero difference is
    positive; NaN when all differences are zero.
    """
    d = np.asarray(differences, dtype=float)
    d = d[d != 0]
    if d.size == 0:
        return float("nan")
    ranks = scipy_stats.rankdata(np.abs(d))
    return float((ranks[d > 0].sum() - ranks[d < 0].sum()) / ranks.sum())


def bootstrap_ci(values, n_bootstrap: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap CI of the mean of ``values`` (resampling them with replacement).

    Deterministic for a given ``seed``. (NaN, NaN) for fewer than two values.
    """
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return float("nan"), float("nan")
    result = scipy_stats.bootstrap(
        (x,),
        np.mean,
        n_resamples=n_bootstrap,
        confidence_level=CONFIDENCE_LEVEL,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_comparison(model_values: pd.Series, reference_values: pd.Series, better_high: bool) -> dict:
    """Paired tests of one model against the reference on one metric x region.

    Args:
        model_values, reference_values: subject values indexed by subject; only subjects in both
            are compared.
        better_high: the metric's direction (sets the sign of the effect size).

    Returns:
        dict with n_pairs, mean_diff (model - reference, raw units), wilcoxon_p, effect_size,
        ttest_p and notes (list of str explaining any NaN).
    """
    paired = pd.concat([model_values, reference_values], axis=1, join="inner").to_numpy(float)
    # Rounded so that floating-point noise from averaging seeds in a different order neither hides
    # a zero difference nor breaks a tie; 12 decimals is far below any metric's resolution.
    diff = np.round(paired[:, 0] - paired[:, 1], DIFFERENCE_DECIMALS)
    out = {
        "n_pairs": int(diff.size),
        "mean_diff": float(diff.mean()) if diff.size else float("nan"),
        "wilcoxon_p": float("nan"),
        "effect_size": float("nan"),
        "ttest_p": float("nan"),
        "notes": [],
    }
    if diff.size < 2:
        out["notes"].append(f"{diff.size} paired subject(s): tests need 2 or more")
        return out
    if np.all(diff == 0):
        out["notes"].append("all paired differences are zero: no test")
        return out
    out["wilcoxon_p"] = float(scipy_stats.wilcoxon(diff, zero_method=ZERO_METHOD).pvalue)
    out["effect_size"] = rank_biserial(diff if better_high else -diff)
    if np.all(diff == diff[0]):
        out["notes"].append("paired differences are all equal: t-test undefined")
    else:
        out["ttest_p"] = float(scipy_stats.ttest_rel(paired[:, 0], paired[:, 1]).pvalue)
    return out


def _subject_matrix(df: pd.DataFrame, metric: str, region: str) -> pd.DataFrame:
    """Subject values of one metric x region as a subject x model table (NaN where missing)."""
    values = subject_values(df[(df["metric"] == metric) & (df["region"] == region)])
    return values.pivot(index="subject", columns="model", values="value")


def friedman(df: pd.DataFrame, metric: str, region: str) -> dict:
    """Friedman test across all models of one metric x region on the subjects every model has.

    Returns dict with statistic, p, n_subjects, n_models and note ("" when the test ran).
    """
    matrix = _subject_matrix(df, metric, region).dropna()
    out = {"statistic": float("nan"), "p": float("nan"), "n_subjects": len(matrix),
           "n_models": matrix.shape[1], "note": ""}  # fmt: skip
    if matrix.shape[1] < 3:
        out["note"] = f"Friedman needs 3 or more models ({matrix.shape[1]} here)"
    elif len(matrix) < 2:
        out["note"] = f"Friedman needs 2 or more subjects common to all models ({len(matrix)} here)"
    elif (matrix.nunique(axis=1) == 1).all():
        out["note"] = "all models tie on every subject: Friedman undefined"
    else:
        result = scipy_stats.friedmanchisquare(*(matrix[c].to_numpy() for c in matrix.columns))
        out["statistic"], out["p"] = float(result.statistic), float(result.pvalue)
    return out


def pairwise_wilcoxon(df: pd.DataFrame, metric: str, region: str, models: list[str] | None = None) -> pd.DataFrame:
    """Holm-corrected two-sided Wilcoxon p of every pair of models (paired by subject) on one
    metric x region, as a symmetric model x model table (NaN on the diagonal and where undefined).
    The Holm family is all pairs."""
    matrix = _subject_matrix(df, metric, region)
    models = list(models) if models is not None else list(matrix.columns)
    pairs = list(itertools.combinations(models, 2))
    raw = [
        paired_comparison(matrix[a].dropna(), matrix[b].dropna(), True)["wilcoxon_p"]
        if a in matrix and b in matrix
        else float("nan")
        for a, b in pairs
    ]
    table = pd.DataFrame(np.nan, index=pd.Index(models, name="model"), columns=models)
    for (a, b), p in zip(pairs, holm(raw)):
        table.loc[a, b] = table.loc[b, a] = p
    return table


def _model_order(df: pd.DataFrame, reference: str) -> list[str]:
    models = list(dict.fromkeys(df["model"]))
    if reference not in models:
        raise ConfigError(f"reference model {reference!r} has no results; models: {', '.join(models)}")
    return [reference] + [m for m in models if m != reference]


def compute_stats(df: pd.DataFrame, reference: str, n_bootstrap: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """Summary and comparison statistics for every metric x region x model (see module docstring).

    Args:
        df: gathered results (columns model, seed, fold, subject, region, metric, value, convention).
        reference: the model every other model is compared with.
        n_bootstrap: bootstrap resamples for the CI.
        seed: seed of the bootstrap (the same for every row, so a rerun gives the same CIs).

    Returns:
        One row per metric x region x model with :data:`STATS_COLUMNS`; the reference comes first in
        each block. ``attrs["settings"]`` records reference, n_bootstrap and seed.
    """
    models = _model_order(df, reference)
    metric_rank = {m: i for i, m in enumerate(METRICS)}
    blocks = sorted(
        df[["metric", "region"]].drop_duplicates().itertuples(index=False),
        key=lambda b: (metric_rank.get(b.metric, len(metric_rank)), b.metric, b.region),
    )
    rows = []
    for metric, region in blocks:
        better_high = higher_is_better(metric)
        block = df[(df["metric"] == metric) & (df["region"] == region)]
        subjects = subject_values(block).groupby("model")
        per_seed = seed_means(block).groupby("model")
        fried = friedman(block, metric, region)
        summaries = {}
        for model in models:
            empty = pd.Series(dtype=float)
            values = subjects.get_group(model).set_index("subject")["value"] if model in subjects.groups else empty
            seeds = per_seed.get_group(model)["value"] if model in per_seed.groups else empty
            notes = []
            n_nan = int(block.loc[block["model"] == model, "value"].isna().sum())
            if n_nan:
                notes.append(f"{n_nan} missing (NaN) value(s) left out")
            if len(values) < 2:
                notes.append(f"{len(values)} subject(s): SD and CI need 2 or more")
            if len(seeds) < 2:
                notes.append(f"{len(seeds)} seed(s): seed_sd needs 2 or more")
            ci_low, ci_high = bootstrap_ci(values.to_numpy(), n_bootstrap, seed)
            summaries[model] = values
            rows.append({
                "metric": metric, "region": region, "model": model, "reference": reference,
                "higher_is_better": better_high,
                "n_subjects": len(values), "n_seeds": len(seeds),
                "mean": values.mean() if len(values) else np.nan,
                "sd": values.std(ddof=1) if len(values) > 1 else np.nan,
                "ci_low": ci_low, "ci_high": ci_high,
                "seed_mean": seeds.mean() if len(seeds) else np.nan,
                "seed_sd": seeds.std(ddof=1) if len(seeds) > 1 else np.nan,
                "friedman_stat": fried["statistic"], "friedman_p": fried["p"],
                "friedman_n_subjects": fried["n_subjects"],
                "notes": notes + ([fried["note"]] if fried["note"] else []),
            })  # fmt: skip
        block_rows = rows[-len(models):]
        ref_row = block_rows[0]
        ref_row["notes"].insert(0, "reference")
        for row in block_rows[1:]:
            comparison = paired_comparison(summaries[row["model"]], summaries[reference], better_high)
            if ref_row["n_subjects"] == 0:
                comparison["notes"] = ["reference has no values"]
            row["notes"] += comparison.pop("notes")
            row.update(comparison)
            spreads = [row["seed_sd"], ref_row["seed_sd"]]
            if np.all(np.isfinite(spreads + [row["mean_diff"]])):
                row["exceeds_seed_spread"] = bool(abs(row["mean_diff"]) > max(spreads))
            else:
                row["exceeds_seed_spread"] = None
        for row, p_holm in zip(block_rows[1:], holm([r["wilcoxon_p"] for r in block_rows[1:]])):
            row["wilcoxon_p_holm"] = p_holm
    table = pd.DataFrame(rows)
    table["note"] = table.pop("notes").map("; ".join)
    table = table.reindex(columns=STATS_COLUMNS)
    table["exceeds_seed_spread"] = table["exceeds_seed_spread"].astype(object).where(
        table["exceeds_seed_spread"].notna(), None
    )
    for col in ("n_subjects", "n_seeds", "friedman_n_subjects"):
        table[col] = table[col].astype(int)
    table["n_pairs"] = table["n_pairs"].astype("Int64")
    table.attrs["settings"] = {"reference": reference, "n_bootstrap": n_bootstrap, "seed": seed}
    return table


def write_stats(
    stats_df: pd.DataFrame,
    out_dir: str | os.PathLike,
    pairwise: dict[tuple[str, str], pd.DataFrame] | None = None,
) -> tuple[Path, Path]:
    """Write ``stats.csv`` and ``stats.json`` into ``out_dir`` atomically.

    ``stats.json`` holds ``methods`` (how each column was computed), ``settings`` (reference,
    n_bootstrap, seed), ``rows`` (the table, NaN as null) and ``pairwise``: for each (metric, region)
    of ``pairwise`` the model order and the Holm-corrected p matrix. Each pairwise matrix is also
    written as ``pairwise_<metric>_<region>.csv``.

    Returns:
        (csv path, json path)
    """
    out_dir = Path(out_dir)
    csv_path, json_path = out_dir / "stats.csv", out_dir / "stats.json"
    buffer = io.StringIO()
    stats_df.to_csv(buffer, index=False)
    atomic_write_text(csv_path, buffer.getvalue())
    pairwise_json = []
    for (metric, region), matrix in (pairwise or {}).items():
        buffer = io.StringIO()
        matrix.to_csv(buffer)
        atomic_write_text(out_dir / f"pairwise_{metric}_{region}.csv", buffer.getvalue())
        pairwise_json.append({
            "metric": metric, "region": region, "models": list(matrix.columns),
            "p_holm": json.loads(matrix.to_json(orient="values")),
        })  # fmt: skip
    atomic_write_json(json_path, {
        "methods": METHODS,
        "settings": stats_df.attrs.get("settings", {}),
        "rows": json.loads(stats_df.to_json(orient="records")),
        "pairwise": pairwise_json,
    })  # fmt: skip
    return csv_path, json_path
