"""Launchers without SLURM: settings, the state of a run from its records, Lightning's requeue left to
submitit, loader workers that do not change a run, the wall-time projection, and the local launcher
(submitit's LocalExecutor) reproducing the sequential benchmark exactly. SLURM: tests/test_slurm.py."""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from _micro_benchmark import MODELS, write_micro_benchmark

from sgnet_lightning import cli
from sgnet_lightning.benchmark import load_benchmark
from sgnet_lightning.config_lock import config_hash, locked_config
from sgnet_lightning.errors import ConfigError
from sgnet_lightning.launch import command_line_overrides, load_launcher
from sgnet_lightning.launch.executors import local_slots
from sgnet_lightning.launch.projection import list_schedule, project
from sgnet_lightning.launch.status import State, job_state, last_error_in_log
from sgnet_lightning.launch.tasks import LeaveRequeueToSubmitit, Resources

REPO = Path(__file__).resolve().parents[1]


# -- settings -------------------------------------------------------------------------------------------
def test_launchers_come_from_their_yaml_with_command_line_changes_checked(tmp_path):
    assert load_launcher().inline and load_launcher("inline").inline
    local = load_launcher("local", command_line_overrides(["runs_per_gpu=2"], gpus="0,3", workers=4))
    assert local.kind == "local" and (local["gpus"], local["runs_per_gpu"], local["workers"]) == ([0, 3], 2, 4)
    shipped = yaml.safe_load((REPO / "experiments" / "launchers" / "slurm.yaml").read_text())
    slurm = load_launcher("slurm", command_line_overrides(["partition=gpu", "sbatch={account: lab}"]))
    assert slurm["partition"] == "gpu" and slurm["sbatch"] == {"account": "lab"}
    assert slurm["time_min"] == shipped["time_min"]  # untouched keys as shipped

    lab = tmp_path / "cluster.yaml"  # a lab's file: only what differs, kind stated
    lab.write_text(yaml.safe_dump({"launcher": "slurm", "partition": "a100", "cpus_per_run": 16}))
    assert load_launcher(str(lab))["cpus_per_run"] == 16

    for name, overrides, message in (
        ("slurm", {"gpu_per_run": 1}, r"unknown setting\(s\) gpu_per_run; known: partition"),
        ("local", {"runs_per_gpu": 0}, "runs_per_gpu must be a positive integer"),
        ("local", {"gpus": "0,1"}, "gpus must be a list of GPU indices"),
        ("slurm", {"setup": "module load cuda"}, "setup must be a list of shell lines"),
        ("cluster", {}, "no such launcher"),
        ("inline", {"workers": 2}, "need --launcher local or slurm"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_launcher(name, overrides)
    with pytest.raises(ConfigError, match="--gpus 0;1: give GPU indices"):
        command_line_overrides([], gpus="0;1")
    (tmp_path / "kindless.yaml").write_text("partition: gpu\n")
    with pytest.raises(ConfigError, match="needs `launcher: local` or `launcher: slurm`"):
        load_launcher(str(tmp_path / "kindless.yaml"))


def test_local_slots_pin_one_gpu_each_and_share_the_cpus():
    settings = {"gpus": [0, 1, 2, 3], "runs_per_gpu": 2, "workers": 1, "cpus": 16}
    slots = local_slots(settings, n_jobs=45)
    assert [s.gpus for s in slots] == [(0,), (1,), (2,), (3,)] * 2  # the first runs spread over the GPUs
    assert slots[0].resources == Resources(threads=2, loader_workers=1)
    few = local_slots(settings, n_jobs=3)  # fewer runs than slots: the CPUs divided among 3
    assert [s.gpus for s in few] == [(0,), (1,), (2,)] and few[0].resources == Resources(5, 4)
    cpu_only = local_slots({"gpus": [], "runs_per_gpu": 1, "workers": 3, "cpus": 2}, n_jobs=10)
    assert [s.gpus for s in cpu_only] == [(), (), ()] and cpu_only[0].resources == Resources(1, 0)


def test_resources_cap_loader_workers_and_the_lock_ignores_them_unless_workers_draw():
    config = {"data": {"num_workers": 8, "manifest": None}, "model": {"network": "sgnet"}}
    capped = Resources(threads=2, loader_workers=1).cap(config)
    assert capped["data"]["num_workers"] == 1 and config["data"]["num_workers"] == 8
    assert Resources(threads=2, loader_workers=12).cap(config) is config
    assert config_hash(locked_config(capped)) == config_hash(locked_config(config))
    # TorchIO's random transforms draw in the queue's workers: then their number is part of the run,
    # locked, and left as configured
    drawing = copy.deepcopy(config)
    drawing["data"]["torchio_transforms"] = [{"name": "RandomNoise"}]
    fewer = copy.deepcopy(drawing)
    fewer["data"]["num_workers"] = 1
    assert config_hash(locked_config(fewer)) != config_hash(locked_config(drawing))
    assert Resources(threads=2, loader_workers=1).cap(drawing) is drawing


def test_queue_workers_do_not_change_the_training_batches(phantom_bml):
    """Why the lock may leave data.num_workers out: with no TorchIO transform the workers only load
    subjects in the sampler's order; patches and augmentation are drawn in the training process."""
    script = f"""
import torch
from sgnet_lightning.data.datamodule import SegmentationDataModule
def batches(workers):
    dm = SegmentationDataModule({str(phantom_bml['manifest'])!r}, cache_root={str(phantom_bml['cache'])!r},
        spacing_mm=5.0, patch_size=(16, 16, 16), batch_size=2, samples_per_volume=2, queue_length=4,
        num_workers=workers, steps_per_epoch=3, check=False)
    dm.prepare_data(); dm.setup("fit"); loader = dm.train_dataloader(); out = []
    for epoch in range(2):
        dm.start_epoch(epoch)
        out += [{{k: v for k, v in b.items() if torch.is_tensor(v)}} for b in loader]
    return out
a, b = batches(0), batches(2)
print(len(a), all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b)))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["6", "True"]


# -- Lightning and submitit -----------------------------------------------------------------------------
class _SignalProbe(__import__("lightning").pytorch.Callback):
    def on_train_start(self, trainer, pl_module):
        self.environment = trainer._accelerator_connector.cluster_environment
        self.usr1_handler = signal.getsignal(signal.SIGUSR1)


@pytest.mark.parametrize("leave_to_submitit", [False, True])
def test_under_slurm_lightning_leaves_requeueing_to_submitit(monkeypatch, tmp_path, leave_to_submitit):
    from lightning.fabric.plugins.environments import SLURMEnvironment
    from lightning.pytorch import Trainer
    from lightning.pytorch.demos.boring_classes import BoringModel

    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "sgnet", "SLURM_JOB_ID": "41", "SLURM_PROCID": "0",
                       "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "node1"}.items():
        monkeypatch.setenv(key, value)
    probe = _SignalProbe()
    callbacks = [probe, LeaveRequeueToSubmitit()] if leave_to_submitit else [probe]
    trainer = Trainer(accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                      callbacks=callbacks)
    trainer.fit(BoringModel())
    assert isinstance(probe.environment, SLURMEnvironment)  # Lightning did detect SLURM
    assert probe.environment.auto_requeue is not leave_to_submitit
    lightning_handler = probe.usr1_handler not in (signal.SIG_DFL, signal.SIG_IGN, None)
    assert lightning_handler is not leave_to_submitit


# -- status ---------------------------------------------------------------------------------------------
def test_a_runs_state_comes_from_its_records_squeue_and_living_processes(tmp_path):
    host = socket.gethostname()
    log = str(tmp_path / "12_3_0_log.out")
    submitted = {"launcher": "slurm", "job_id": "12_3", "log": log, "submitted_at": "2026-12-02T10:00:00"}
    started = {"launcher": "slurm", "job_id": "12_3", "attempt": 1, "state": "running", "host": "node7", "pid": 9,
               "log": log, "started_at": "2026-12-02T10:05:00"}
    assert job_state(submitted, None, {"12_3": "PENDING"}) == State("queued", "12_3", log, "")
    assert job_state(submitted, started, {"12_3": "RUNNING"}).state == "running"
    requeued = {**started, "attempt": 1, "state": "failed", "error": "SIGTERMException"}
    assert job_state(submitted, requeued, {"12_3": "PENDING"}) == State("queued", "12_3", log, "requeued")
    failed = {**started, "state": "failed", "error": "RuntimeError: CUDA out of memory"}
    assert job_state(submitted, failed, {}).detail == "RuntimeError: CUDA out of memory"
    # a task SLURM no longer lists that wrote nothing: the last error-looking line of its log
    Path(log).write_text("epoch 3\nslurmstepd: error: *** JOB 12 ON n7 CANCELLED AT 10:30 DUE TO TIME "
                                    "LIMIT ***\nsrun: done\n")
    assert "DUE TO TIME LIMIT" in job_state(submitted, started, {}).detail
    assert job_state(submitted, started, {}).state == "failed"
    # resubmitted after a failure: the old task record is not the current job's
    resubmitted = {**submitted, "job_id": "20_0", "submitted_at": "2026-12-02T11:00:00"}
    assert job_state(resubmitted, failed, {"20_0": "PENDING"}).state == "queued"
    # local: a living process is running, a dead one that did not finish failed; a waiting run is queued
    alive = {"launcher": "local", "job_id": "77", "state": "running", "host": host, "pid": os.getpid(),
             "attempt": 2, "resumed": True, "started_at": "x"}
    assert job_state(None, alive, None) == State("running", "77", None, "attempt 2, resumed from last.ckpt")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert job_state(None, {**alive, "pid": dead.pid}, None).state == "failed"
    waiting = {"launcher": "local", "job_id": None, "host": host, "pid": os.getpid()}
    assert job_state(waiting, None, None).state == "queued"
    assert job_state(None, None, None).state == "missing"
    assert last_error_in_log(str(tmp_path / "absent.log")) == "" and last_error_in_log(None) == ""


def test_list_schedule_starts_each_job_on_the_slot_that_frees_first():
    assert list_schedule([3, 3, 2, 2, 2], 2) == 7  # 3|3, then 2 on each, then 2 more
    assert list_schedule([3, 3, 2, 2, 2], 1) == 12
    assert list_schedule([5, 1, 1, 1, 1, 1], 8) == 5


# -- the local launcher ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_local_launcher_runs_side_by_side_like_the_sequential_command(micro_reference, tmp_path, capsys):
    """A good run and a broken one at once on two CPU slots (one torch thread each): the good one
    gives exactly the sequential command's rows; the broken one is reported with its error and log;
    status lists both; a rerun starts nothing that is done."""
    bench = write_micro_benchmark(tmp_path, micro_reference["data"], tmp_path / "runs")
    raw = yaml.safe_load(bench.read_text())
    raw["seeds"] = [0]
    raw["models"] = {"sgnet": MODELS["sgnet"],  # a model that cannot be built: fails after its job started
                     "broken": {**MODELS["sgnet"], "model": {"network_options": {"no_such_option": 1}}}}
    bench.write_text(yaml.safe_dump(raw))
    bench_dir = tmp_path / "runs" / "micro"
    assert cli.main(["benchmark", "--config", str(bench), "--launcher", "local", "--workers", "2",
                     "--launcher-set", "timeout_min=20"]) == 1
    error = capsys.readouterr().err
    assert "1 of 2 run(s) failed: broken seed 0: ValueError: model 'sgnet' has no option 'no_such_option'" in error
    assert "Traceback" not in error

    assert cli.main(["benchmark", "status", "--config", str(bench)]) == 0
    lines = {tuple(line.split()[:3]): line for line in capsys.readouterr().out.splitlines()[2:]}
    assert set(lines) == {("broken", "0", "failed"), ("sgnet", "0", "done")}
    assert "no_such_option" in lines[("broken", "0", "failed")]
    task = json.loads((bench_dir / "sgnet" / "seed0" / "task.json").read_text())
    assert task["job_id"] in lines[("sgnet", "0", "done")] and task["log"] in lines[("sgnet", "0", "done")]
    assert (task["launcher"], task["threads"], task["loader_workers"]) == ("local", 1, 0)
    assert Path(task["log"]).is_file()
    pd.testing.assert_frame_equal(pd.read_csv(bench_dir / "sgnet" / "seed0" / "results.csv"),  # exactly the same
                                  pd.read_csv(micro_reference["bench_dir"] / "sgnet" / "seed0" / "results.csv"))

    # a rerun with the broken model dropped starts nothing: it only gathers
    raw["models"] = {"sgnet": MODELS["sgnet"]}
    bench.write_text(yaml.safe_dump(raw))
    jobs_before = sorted((bench_dir / "jobs").glob("*_submitted.pkl"))
    assert cli.main(["benchmark", "--config", str(bench), "--launcher", "local", "--workers", "2"]) == 0
    assert sorted((bench_dir / "jobs").glob("*_submitted.pkl")) == jobs_before
    reference = pd.read_csv(micro_reference["bench_dir"] / "results.csv")
    pd.testing.assert_frame_equal(pd.read_csv(bench_dir / "results.csv"),
                                  reference[(reference["model"] == "sgnet") & (reference["seed"] == 0)]
                                  .reset_index(drop=True))

    info = json.loads((bench_dir / "sgnet" / "seed0" / "run.json").read_text())
    projection = project(load_benchmark(bench), slots=[1, 2])
    assert projection["per_model"]["sgnet"]["seconds"] == pytest.approx(info["train_time_s"] + info["test_time_s"])
    assert projection["wall_s"] == {1: projection["sequential_s"], 2: projection["sequential_s"]}  # one run


def test_anchor_projection_of_the_bml_benchmark_on_eight_gpus():
    """Per-run training time from the GPU anchors' throughput (docs/cluster/h100_anchors.json)."""
    anchors_file = REPO / "docs" / "cluster" / "h100_anchors.json"
    bench = load_benchmark(REPO / "experiments" / "benchmarks" / "bml.yaml")
    projection = project(bench, slots=[1, 8], anchors_file=anchors_file)
    rates = json.loads(anchors_file.read_text())["train"]
    config = next(r["config"] for r in bench["runs"] if r["label"] == "sgnet")
    patches = config["trainer"]["max_epochs"] * config["data"]["steps_per_epoch"] * config["data"]["batch_size"]
    assert config["data"]["patch_size"] == [96, 96, 32]  # the anchors' patch: no scaling
    assert projection["per_model"]["sgnet"]["seconds"] == pytest.approx(patches / rates["sgnet"]["bf16_cl_b32"][0])
    slowest = projection["per_model"]["attention_unet"]["seconds"]
    assert projection["per_model"]["segresnet"] == {
        "seconds": slowest, "source": "assumed: no anchor for segresnet, taken as the slowest anchored network"}
    total = projection["sequential_s"]
    assert projection["wall_s"][1] == pytest.approx(total)
    assert total / 8 <= projection["wall_s"][8] <= total / 8 + slowest


def test_runs_locked_with_their_loader_workers_are_brought_up_to_date(tmp_path):
    """Folders locked before data.num_workers left the lock are not refused as changed: their lock
    and run.json hash are rewritten, the runs kept; another difference is still a change."""
    from sgnet_lightning.benchmark import _changed_runs, _unlock_loader_workers, run_dir_of
    from sgnet_lightning.config_lock import read_lock, write_lock

    config = {"data": {"num_workers": 4, "batch_size": 2}, "model": {"network": "sgnet"}}
    bench = {"dir": tmp_path, "runs": [{"label": "sgnet", "seed": s, "fold": None, "config": config} for s in (0, 1)]}
    old_lock = json.loads(json.dumps(config))  # as the lock recorded it: num_workers included
    for run in bench["runs"]:
        run["locked"] = locked_config(run["config"])
        run_dir = run_dir_of(bench, run)
        digest = write_lock(run_dir, old_lock if run["seed"] == 0 else {**old_lock, "model": {"network": "unet"}})
        (run_dir / "run.json").write_text(json.dumps({"config_hash": digest}))
        (run_dir / "COMPLETE").write_text("")
    _unlock_loader_workers(bench)
    first, second = (run_dir_of(bench, run) for run in bench["runs"])
    assert read_lock(first) == bench["runs"][0]["locked"] and "num_workers" not in read_lock(first)["data"]
    assert json.loads((first / "run.json").read_text())["config_hash"] == config_hash(bench["runs"][0]["locked"])
    assert read_lock(second)["data"]["num_workers"] == 4  # differs in the network too: left for the lock check
    assert [(run["seed"], changes) for run, changes in _changed_runs(bench)] == [
        (1, ['data.num_workers: 4 -> (unset)', 'model.network: "unet" -> "sgnet"'])]
