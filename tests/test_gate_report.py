"""Gate open fractions in statistics and the report: descriptive rows (no effect size, no Holm family),
the report's Gates section (training curve from the runs' logs, open fraction at test from the results,
the threshold curve from the runs' gate scans), on the small fake benchmark of ``_fake_benchmark``
with the files a gated run writes added to its SG-Net runs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from _fake_benchmark import write_fake_benchmark

from sgnet_lightning.analysis.report import build_report
from sgnet_lightning.analysis.results import gather_results
from sgnet_lightning.analysis.stats import compute_stats

SEEDS = (0, 1)
LEVELS = 3
THRESHOLDS = (0.3, 0.5, 0.7)


def _add_gate_files(run_dir, seed: int) -> None:
    """What a gated run adds: open-fraction rows in results.csv, the training log's open fractions,
    a gate scan on two validation subjects, and (seed 0 only) a stored operating point."""
    results = pd.read_csv(run_dir / "results.csv", dtype={"subject": str})
    rows = [{"subject": s, "region": "all", "metric": f"gate_open_fraction_{level}",
             "value": 0.2 + 0.1 * level + 0.01 * i + 0.02 * seed, "convention": ""}
            for i, s in enumerate(sorted(results["subject"].unique())) for level in range(LEVELS)]
    pd.concat([results, pd.DataFrame(rows)]).to_csv(run_dir / "results.csv", index=False)
    steps = np.arange(0, 50, 5)
    log = pd.DataFrame({"epoch": 0, "step": steps, "train/loss": 1.0 / (1 + steps),
                        **{f"gate/open_fraction_{level}": np.linspace(1.0, 0.3 - 0.1 * level, steps.size)
                           for level in range(LEVELS)}})
    (run_dir / "logs").mkdir()
    log.to_csv(run_dir / "logs" / "metrics.csv", index=False)
    scan = []
    for t in THRESHOLDS:
        for subject in ("v1", "v2"):
            scan += [{"threshold": t, "subject": subject, "region": "WT", "metric": "precision", "value": 0.5 + t / 2},
                     {"threshold": t, "subject": subject, "region": "WT", "metric": "recall", "value": 1.2 - t},
                     {"threshold": t, "subject": subject, "region": "WT", "metric": "lesion_fp",
                      "value": float(subject == "v1") + 3 * (1 - t)}]
            scan += [{"threshold": t, "subject": subject, "region": "all", "metric": f"gate_open_fraction_{level}",
                      "value": 1 - t + 0.01 * level} for level in range(LEVELS)]
    (run_dir / "gate_scan").mkdir()
    pd.DataFrame(scan).assign(convention="").to_csv(run_dir / "gate_scan" / "gate_scan.csv", index=False)
    if seed == 0:
        (run_dir / "operating_point.json").write_text(json.dumps({"gate_threshold": 0.7}))


@pytest.fixture(scope="module")
def gated_bench(tmp_path_factory):
    bench = write_fake_benchmark(tmp_path_factory.mktemp("gates"), n_subjects=4, seeds=SEEDS,
                                 with_incomplete_run=False, models=("unet", "sgnet"))
    for seed in SEEDS:
        _add_gate_files(bench / "sgnet" / f"seed{seed}", seed)
    return bench


def test_gate_open_fractions_are_descriptive_in_the_statistics(gated_bench):
    results = gather_results(gated_bench)
    stats = compute_stats(results, reference="unet", n_bootstrap=200)
    gates = stats[stats["metric"].str.startswith("gate_open_fraction_")]
    assert sorted(gates["metric"].unique()) == [f"gate_open_fraction_{level}" for level in range(LEVELS)]
    assert set(gates["region"]) == {"all"}
    assert gates["higher_is_better"].isna().all() and (gates["family"] == "").all()
    assert gates["effect_size"].isna().all() and gates["wilcoxon_p_holm"].isna().all()
    sgnet = gates[gates["model"] == "sgnet"].set_index("metric")
    expected = results[(results["model"] == "sgnet") & (results["metric"] == "gate_open_fraction_1")]
    assert sgnet.loc["gate_open_fraction_1", "mean"] == pytest.approx(expected["value"].mean())
    assert "descriptive (a gate open fraction)" in sgnet.loc["gate_open_fraction_1", "note"]


@pytest.mark.slow
def test_report_shows_gates_over_training_at_test_and_against_the_threshold(gated_bench, tmp_path):
    html_path, md_path = build_report(gated_bench, tmp_path, n_bootstrap=200)
    markdown, html = md_path.read_text(), html_path.read_text()
    assert "## Gates" in markdown
    for figure in ("gate_training", "gate_threshold_scan"):
        assert (tmp_path / "figures" / f"{figure}.png").stat().st_size > 5000
        assert f"figures/{figure}.png" in markdown
    assert html.count("data:image/png;base64") >= markdown.count("![")

    # the test table: mean +- SD over subjects of the seed-averaged rows of results.csv
    results = gather_results(gated_bench)
    level2 = results[(results["model"] == "sgnet") & (results["metric"] == "gate_open_fraction_2")]
    per_subject = level2.groupby("subject")["value"].mean()
    assert f"{per_subject.mean():.3f} ± {per_subject.std():.3f}" in markdown
    # "all" is not a region of the result tables
    assert "Region all" not in markdown and "Region WT" in markdown

    # the threshold curve's data: validation means per run and threshold, with the stored point
    scans = pd.read_csv(tmp_path / "gate_scans.csv")
    fp = scans[(scans["metric"] == "lesion_fp") & (scans["seed"] == 1)].set_index("threshold")["value"]
    assert fp.to_dict() == pytest.approx({t: 0.5 + 3 * (1 - t) for t in THRESHOLDS})
    assert set(scans.loc[scans["seed"] == 0, "chosen"]) == {0.7}
    assert scans.loc[scans["seed"] == 1, "chosen"].isna().all()
    assert "0.70, –" in markdown  # the operating points per run, in seed order
