"""Gathering a benchmark folder and building its report, on a small fake benchmark written to disk."""

from __future__ import annotations

import base64
import json
import logging
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from _fake_benchmark import write_fake_benchmark

from sgnet_lightning.analysis.document import check_in_browser, find_chromium
from sgnet_lightning.analysis.report import build_report
from sgnet_lightning.analysis.results import COLUMNS, gather_results, load_results, write_results
from sgnet_lightning.errors import DataError, SgnetError

MODELS = ["unet", "sgnet", "segguided"]
N_SUBJECTS, SEEDS, REGIONS, METRICS = 5, (0, 1), 3, 4


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return write_fake_benchmark(tmp_path_factory.mktemp("fake"), n_subjects=N_SUBJECTS, seeds=SEEDS)


@pytest.fixture(scope="module")
def report(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    html_path, md_path = build_report(bench, out, n_bootstrap=2000)
    return out, html_path, md_path


def _md_table_rows(markdown: str, caption: str) -> list[list[str]]:
    """Body rows of the Markdown table under ``**caption**``, split into cells."""
    block = markdown.split(f"**{caption}**", 1)[1].strip().split("\n\n", 1)[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()[2:]]


def test_gather_takes_complete_runs_only_and_warns(bench, caplog):
    with caplog.at_level(logging.WARNING):
        results = gather_results(bench)
    assert list(results.columns) == COLUMNS
    assert len(results) == len(MODELS) * len(SEEDS) * N_SUBJECTS * REGIONS * METRICS
    assert set(results["model"]) == set(MODELS) and set(results["seed"]) == set(SEEDS)
    assert results["fold"].isna().all() and results["subject"].str.startswith("s").all()
    assert "ignored 1 incomplete run(s)" in caplog.text and "unet/seed2" in caplog.text
    # values are the fake's own, read back unchanged
    raw = pd.read_csv(bench / "sgnet" / "seed1" / "results.csv")
    mine = results[(results["model"] == "sgnet") & (results["seed"] == 1)]
    np.testing.assert_array_equal(mine["value"].to_numpy(), raw["value"].to_numpy())


def test_results_round_trip_keeps_types(bench, tmp_path):
    results = gather_results(bench)
    write_results(results, tmp_path / "results.csv")
    pd.testing.assert_frame_equal(load_results(tmp_path / "results.csv"), results)
    pd.testing.assert_frame_equal(load_results(bench), results)
    # subject IDs that look like numbers stay strings; folds survive as integers
    table = results.head(2).assign(subject="007", fold=pd.array([1, 2], dtype="Int64"))
    write_results(table, tmp_path / "ids.csv")
    back = load_results(tmp_path / "ids.csv")
    assert list(back["subject"]) == ["007", "007"] and list(back["fold"]) == [1, 2]


def test_gather_reads_fold_runs(tmp_path):
    bench = tmp_path / "bench"
    (bench / "benchmark.json").parent.mkdir()
    (bench / "benchmark.json").write_text(json.dumps({"name": "folds", "dataset": "bml", "models": {}}))
    for fold, complete in ((0, True), (1, True), (2, False)):
        run = bench / "unet" / "seed3" / f"fold{fold}"
        run.mkdir(parents=True)
        (run / "run.json").write_text(json.dumps({"model": "unet", "seed": 3, "fold": fold}))
        (run / "results.csv").write_text(f"subject,region,metric,value,convention\nf{fold},WT,dice,0.5,both_present\n")
        if complete:
            (run / "COMPLETE").write_text("2026-01-02T03:04:05\n")
    results = gather_results(bench)
    assert list(results["fold"]) == [0, 1] and list(results["subject"]) == ["f0", "f1"]
    assert set(results["seed"]) == {3}


def test_bad_run_files_name_the_file(bench, tmp_path):
    copy = shutil.copytree(bench, tmp_path / "bench")
    results_csv = copy / "sgnet" / "seed0" / "results.csv"
    pd.read_csv(results_csv).drop(columns="convention").to_csv(results_csv, index=False)
    with pytest.raises(DataError, match=r"sgnet/seed0/results.csv.*missing column\(s\) convention"):
        gather_results(copy)
    shutil.copy(bench / "sgnet" / "seed0" / "results.csv", results_csv)
    run_json = copy / "unet" / "seed1" / "run.json"
    run_json.write_text(json.dumps({**json.loads(run_json.read_text()), "seed": 7}))
    with pytest.raises(DataError, match=r"unet/seed1/run.json.*seed"):
        gather_results(copy)


def test_report_files_tables_and_embedded_figures(report):
    out, html_path, md_path = report
    page, markdown = html_path.read_text(), md_path.read_text()
    figures = sorted((out / "figures").glob("*.png"))
    assert len(figures) >= 9  # 4 box plots, PR, seed spread, significance, 2 example slices, attention
    embedded = re.findall(r'<img src="data:image/png;base64,', page)
    assert len(embedded) == len(figures) == len(re.findall(r"<img ", page))  # nothing links outside
    for name in re.findall(r"!\[[^]]*\]\((figures/[^)]+)\)", markdown):
        assert (out / name).is_file()
    assert len(re.findall(r"!\[", markdown)) == len(figures)
    for section in ("Results", "Comparisons", "Empty-mask conventions", "Significance matrix",
                    "Example slices", "Attention maps", "Seed spread", "Precision and recall"):  # fmt: skip
        assert f"<h2>{section}</h2>" in page and f"## {section}" in markdown
    assert "| reference model | unet |" in markdown and "| commit | 0123abc |" in markdown
    assert "1 incomplete ignored (unet/seed2)" in markdown and "| seeds | 0, 1 |" in markdown
    for file in ("results.csv", "stats.csv", "stats.json", "pairwise_dice_WT.csv", "attention_overlap.csv"):
        assert (out / file).is_file()


def test_report_numbers_come_from_the_results(bench, report):
    out, _, md_path = report
    markdown = md_path.read_text()
    raw = pd.concat(pd.read_csv(bench / "unet" / f"seed{s}" / "results.csv") for s in SEEDS)
    wt_dice = raw[(raw["region"] == "WT") & (raw["metric"] == "dice")].groupby("subject")["value"].mean()
    rows = {r[0]: r for r in _md_table_rows(markdown, "Region WT")}
    assert set(rows) == {"unet (reference)", "sgnet", "segguided"}
    assert rows["unet (reference)"][3].startswith(f"{wt_dice.mean():.3f} ± {wt_dice.std(ddof=1):.3f} [")
    assert rows["sgnet"][-3] == "668,673"
    # empty-mask cases: s004 has no ET (both empty, every model, 2 seeds); unet misses ET on s001
    conventions = {(r[0], r[1]): r for r in _md_table_rows(markdown, "Empty-mask convention cases per model")}
    assert conventions[("unet", "pred_empty")][2:4] == ["2", "1"]
    assert conventions[("unet", "pred_empty")][5] == "penalty_mm=374"
    assert all(conventions[(m, "both_empty")][2] == "2" for m in MODELS)
    assert ("sgnet", "pred_empty") not in conventions
    # attention: the fake's maps threshold exactly to the sub-regions; s004's empty ET is left out
    overlap = {r[1]: r for r in _md_table_rows(markdown, "Attention-map overlap with the reference sub-regions")}
    assert set(overlap) == {"NCR", "ED", "ET"}
    assert all(r[0] == "segguided" and r[2] == "1.000 ± 0.000" for r in overlap.values())
    assert overlap["ET"][3:] == ["4", "1"] and overlap["NCR"][3:] == ["5", "0"]
    per_run = pd.read_csv(out / "attention_overlap.csv")
    assert len(per_run) == len(SEEDS) * N_SUBJECTS * 3 and per_run["dice"].dropna().eq(1.0).all()
    stats = pd.read_csv(out / "stats.csv")
    assert set(stats["model"]) == set(MODELS) and (stats["reference"] == "unet").all()


def test_report_is_reproducible_from_the_folder(bench, report, tmp_path):
    _, html_path, md_path = report
    again_html, again_md = build_report(bench, tmp_path, reference="unet", n_bootstrap=2000)
    assert again_html.read_bytes() == html_path.read_bytes()
    assert again_md.read_bytes() == md_path.read_bytes()


def test_report_without_cache_and_with_two_models(tmp_path):
    bench = write_fake_benchmark(tmp_path, n_subjects=3, seeds=(0,), with_incomplete_run=False,
                                 models=("sgnet", "segguided"))  # fmt: skip
    shutil.rmtree(tmp_path / "cache")
    html_path, md_path = build_report(bench, tmp_path / "report", n_bootstrap=500)
    markdown = md_path.read_text()
    # no unet: the first model of benchmark.json (written with sorted keys)
    assert "| reference model | segguided |" in markdown
    assert "was not found: example slices and attention maps are left out" in markdown
    assert "Friedman needs 3 or more models (2 here)" in markdown
    assert html_path.is_file() and not (tmp_path / "report" / "attention_overlap.csv").exists()


def _needs_chromium():
    return pytest.mark.skipif(find_chromium() is None, reason="Chromium not installed (apt-get install chromium)")


@_needs_chromium()
def test_every_report_image_loads_in_chromium(report):
    out, html_path, _ = report
    result = check_in_browser(html_path)
    assert result == {"images": len(list((out / "figures").glob("*.png"))), "loaded": result["images"]}


@_needs_chromium()
def test_browser_check_sees_a_broken_image(report, tmp_path):
    out, _, _ = report
    png = next((out / "figures").glob("*.png")).read_bytes()
    page = tmp_path / "page.html"
    page.write_text(
        "<!DOCTYPE html><html><body>"
        f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        '<img src="figures/not-there.png"></body></html>'
    )
    assert check_in_browser(page) == {"images": 2, "loaded": 1}


def test_browser_check_without_chromium_is_a_clear_error(report, monkeypatch):
    monkeypatch.setenv("PATH", "")
    with pytest.raises(SgnetError, match="Chromium not found"):
        check_in_browser(report[1])
