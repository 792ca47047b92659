"""Tables, JSON and figures of docs/gating.md's experiment, computed from a finished benchmark folder.

Reads only what ``experiments/gating/run_experiment.sh`` left in the benchmark folder: the runs'
``results.csv`` (gathered), their training logs (``logs/metrics.csv``), their gate scans
(``gate_scan/gate_scan.csv``, ``operating_point.json``), ``stats/stats.csv`` (``sgnet stats``) and
``distractor_fp.csv/json`` (``experiments/gating/distractor_fp.py``), and, with ``--validated DIR``,
the paired statistics of ``experiments/gating/operating_point_test.py`` (``DIR/stats_<model>/``).
Writes into ``--out``::

    results.csv, stats.csv, stats.json, distractor_fp.csv, distractor_fp.json   copies of the inputs
    gate_scans.csv            validation means per run x gate threshold x region x metric
    training_open_fraction.csv  per run: logged training open fraction per level and step
    validated_threshold.csv   (--validated) each hard-gated model at its validated threshold against
                              itself at the trained one, on the test split (sgnet stats rows)
    experiment.json           everything the tables show, with the benchmark's provenance
    tables.md                 the Markdown tables of docs/gating.md's experiment section
    training_open_fraction.png, threshold_scan.png, precision_recall.png

    python experiments/gating/summarise.py runs/gating_phantom --out docs/gating/experiment
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from sgnet_lightning.analysis.report import (
    _gate_scan_blocks,
    _gate_training_plot,
    _model_colours,
    _precision_recall_plot,
    gate_scans,
    load_benchmark_folder,
    training_gate_curves,
)
from sgnet_lightning.analysis.stats import subject_values
from sgnet_lightning.files import atomic_write_bytes, atomic_write_json, atomic_write_text

REGION = "WT"
HEADLINE = ["dice", "precision", "recall", "hd95_mm", "lesion_f1", "lesion_fp"]
COMPARED = ["dice", "precision", "recall", "hd95_mm", "lesion_fp", "lesion_f1"]
LABELS = {"dice": "Dice", "precision": "precision", "recall": "recall", "hd95_mm": "HD95 (mm)",
          "lesion_f1": "lesion F1", "lesion_fp": "FP lesions"}


def _mean_sd(values: pd.Series, digits: int) -> str:
    if len(values) < 2:
        return f"{values.mean():.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def _digits(metric: str) -> int:
    return 1 if metric in ("hd95_mm", "lesion_fp") else 3


def headline(bench, distractors: dict) -> tuple[pd.DataFrame, list[dict]]:
    """Per model: mean ± SD over test subjects (each subject's mean over seeds) of the headline metrics
    of region WT, the open fraction per gate level at test, and false-positive lesions on distractors."""
    values = subject_values(bench.results)
    seeds = bench.results.groupby(["model", "seed", "metric", "region"])["value"].mean().reset_index()
    rows, records = [], []
    for model in bench.models:
        mine = values[values["model"] == model]
        row, record = {"model": model}, {"model": model}
        for metric in HEADLINE:
            block = mine[(mine["metric"] == metric) & (mine["region"] == REGION)]["value"]
            row[LABELS[metric]] = _mean_sd(block, _digits(metric))
            per_seed = seeds[(seeds["model"] == model) & (seeds["metric"] == metric) & (seeds["region"] == REGION)]
            record[metric] = {"mean": float(block.mean()), "sd_subjects": float(block.std(ddof=1)),
                              "n_subjects": int(block.size), "seed_means": per_seed["value"].round(6).tolist()}
        gates = mine[mine["metric"].str.startswith("gate_open_fraction_")].sort_values("metric")
        row["open fraction at test (levels 0/1/2)"] = " / ".join(f"{v:.2f}" for v in
                                                                 gates.groupby("metric")["value"].mean()) or "–"
        record["open_fraction_at_test"] = gates.groupby("metric")["value"].mean().round(6).to_dict()
        fp = distractors.get(model, {}).get(REGION)
        if fp:
            on = fp["fp_lesions_mean"] - fp["fp_elsewhere_mean"]
            row["FP lesions on distractors / all (per seed)"] = f"{on:.1f} / {fp['fp_lesions_mean']:.1f}"
            record["distractor_fp"] = fp
        rows.append(row)
        records.append(record)
    return pd.DataFrame(rows), records


def comparisons(stats: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Each model against the reference (sgnet stats): mean difference, Wilcoxon p, Holm p, effect size."""
    block = stats[(stats["region"] == REGION) & stats["metric"].isin(COMPARED) & (stats["model"] != reference)]
    rows = []
    for r in block.itertuples():
        rows.append({"metric": LABELS[r.metric], "model": r.model, "pairs": int(r.n_pairs),
                     "mean diff (model − ref)": f"{r.mean_diff:+.{_digits(r.metric)}f}",
                     "Wilcoxon p": f"{r.wilcoxon_p:.3f}" if np.isfinite(r.wilcoxon_p) else "–",
                     "Holm p": f"{r.wilcoxon_p_holm:.3f}" if np.isfinite(r.wilcoxon_p_holm) else "–",
                     "effect (+ = better)": f"{r.effect_size:+.2f}" if np.isfinite(r.effect_size) else "–",
                     "exceeds seed spread": {True: "yes", False: "no"}.get(r.exceeds_seed_spread, "–")})
    order = {label: i for i, label in enumerate(LABELS[m] for m in COMPARED)}
    return pd.DataFrame(rows).sort_values(["metric", "model"], key=lambda c: c.map(order) if c.name == "metric" else c)


def validated_table(validated_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each model at its validated gate threshold against itself at the trained one (test split):
    the display table and the sgnet stats rows behind it."""
    frames = []
    for stats_file in sorted(validated_dir.glob("stats_*/stats.csv")):
        stats = pd.read_csv(stats_file)
        frames.append(stats[(stats["region"] == REGION) & stats["metric"].isin(COMPARED)])
    rows_behind = pd.concat(frames, ignore_index=True)
    rows = []
    for r in rows_behind[rows_behind["model"] != rows_behind["reference"]].itertuples():
        trained = rows_behind[(rows_behind["model"] == r.reference) & (rows_behind["metric"] == r.metric)]["mean"]
        d = _digits(r.metric)
        rows.append({"model": r.reference, "metric": LABELS[r.metric],
                     "trained threshold": f"{trained.iloc[0]:.{d}f}", "validated threshold": f"{r.mean:.{d}f}",
                     "diff": f"{r.mean_diff:+.{d}f}",
                     "Wilcoxon p": f"{r.wilcoxon_p:.3f}" if np.isfinite(r.wilcoxon_p) else "–"})
    return pd.DataFrame(rows), rows_behind


def training_table(curves: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Per gated model and level: training open fraction (mean over seeds) at the first logged step,
    at a third and two thirds of training, and at the last logged step."""
    rows, record = [], {}
    for model, mine in curves.groupby("model", sort=False):
        steps = sorted(mine["step"].unique())
        marks = [steps[0], steps[len(steps) // 3], steps[2 * len(steps) // 3], steps[-1]]
        row = {"model": model}
        for level, per_level in mine.groupby("level"):
            at = per_level.groupby("step")["open_fraction"].mean()
            row[f"level {level} (steps {', '.join(map(str, marks))})"] = " → ".join(f"{at[s]:.2f}" for s in marks)
            record.setdefault(model, {})[f"level{level}"] = {str(s): float(at[s]) for s in marks}
        rows.append(row)
    return pd.DataFrame(rows), record


def scan_table(scans: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Per hard-gated model and threshold: validation means over runs of precision, recall, lesion F1,
    false-positive lesions (WT) and open fraction per level; and whether every run's open fractions
    were non-increasing in the threshold."""
    rows, record = [], {}
    for model, mine in scans.groupby("model", sort=False):
        monotone = all((np.diff(run.sort_values("threshold")["value"].to_numpy()) <= 0).all()
                       for _, run in mine[mine["metric"].str.startswith("gate_open_fraction_")]
                       .groupby(["seed", "metric"]))
        record[model] = {"open_fraction_non_increasing_in_every_run": bool(monotone),
                         "operating_points": mine.drop_duplicates("seed")["chosen"].tolist(), "by_threshold": {}}
        for threshold, at in mine.groupby("threshold"):
            means = at.groupby(["metric", "region"])["value"].mean()
            row = {"model": model, "gate threshold": threshold}
            for metric in ("precision", "recall", "lesion_f1", "lesion_fp"):
                row[LABELS[metric]] = f"{means[(metric, REGION)]:.{_digits(metric)}f}"
            levels = sorted(m for m, r in means.index if m.startswith("gate_open_fraction_"))
            row["open fraction (levels 0/1/2)"] = " / ".join(f"{means[(m, 'all')]:.2f}" for m in levels)
            rows.append(row)
            record[model]["by_threshold"][str(threshold)] = {f"{m}:{r}": float(v) for (m, r), v in means.items()}
    return pd.DataFrame(rows), record


def markdown_table(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("benchmark", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reference", default="sgnet_nogate")
    parser.add_argument("--validated", type=Path, help="output folder of operating_point_test.py, with "
                        "stats_<model>/ from sgnet stats")
    args = parser.parse_args(argv)
    bench_dir, out = args.benchmark, args.out
    out.mkdir(parents=True, exist_ok=True)
    bench = load_benchmark_folder(bench_dir)
    stats = pd.read_csv(bench_dir / "stats" / "stats.csv")
    distractors = json.loads((bench_dir / "distractor_fp.json").read_text())
    for source in (bench_dir / "stats" / "stats.csv", bench_dir / "stats" / "stats.json",
                   bench_dir / "distractor_fp.csv", bench_dir / "distractor_fp.json"):
        shutil.copyfile(source, out / source.name)
    atomic_write_text(out / "results.csv", bench.results.to_csv(index=False))

    curves, scans = training_gate_curves(bench), gate_scans(bench)
    atomic_write_text(out / "training_open_fraction.csv", curves.to_csv(index=False))
    atomic_write_text(out / "gate_scans.csv", scans.to_csv(index=False))
    colours = _model_colours(bench.models)
    atomic_write_bytes(out / "training_open_fraction.png", _gate_training_plot(bench, curves, colours).png)
    atomic_write_bytes(out / "threshold_scan.png", _gate_scan_blocks(bench, scans, colours)[0].png)
    atomic_write_bytes(out / "precision_recall.png",
                       _precision_recall_plot(bench, subject_values(bench.results))[0].png)

    table, records = headline(bench, distractors["models"])
    compared = comparisons(stats, args.reference)
    training, training_record = training_table(curves)
    scan, scan_record = scan_table(scans)
    validated, validated_rows = validated_table(args.validated) if args.validated else (None, None)
    if validated_rows is not None:
        atomic_write_text(out / "validated_threshold.csv", validated_rows.to_csv(index=False))
        points = {run.parent.name + "/" + run.name: json.loads((run / "run.json").read_text())["test_gate_threshold"]
                  for run in sorted(args.validated.glob("*/seed*"))}
    info = json.loads((bench_dir / "benchmark.json").read_text())
    atomic_write_json(out / "experiment.json", {
        "benchmark": str(bench_dir), "commit": info.get("commit"), "versions": info.get("versions"),
        "seeds": info.get("seeds"), "budget": info.get("budget"), "region": REGION,
        "n_runs": len(bench.complete), "reference": args.reference, "models": records,
        "fit_and_test_wall_time_s": {"total": float(bench.runs["wall_time_s"].sum()),
                                     **bench.runs.groupby("model")["wall_time_s"].mean().round(1).to_dict()},
        "training_open_fraction": training_record, "gate_scans": scan_record,
        "lesion_settings": distractors.get("lesion_settings"),
        "validated_threshold": None if validated_rows is None else {
            "tested_gate_thresholds": points, "rows": json.loads(validated_rows.to_json(orient="records"))},
    })
    sections = [("Test results (region WT; mean ± SD over test subjects of each subject's seed mean)", table),
                (f"Paired comparisons with {args.reference} (sgnet stats; WT)", compared),
                ("Training open fraction per level (mean over seeds)", training),
                ("Gate threshold at inference, fixed weights, validation split (mean over seeds)", scan)]
    if validated is not None:
        sections.append(("Test split at the gate threshold chosen on validation, against the trained threshold "
                         "(mean over test subjects of seed means; Wilcoxon paired by subject)", validated))
    atomic_write_text(out / "tables.md", "\n\n".join(f"**{title}**\n\n{markdown_table(frame)}"
                                                    for title, frame in sections) + "\n")
    print((out / "tables.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
