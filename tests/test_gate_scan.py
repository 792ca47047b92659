"""SG-Net's gate threshold at inference (``sgnet gate-scan``, ``--gate-threshold``) and the gate open
fractions everywhere: a real tiny training on the phantom set, then the scan on the validation split
(test subjects never opened), the stored operating point used by ``sgnet test`` and ``sgnet predict``,
and every gate level written by ``predict --maps`` (W&B's record of the open fractions: test_wandb.py)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import tiny_config

from sgnet_lightning import cli
from sgnet_lightning.errors import SgnetError
from sgnet_lightning.experiment import train
from sgnet_lightning.gate_scan import choose_threshold
from sgnet_lightning.operating_point import resolve_gate_threshold

# around the supervised gates' probabilities after a few steps (they start at p = 0.95), so the
# scan sees gates closing; 0.05 opens every gate whose p is above it
THRESHOLDS = [0.05, 0.5, 0.9, 0.95, 0.97, 0.999]
LEVELS = 3  # SG-Net's gated skips with the seed's four stages
SCORED = {"dice", "precision", "recall", "hd95_mm", "lesion_f1", "lesion_fp"}

@pytest.fixture(scope="module")
def gated_run(phantom_bml, tmp_path_factory):
    """A hard-gated SG-Net trained for 8 steps with gate supervision; its config file and folder."""
    root = tmp_path_factory.mktemp("gate_scan")
    config = tiny_config(phantom_bml, root / "runs", "sgnet", model={
        "gate_loss_weight": 1.0, "optimizer": {"name": "adam", "lr": 1e-2},
        "network_options": {"gate_mode": "hard", "gate_threshold": 0.5}},
        trainer={"max_epochs": 4})
    run_dir = root / "run"
    train(config, run_dir=run_dir)
    config_file = root / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    return config_file, run_dir, phantom_bml


def _split(manifest: Path, split: str) -> list[str]:
    rows = pd.read_csv(manifest, dtype=str)
    return sorted(rows.loc[rows["split"] == split, "subject"])


def _scan(config_file: Path, run_dir: Path, *extra: str) -> int:
    return cli.main(["gate-scan", "--config", str(config_file), "--run-dir", str(run_dir), *extra])


@pytest.mark.slow
def test_scan_scores_every_threshold_on_validation_only(gated_run, monkeypatch, opened_files):
    from sgnet_lightning.data.datamodule import SegmentationDataModule

    config_file, run_dir, phantom = gated_run

    volume_loader = SegmentationDataModule._volume_loader

    def no_test_loader(self, split):
        assert split != "test", "the gate scan built the test loader"
        return volume_loader(self, split)

    monkeypatch.setattr(SegmentationDataModule, "_volume_loader", no_test_loader)
    assert _scan(config_file, run_dir, "--thresholds", *map(str, THRESHOLDS), "--choose", "dice") == 0
    scan = pd.read_csv(run_dir / "gate_scan" / "gate_scan.csv", dtype={"subject": str})

    validation = _split(phantom["manifest"], "val")
    assert sorted(scan["subject"].unique()) == validation
    gates = {f"gate_open_fraction_{level}" for level in range(LEVELS)}
    counts = scan.groupby(["metric", "threshold"])["subject"].nunique()
    for metric in SCORED | gates:  # every metric x threshold x validation subject
        assert [counts.get((metric, t), 0) for t in THRESHOLDS] == [len(validation)] * len(THRESHOLDS), metric
    assert set(scan.loc[scan["metric"].isin(gates), "region"]) == {"all"}

    # fixed weights: raising the threshold never opens a gate, and across this range gates do close
    for (metric, subject), rows in scan[scan["metric"].isin(gates)].groupby(["metric", "subject"]):
        fractions = rows.sort_values("threshold")["value"].to_numpy()
        assert (np.diff(fractions) <= 0).all(), (metric, subject, fractions)
        assert fractions[-1] < fractions[0], (metric, fractions)

    # the test split: its loader never built (patched above), its cached volumes never opened
    reads = [p for p in opened_files if p.endswith(".npy")]
    assert any(f"/{s}/" in p for p in reads for s in validation)  # the audit sees cache reads
    assert not [p for p in reads for s in _split(phantom["manifest"], "test") if f"/{s}/" in p]

    assert (run_dir / "gate_scan" / "gate_scan.png").stat().st_size > 5000
    summary = json.loads((run_dir / "gate_scan" / "summary.json").read_text())
    point = summary["operating_point"]
    assert not summary["stored"] and not (run_dir / "operating_point.json").exists()
    dice = scan[(scan["metric"] == "dice")].groupby("threshold")["value"].mean()
    assert dice[point["gate_threshold"]] == pytest.approx(dice.max()) == pytest.approx(point["mean"])


@pytest.mark.slow
def test_stored_operating_point_is_used_by_test_and_predict(gated_run, tmp_path, capsys):
    config_file, run_dir, phantom = gated_run
    test_args = ["test", "--config", str(config_file), "--run-dir", str(run_dir), "--no-predictions"]
    assert cli.main(test_args) == 0
    trained = pd.read_csv(run_dir / "results.csv")
    assert json.loads((run_dir / "run.json").read_text())["test_gate_threshold"] == 0.5

    with pytest.raises(SgnetError, match="operating_point.json not found"):
        resolve_gate_threshold("validated", run_dir, run_dir / "checkpoints" / "best.ckpt")
    # a scan of high thresholds only: whichever wins, the stored point is not the trained 0.5
    assert _scan(config_file, run_dir, "--thresholds", "0.97", "0.999", "--store") == 0
    point = json.loads((run_dir / "operating_point.json").read_text())
    assert point["gate_threshold"] in (0.97, 0.999) and point["trained_gate_threshold"] == 0.5

    assert cli.main([*test_args, "--gate-threshold", "validated"]) == 0
    validated = pd.read_csv(run_dir / "results.csv")
    info = json.loads((run_dir / "run.json").read_text())
    assert (info["test_gate_threshold"], info["test_gate_threshold_source"]) == (point["gate_threshold"], "validated")
    assert sorted(validated["subject"].unique()) == sorted(trained["subject"].unique())
    opened, closed = ([table.loc[table["metric"] == f"gate_open_fraction_{level}", "value"].mean()
                       for level in range(LEVELS)] for table in (trained, validated))
    assert all(c < o for c, o in zip(closed, opened)), (closed, opened)

    # predict: the same operating point closes the written gate maps; every level is written
    inputs = ["--input", str(phantom["root"])]
    best = str(run_dir / "checkpoints" / "best.ckpt")
    for name, extra in (("trained", []), ("validated", ["--gate-threshold", "validated"])):
        assert cli.main(["predict", "--ckpt", best, *inputs, "--out", str(tmp_path / name), "--maps", *extra]) == 0
    subject = _split(phantom["manifest"], "test")[0]
    for level in range(LEVELS):
        maps = {name: nib.load(tmp_path / name / f"{subject}_gate{level}.nii.gz") for name in ("trained", "validated")}
        t1ce = nib.load(next(phantom["root"].rglob(f"{subject}_t1ce_img.nii*")))
        assert maps["trained"].shape == t1ce.shape
        np.testing.assert_allclose(maps["trained"].affine, t1ce.affine, atol=1e-5)
        assert np.asarray(maps["validated"].dataobj).mean() < np.asarray(maps["trained"].dataobj).mean()

    # the point belongs to the checkpoint it was chosen on
    capsys.readouterr()
    last = str(run_dir / "checkpoints" / "last.ckpt")
    assert cli.main(["predict", "--ckpt", last, *inputs, "--out", str(tmp_path / "x"), "--gate-threshold",
                     "validated"]) == 1
    assert "sha256 differs" in capsys.readouterr().err


def test_choice_ties_go_to_the_trained_threshold_then_the_lower():
    scan = pd.DataFrame({"threshold": [0.3, 0.5, 0.7, 0.3, 0.5, 0.7], "subject": ["a"] * 3 + ["b"] * 3,
                         "region": "WT", "metric": "lesion_fp", "value": [2, 1, 1, 0, 1, 1]})
    # mean false-positive lesions 1, 1, 1: a three-way tie
    assert choose_threshold(scan, "lesion_fp", "WT", trained=0.5) == (0.5, 1.0)
    assert choose_threshold(scan, "lesion_fp", "WT", trained=0.6) == (0.5, 1.0)
    assert choose_threshold(scan, "lesion_fp", "WT", trained=0.9) == (0.7, 1.0)
    better = scan.assign(value=[0, 1, 1, 0, 1, 1])  # 0.3 now has fewer false-positive lesions
    assert choose_threshold(better, "lesion_fp", "WT", trained=0.5) == (0.3, 0.0)


@pytest.mark.parametrize("spec, message", [
    ("1.5", "must lie in \\(0, 1\\)"), ("often", "give a number in \\(0, 1\\) or 'validated'")])
def test_bad_gate_threshold_is_a_clear_error(spec, message, tmp_path):
    from sgnet_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        resolve_gate_threshold(spec, tmp_path, None)


@pytest.mark.slow
def test_threshold_refused_for_a_network_without_hard_gates(phantom_bml, tmp_path, capsys):
    config = tiny_config(phantom_bml, tmp_path / "runs", "sgnet", trainer={"max_epochs": 1},
                         model={"network_options": {"gate_mode": "soft"}})
    run_dir = tmp_path / "run"
    train(config, run_dir=run_dir)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    capsys.readouterr()
    assert _scan(config_file, run_dir) == 1
    assert "acts only on hard gates (gate_mode 'soft')" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_trials_scan_their_gates_and_the_sweep_report_draws_each_curve(phantom_bml, tmp_path):
    """A two-trial study of the training threshold with the space's gate_scan: each trial's seed gets
    its validation scan, and `sgnet sweep report` draws one curve per trial."""
    from conftest import REPO

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "experiment": str(REPO / "experiments" / "phantom_bml" / "sgnet.yaml"),
        "parameters": {"model.network_options.gate_threshold": {"type": "float", "low": 0.2, "high": 0.8}},
        "objectives": [{"metric": "dice", "direction": "maximize"}],
        "seeds": [0], "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"}, "n_trials": 2,
        "gate_scan": {"thresholds": [0.3, 0.6, 0.9], "choose": "lesion_f1"},
        "fixed": {
            "data": {"manifest": str(phantom_bml["manifest"]), "cache_root": str(phantom_bml["cache"]),
                     "spacing_mm": 5.0, "patch_size": [16, 16, 16], "batch_size": 2, "steps_per_epoch": 2,
                     "samples_per_volume": 2, "queue_length": 4, "num_workers": 0},
            "model": {"gate_loss_weight": 1.0, "sliding_window": {"roi_size": [16, 16, 16], "sw_batch_size": 4}},
            "trainer": {"max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False},
            "run": {"wandb": {"enabled": False}}},
    }))
    storage, runs = str(tmp_path / "study.journal"), tmp_path / "runs"
    assert cli.main(["sweep", "run", str(space), "--study", "scan", "--storage", storage, "--runs-root", str(runs),
                     "--n-trials", "2"]) == 0
    validation = _split(phantom_bml["manifest"], "val")
    for trial in (0, 1):
        scan = pd.read_csv(runs / "scan" / f"trial{trial}" / "seed0" / "gate_scan" / "gate_scan.csv",
                           dtype={"subject": str})
        assert sorted(scan["threshold"].unique()) == [0.3, 0.6, 0.9]
        assert sorted(scan["subject"].unique()) == validation
        point = json.loads((runs / "scan" / f"trial{trial}" / "seed0" / "gate_scan" / "summary.json").read_text())
        assert point["operating_point"]["metric"] == "lesion_f1" and not point["stored"]

    out = tmp_path / "report"
    assert cli.main(["sweep", "report", "--study", "scan", "--storage", storage, "--out", str(out)]) == 0
    page = (out / "index.md").read_text()
    for trial in (0, 1):
        assert (out / f"gate_scan_trial{trial}.png").stat().st_size > 5000
        assert f"gate_scan_trial{trial}.png" in page
    means = pd.read_csv(out / "gate_scans.csv")
    assert sorted(means["trial"].unique()) == [0, 1] and set(means["threshold"]) == {0.3, 0.6, 0.9}
