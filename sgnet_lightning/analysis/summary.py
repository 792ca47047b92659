"""The results table printed at the end of ``make demo`` / ``sgnet benchmark``.

Computed only from a benchmark folder's stored per-subject results and run records: per model the
mean +- SD over subjects (each subject first averaged over seeds) of Dice, precision, recall, HD95
and lesion-wise F1 for the first region, plus parameters, training and inference time.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from sgnet_lightning.analysis.results import gather_results, gather_runs

COLUMNS = {"dice": "Dice", "precision": "precision", "recall": "recall", "hd95_mm": "HD95 mm",
           "lesion_f1": "lesion F1"}


def summary_table(bench_dir: str | Path) -> pd.DataFrame:
    """One row per model: metric columns as ``mean +- sd``, then parameters and times."""
    results = gather_results(bench_dir)
    runs = gather_runs(bench_dir)
    region = results["region"].iloc[0]
    per_subject = (results[results["region"] == region]
                   .groupby(["model", "metric", "subject"])["value"].mean())  # seeds averaged first
    table = {}
    for model in sorted(results["model"].unique()):
        row = {}
        for metric, label in COLUMNS.items():
            values = per_subject.get((model, metric))
            row[label] = "-" if values is None else f"{values.mean():.3f} +- {values.std(ddof=1):.3f}"
        model_runs = runs[runs["model"] == model]
        row["parameters"] = f"{int(model_runs['n_parameters'].iloc[0]):,}"
        row["train s/run"] = f"{model_runs['train_time_s'].mean():.0f}"
        row["infer s/volume"] = f"{model_runs['inference_time_s_per_volume'].mean():.2f}"
        row["seeds"] = model_runs["seed"].nunique()
        table[model] = row
    out = pd.DataFrame.from_dict(table, orient="index")
    out.index.name = f"model ({region}, n={results['subject'].nunique()} subjects)"
    return out


def main(argv: list[str] | None = None) -> int:
    bench_dir = Path((argv or sys.argv[1:])[0])
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summary_table(bench_dir).to_string())
    print(f"\nruns (checkpoints, logs, W&B offline files): {bench_dir}/<model>/seed<k>/")
    print(f"per-subject results: {bench_dir / 'results.csv'}")
    print(f"statistics:          {bench_dir / 'stats' / 'stats.csv'}")
    print(f"report:              {(bench_dir / 'report' / 'report.html').resolve()} (and report.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
