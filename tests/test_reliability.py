"""Killed runs, broken inputs and full disks: nothing lost, every problem named in one line."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import sgnet, start_sgnet, write_phantom_set

from sgnet_lightning.errors import SgnetError
from sgnet_lightning.experiment import _explain_out_of_memory, check_writable, train

def kill_when(proc: subprocess.Popen, ready, after_s: float, timeout_s: float = 300) -> None:
    """SIGKILL ``proc`` ``after_s`` seconds after ``ready()`` first holds."""
    start = time.time()
    while not ready():
        assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read()[-2000:]}"
        assert time.time() - start < timeout_s, "never became ready"
        time.sleep(0.05)
    time.sleep(after_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_fit_killed_mid_epoch_resumes_and_ends_like_an_uninterrupted_run(make_config, tmp_path):
    config = make_config("sgnet", trainer={"max_epochs": 3, "deterministic": True},
                         data={"steps_per_epoch": 20})
    reference = train(config, run_dir=tmp_path / "uninterrupted")

    config_file = tmp_path / "fit.yaml"
    config_file.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "killed"
    proc = start_sgnet("fit", "--config", config_file, "--run-dir", run_dir, stdout=subprocess.DEVNULL)
    kill_when(proc, lambda: (run_dir / "checkpoints" / "last.ckpt").is_file(), after_s=0.7)
    assert proc.returncode == -signal.SIGKILL
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] < 2, "the kill came too late to interrupt the run"

    resumed = sgnet("fit", "--config", config_file, "--run-dir", run_dir, process=True)
    assert resumed.code == 0, resumed.err[-3000:]
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    expected = torch.load(tmp_path / "uninterrupted" / "checkpoints" / "last.ckpt", map_location="cpu",
                          weights_only=False)
    assert (final["epoch"], final["global_step"]) == (expected["epoch"], expected["global_step"])
    assert final["global_step"] == reference["steps"] == 60
    logged = pd.read_csv(run_dir / "logs" / "metrics.csv")
    val = logged.dropna(subset=["val/dice"])
    assert val["epoch"].tolist() == [0, 1, 2], "the log must keep the epochs before the kill, once each"
    # same patches, same augmentation, same steps: on the CPU the resumed run is the uninterrupted one
    for name, weight in expected["state_dict"].items():
        assert torch.equal(final["state_dict"][name], weight), f"{name} differs from the uninterrupted run"
    reference_log = pd.read_csv(tmp_path / "uninterrupted" / "logs" / "metrics.csv").dropna(subset=["val/dice"])
    assert val["val/dice"].tolist() == reference_log["val/dice"].tolist()
    assert val["val/loss"].tolist() == reference_log["val/loss"].tolist()


def _benchmark_file(tmp_path: Path, make_config) -> Path:
    base = make_config("sgnet", trainer={"max_epochs": 1})
    base["run"]["root"] = str(tmp_path / "runs")
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(yaml.safe_dump(base))
    bench = {"name": "tiny", "root": str(tmp_path / "runs"), "experiment": str(experiment),
             "models": {"sgnet": {}, "sgnet_nogate": {"model": {"network_options": {"gate_mode": "none"}}},
                        "sgnet_soft": {"model": {"network_options": {"gate_mode": "soft"}}}},
             "seeds": [0]}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(bench))
    return path


@pytest.mark.slow
def test_benchmark_killed_midway_reruns_only_what_is_missing(make_config, tmp_path):
    bench = _benchmark_file(tmp_path, make_config)
    bench_dir = tmp_path / "runs" / "tiny"
    proc = start_sgnet("benchmark", "--config", bench, stdout=subprocess.DEVNULL)
    kill_when(proc, lambda: (bench_dir / "sgnet" / "seed0" / "COMPLETE").is_file(), after_s=0.0)
    first_done = (bench_dir / "sgnet" / "seed0" / "COMPLETE").stat().st_mtime_ns
    assert not (bench_dir / "sgnet_soft" / "seed0" / "COMPLETE").exists(), "killed too late"

    # a half-written run (results without its marker) must never count as done
    half = bench_dir / "sgnet_soft" / "seed0"
    half.mkdir(parents=True, exist_ok=True)
    (half / "results.csv").write_text("subject,region,metric,value,convention\nX,WT,dice,")

    rerun = sgnet("benchmark", "--config", bench, process=True)
    assert rerun.code == 0, rerun.err[-3000:]
    assert (bench_dir / "sgnet" / "seed0" / "COMPLETE").stat().st_mtime_ns == first_done, "a done run was redone"
    results = pd.read_csv(bench_dir / "results.csv")
    assert set(results["model"]) == {"sgnet", "sgnet_nogate", "sgnet_soft"}
    assert not results["value"].isna().any()
    assert "X" not in set(results["subject"].astype(str))


def test_unwritable_or_full_output_is_refused_up_front(tmp_path):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    with pytest.raises(SgnetError, match="not writable"):
        check_writable(blocker / "run")
    with pytest.raises(SgnetError, match="MB free"):
        check_writable(tmp_path / "run", min_free_mb=10**12)


def test_out_of_gpu_memory_names_the_settings_to_lower():
    with pytest.raises(SgnetError, match="batch_size.*sw_batch_size"):
        with _explain_out_of_memory():
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data", "manifest", "--dataset", "bml", "--root", "/no/such/folder"], "/no/such/folder"),
        (["data", "manifest", "--dataset", "bml", "--root", ".", "--split", "nope.yaml"], "nope.yaml"),
        (["predict", "--ckpt", "missing.ckpt", "--input", ".", "--out", "x"], "missing.ckpt"),
        (["fit", "--config", "no-such-config.yaml"], "no-such-config.yaml"),
        (["test", "--config", "experiments/phantom_bml/sgnet.yaml", "--run-dir", "/tmp/sgnet-no-run"],
         "checkpoint not found"),
    ],
)
def test_commands_fail_with_one_line_and_no_traceback(args, message):
    result = sgnet(*args, process=True)
    assert result.code == 1
    assert "Traceback" not in result.err
    assert message in result.err


def test_check_and_evaluate_name_the_bad_file(tmp_path):
    import nibabel as nib
    import numpy as np

    phantom = write_phantom_set(tmp_path, 12, generator="tiny")
    data = phantom["root"]
    broken = data / "BML-0002" / "BML-0002_flair_img.nii.gz"
    broken.write_bytes(broken.read_bytes()[:200])  # truncated
    result = sgnet("data", "check", phantom["manifest"], process=True)
    assert result.code == 2
    assert "BML-0002" in result.out and "BML-0002_flair_img.nii.gz" in result.out

    # evaluate: predictions that do not match the references are listed, not silently dropped
    pred = tmp_path / "pred"
    pred.mkdir()
    ref = nib.load(data / "BML-0001" / "BML-0001_t1ce_img.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(ref.shape, np.uint8), ref.affine), pred / "BML-0001.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(ref.shape, np.uint8), ref.affine), pred / "NOT-A-SUBJECT.nii.gz")
    result = sgnet("evaluate", "--pred", pred, "--ref", data, "--dataset", "bml", "--out", tmp_path / "e.csv",
                   process=True)
    assert result.code == 1 and "Traceback" not in result.err
    assert "BML-0003" in result.err  # a missing prediction is named
