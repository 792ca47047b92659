"""``sgnet gate-scan``: SG-Net's gate threshold at inference, with fixed weights, on the validation split.

A hard gate opens where its probability ``p > tau`` (``sgnet_lightning.models.sgnet``). The gates read
encoder features only, so on a trained network ``p`` does not depend on ``tau``, and raising ``tau``
only ever closes gates: one checkpoint, scored at several thresholds, gives a precision-recall curve
against the threshold without retraining. The scan scores the **validation split only**, through the
code ``sgnet test`` runs (``SegmentationModule.test_step``: sliding window, label map put back on each
subject's original grid, :func:`~sgnet_lightning.evaluation.evaluate.score_prediction`), with the
DataModule's ``test_split`` set to ``"val"``, as the sweeps'
:func:`~sgnet_lightning.sweeps.study.validation_results` is: the test loader is never built and no
test subject is opened.

Files written into the run folder::

    gate_scan/gate_scan.csv   threshold, subject, region, metric, value, convention: every metric of
                              sgnet test (Dice, precision, recall, HD95, lesion F1, lesion_fp, ...)
                              and gate_open_fraction_<level> (region ``all``), per threshold
    gate_scan/summary.json    the checkpoint and its sha256, the thresholds, the validation subjects,
                              mean of each metric x region per threshold
    gate_scan/gate_scan.png   precision, recall, Dice and lesion F1, false-positive lesions and each
                              gate's open fraction against the threshold (means over subjects)
    operating_point.json      with ``--store``: the threshold chosen on validation, the rule that
                              chose it, and the checkpoint (sha256) it belongs to

The stored operating point is used on request: ``sgnet test --gate-threshold validated`` and
``sgnet predict --gate-threshold validated``
(:func:`~sgnet_lightning.operating_point.resolve_gate_threshold`); both refuse a checkpoint other
than the one the point was chosen on.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from sgnet_lightning.errors import ConfigError, SgnetError
from sgnet_lightning.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from sgnet_lightning.operating_point import file_sha256, hard_gated_network
from sgnet_lightning.runs import OPERATING_POINT

log = logging.getLogger(__name__)

SCAN_DIR = "gate_scan"
SCAN_CSV = "gate_scan.csv"
SCAN_SUMMARY = "summary.json"
SCAN_FIGURE = "gate_scan.png"
DEFAULT_THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)
DEFAULT_CHOICE = "lesion_f1"  # balances missed and false-positive lesions: the paradox's currency
# drawn against the threshold (means over validation subjects), in this order, where present
CURVE_METRICS = ("precision", "recall", "dice", "lesion_f1")


def parse_choice(text: str | None, task) -> tuple[str, str]:
    """``METRIC[:REGION]`` -> (metric, region); region default the task's main region. The metric
    must have a direction (a descriptive one, such as an open fraction, cannot be optimised)."""
    from sgnet_lightning.evaluation import METRICS

    metric, _, region = (text or DEFAULT_CHOICE).partition(":")
    region = region or task.main_region
    if metric not in METRICS:
        raise ConfigError(f"--choose {metric!r}: unknown metric; known: {', '.join(METRICS)}")
    if METRICS[metric] is None:
        raise ConfigError(f"--choose {metric}: a descriptive metric has no better or worse")
    if region not in task.regions:
        raise ConfigError(f"--choose {metric}:{region}: no region {region!r} in task {task.name} "
                          f"({', '.join(task.regions)})")
    return metric, region


# -- the scan ---------------------------------------------------------------------------------------------
def scan_gate_thresholds(config: dict[str, Any], run_dir: str | Path, checkpoint: str | Path,
                         thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                         metric_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """Score ``checkpoint`` on the validation split at every gate threshold, weights fixed.

    Args:
        config: the run's experiment config.
        run_dir: the run folder (validation log under ``logs/validate/``).
        checkpoint: the trained weights.
        thresholds: gate thresholds in (0, 1).
        metric_options: keyword options of ``evaluate_case`` on top of the config's ``run.test_metrics``.

    Returns:
        Tidy rows ``threshold, subject, region, metric, value, convention``, ordered by threshold.
    """
    from sgnet_lightning.experiment import validation_scorer

    thresholds = sorted({_check_threshold(t) for t in thresholds})
    module, datamodule, trainer = validation_scorer(config, run_dir, metric_options)
    net = hard_gated_network(module, "sgnet gate-scan")
    tables = []
    for threshold in thresholds:
        net.gate_threshold = threshold  # an attribute, not a weight: loading the checkpoint keeps it
        start = time.perf_counter()
        trainer.test(module, datamodule=datamodule, ckpt_path=str(checkpoint), verbose=False)
        log.info("gate threshold %.3g: %d validation subjects scored in %.1f s", threshold,
                 len(module.test_inference_seconds), time.perf_counter() - start)
        tables.append(pd.DataFrame(module.test_rows).assign(threshold=threshold))
    table = pd.concat(tables, ignore_index=True)
    return table[["threshold", "subject", "region", "metric", "value", "convention"]]


def _check_threshold(value: float) -> float:
    value = float(value)
    if not 0 < value < 1:
        raise ConfigError(f"gate threshold {value:g}: must lie in (0, 1)")
    return value


def scan_means(scan: pd.DataFrame) -> pd.DataFrame:
    """Mean over subjects per threshold x region x metric (columns threshold, region, metric, mean, n)."""
    grouped = scan.groupby(["threshold", "region", "metric"], sort=True)["value"]
    return grouped.agg(mean="mean", n="count").reset_index()


def choose_threshold(scan: pd.DataFrame, metric: str, region: str, trained: float) -> tuple[float, float]:
    """The threshold with the best mean of ``metric`` in ``region`` over validation subjects.

    Ties (equal means) go to the threshold nearest the trained one, then the lower one: with no
    evidence for a change, stay where training was. Returns ``(threshold, mean)``.
    """
    from sgnet_lightning.evaluation import higher_is_better

    means = scan_means(scan)
    means = means[(means["metric"] == metric) & (means["region"] == region)]
    if means.empty:
        raise SgnetError(f"the gate scan holds no {metric} of region {region}")
    best = means["mean"].max() if higher_is_better(metric) else means["mean"].min()
    tied = means[np.isclose(means["mean"], best, rtol=0.0, atol=1e-12)]
    order = tied.assign(distance=(tied["threshold"] - trained).abs()).sort_values(["distance", "threshold"])
    row = order.iloc[0]
    return float(row["threshold"]), float(row["mean"])


def run_gate_scan(config: dict[str, Any], run_dir: str | Path | None = None, ckpt: str = "best",
                  thresholds: Sequence[float] = DEFAULT_THRESHOLDS, choose: str | None = None,
                  store: bool = False, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Scan, write ``gate_scan/`` (CSV, summary, figure), choose the operating point on validation and,
    with ``store``, write it to ``<run>/operating_point.json`` (atomically).

    Returns the summary (see ``summary.json``) with ``"operating_point"`` (the chosen threshold,
    stored or not).
    """
    from sgnet_lightning.config import get_dotted
    from sgnet_lightning.data.labels import get_task
    from sgnet_lightning.data.manifest import Manifest
    from sgnet_lightning.runs import find_checkpoint, run_dir_for

    run_dir = Path(run_dir) if run_dir is not None else run_dir_for(config)
    checkpoint = find_checkpoint(run_dir, ckpt)
    if checkpoint is None:
        raise SgnetError("sgnet gate-scan needs a checkpoint (--ckpt best, last or a path)")
    manifest = Manifest.load(get_dotted(config, "data.manifest"), root=get_dotted(config, "data.data_root"))
    task = get_task(manifest.dataset, get_dotted(config, "data.task"))
    metric, region = parse_choice(choose, task)
    trained = float((get_dotted(config, "model.network_options") or {}).get("gate_threshold", 0.5))

    scan = scan_gate_thresholds(config, run_dir, checkpoint, thresholds)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / SCAN_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / SCAN_CSV, scan.to_csv(index=False))
    threshold, value = choose_threshold(scan, metric, region, trained)
    point = {
        "gate_threshold": threshold, "metric": metric, "region": region, "mean": value,
        "rule": "best mean over validation subjects; ties to the threshold nearest the trained one, then the lower",
        "trained_gate_threshold": trained, "thresholds": sorted(scan["threshold"].unique().tolist()),
        "checkpoint": str(checkpoint), "checkpoint_sha256": file_sha256(checkpoint),
        "validation_subjects": sorted(scan["subject"].unique().tolist()),
        "scan": str(out_dir / SCAN_CSV), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    means = scan_means(scan)
    summary = {**{k: point[k] for k in ("checkpoint", "checkpoint_sha256", "thresholds", "validation_subjects",
                                        "trained_gate_threshold")},
               "operating_point": point, "stored": bool(store),
               "means": means.to_dict(orient="records")}
    atomic_write_json(out_dir / SCAN_SUMMARY, summary)
    atomic_write_bytes(out_dir / SCAN_FIGURE, plot_scan(scan, f"{run_dir}", point))
    if store:
        atomic_write_json(run_dir / OPERATING_POINT, point)
    return summary


# -- the figure ---------------------------------------------------------------------------------------------
def plot_scan(scan: pd.DataFrame, title: str, point: dict[str, Any] | None = None) -> bytes:
    """PNG: left, precision / recall / Dice / lesion F1 of the task's regions against the gate
    threshold; middle, false-positive lesions; right, each gate level's open fraction (means over
    validation subjects). A dotted line marks the operating point, where given."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = scan_means(scan)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    overlap, lesions, gates = axes
    for (metric, region), rows in means[means["metric"].isin(CURVE_METRICS)].groupby(["metric", "region"]):
        overlap.plot(rows["threshold"], rows["mean"], marker="o", label=f"{metric} {region}")
    overlap.set(xlabel="gate threshold", ylabel="mean over validation subjects", ylim=(-0.02, 1.02))
    overlap.legend(fontsize=8)
    for region, rows in means[means["metric"] == "lesion_fp"].groupby("region"):
        lesions.plot(rows["threshold"], rows["mean"], marker="o", label=region)
    lesions.set(xlabel="gate threshold", ylabel="false-positive lesions (mean)")
    if lesions.lines:
        lesions.legend(fontsize=8)
    for metric, rows in means[means["metric"].str.startswith("gate_open_fraction_")].groupby("metric"):
        gates.plot(rows["threshold"], rows["mean"], marker="o", label=f"level {metric.rsplit('_', 1)[1]}")
    gates.set(xlabel="gate threshold", ylabel="open fraction (0 = coarsest level)", ylim=(-0.02, 1.02))
    gates.legend(fontsize=8)
    if point is not None:
        for ax in axes:
            ax.axvline(point["gate_threshold"], color="grey", linestyle=":", linewidth=1)
    fig.suptitle(f"gate threshold at inference, fixed weights, validation split: {title}", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
