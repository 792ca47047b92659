"""``sgnet report``: one HTML file and its Markdown twin, built only from a benchmark folder.

Everything shown is computed here from what the benchmark folder holds (and the cache it names):
the per-subject ``results.csv`` of every complete run (gathered), ``run.json`` (parameters and
timings), the saved predictions and attention maps, and the cached images and reference labels. No
number is typed in or simulated, so rebuilding from the same folder gives the same report byte for
byte (no build time is stamped; the date shown is when the runs finished).

Files written into ``out_dir`` (each atomically):

    report.html            self-contained: figures embedded as base64 PNG, no script, no link
    report.md              the same content; figures as ``figures/<name>.png`` beside it
    results.csv            the gathered per-subject table the report was built from
    stats.csv, stats.json  :func:`sgnet_lightning.analysis.stats.compute_stats` (+ pairwise matrices)
    pairwise_dice_<region>.csv
    attention_overlap.csv  per run x subject x sub-region Dice of thresholded attention maps (when
                           a model saved attention maps)
    gate_scans.csv         per run x threshold x region x metric: validation means of each run's
                           ``gate_scan/gate_scan.csv`` (when a gated run has a gate scan)

For gated models (SG-Net) the "Gates" section shows each gate level's open fraction over training
(``logs/metrics.csv``: ``gate/open_fraction_<level>``), at test (``gate_open_fraction_<level>``
rows of ``results.csv``), and, for runs with a gate scan (``sgnet gate-scan``), precision, recall,
false-positive lesions and open fractions against the gate threshold at fixed weights, on validation.

This module builds the sections from tables and statistics; the example slices and attention maps
come from :mod:`~sgnet_lightning.analysis.slices` (the attention overlap metric from
:mod:`~sgnet_lightning.evaluation.attention`), and :mod:`~sgnet_lightning.analysis.document`
renders and writes the pages.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from sgnet_lightning import files
from sgnet_lightning.analysis.document import MISSING, Plot, Section, Table, figure_png, fmt, fmt_p, write_document
from sgnet_lightning.analysis.results import (
    PLAIN_CASES,
    RunDir,
    convention_case,
    find_runs,
    gather_results,
    gather_runs,
    read_benchmark,
    write_results,
)
from sgnet_lightning.analysis.slices import attention_overlap_table, attention_section, example_slices
from sgnet_lightning.analysis.stats import (
    METHODS,
    compute_stats,
    pairwise_wilcoxon,
    primary_endpoint,
    seed_means,
    subject_values,
    write_stats,
)
from sgnet_lightning.data.labels import get_task
from sgnet_lightning.datasets import Task
from sgnet_lightning.evaluation import higher_is_better
from sgnet_lightning.runs import COMPLETE_FILE, LOGS_DIR, OPERATING_POINT, RESULTS_FILE

logger = logging.getLogger(__name__)

# Metrics of the results table and the comparisons, in this order, where the results have them.
# (volume_pred_ml / volume_ref_ml are descriptive and stay in stats.csv only.)
TABLE_METRICS = [
    "dice", "precision", "recall", "hd95_mm", "assd_mm", "nsd",
    "lesion_dice", "lesion_hd95_mm", "lesion_f1", "lesion_tp", "lesion_fn", "lesion_fp",
]  # fmt: skip
BOX_METRICS = ["dice", "precision", "recall", "hd95_mm", "lesion_dice", "lesion_f1"]
METRIC_LABELS = {
    "dice": "Dice", "precision": "Precision", "recall": "Recall", "hd95_mm": "HD95 (mm)",
    "assd_mm": "ASSD (mm)", "nsd": "NSD", "lesion_dice": "Lesion-wise Dice",
    "lesion_hd95_mm": "Lesion-wise HD95 (mm)", "lesion_f1": "Lesion F1", "lesion_tp": "Lesions TP",
    "lesion_fn": "Lesions FN", "lesion_fp": "Lesions FP",
}  # fmt: skip
GATE_METRIC_PREFIX = "gate_open_fraction_"  # + level, 0 = coarsest (sgnet_lightning.evaluation)
TRAINING_GATE_LOG = re.compile(r"^gate/open_fraction_(\d+)$")  # logged every training step


def _digits(metric: str) -> int:
    return 2 if metric.endswith("_mm") or metric in ("lesion_tp", "lesion_fn", "lesion_fp") else 3


def _metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


# -- what the benchmark folder holds --------------------------------------------------------------
@dataclass
class Benchmark:
    """Everything the report reads, loaded once."""

    path: Path
    info: dict  # benchmark.json
    task: Task
    models: list[str]  # benchmark.json order, only models with results
    regions: list[str]
    complete: list[RunDir]
    incomplete: list[RunDir]
    results: pd.DataFrame
    runs: pd.DataFrame  # one row per complete run (run.json scalars)
    cache_dir: Path | None  # None when the cache named in benchmark.json is not found

    def runs_of(self, model: str) -> list[RunDir]:
        return [r for r in self.complete if r.model == model]


def _is_gate_metric(metric: pd.Series) -> pd.Series:
    return metric.str.startswith(GATE_METRIC_PREFIX)


def _resolve_cache_dir(bench_dir: Path, cache_dir: str | None) -> Path | None:
    """The cache folder of ``benchmark.json``; a relative path is tried against the working folder and
    against the folder the benchmark root (``runs/``) sits in, where ``sgnet benchmark`` runs from."""
    if not cache_dir:
        return None
    path = Path(cache_dir)
    if path.is_absolute():
        return path if path.is_dir() else None
    candidates = [Path.cwd() / path, bench_dir.resolve().parent.parent / path]
    return next((c for c in candidates if c.is_dir()), None)


def load_benchmark_folder(bench_dir: str | os.PathLike) -> Benchmark:
    """Read a benchmark folder: ``benchmark.json``, the runs, their gathered results and run records."""
    bench_dir = Path(bench_dir)
    info = read_benchmark(bench_dir)
    complete, incomplete = find_runs(bench_dir)
    results = gather_results(bench_dir)
    present = list(dict.fromkeys(results["model"]))
    models = [m for m in info.get("models", {}) if m in present] + sorted(
        m for m in present if m not in info.get("models", {})
    )
    task = get_task(info["dataset"], info.get("task"))
    # gate open fractions are rows of region "all", shown in the Gates section, not as a region
    in_results = set(results.loc[~_is_gate_metric(results["metric"]), "region"])
    regions = [r for r in task.region_names if r in in_results]
    regions += sorted(in_results - set(task.region_names))
    cache_dir = _resolve_cache_dir(bench_dir, info.get("cache_dir"))
    if cache_dir is None:
        logger.warning("cache %s not found: the report leaves out example slices and attention maps",
                       info.get("cache_dir"))  # fmt: skip
    return Benchmark(bench_dir, info, task, models, regions, complete, incomplete, results,
                     gather_runs(bench_dir), cache_dir)  # fmt: skip


def _results_date(runs: list[RunDir]) -> str:
    """First and last completion time of the runs: the timestamp inside ``COMPLETE`` (written by
    ``sgnet benchmark``), else the marker's modification time (UTC)."""
    stamps = []
    for run in runs:
        marker = run.path / COMPLETE_FILE
        text = marker.read_text().strip()
        try:
            stamps.append(datetime.datetime.fromisoformat(text).replace(tzinfo=None))
        except ValueError:
            mtime = datetime.datetime.fromtimestamp(marker.stat().st_mtime, datetime.timezone.utc)
            stamps.append(mtime.replace(tzinfo=None))
    first, last = (stamp.strftime("%Y-%m-%d %H:%M") for stamp in (min(stamps), max(stamps)))
    return first if first == last else f"{first} to {last}"


def _compact(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_compact(v)}" for k, v in value.items()) or MISSING
    if isinstance(value, list):
        return ", ".join(_compact(v) for v in value) or MISSING
    return MISSING if value is None else str(value)


# -- sections --------------------------------------------------------------------------------------
def _model_description(info: dict, model: str) -> str:
    """``label = network (options)`` from benchmark.json."""
    entry = info.get("models", {}).get(model, {})
    options = entry.get("options")
    return f"{model} = {entry.get('network', '?')}" + (f" ({_compact(options)})" if options else "")


def _header(bench: Benchmark, reference: str, n_bootstrap: int) -> Section:
    info = bench.info
    ignored = ", ".join(str(r.path.relative_to(bench.path)) for r in bench.incomplete)
    items = [
        ("dataset", f"{info.get('dataset')} (task {bench.task.name}: regions {', '.join(bench.regions)})"),
        ("models", "; ".join(_model_description(info, m) for m in bench.models)),
        ("reference model", reference),
        ("seeds", _compact(info.get("seeds"))),
        ("folds", _compact(info.get("folds")) if info.get("folds") else "none (fixed split)"),
        ("split", _compact(info.get("split"))),
        ("manifest", _compact(info.get("manifest"))),
        ("test subjects", str(bench.results["subject"].nunique())),
        ("runs", f"{len(bench.complete)} complete; {len(bench.incomplete)} incomplete ignored"
                 + (f" ({ignored})" if ignored else "")),
        ("results dated", _results_date(bench.complete) + " (completion of the first and last run)"),
        ("commit", _compact(info.get("commit"))),
        ("versions", _compact(info.get("versions"))),
        ("hardware", _compact(info.get("hardware"))),
        ("statistics", f"bootstrap {n_bootstrap} resamples, seed 0; " + METHODS["wilcoxon"]),
    ]  # fmt: skip
    if "commit" in bench.runs:
        commits = sorted(set(bench.runs["commit"].dropna()) - {info.get("commit")})
        if commits:
            items.append(("run commits differing from the benchmark's", ", ".join(commits)))
    return Section("Benchmark", [
        f"Built from {bench.path.name}/ only: every number and figure below is computed from its "
        "per-subject results, run records, predictions and the cache it names.",
        Table(pd.DataFrame(items, columns=["item", "value"])),
    ])  # fmt: skip


def _cost_columns(bench: Benchmark, model: str) -> dict[str, str]:
    runs = bench.runs[bench.runs["model"] == model] if not bench.runs.empty else bench.runs

    def mean_sd(column: str, scale: float, unit: str, digits: int) -> str:
        if column not in runs or runs[column].dropna().empty:
            return MISSING
        values = runs[column].dropna().astype(float) / scale
        sd = f" ± {values.std(ddof=1):.{digits}f}" if len(values) > 1 else ""
        return f"{values.mean():.{digits}f}{sd} {unit}"

    params = sorted(set(runs["n_parameters"].dropna().astype(int))) if "n_parameters" in runs else []
    return {
        "parameters": " / ".join(f"{p:,}" for p in params) or MISSING,
        "training time": mean_sd("train_time_s", 60.0, "min", 1),
        "inference per volume": mean_sd("inference_time_s_per_volume", 1.0, "s", 2),
    }


def _results_section(bench: Benchmark, stats: pd.DataFrame, reference: str) -> Section:
    metrics = [m for m in TABLE_METRICS if m in set(stats["metric"])]
    blocks: list = [
        "Each cell: mean ± SD over subjects [95 % bootstrap CI of the mean]; a subject's value is the mean "
        "over its seeds (and folds). Training time and inference time: mean ± SD over runs."
    ]
    for region in bench.regions:
        rows = []
        for model in bench.models:
            row = {"model": model + (" (reference)" if model == reference else "")}
            block = stats[(stats["region"] == region) & (stats["model"] == model)].set_index("metric")
            row["subjects"] = int(block["n_subjects"].max()) if len(block) else 0
            row["seeds"] = int(block["n_seeds"].max()) if len(block) else 0
            for metric in metrics:
                if metric not in block.index:
                    row[_metric_label(metric)] = MISSING
                    continue
                s, d = block.loc[metric], _digits(metric)
                ci = f"[{fmt(s['ci_low'], d)}, {fmt(s['ci_high'], d)}]"
                row[_metric_label(metric)] = f"{fmt(s['mean'], d)} ± {fmt(s['sd'], d)} {ci}"
            rows.append({**row, **_cost_columns(bench, model)})
        blocks.append(Table(pd.DataFrame(rows), f"Region {region}"))
    return Section("Results", blocks)


def _endpoint_label(stats: pd.DataFrame) -> str:
    endpoint = stats.attrs.get("settings", {}).get("primary_endpoint")
    return f"{_metric_label(endpoint['metric'])} {endpoint['region']}" if endpoint else "none declared"


def _comparison_section(bench: Benchmark, stats: pd.DataFrame, reference: str) -> Section:
    blocks: list = [
        f"Each model against {reference}, paired by subject on seed-averaged values. "
        f"Wilcoxon: {METHODS['wilcoxon']}. Holm: {METHODS['wilcoxon_p_holm']} (primary endpoint: "
        f"{_endpoint_label(stats)}). "
        "Effect: matched-pairs rank-biserial correlation, positive = the model is better "
        "(lower-is-better metrics flipped). Seed spread: "
        f"{METHODS['exceeds_seed_spread']}."
    ]
    metrics = [m for m in TABLE_METRICS if m in set(stats["metric"])]
    order = {m: i for i, m in enumerate(metrics + bench.models)}  # metric names and labels never clash
    for region in bench.regions:
        block = stats[(stats["region"] == region) & (stats["model"] != reference) & stats["metric"].isin(metrics)]
        block = block.sort_values(["metric", "model"], key=lambda column: column.map(order))
        rows = [{
            "metric": _metric_label(r.metric), "model": r.model, "pairs": fmt(r.n_pairs, 0),
            "mean diff (model − ref)": fmt(r.mean_diff, _digits(r.metric)),
            "Wilcoxon p": fmt_p(r.wilcoxon_p), "Holm p": fmt_p(r.wilcoxon_p_holm),
            "effect (+ = better)": fmt(r.effect_size, 2), "t-test p": fmt_p(r.ttest_p),
            "exceeds seed spread": {True: "yes", False: "no"}.get(r.exceeds_seed_spread, MISSING),
            "note": r.note,
        } for r in block.itertuples()]  # fmt: skip
        if rows:
            blocks.append(Table(pd.DataFrame(rows), f"Region {region}: against {reference}"))
    friedman = stats[stats["metric"].isin(metrics)].drop_duplicates(["metric", "region"])
    blocks.append(Table(pd.DataFrame([{
        "metric": _metric_label(r.metric), "region": r.region, "Friedman chi²": fmt(r.friedman_stat, 2),
        "p": fmt_p(r.friedman_p), "subjects (all models)": r.friedman_n_subjects,
    } for r in friedman.itertuples()]), "Friedman test across all models"))  # fmt: skip
    return Section("Comparisons", blocks)


def _convention_section(bench: Benchmark) -> Section:
    results = bench.results.assign(case=convention_case(bench.results["convention"]))
    special = results[~results["case"].isin(PLAIN_CASES)]
    blocks: list = [
        "Cases where an empty mask decided the value (the evaluator's empty-mask policy, recorded per "
        "row in the convention column). A case is one run x subject x region; the metrics it touched and "
        "the settings recorded with it are listed."
    ]
    rows = []
    for (model, case), group in special.groupby(["model", "case"], sort=False):
        settings = sorted({s for c in group["convention"] for s in c.split(";")[1:] if s})
        rows.append({
            "model": model, "convention": case,
            "cases": len(group.drop_duplicates(["seed", "fold", "subject", "region"])),
            "subjects": group["subject"].nunique(),
            "metrics": ", ".join(sorted(group["metric"].unique())),
            "settings": ", ".join(settings) or MISSING,
        })  # fmt: skip
    for model in bench.models:  # a model untouched by any convention is stated, not just missing
        if not any(r["model"] == model for r in rows):
            rows.append({"model": model, "convention": "none", "cases": 0, "subjects": 0,
                         "metrics": MISSING, "settings": MISSING})  # fmt: skip
    order = {m: i for i, m in enumerate(bench.models)}
    rows.sort(key=lambda r: (order.get(r["model"], len(order)), r["convention"]))
    blocks.append(Table(pd.DataFrame(rows), "Empty-mask convention cases per model"))
    return Section("Empty-mask conventions", blocks)


def _model_colours(models: list[str]) -> dict[str, tuple]:
    palette = colormaps["tab10"]
    return {m: palette(i % 10) for i, m in enumerate(models)}


def _box_strip_plots(bench: Benchmark, values: pd.DataFrame) -> list[Plot]:
    colours = _model_colours(bench.models)
    plots = []
    for metric in [m for m in BOX_METRICS if m in set(values["metric"])]:
        fig = Figure(figsize=(3.6 * len(bench.regions), 3.6), layout="constrained")
        jitter = np.random.default_rng(0)  # fixed: the report is reproducible
        for i, region in enumerate(bench.regions):
            ax = fig.add_subplot(1, len(bench.regions), i + 1)
            block = values[(values["metric"] == metric) & (values["region"] == region)]
            data = [block.loc[block["model"] == m, "value"].to_numpy() for m in bench.models]
            positions = np.arange(len(bench.models))
            ax.boxplot([d if d.size else [np.nan] for d in data], positions=positions, widths=0.6,
                       showfliers=False, medianprops={"color": "black"})  # fmt: skip
            for pos, model, d in zip(positions, bench.models, data):
                ax.scatter(pos + jitter.uniform(-0.18, 0.18, d.size), d, s=12, alpha=0.75,
                           color=colours[model], zorder=3)  # fmt: skip
            ax.set_xticks(positions, bench.models, rotation=30, ha="right")
            ax.set_title(region)
            direction = "higher is better" if higher_is_better(metric) else "lower is better"
            ax.set_ylabel(f"{_metric_label(metric)} ({direction})" if i == 0 else "")
        plots.append(Plot(f"box_{metric}", f"{_metric_label(metric)} per subject (mean over seeds): box "
                          "(median, quartiles, whiskers to 1.5 IQR) and every subject as a point.", figure_png(fig)))
    return plots


def _precision_recall_plot(bench: Benchmark, values: pd.DataFrame) -> list[Plot]:
    if not {"precision", "recall"} <= set(values["metric"]):
        return []
    colours = _model_colours(bench.models)
    wide = values[values["metric"].isin(["precision", "recall"])].pivot_table(
        index=["region", "model", "subject"], columns="metric", values="value").reset_index()  # fmt: skip
    fig = Figure(figsize=(3.8 * len(bench.regions), 3.9), layout="constrained")
    for i, region in enumerate(bench.regions):
        ax = fig.add_subplot(1, len(bench.regions), i + 1)
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
        for model in bench.models:
            points = wide[(wide["region"] == region) & (wide["model"] == model)]
            ax.scatter(points["recall"], points["precision"], s=14, alpha=0.6, color=colours[model], label=model)
            ax.scatter(points["recall"].mean(), points["precision"].mean(), s=90, marker="D",
                       color=colours[model], edgecolors="black", zorder=4)  # fmt: skip
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel="recall", title=region, aspect="equal")
        ax.set_ylabel("precision" if i == 0 else "")
    fig.axes[-1].legend(fontsize=7, loc="lower left")
    return [Plot("precision_recall", "Precision against recall per subject (points) and per model (diamonds: "
                 "means). Below the diagonal a model over-segments (high recall, low precision), above it "
                 "it under-segments; Dice alone cannot tell the two apart.", figure_png(fig))]


def _seed_spread_section(bench: Benchmark, stats: pd.DataFrame) -> Section:
    title = "Seed spread"
    per_seed = seed_means(bench.results[bench.results["metric"] == "dice"])
    if per_seed.empty:
        return Section(title, ["No Dice results."])
    dice = stats[stats["metric"] == "dice"].set_index(["model", "region"])
    rows = []
    for model in bench.models:
        row = {"model": model}
        for region in bench.regions:
            if (model, region) in dice.index:
                r = dice.loc[(model, region)]
                row[region] = f"{fmt(r['seed_mean'])} ± {fmt(r['seed_sd'])} ({r['n_seeds']} seeds)"
            else:
                row[region] = MISSING
        rows.append(row)
    colours = _model_colours(bench.models)
    fig = Figure(figsize=(3.6 * len(bench.regions), 3.6), layout="constrained")
    for i, region in enumerate(bench.regions):
        ax = fig.add_subplot(1, len(bench.regions), i + 1)
        for pos, model in enumerate(bench.models):
            seeds = per_seed[(per_seed["region"] == region) & (per_seed["model"] == model)]
            ax.scatter(np.full(len(seeds), pos), seeds["value"], s=18, color=colours[model], zorder=3)
            if (model, region) in dice.index and np.isfinite(dice.loc[(model, region), "seed_sd"]):
                r = dice.loc[(model, region)]
                ax.errorbar(pos + 0.25, r["seed_mean"], yerr=r["seed_sd"], fmt="_", color="black",
                            capsize=4, markersize=12)  # fmt: skip
        ax.set_xticks(range(len(bench.models)), bench.models, rotation=30, ha="right")
        ax.set_title(region)
        ax.set_ylabel("mean Dice of one seed" if i == 0 else "")
    return Section(title, [
        Table(pd.DataFrame(rows), "Dice: mean ± SD over seeds of each seed's mean over subjects"),
        Plot("seed_spread", "Each point is one seed's mean Dice over the test subjects; bars: mean ± SD over "
             "seeds (drawn with two or more seeds).", figure_png(fig)),
    ])  # fmt: skip


def _significance_section(bench: Benchmark, pairwise: dict[tuple[str, str], pd.DataFrame]) -> Section:
    blocks: list = [
        "Two-sided Wilcoxon signed-rank p between every pair of models on per-subject Dice "
        "(seed-averaged, zero_method pratt), Holm-corrected over all pairs of a region."
    ]
    if not pairwise:
        return Section("Significance matrix", blocks + ["No Dice results."])
    panel = 1.0 + 0.9 * len(bench.models)  # inches per matrix, labels included
    fig = Figure(figsize=(panel * len(pairwise) + 1.2, panel), layout="constrained")
    for i, ((_, region), matrix) in enumerate(pairwise.items()):
        ax = fig.add_subplot(1, len(pairwise), i + 1)
        strength = -np.log10(np.clip(matrix.to_numpy(float), 1e-4, 1))
        image = ax.imshow(np.ma.masked_invalid(strength), cmap="Greens", vmin=0, vmax=4)
        for (r, c), p in np.ndenumerate(matrix.to_numpy(float)):
            ax.text(c, r, MISSING if r == c else fmt_p(p), ha="center", va="center", fontsize=7,
                    color="white" if np.isfinite(p) and p < 0.01 else "black")  # fmt: skip
        ax.set_xticks(range(len(matrix)), matrix.columns, rotation=30, ha="right")
        ax.set_yticks(range(len(matrix)), matrix.index)
        ax.set_title(f"Dice, {region}")
    fig.colorbar(image, ax=fig.axes, label="−log10 Holm p", shrink=0.8)
    blocks.append(Plot("significance_dice", "Holm-corrected pairwise Wilcoxon p on Dice (darker: smaller p).",
                       figure_png(fig)))
    for (_, region), matrix in pairwise.items():
        frame = matrix.map(fmt_p).reset_index()
        for i in range(len(matrix)):
            frame.iloc[i, i + 1] = MISSING
        blocks.append(Table(frame, f"Holm-corrected pairwise Wilcoxon p, Dice, {region}"))
    return Section("Significance matrix", blocks)


# -- gates: open fractions over training, at test, and against the threshold ---------------------------
def _level(metric: str) -> int:
    return int(metric.rsplit("_", 1)[1])


def training_gate_curves(bench: Benchmark) -> pd.DataFrame:
    """Every complete run's logged training open fractions: columns model, seed, fold, level, step,
    open_fraction (from ``logs/metrics.csv``; runs without gates or log contribute nothing)."""
    frames = []
    for run in bench.complete:
        log_file = run.path / LOGS_DIR / "metrics.csv"
        if not log_file.is_file():
            continue
        logged = pd.read_csv(log_file)
        for column in logged.columns:
            match = TRAINING_GATE_LOG.match(column)
            if match and "step" in logged.columns:
                rows = logged[["step", column]].dropna()
                frames.append(pd.DataFrame({"model": run.model, "seed": run.seed, "fold": run.fold,
                                            "level": int(match.group(1)), "step": rows["step"].astype(int),
                                            "open_fraction": rows[column].astype(float)}))
    columns = ["model", "seed", "fold", "level", "step", "open_fraction"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def gate_scans(bench: Benchmark) -> pd.DataFrame:
    """Validation means per threshold of every complete run's gate scan (``gate_scan/gate_scan.csv``):
    columns model, seed, fold, threshold, region, metric, value, n_subjects, and ``chosen`` (the
    threshold stored as the run's operating point, NaN without one)."""
    from sgnet_lightning.gate_scan import SCAN_CSV, SCAN_DIR

    columns = ["model", "seed", "fold", "threshold", "region", "metric", "value", "n_subjects", "chosen"]
    frames = []
    for run in bench.complete:
        scan_file = run.path / SCAN_DIR / SCAN_CSV
        if not scan_file.is_file():
            continue
        scan = pd.read_csv(scan_file, dtype={"subject": str, "region": str, "metric": str})
        means = scan.groupby(["threshold", "region", "metric"])["value"].agg(["mean", "count"]).reset_index()
        point_file = run.path / OPERATING_POINT
        chosen = json.loads(point_file.read_text())["gate_threshold"] if point_file.is_file() else np.nan
        frames.append(means.rename(columns={"mean": "value", "count": "n_subjects"}).assign(
            model=run.model, seed=run.seed, fold=run.fold, chosen=chosen))
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def _gate_section(bench: Benchmark, values: pd.DataFrame, curves: pd.DataFrame, scans: pd.DataFrame) -> Section:
    title = "Gates"
    at_test = values[_is_gate_metric(values["metric"])]
    if curves.empty and at_test.empty and scans.empty:
        return Section(title, ["No model has gates."])
    colours = _model_colours(bench.models)
    blocks: list = [
        "SG-Net's spatial gates: the share of gate voxels that are open (value > 0.5), per level "
        "(0 = coarsest). A gate that never closes computes the ungated body's function."]
    if not curves.empty:
        blocks.append(_gate_training_plot(bench, curves, colours))
    if not at_test.empty:
        summary = at_test.groupby(["model", "metric"])["value"].agg(["mean", "std", "count"]).reset_index()
        rows = []
        for model in [m for m in bench.models if m in set(summary["model"])]:
            mine = summary[summary["model"] == model].sort_values("metric")
            row = {"model": model, "subjects": int(mine["count"].max())}
            row.update({f"level {_level(s.metric)}": f"{fmt(s.mean)} ± {fmt(s.std)}"
                        for s in mine.itertuples()})
            rows.append(row)
        blocks.append(Table(pd.DataFrame(rows).fillna(MISSING), "Open fraction at test: mean ± SD over "
                            "subjects (a subject's value: mean over seeds of open voxels / all voxels over its "
                            "sliding windows)"))
    if not scans.empty:
        blocks += _gate_scan_blocks(bench, scans, colours)
    return Section(title, blocks)


def _gate_training_plot(bench: Benchmark, curves: pd.DataFrame, colours: dict) -> Plot:
    levels = sorted(curves["level"].unique())
    fig = Figure(figsize=(3.8 * len(levels), 3.4), layout="constrained")
    for i, level in enumerate(levels):
        ax = fig.add_subplot(1, len(levels), i + 1)
        for model in [m for m in bench.models if m in set(curves["model"])]:
            runs = curves[(curves["level"] == level) & (curves["model"] == model)]
            for j, (_, run) in enumerate(runs.groupby(["seed", "fold"], dropna=False)):
                ax.plot(run["step"], run["open_fraction"], color=colours[model], lw=1, alpha=0.7,
                        label=model if j == 0 else None)
        ax.set(title=f"level {level}", xlabel="training step", ylim=(-0.02, 1.02))
        ax.set_ylabel("open fraction (training batch)" if i == 0 else "")
    fig.axes[-1].legend(fontsize=7)
    return Plot("gate_training", "Open fraction of each gate level on the training batches, as logged "
                "(gate/open_fraction_<level>), one line per run.", figure_png(fig))


def _gate_scan_blocks(bench: Benchmark, scans: pd.DataFrame, colours: dict) -> list:
    region = bench.task.main_region
    panels = [("precision", region, "precision"), ("recall", region, "recall"),
              ("lesion_fp", region, "false-positive lesions")]
    levels = sorted({_level(m) for m in scans["metric"].unique() if m.startswith(GATE_METRIC_PREFIX)})
    panels += [(f"{GATE_METRIC_PREFIX}{level}", "all", f"open fraction, level {level}") for level in levels]
    fig = Figure(figsize=(3.3 * len(panels), 3.3), layout="constrained")
    for i, (metric, panel_region, label) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        block = scans[(scans["metric"] == metric) & (scans["region"] == panel_region)]
        for model in [m for m in bench.models if m in set(block["model"])]:
            runs = block[block["model"] == model]
            for _, run in runs.groupby(["seed", "fold"], dropna=False):
                ax.plot(run["threshold"], run["value"], color=colours[model], lw=1, alpha=0.4, marker=".")
            mean = runs.groupby("threshold")["value"].mean()
            ax.plot(mean.index, mean.to_numpy(), color=colours[model], lw=2, label=model)
        ax.set(xlabel="gate threshold", title=label)
        if metric != "lesion_fp":
            ax.set_ylim(-0.02, 1.02)
    fig.axes[0].legend(fontsize=7)
    points = scans.drop_duplicates(["model", "seed", "fold"])
    chosen = [{"model": model, "operating point per run (chosen on validation)":
               ", ".join(fmt(v, 2) for v in points.loc[points["model"] == model, "chosen"])}
              for model in [m for m in bench.models if m in set(points["model"])]]
    return [
        Plot("gate_threshold_scan", "The gate threshold at inference with fixed weights, on the validation "
             "split (sgnet gate-scan): means over validation subjects, thin lines one run each, thick the mean "
             f"over runs; region {region} for precision, recall and false-positive lesions.", figure_png(fig)),
        Table(pd.DataFrame(chosen), f"Gate thresholds stored as operating points (operating_point.json); "
              f"{MISSING}: none stored"),
    ]


def build_report(
    bench_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    reference: str | None = None,
    n_bootstrap: int = 10_000,
) -> tuple[Path, Path]:
    """Build ``report.html`` and ``report.md`` (plus the tables behind them) from a benchmark folder.

    Args:
        bench_dir: the benchmark folder (``benchmark.json``, ``<model>/seed<k>[/fold<f>]/`` runs).
        out_dir: where the report goes (created).
        reference: model every other is compared with; default ``"unet"`` if present, else the first
            model of ``benchmark.json``.
        n_bootstrap: bootstrap resamples of the CIs (seed 0).

    Returns:
        (html path, markdown path)
    """
    out_dir = Path(out_dir)
    bench = load_benchmark_folder(bench_dir)
    reference = reference or ("unet" if "unet" in bench.models else bench.models[0])
    if reference in bench.models:  # the reference leads every table and figure
        bench.models = [reference] + [m for m in bench.models if m != reference]
    stats = compute_stats(bench.results, reference, n_bootstrap=n_bootstrap, seed=0,
                          primary=primary_endpoint(bench.path))
    values = subject_values(bench.results)
    pairwise = {("dice", region): pairwise_wilcoxon(bench.results, "dice", region, bench.models)
                for region in bench.regions
                if ((bench.results["metric"] == "dice") & (bench.results["region"] == region)).any()}  # fmt: skip

    sections = [
        _header(bench, reference, n_bootstrap),
        _results_section(bench, stats, reference),
        _comparison_section(bench, stats, reference),
        _convention_section(bench),
        Section("Per-subject distributions", _box_strip_plots(bench, values)),
        Section("Precision and recall", _precision_recall_plot(bench, values)
                or ["Precision and recall are not in the results."]),
        _seed_spread_section(bench, stats),
        _significance_section(bench, pairwise),
    ]  # fmt: skip
    curves, scans = training_gate_curves(bench), gate_scans(bench)
    sections.append(_gate_section(bench, values, curves, scans))
    overlap = pd.DataFrame()
    if bench.cache_dir is None:
        sections.append(Section("Example slices", [
            f"The cache {bench.info.get('cache_dir')} named in benchmark.json was not found: example slices "
            "and attention maps are left out."]))  # fmt: skip
    else:
        slices, example = example_slices(bench, values)
        sections.append(Section("Example slices", slices or ["No subject has Dice results for every model."]))
        overlap = attention_overlap_table(bench)
        sections.append(attention_section(bench, overlap, example))

    write_results(bench.results, out_dir / RESULTS_FILE)
    write_stats(stats, out_dir, pairwise)
    if not overlap.empty:
        files.atomic_write_text(out_dir / "attention_overlap.csv", overlap.to_csv(index=False))
    if not scans.empty:
        files.atomic_write_text(out_dir / "gate_scans.csv", scans.to_csv(index=False))
    title = f"Benchmark report: {bench.info.get('name', bench.path.name)}"
    return write_document(out_dir, title, sections)
