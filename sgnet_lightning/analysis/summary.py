"""The results table printed at the end of ``make demo`` (``sgnet summary runs/demo``).

Computed only from a benchmark folder's stored per-subject results and run records. One row per
model, on the benchmark's main region (the region of its primary endpoint, WT unless
``benchmark.json`` says otherwise):

- Dice, precision, recall, HD95 and lesion-wise F1 as mean +- SD over test subjects, each subject
  first averaged over seeds (where every seed scored every subject, the mean is also the mean over
  seeds of each seed's mean);
- ``Dice by seed``: each seed's mean Dice over subjects (how far seeds disagree);
- ``FP lesions``: predicted lesions that touch no reference lesion, per subject (``lesion_fp``), the
  count the over-segmentation paradox is about;
- ``gate open``: the share of each gate level's cells open at test, level 0 (coarsest) first,
  averaged over subjects and seeds (``gate_open_fraction_<level>``, region ``all``); ``-`` for
  networks without gates;
- parameters, training time per run and median inference time per test volume (``run.json``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sgnet_lightning.analysis.results import gather_results, gather_runs, read_benchmark
from sgnet_lightning.analysis.stats import primary_endpoint
from sgnet_lightning.evaluation import gate_open_fraction_metric
from sgnet_lightning.runs import RESULTS_FILE

# metric -> column label, shown as mean +- SD over subjects
MEAN_SD_COLUMNS = {"dice": "Dice", "precision": "precision", "recall": "recall", "hd95_mm": "HD95 mm",
                   "lesion_f1": "lesion F1", "lesion_fp": "FP lesions"}
GATE_REGION = "all"  # gate open fractions are not tied to a tumour region
GATE_PREFIX = gate_open_fraction_metric(0).removesuffix("0")  # "gate_open_fraction_", then the level
LEGEND = (
    "mean +- SD over test subjects (each subject averaged over seeds); Dice by seed: each seed's mean.\n"
    "FP lesions: predicted lesions touching no reference lesion, per subject. gate open: share of each\n"
    "gate level's cells open at test, coarsest level first ('-': no gates)."
)


def main_region(bench_dir: str | Path, results: pd.DataFrame) -> str:
    """Region of the benchmark's primary endpoint; without one, WT if scored, else the first region."""
    endpoint = primary_endpoint(bench_dir)
    if endpoint is not None:
        return endpoint[1]
    regions = [r for r in results["region"].unique() if r != GATE_REGION]
    return "WT" if "WT" in regions else regions[0]


def _mean_sd(values: pd.Series, digits: int) -> str:
    sd = values.std(ddof=1) if len(values) > 1 else float("nan")
    return f"{values.mean():.{digits}f} +- {sd:.{digits}f}"


def _gate_open(results: pd.DataFrame, model: str) -> str:
    """``0.21/0.20/0.26``: mean open fraction per gate level, level 0 first; ``-`` without gates."""
    rows = results[(results["model"] == model) & (results["region"] == GATE_REGION)
                   & results["metric"].str.startswith(GATE_PREFIX)]
    if rows.empty:
        return "-"
    per_subject = rows.groupby(["metric", "subject"])["value"].mean()  # seeds averaged first
    by_level = per_subject.groupby(level="metric").mean()
    levels = sorted(by_level.index, key=lambda metric: int(metric[len(GATE_PREFIX):]))
    return "/".join(f"{by_level[metric]:.2f}" for metric in levels)


def summary_table(bench_dir: str | Path) -> pd.DataFrame:
    """One row per model, in the benchmark's order: the columns of the module docstring."""
    results = gather_results(bench_dir)
    runs = gather_runs(bench_dir)
    region = main_region(bench_dir, results)
    scored = results[results["region"] == region]
    per_subject = scored.groupby(["model", "metric", "subject"])["value"].mean()  # seeds averaged first
    table = {}
    # benchmark.json lists its runs in the config's model order (its "models" mapping is key-sorted)
    listed = list(dict.fromkeys(str(run["model"]) for run in read_benchmark(bench_dir).get("runs") or []))
    present = set(results["model"])
    for model in [m for m in listed if m in present] + sorted(present - set(listed)):
        row = {}
        for metric, label in MEAN_SD_COLUMNS.items():
            values = per_subject.get((model, metric))
            digits = 1 if metric in ("hd95_mm", "lesion_fp") else 3
            row[label] = "-" if values is None else _mean_sd(values, digits)
            if metric == "dice" and values is not None:
                dice = scored[(scored["model"] == model) & (scored["metric"] == "dice")]
                row["Dice by seed"] = "/".join(f"{v:.3f}" for v in dice.groupby("seed")["value"].mean())
        row["gate open"] = _gate_open(results, model)
        model_runs = runs[runs["model"] == model]
        row["parameters"] = f"{int(model_runs['n_parameters'].iloc[0]):,}"
        row["train s/run"] = f"{model_runs['train_time_s'].mean():.0f}"
        row["infer s/volume"] = f"{model_runs['inference_time_s_per_volume'].mean():.2f}"
        table[model] = row
    out = pd.DataFrame.from_dict(table, orient="index")
    out.index.name = (f"model ({region}, {scored['subject'].nunique()} test subjects, "
                      f"{results['seed'].nunique()} seeds)")
    return out


def print_summary(bench_dir: str | Path) -> None:
    """Print the table, its legend and where the benchmark's files are."""
    bench_dir = Path(bench_dir)
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.max_colwidth", 40):
        print(summary_table(bench_dir).to_string())
    print(LEGEND)
    print(f"\nruns (checkpoints, logs, W&B offline files): {bench_dir}/<model>/seed<k>/")
    print(f"per-subject results: {bench_dir / RESULTS_FILE}")
    print(f"statistics:          {bench_dir / 'stats' / 'stats.csv'}")
    print(f"report:              {(bench_dir / 'report' / 'report.html').resolve()} (and report.md)")
