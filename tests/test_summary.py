"""The results table `make demo` prints (`sgnet summary`), on a small fake benchmark written to disk
with lesion and gate rows added to its runs' results files."""

from __future__ import annotations

import pandas as pd
import pytest
from _fake_benchmark import write_fake_benchmark

from sgnet_lightning.analysis.summary import summary_table
from sgnet_lightning.cli import main

SEEDS = (0, 1)
N_SUBJECTS = 4


def _add_rows(bench, model: str, rows: list[tuple[int, str, str, str, float]]) -> None:
    """Append (seed, subject, region, metric, value) rows to the runs' own results.csv."""
    for seed in SEEDS:
        path = bench / model / f"seed{seed}" / "results.csv"
        table = pd.read_csv(path, dtype=str)
        extra = pd.DataFrame([{"subject": s, "region": r, "metric": m, "value": repr(v), "convention": ""}
                              for k, s, r, m, v in rows if k == seed])
        pd.concat([table, extra]).to_csv(path, index=False)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    bench = write_fake_benchmark(tmp_path_factory.mktemp("fake"), n_subjects=N_SUBJECTS, seeds=SEEDS,
                                 models=("unet", "sgnet"))
    subjects = [f"s{i:03d}" for i in range(N_SUBJECTS)]
    # false-positive lesions of the main region (WT): unet 2 + seed + i, sgnet 0 with seed 0, 1 with seed 1
    _add_rows(bench, "unet", [(k, s, "WT", "lesion_fp", 2.0 + k + i) for k in SEEDS for i, s in enumerate(subjects)])
    _add_rows(bench, "sgnet", [(k, s, "WT", "lesion_fp", float(k)) for k in SEEDS for s in subjects]
              # an ET false positive that a table of the wrong region would show
              + [(k, s, "ET", "lesion_fp", 50.0) for k in SEEDS for s in subjects]
              # gate open fractions at test: level 0 mostly open, level 1 half, level 2 nearly shut;
              # level 10 only to check that levels are ordered by number, not as text
              + [(k, s, "all", f"gate_open_fraction_{level}", value + 0.02 * k + 0.02 * i)
                 for k in SEEDS for i, s in enumerate(subjects)
                 for level, value in ((2, 0.05), (0, 0.8), (10, 0.3), (1, 0.5))])
    return bench


def test_summary_reports_main_region_fp_lesions_and_gates(bench):
    table = summary_table(bench)
    results = pd.concat(pd.read_csv(bench / m / f"seed{k}" / "results.csv").assign(model=m, seed=k)
                        for m in ("unet", "sgnet") for k in SEEDS)
    wt_dice = results[(results["region"] == "WT") & (results["metric"] == "dice")]
    assert table.index.name == f"model (WT, {N_SUBJECTS} test subjects, 2 seeds)"
    for model in ("unet", "sgnet"):
        dice = wt_dice[wt_dice["model"] == model]
        mean = dice["value"].mean()
        assert table.loc[model, "Dice"].startswith(f"{mean:.3f} +- ")
        by_seed = [dice[dice["seed"] == k]["value"].mean() for k in SEEDS]
        assert table.loc[model, "Dice by seed"] == "/".join(f"{v:.3f}" for v in by_seed)
    # unet: 2 + seed + subject index, averaged over seeds: 2.5, 3.5, 4.5, 5.5 -> 4.0 +- 1.3
    assert table.loc["unet", "FP lesions"] == "4.0 +- 1.3"
    assert table.loc["sgnet", "FP lesions"] == "0.5 +- 0.0"  # WT only, not the ET rows
    # level means: value + 0.01 (seeds) + 0.03 (subjects), coarsest level first, numeric level order
    assert table.loc["sgnet", "gate open"] == "0.84/0.54/0.09/0.34"
    assert table.loc["unet", "gate open"] == "-"
    assert list(table.index) == ["unet", "sgnet"]  # the benchmark's order: the reference first


def test_sgnet_summary_command_prints_table_and_legend(bench, capsys):
    assert main(["summary", str(bench)]) == 0
    out = capsys.readouterr().out
    assert "FP lesions" in out and "gate open" in out and "0.84/0.54/0.09/0.34" in out
    assert "coarsest level first" in out and str(bench / "results.csv") in out


def test_sgnet_summary_of_a_folder_without_runs_is_one_line(tmp_path, capsys):
    assert main(["summary", str(tmp_path)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path) in err
