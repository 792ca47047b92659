"""Statistics of a benchmark: summaries over subjects and seeds, and paired tests against a reference.

Input: a tidy table with columns model, seed, subject, region, metric, value (and optionally fold
and convention), as :mod:`sgnet_lightning.analysis.results` gathers it or another tool writes it:
one row per model x seed x fold x subject x region x metric. Every test is run separately for each
metric x region.

What is computed, and why this way:

- **Subject values** are the mean over a model's seeds (and folds) of one subject's value: the subject
  is the unit of sampling, seeds are repeated measurements of it. ``mean``/``sd`` (ddof 1) and the
  bootstrap CI are over these subject values.
- **Seed spread**: each run's (seed's, within one fold) mean over subjects; ``seed_sd`` is the SD
  (ddof 1) over seeds computed within each fold, then pooled over folds (square root of the
  degrees-of-freedom-weighted mean of the per-fold variances); ``seed_mean`` is the mean of the run
  means. Per fold, because a seed's runs on different folds are different trainings: averaging
  them first would shrink (or, where folds differ in level and a seed misses one, inflate) the
  noise of a single training run. This is the run-to-run noise that identical training runs show
  (nnU-Net reports up to ~2 Dice points); a difference smaller than it is not worth a claim.
- **CI**: 95 % percentile bootstrap of the mean, resampling subjects (``scipy.stats.bootstrap``,
  ``method="percentile"``, seeded). Percentile rather than BCa because BCa is undefined for
  degenerate samples (all Dice equal, n = 2), which a benchmark does produce.
- **Direction**: from :data:`sgnet_lightning.evaluation.METRICS`. Descriptive metrics there (None):
  volumes (``volume_*``), which say how much was segmented, not how well, and SG-Net's gate open
  fractions (``gate_open_fraction_<level>``), which say what the gates let through: they get no
  direction (``higher_is_better`` empty), no effect size and no Holm family, so no better/worse
  claim; their tests and summaries stay descriptive.
- **Tests against the reference**, paired by subject on subject values (subjects both models have):
  Wilcoxon signed-rank (``scipy.stats.wilcoxon``, two-sided, ``zero_method="pratt"``: zero
  differences take part in the ranking and are then dropped, which is more conservative than
  dropping them first when integer metrics such as lesion counts tie often). scipy picks the
  method: the exact distribution for n <= 50 pairs without ties or zeros, an exact enumeration of
  all sign flips for n <= 13 with ties or zeros, and the normal approximation otherwise (n > 50, or
  ties/zeros with 13 < n <= 50). ``correction=True`` applies the continuity correction (0.5 towards
  the mean of the rank sum) on that normal-approximation path only; the exact paths are discrete
  already and ignore it. Applied because the uncorrected approximation of this discrete statistic
  falls below the exact p-value more often (anti-conservative; ``tests/test_stats.py`` measures it),
  and because it is the default of R's ``wilcox.test``, so a reviewer recomputing a p-value there gets
  the same number. The paired t-test (``scipy.stats.ttest_rel``) is reported beside it.
- **Holm families**: the benchmark's *primary endpoint* (one metric x region, by default Dice of the
  task's main region, see :func:`primary_endpoint`) is one family: Holm's step-down over the models
  compared with the reference on it. Every other directed metric x region forms the *secondary*
  family, one Holm correction over all of their comparisons together. Primary rows come first.
- **Effect size**: matched-pairs rank-biserial correlation (Kerby 2014) of the paired differences,
  zero differences dropped: ``(R+ - R-) / (R+ + R-)`` with ``R+`` the rank sum of differences in the
  model's favour. Signed so that a POSITIVE value means the model is BETTER than the reference
  (differences of lower-is-better metrics such as HD95 are negated first). Range -1 .. 1.
- **Friedman** test across all models on the subjects every model has (``scipy.stats.friedmanchisquare``,
  three or more models).
- ``exceeds_seed_spread``: ``|mean_diff| > max(seed_sd of the model, seed_sd of the reference)``,
  i.e. the paired mean difference exceeds the seed-to-seed SD of both models; undefined (empty) when
  either has fewer than two seeds in every fold.

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

from sgnet_lightning.analysis.results import check_metric_names
from sgnet_lightning.files import atomic_write_json, atomic_write_text
from sgnet_lightning.data.labels import get_task
from sgnet_lightning.errors import ConfigError, DataError
from sgnet_lightning.evaluation import METRICS, higher_is_better
from sgnet_lightning.runs import BENCHMARK_FILE

ZERO_METHOD = "pratt"
# continuity correction on scipy's normal-approximation path (module docstring)
WILCOXON_CORRECTION = True
CONFIDENCE_LEVEL = 0.95
DIFFERENCE_DECIMALS = 12
SEED_SPREAD_RULE = "|mean_diff| > max(seed_sd of model, seed_sd of reference)"
# the key of benchmark.json (and of the benchmark YAML) that declares the primary endpoint
PRIMARY_ENDPOINT_KEY = "primary_endpoint"
PRIMARY, SECONDARY = "primary", "secondary"

# Written into stats.json so the numbers can be read without this module at hand.
METHODS = {
    "subject_value": "mean over the model's seeds and folds of the subject's value",
    "sd": "sample SD (ddof 1) over subjects",
    "seed_sd": "sample SD (ddof 1) over seeds of each run's mean over subjects, within each fold, pooled over "
               "folds (square root of the df-weighted mean variance)",
    "ci": f"{CONFIDENCE_LEVEL:.0%} percentile bootstrap of the mean over subjects (scipy.stats.bootstrap)",
    "wilcoxon": f"scipy.stats.wilcoxon, two-sided, paired by subject, zero_method={ZERO_METHOD!r}, "
                f"correction={WILCOXON_CORRECTION} (continuity correction on the normal approximation only)",
    "wilcoxon_p_holm": "Holm step-down within the family: primary = the models compared with the reference on "
                       "the primary endpoint; secondary = every other directed metric x region, together",
    "higher_is_better": "metric direction; empty for descriptive metrics, volumes and gate open fractions "
                        "(no effect size, no Holm family)",
    "effect_size": "matched-pairs rank-biserial correlation, zeros dropped; positive = model better",
    "ttest": "scipy.stats.ttest_rel, paired by subject",
    "friedman": "scipy.stats.friedmanchisquare over subjects that every model has",
    "exceeds_seed_spread": SEED_SPREAD_RULE,
    "pairwise": "Wilcoxon p (as above) for every pair of models, Holm over all pairs",
}

STATS_COLUMNS = [
    "metric", "region", "model", "reference", "higher_is_better", "family",
    "n_subjects", "n_seeds", "n_folds", "mean", "sd", "ci_low", "ci_high", "seed_mean", "seed_sd",
    "n_pairs", "mean_diff", "wilcoxon_p", "wilcoxon_p_holm", "effect_size", "ttest_p",
    "friedman_stat", "friedman_p", "friedman_n_subjects", "exceeds_seed_spread", "note",
]  # fmt: skip


def metric_direction(metric: str) -> bool | None:
    """True where higher is better, False where lower is, None for a descriptive metric (a volume
    ``volume_*``, a gate open fraction). Unknown names raise :class:`ConfigError` naming the known ones."""
    check_metric_names([metric], "the results")
    return higher_is_better(metric)


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
    """Each run's (seed's, within one fold) mean over subjects per model x metric x region.

    Returns columns metric, region, model, fold (<NA> without folds), seed, value.
    """
    values = df.dropna(subset=["value"])
    if "fold" not in values.columns:
        values = values.assign(fold=pd.NA)
    return values.groupby(["metric", "region", "model", "fold", "seed"], sort=False, as_index=False,
                          dropna=False)["value"].mean()  # fmt: skip


def seed_spread(runs: pd.DataFrame) -> dict:
    """Seed spread of one model x metric x region from its :func:`seed_means` rows.

    Returns dict with seed_mean (mean of the run means), seed_sd (within-fold SD over seeds, pooled
    over folds with >= 2 seeds: sqrt(sum((n_f - 1) var_f) / sum(n_f - 1)); NaN when no fold has
    two seeds), n_seeds (distinct seeds) and n_folds (distinct folds; 0 without folds).
    """
    out = {"seed_mean": runs["value"].mean() if len(runs) else np.nan, "seed_sd": np.nan,
           "n_seeds": int(runs["seed"].nunique()), "n_folds": int(runs["fold"].nunique())}  # fmt: skip
    per_fold = runs.groupby("fold", dropna=False)["value"].agg(["var", "count"])
    per_fold = per_fold[per_fold["count"] > 1]
    if not per_fold.empty:
        dof = per_fold["count"] - 1
        out["seed_sd"] = float(np.sqrt((dof * per_fold["var"]).sum() / dof.sum()))
    return out


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


def wilcoxon_p(differences) -> float:
    """Two-sided Wilcoxon signed-rank p of paired differences, as the module docstring says."""
    return float(scipy_stats.wilcoxon(differences, zero_method=ZERO_METHOD, correction=WILCOXON_CORRECTION).pvalue)


def paired_comparison(model_values: pd.Series, reference_values: pd.Series, better_high: bool | None) -> dict:
    """Paired tests of one model against the reference on one metric x region.

    Args:
        model_values, reference_values: subject values indexed by subject; only subjects in both
            are compared.
        better_high: the metric's direction (sets the sign of the effect size); None for a
            descriptive metric (no effect size).

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
    out["wilcoxon_p"] = wilcoxon_p(diff)
    if better_high is not None:
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


def primary_endpoint(
    results_path: str | os.PathLike | None = None, override: str | None = None
) -> tuple[str, str] | None:
    """The primary endpoint ``(metric, region)`` of a benchmark, or None to let
    :func:`compute_stats` take its default (Dice of WT).

    In order: ``override`` (``"dice:WT"``, the ``--primary`` flag); ``primary_endpoint``
    (``{"metric": ..., "region": ...}``) in the ``benchmark.json`` of the benchmark folder
    ``results_path`` (or of the folder holding the results CSV ``results_path``); Dice of the main
    region of the task that ``benchmark.json`` names.
    """
    if override is not None:
        metric, sep, region = override.partition(":")
        if not (sep and metric and region):
            raise ConfigError(f"--primary {override!r}: expected METRIC:REGION, e.g. dice:WT")
        return metric, region
    if results_path is None:
        return None
    path = Path(results_path)
    info_path = (path if path.is_dir() else path.parent) / BENCHMARK_FILE
    if not info_path.is_file():
        return None
    try:
        info = json.loads(info_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError("?", info_path, f"cannot be read ({err})") from None
    declared = info.get(PRIMARY_ENDPOINT_KEY)
    if declared is not None:
        if not (isinstance(declared, dict) and set(declared) == {"metric", "region"}):
            raise ConfigError(
                f"{info_path}: {PRIMARY_ENDPOINT_KEY} must be {{metric: ..., region: ...}}; got {declared!r}"
            )
        return str(declared["metric"]), str(declared["region"])
    if info.get("dataset"):
        try:
            return "dice", get_task(info["dataset"], info.get("task")).main_region
        except ValueError as err:
            raise ConfigError(f"{info_path}: {err}") from None
    return None


def _resolve_primary(df: pd.DataFrame, primary: tuple[str, str] | None) -> tuple[str, str] | None:
    """The checked primary endpoint; the default Dice of WT where none is given (None when the
    results have no Dice of WT: every directed comparison is then secondary)."""
    blocks = set(df[["metric", "region"]].drop_duplicates().itertuples(index=False, name=None))
    if primary is None:
        return ("dice", "WT") if ("dice", "WT") in blocks else None
    if tuple(primary) not in blocks:
        known = ", ".join(f"{m}:{r}" for m, r in sorted(blocks))
        raise ConfigError(f"primary endpoint {primary[0]}:{primary[1]} has no results; the results hold {known}")
    if metric_direction(primary[0]) is None:
        raise ConfigError(f"primary endpoint {primary[0]}: a descriptive metric (volume, gate open "
                          "fraction) has no better or worse, so it cannot be one")
    return tuple(primary)


def compute_stats(
    df: pd.DataFrame,
    reference: str,
    n_bootstrap: int = 10_000,
    seed: int = 0,
    primary: tuple[str, str] | None = None,
) -> pd.DataFrame:
    """Summary and comparison statistics for every metric x region x model (see module docstring).

    Args:
        df: tidy results (columns model, seed, subject, region, metric, value; fold and convention
            optional).
        reference: the model every other model is compared with.
        n_bootstrap: bootstrap resamples for the CI.
        seed: seed of the bootstrap (the same for every row, so a rerun gives the same CIs).
        primary: the primary endpoint ``(metric, region)``; None: Dice of WT where the results
            have it, else none (every directed comparison is then secondary). See
            :func:`primary_endpoint` for a benchmark's own.

    Returns:
        One row per metric x region x model with :data:`STATS_COLUMNS`: the primary endpoint's block
        first, then the others in :data:`METRICS` order; the reference comes first in each block.
        ``attrs["settings"]`` records reference, n_bootstrap, seed and the primary endpoint.

    Raises:
        ConfigError: unknown metric names, an unknown reference, or a primary endpoint without results.
    """
    check_metric_names(df["metric"].unique(), "the results")
    models = _model_order(df, reference)
    primary = _resolve_primary(df, primary)
    metric_rank = {m: i for i, m in enumerate(METRICS)}
    blocks = sorted(
        df[["metric", "region"]].drop_duplicates().itertuples(index=False),
        key=lambda b: ((b.metric, b.region) != primary, metric_rank[b.metric], b.region),
    )
    rows = []
    for metric, region in blocks:
        better_high = metric_direction(metric)
        family = "" if better_high is None else PRIMARY if (metric, region) == primary else SECONDARY
        block = df[(df["metric"] == metric) & (df["region"] == region)]
        subjects = subject_values(block).groupby("model")
        runs = seed_means(block).groupby("model")
        fried = friedman(block, metric, region)
        summaries = {}
        for model in models:
            empty = pd.Series(dtype=float)
            values = subjects.get_group(model).set_index("subject")["value"] if model in subjects.groups else empty
            spread = seed_spread(runs.get_group(model) if model in runs.groups
                                 else pd.DataFrame(columns=["fold", "seed", "value"]))  # fmt: skip
            notes = []
            n_nan = int(block.loc[block["model"] == model, "value"].isna().sum())
            if n_nan:
                notes.append(f"{n_nan} missing (NaN) value(s) left out")
            if len(values) < 2:
                notes.append(f"{len(values)} subject(s): SD and CI need 2 or more")
            if not np.isfinite(spread["seed_sd"]):
                notes.append(f"{spread['n_seeds']} seed(s): seed_sd needs 2 or more in a fold")
            if better_high is None:
                kind = "a volume" if metric.startswith("volume_") else "a gate open fraction"
                notes.append(f"descriptive ({kind}): no better/worse direction, no effect size or Holm family")
            ci_low, ci_high = bootstrap_ci(values.to_numpy(), n_bootstrap, seed)
            summaries[model] = values
            rows.append({
                "metric": metric, "region": region, "model": model, "reference": reference,
                "higher_is_better": better_high, "family": family,
                "n_subjects": len(values), "n_seeds": spread["n_seeds"], "n_folds": spread["n_folds"],
                "mean": values.mean() if len(values) else np.nan,
                "sd": values.std(ddof=1) if len(values) > 1 else np.nan,
                "ci_low": ci_low, "ci_high": ci_high,
                "seed_mean": spread["seed_mean"], "seed_sd": spread["seed_sd"],
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
    for family in (PRIMARY, SECONDARY):
        members = [r for r in rows if r["family"] == family and r["model"] != reference]
        for row, p_holm in zip(members, holm([r["wilcoxon_p"] for r in members])):
            row["wilcoxon_p_holm"] = p_holm
    table = pd.DataFrame(rows)
    table["note"] = table.pop("notes").map("; ".join)
    table = table.reindex(columns=STATS_COLUMNS)
    for col in ("exceeds_seed_spread", "higher_is_better"):
        table[col] = table[col].astype(object).where(table[col].notna(), None)
    for col in ("n_subjects", "n_seeds", "n_folds", "friedman_n_subjects"):
        table[col] = table[col].astype(int)
    table["n_pairs"] = table["n_pairs"].astype("Int64")
    table.attrs["settings"] = {"reference": reference, "n_bootstrap": n_bootstrap, "seed": seed,
                               PRIMARY_ENDPOINT_KEY: dict(zip(("metric", "region"), primary)) if primary else None}
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
