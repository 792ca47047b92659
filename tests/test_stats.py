"""Statistics against hand-computed values and scipy on small tables."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from sgnet_lightning.analysis.results import load_results
from sgnet_lightning.analysis.stats import (
    STATS_COLUMNS,
    ZERO_METHOD,
    bootstrap_ci,
    compute_stats,
    friedman,
    holm,
    pairwise_wilcoxon,
    primary_endpoint,
    rank_biserial,
    wilcoxon_p,
    write_stats,
)
from sgnet_lightning.cli import main
from sgnet_lightning.errors import ConfigError, SgnetError

# Subject values chosen exactly representable in binary, so ties and zeros are exact.
REFERENCE = [0.5, 0.5, 0.25, 0.75, 0.5, 0.25]
# differences to REFERENCE: 0, +.125, -.125, +.125, +.25, +.25 (one zero, ties at .125 and .25)
BETTER = [0.5, 0.625, 0.125, 0.875, 0.75, 0.5]
SUBJECTS = [f"s{i}" for i in range(len(REFERENCE))]


def _table(models: dict[str, list[float]], metric: str = "dice", seed_offsets=(0.125, -0.125)) -> pd.DataFrame:
    """Tidy results: every model's subject values, split into seeds whose mean is the value."""
    rows = [
        {"model": model, "seed": seed, "fold": pd.NA, "subject": subject, "region": "WT",
         "metric": metric, "value": value + offset, "convention": ""}
        for model, values in models.items()
        for seed, offset in enumerate(seed_offsets)
        for subject, value in zip(SUBJECTS, values)
    ]  # fmt: skip
    return pd.DataFrame(rows)


def _row(stats: pd.DataFrame, model: str, metric: str = "dice") -> pd.Series:
    return stats[(stats["model"] == model) & (stats["metric"] == metric)].iloc[0]


def test_holm_on_known_p_values():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.01, np.nan, 0.04]), [0.02, np.nan, 0.04])  # m = 2
    np.testing.assert_allclose(holm([0.6, 0.7]), [1.0, 1.0])  # capped at 1
    assert np.isnan(holm([np.nan])).all() and holm([]).size == 0


def test_rank_biserial_by_hand():
    # zero dropped; |d| 1, 2, 3, 3 -> ranks 1, 2, 3.5, 3.5; R+ = 8, R- = 2 -> (8 - 2) / 10
    assert rank_biserial([1, -2, 3, 0, 3]) == pytest.approx(0.6)
    assert rank_biserial([0.1, 0.2]) == 1.0
    assert math.isnan(rank_biserial([0.0, 0.0]))


def test_summary_over_subjects_and_seeds():
    seed0, seed1 = [0.5, 0.7, 0.9], [0.7, 0.7, 0.6]
    rows = [
        {"model": "a", "seed": seed, "fold": pd.NA, "subject": f"s{i}", "region": "WT",
         "metric": "dice", "value": v, "convention": ""}
        for seed, values in ((0, seed0), (1, seed1)) for i, v in enumerate(values)
    ]  # fmt: skip
    row = _row(compute_stats(pd.DataFrame(rows), "a", n_bootstrap=200), "a")
    subject_values = [0.6, 0.7, 0.75]
    assert row["n_subjects"] == 3 and row["n_seeds"] == 2
    assert row["mean"] == pytest.approx(np.mean(subject_values))
    assert row["sd"] == pytest.approx(0.0763762616, abs=1e-9)  # SD (ddof 1) of 0.6, 0.7, 0.75
    assert row["seed_mean"] == pytest.approx((0.7 + 2 / 3) / 2)
    assert row["seed_sd"] == pytest.approx(abs(0.7 - 2 / 3) / math.sqrt(2))
    assert row["note"] == "reference; Friedman needs 3 or more models (1 here)"


def test_comparison_matches_scipy_with_ties_and_zero_difference():
    stats = compute_stats(_table({"ref": REFERENCE, "better": BETTER}), "ref", n_bootstrap=200)
    row = _row(stats, "better")
    diff = np.subtract(BETTER, REFERENCE)
    assert row["n_pairs"] == 6 and row["mean_diff"] == pytest.approx(diff.mean())
    # 6 pairs with ties and a zero: scipy enumerates all sign flips (no approximation to correct)
    assert row["wilcoxon_p"] == pytest.approx(scipy_stats.wilcoxon(diff, zero_method=ZERO_METHOD).pvalue)
    assert row["ttest_p"] == pytest.approx(scipy_stats.ttest_rel(BETTER, REFERENCE).pvalue)
    # zero dropped; |d| .125 x3 (rank 2 each), .25 x2 (rank 4.5 each); R+ = 2+2+4.5+4.5, R- = 2
    assert row["effect_size"] == pytest.approx(11 / 15)
    assert row["wilcoxon_p_holm"] == pytest.approx(row["wilcoxon_p"])  # one comparison: no change
    assert _row(stats, "ref")["note"].startswith("reference")


def test_effect_size_sign_follows_metric_direction():
    # the same numbers as HD95 (lower is better): the model with larger values is WORSE
    stats = compute_stats(_table({"ref": REFERENCE, "model": BETTER}, metric="hd95_mm"), "ref", n_bootstrap=200)
    assert _row(stats, "model", "hd95_mm")["effect_size"] == pytest.approx(-11 / 15)
    assert not _row(stats, "model", "hd95_mm")["higher_is_better"]
    stats = compute_stats(_table({"ref": BETTER, "model": REFERENCE}, metric="hd95_mm"), "ref", n_bootstrap=200)
    assert _row(stats, "model", "hd95_mm")["effect_size"] == pytest.approx(11 / 15)


def test_holm_across_models_and_friedman_against_scipy():
    models = {"ref": REFERENCE, "better": BETTER, "worse": [v - 0.25 for v in REFERENCE],
              "same": list(REFERENCE)}  # fmt: skip
    table = _table(models)
    # a subject only some models have: left out of Friedman, kept in pairwise tests
    partial = table[(table["subject"] == "s0") & (table["model"] != "same")].assign(subject="extra")
    table = pd.concat([table, partial])
    stats = compute_stats(table, "ref", n_bootstrap=200)
    others = stats[stats["model"] != "ref"].set_index("model")
    np.testing.assert_allclose(others["wilcoxon_p_holm"], holm(others["wilcoxon_p"]), equal_nan=True)
    assert others.loc["better", "n_pairs"] == 7
    same = others.loc["same"]
    assert np.isnan(same["wilcoxon_p"]) and np.isnan(same["effect_size"]) and np.isnan(same["ttest_p"])
    assert "all paired differences are zero" in same["note"]
    worse = others.loc["worse"]  # constant difference: Wilcoxon defined, t-test not
    assert worse["effect_size"] == -1.0 and np.isnan(worse["ttest_p"])
    assert "t-test undefined" in worse["note"]
    expected = scipy_stats.friedmanchisquare(*models.values())
    assert stats["friedman_p"].iloc[0] == pytest.approx(expected.pvalue)
    assert stats["friedman_stat"].iloc[0] == pytest.approx(expected.statistic)
    assert (stats["friedman_n_subjects"] == 6).all()
    assert friedman(table, "dice", "WT")["n_models"] == 4


def test_exceeds_seed_spread_rule():
    # two identical seeds for the reference (seed_sd 0); "better" gets its seed 1 shifted by 0.1
    table = _table({"ref": REFERENCE, "better": BETTER}, seed_offsets=(0.0, 0.0))
    table.loc[(table["model"] == "better") & (table["seed"] == 1), "value"] += 0.1
    row = _row(compute_stats(table, "ref", n_bootstrap=200), "better")
    # seed means differ by 0.1 -> seed_sd 0.1/sqrt(2) = 0.071; mean_diff = 0.625/6 + 0.1/2 = 0.154
    assert row["seed_sd"] == pytest.approx(0.1 / math.sqrt(2))
    assert row["mean_diff"] == pytest.approx(0.625 / 6 + 0.05) and row["exceeds_seed_spread"] is True
    # shift 0.6: seed_sd 0.6/sqrt(2) = 0.424 > mean_diff 0.625/6 + 0.3 = 0.404
    table.loc[(table["model"] == "better") & (table["seed"] == 1), "value"] += 0.5
    row = _row(compute_stats(table, "ref", n_bootstrap=200), "better")
    assert row["seed_sd"] == pytest.approx(0.6 / math.sqrt(2))
    assert row["mean_diff"] == pytest.approx(0.625 / 6 + 0.3) and row["exceeds_seed_spread"] is False


def test_degenerate_cases_give_nan_with_notes():
    # one seed
    stats = compute_stats(_table({"ref": REFERENCE, "m": BETTER}, seed_offsets=(0.0,)), "ref", n_bootstrap=200)
    row = _row(stats, "m")
    assert np.isnan(row["seed_sd"]) and row["exceeds_seed_spread"] is None
    assert "1 seed(s): seed_sd needs 2 or more" in row["note"]
    assert not np.isnan(row["wilcoxon_p"])
    # one subject
    table = _table({"ref": REFERENCE, "m": BETTER})
    stats = compute_stats(table[table["subject"] == "s1"], "ref", n_bootstrap=200)
    row = _row(stats, "m")
    assert row["n_subjects"] == 1 and np.isnan(row["sd"]) and np.isnan(row["ci_low"])
    assert np.isnan(row["wilcoxon_p"]) and "1 paired subject(s)" in row["note"]
    # a model without any value for a region the reference has
    table = _table({"ref": REFERENCE, "m": BETTER})
    table.loc[table["model"] == "m", "value"] = np.nan
    row = _row(compute_stats(table, "ref", n_bootstrap=200), "m")
    assert row["n_subjects"] == 0 and np.isnan(row["mean"]) and "12 missing (NaN) value(s)" in row["note"]
    # a reference without values: nothing to compare with
    row = _row(compute_stats(table, "m", n_bootstrap=200), "ref")
    assert np.isnan(row["wilcoxon_p"]) and "reference has no values" in row["note"]


def test_zero_differences_survive_floating_point_noise():
    # the same three seed values in another order average to values that differ in the last bit
    rows = [
        {"model": model, "seed": seed, "fold": pd.NA, "subject": subject, "region": "WT",
         "metric": "dice", "value": v, "convention": ""}
        for subject in ("a", "b", "c")
        for model, values in (("ref", (0.1, 0.2, 0.3)), ("m", (0.3, 0.2, 0.1)))
        for seed, v in enumerate(values)
    ]  # fmt: skip
    row = _row(compute_stats(pd.DataFrame(rows), "ref", n_bootstrap=200), "m")
    assert np.isnan(row["wilcoxon_p"]) and "all paired differences are zero" in row["note"]


def test_bootstrap_ci_is_seeded_and_contains_the_mean():
    values = np.array(REFERENCE + BETTER)
    first, again = bootstrap_ci(values, 2000, seed=3), bootstrap_ci(values, 2000, seed=3)
    assert first == again
    assert first[0] < values.mean() < first[1]
    assert bootstrap_ci(values, 2000, seed=4) != first
    assert bootstrap_ci([0.7, 0.7, 0.7], 500) == (pytest.approx(0.7), pytest.approx(0.7))
    assert all(math.isnan(v) for v in bootstrap_ci([0.5], 500))
    stats = compute_stats(_table({"ref": REFERENCE}), "ref", n_bootstrap=2000, seed=3)
    assert (stats["ci_low"].iloc[0], stats["ci_high"].iloc[0]) == bootstrap_ci(REFERENCE, 2000, seed=3)


def test_pairwise_matrix_is_symmetric_and_holm_corrected():
    table = _table({"ref": REFERENCE, "better": BETTER, "worse": [v - 0.25 for v in REFERENCE]})
    matrix = pairwise_wilcoxon(table, "dice", "WT", models=["ref", "better", "worse"])
    assert list(matrix.index) == list(matrix.columns) == ["ref", "better", "worse"]
    assert np.isnan(np.diag(matrix.to_numpy())).all()
    np.testing.assert_allclose(matrix.to_numpy(), matrix.to_numpy().T, equal_nan=True)
    values = {"ref": REFERENCE, "better": BETTER, "worse": [v - 0.25 for v in REFERENCE]}
    raw = [wilcoxon_p(np.subtract(values[a], values[b]))
           for a, b in (("ref", "better"), ("ref", "worse"), ("better", "worse"))]  # fmt: skip
    expected = holm(raw)
    assert matrix.loc["ref", "better"] == pytest.approx(expected[0])
    assert matrix.loc["worse", "ref"] == pytest.approx(expected[1])
    assert matrix.loc["better", "worse"] == pytest.approx(expected[2])


def test_unknown_reference_is_a_clear_error():
    with pytest.raises(ConfigError, match="reference model 'nope'.*ref"):
        compute_stats(_table({"ref": REFERENCE}), "nope")


def test_write_stats_files(tmp_path):
    table = _table({"ref": REFERENCE, "m": BETTER, "n": REFERENCE[::-1]})
    stats = compute_stats(table, "ref", n_bootstrap=200)
    pairwise = {("dice", "WT"): pairwise_wilcoxon(table, "dice", "WT")}
    csv_path, json_path = write_stats(stats, tmp_path, pairwise)
    assert list(pd.read_csv(csv_path).columns) == STATS_COLUMNS
    written = json.loads(json_path.read_text())
    assert written["settings"] == {"reference": "ref", "n_bootstrap": 200, "seed": 0,
                                   "primary_endpoint": {"metric": "dice", "region": "WT"}}
    assert len(written["rows"]) == 3 and written["rows"][0]["wilcoxon_p"] is None
    assert written["pairwise"][0]["models"] == list(pairwise[("dice", "WT")].columns)
    assert (tmp_path / "pairwise_dice_WT.csv").is_file()
    assert not list(tmp_path.glob(".*.tmp"))


# -- Wilcoxon continuity correction ------------------------------------------------------------------


def test_continuity_correction_acts_on_the_normal_approximation_only():
    rng = np.random.default_rng(0)
    large = rng.normal(0.3, 1.0, 60)  # n > 50: scipy takes the normal approximation
    assert wilcoxon_p(large) == pytest.approx(
        scipy_stats.wilcoxon(large, zero_method=ZERO_METHOD, method="asymptotic", correction=True).pvalue)
    assert wilcoxon_p(large) != pytest.approx(
        scipy_stats.wilcoxon(large, zero_method=ZERO_METHOD, method="asymptotic", correction=False).pvalue)
    small = rng.normal(0.3, 1.0, 20)  # no ties, n <= 50: the exact distribution, nothing to correct
    assert wilcoxon_p(small) == pytest.approx(scipy_stats.wilcoxon(small, method="exact").pvalue)


def test_continuity_correction_is_anti_conservative_less_often():
    """Why the correction is applied: against the exact p-value of the same samples (n = 30, no ties),
    the uncorrected normal approximation comes out smaller (claims more than the data support) more
    often than the corrected one."""
    rng = np.random.default_rng(1)
    below = {True: 0, False: 0}
    for _ in range(200):
        d = rng.normal(0.4, 1.0, 30)
        exact = scipy_stats.wilcoxon(d, method="exact").pvalue
        for correction in below:
            below[correction] += scipy_stats.wilcoxon(d, method="asymptotic", correction=correction).pvalue < exact
    assert below[True] < below[False]


# -- directions, seed spread, families -------------------------------------------------------------


def test_volumes_get_no_direction_effect_size_or_holm_family():
    dice = _table({"ref": REFERENCE, "better": BETTER, "worse": [v - 0.25 for v in REFERENCE]})
    volume = _table({"ref": REFERENCE, "better": BETTER, "worse": [v - 0.25 for v in REFERENCE]},
                    metric="volume_pred_ml")
    hd95 = _table({"ref": REFERENCE, "better": BETTER, "worse": [v - 0.25 for v in REFERENCE]}, metric="hd95_mm")
    stats = compute_stats(pd.concat([dice, volume, hd95]), "ref", n_bootstrap=200)
    row = _row(stats, "better", "volume_pred_ml")
    assert row["higher_is_better"] is None and row["family"] == "" and np.isnan(row["effect_size"])
    assert np.isnan(row["wilcoxon_p_holm"]) and "descriptive (a volume)" in row["note"]
    assert row["wilcoxon_p"] == pytest.approx(wilcoxon_p(np.subtract(BETTER, REFERENCE)))  # still described
    # the volumes do not enlarge the secondary family: Holm over the hd95 rows alone
    secondary = stats[(stats["family"] == "secondary") & (stats["model"] != "ref")]
    assert set(secondary["metric"]) == {"hd95_mm"}
    np.testing.assert_allclose(secondary["wilcoxon_p_holm"], holm(secondary["wilcoxon_p"]))


def test_seed_sd_is_computed_within_folds():
    # per fold, the two seeds differ by 2d in opposite directions: averaged over folds first, every
    # seed has the same mean (SD 0) although each training run is d * sqrt(2) from the other seed
    d = 0.05
    rows = [
        {"model": "ref", "seed": seed, "fold": fold, "subject": subject, "region": "WT", "metric": "dice",
         "value": value + sign * d * (1 if fold == 0 else -1)}
        for fold in (0, 1) for seed, sign in ((0, 1), (1, -1))
        for subject, value in zip(SUBJECTS, REFERENCE)
    ]  # fmt: skip
    row = _row(compute_stats(pd.DataFrame(rows), "ref", n_bootstrap=200), "ref")
    assert row["n_folds"] == 2 and row["n_seeds"] == 2
    assert row["seed_sd"] == pytest.approx(2 * d / math.sqrt(2))  # SD of {+d, -d} in each fold, pooled
    assert row["seed_mean"] == pytest.approx(np.mean(REFERENCE))


def test_primary_endpoint_is_its_own_holm_family_reported_first():
    models = {"ref": REFERENCE, "better": BETTER, "worse": [v - 0.25 for v in REFERENCE]}
    tables = [_table(models).assign(region=region) for region in ("WT", "TC")]
    tables.append(_table(models, metric="hd95_mm"))
    stats = compute_stats(pd.concat(tables), "ref", n_bootstrap=200, primary=("dice", "TC"))
    assert list(stats[["metric", "region"]].iloc[0]) == ["dice", "TC"]  # the primary block leads
    assert stats.attrs["settings"]["primary_endpoint"] == {"metric": "dice", "region": "TC"}
    compared = stats[stats["model"] != "ref"]
    primary = compared[compared["family"] == "primary"]
    assert set(zip(primary["metric"], primary["region"])) == {("dice", "TC")} and len(primary) == 2
    np.testing.assert_allclose(primary["wilcoxon_p_holm"], holm(primary["wilcoxon_p"]))
    secondary = compared[compared["family"] == "secondary"]
    assert len(secondary) == 4  # dice WT and hd95_mm WT, two models each: one family
    np.testing.assert_allclose(secondary["wilcoxon_p_holm"], holm(secondary["wilcoxon_p"]))
    default = compute_stats(pd.concat(tables), "ref", n_bootstrap=200)
    assert default.attrs["settings"]["primary_endpoint"] == {"metric": "dice", "region": "WT"}
    with pytest.raises(ConfigError, match="primary endpoint dice:ET has no results; the results hold dice:TC"):
        compute_stats(pd.concat(tables), "ref", primary=("dice", "ET"))


def test_primary_endpoint_from_flag_benchmark_json_or_task(tmp_path):
    assert primary_endpoint(tmp_path, "hd95_mm:TC") == ("hd95_mm", "TC")
    with pytest.raises(ConfigError, match="expected METRIC:REGION"):
        primary_endpoint(tmp_path, "dice")
    assert primary_endpoint(tmp_path) is None  # no benchmark.json: compute_stats' default
    (tmp_path / "benchmark.json").write_text(json.dumps({"dataset": "brats2023", "task": "regions"}))
    assert primary_endpoint(tmp_path) == ("dice", "WT")  # Dice of the task's main region
    (tmp_path / "benchmark.json").write_text(json.dumps(
        {"dataset": "brats2023", "primary_endpoint": {"metric": "lesion_dice", "region": "ET"}}))
    assert primary_endpoint(tmp_path) == primary_endpoint(tmp_path / "results.csv") == ("lesion_dice", "ET")


# -- any tidy table ------------------------------------------------------------------------------------


def _write_csv(path, table: pd.DataFrame):
    table.to_csv(path, index=False)
    return path


def test_any_tidy_table_loads_without_fold_or_convention(tmp_path, capsys):
    table = _table({"ref": REFERENCE, "m": BETTER}).drop(columns=["fold", "convention"]).assign(tool="other")
    path = _write_csv(tmp_path / "theirs.csv", table)
    loaded = load_results(path)
    assert loaded["fold"].isna().all() and (loaded["convention"] == "").all() and len(loaded) == len(table)
    assert main(["stats", "--results", str(path), "--reference", "ref", "--out", str(tmp_path / "s"),
                 "--n-bootstrap", "200"]) == 0
    written = pd.read_csv(tmp_path / "s" / "stats.csv")
    assert written.loc[written["model"] == "m", "family"].item() == "primary"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.assign(metric="hd95"), "unknown metric 'hd95' in bad.csv; known: dice, precision"),
        (lambda t: t.drop(columns=["seed"]), "missing column(s) seed"),
        (lambda t: t.assign(value=t["value"].astype(object).where(t.index != 3, "n/a")), "line 5: value 'n/a' is not"),
        (lambda t: t.assign(seed=t["seed"].astype(object).where(t.index != 0, "0.5")), "line 2: seed '0.5' is not an"),
        (lambda t: pd.concat([t, t.head(1)]), "2 rows repeat a model/seed/fold/subject/region/metric"),
    ],
)
def test_bad_tables_are_one_line_errors(tmp_path, change, message):
    path = _write_csv(tmp_path / "bad.csv", change(_table({"ref": REFERENCE, "m": BETTER})))
    with pytest.raises(SgnetError) as info:
        load_results(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_unknown_metric_suggests_the_known_name(tmp_path):
    path = _write_csv(tmp_path / "results.csv", _table({"ref": REFERENCE}, metric="hd95"))
    with pytest.raises(SgnetError, match=r"unknown metric 'hd95' in results.csv; known: .* \(did you mean hd95_mm\?\)"):
        load_results(path)
    with pytest.raises(SgnetError, match="unknown metric 'Dice' in the results"):
        compute_stats(_table({"ref": REFERENCE}, metric="Dice"), "ref")
