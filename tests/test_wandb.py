"""W&B offline: files under the run folder for a tiny run, and the report's summary run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("wandb")

from sgnet_lightning.experiment import train  # noqa: E402


@pytest.mark.slow
def test_a_tiny_run_writes_offline_wandb_files_under_its_folder(make_config, tmp_path):
    config = make_config("sgnet", trainer={"max_epochs": 1},
                         run={"wandb": {"enabled": True, "mode": "offline", "group": "g"}})
    run_dir = tmp_path / "run"
    train(config, run_dir=run_dir)
    offline = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0
    assert os.environ["WANDB_MODE"] == "offline"
    # the full config went to init (offline runs keep only that): it is in the run's record
    assert b"gate_threshold" in offline[0].read_bytes()


def test_report_logs_a_summary_run_with_tables_and_images(tmp_path):
    from _fake_benchmark import write_fake_benchmark

    bench_dir = write_fake_benchmark(tmp_path / "bench")
    result = subprocess.run([sys.executable, "-m", "sgnet_lightning.cli", "report", "--benchmark", str(bench_dir)],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((bench_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
    media = list((bench_dir / "wandb").glob("offline-run-*/files/media/**/*"))
    assert any(p.suffix == ".png" for p in media) and any("table" in p.name for p in media)
