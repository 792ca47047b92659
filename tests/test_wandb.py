"""W&B: the suite, not the user, picks offline mode and the run folder; a tiny run's offline record
under its folder (config, losses, every gate level's open fraction); the report's summary run."""

from __future__ import annotations

import os

import pytest
from conftest import sgnet

from sgnet_lightning.tracking import configure_wandb_environment, make_loggers

SGNET_GATE_LEVELS = 3  # SG-Net's gated skips with the phantom config's four stages


@pytest.fixture
def wandb_env_unset(monkeypatch):
    """No W&B variables in the environment (conftest sets WANDB_MODE for the suite); whatever the
    code under test sets is undone after the test."""
    for name in ("WANDB_MODE", "WANDB_DIR", "WANDB_ERROR_REPORTING", "WANDB_SILENT"):
        monkeypatch.delenv(name, raising=False)


def test_offline_by_default_an_explicit_mode_wins_and_files_go_under_the_run(wandb_env_unset, tmp_path):
    configure_wandb_environment(tmp_path / "run")
    assert os.environ["WANDB_MODE"] == "offline"
    assert os.environ["WANDB_ERROR_REPORTING"] == "false"
    assert os.environ["WANDB_DIR"] == str(tmp_path / "run") and (tmp_path / "run").is_dir()

    os.environ["WANDB_MODE"] = "disabled"  # the user's own choice is kept when the config sets none
    configure_wandb_environment(tmp_path / "other")
    assert os.environ["WANDB_MODE"] == "disabled" and os.environ["WANDB_DIR"] == str(tmp_path / "other")
    configure_wandb_environment(tmp_path / "run", mode="online")  # the config's mode beats both
    assert os.environ["WANDB_MODE"] == "online"


def test_wandb_disabled_in_the_config_leaves_only_the_csv_log(wandb_env_unset, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    for wandb_cfg in ({"enabled": False, "mode": "online"}, {"mode": "disabled"}):
        assert [type(logger) for logger in make_loggers(tmp_path, {}, wandb_cfg)] == [CSVLogger], wandb_cfg
    assert "WANDB_MODE" not in os.environ  # W&B never configured when it is off


@pytest.mark.slow
def test_a_tiny_run_writes_an_offline_record_of_config_losses_and_gate_levels(make_config, wandb_env_unset,
                                                                              tmp_path):
    pytest.importorskip("wandb")
    from sgnet_lightning.experiment import train

    config = make_config("sgnet", trainer={"max_epochs": 1}, run={"wandb": {"enabled": True, "group": "g"}})
    run_dir = tmp_path / "run"
    train(config, run_dir=run_dir)
    assert os.environ["WANDB_MODE"] == "offline"  # no mode in the config or the environment
    (record,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    logged = record.read_bytes()  # the offline record keeps config and history keys as plain strings
    assert b"gate_threshold" in logged  # the full config went to init (offline runs keep only that)
    assert b"train/loss_seg" in logged and b"val/dice" in logged
    for level in range(SGNET_GATE_LEVELS):
        assert f"gate/open_fraction_{level}".encode() in logged
        assert f"val/gate_open_fraction_{level}".encode() in logged
    assert f"gate/open_fraction_{SGNET_GATE_LEVELS}".encode() not in logged  # one key per level, no more


def test_report_logs_a_summary_run_with_tables_and_images(tmp_path):
    pytest.importorskip("wandb")
    from _fake_benchmark import write_fake_benchmark

    bench_dir = write_fake_benchmark(tmp_path / "bench")
    # no WANDB_MODE: the report must choose offline itself (online would fail here without a key)
    result = sgnet("report", "--benchmark", bench_dir, process=True, env={"WANDB_MODE": None})
    assert result.code == 0, result.err[-3000:]
    runs = list((bench_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
    media = list((bench_dir / "wandb").glob("offline-run-*/files/media/**/*"))
    assert any(p.suffix == ".png" for p in media) and any("table" in p.name for p in media)
