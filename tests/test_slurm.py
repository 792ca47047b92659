"""Through a real SLURM: the micro-benchmark as one job array, one task requeued mid-training, equals
the sequential command; two sweep workers as one array share a PostgreSQL study.

Needs a SLURM cluster the tests may submit to: ``sbatch`` on the PATH and ``SLURM_CONF`` set
(``.ci/run`` starts a one-node cluster with ``.ci/slurm-up``). Tasks ask for one CPU each and no GPU.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from _micro_benchmark import write_micro_benchmark
from test_sweep import TINY_GATE, check_two_worker_study, space_variant, sweep_run_args

from sgnet_lightning import cli
from sgnet_lightning.benchmark import load_benchmark
from sgnet_lightning.launch import jobs
from sgnet_lightning.sweeps import open_storage

POSTGRES_URL = os.environ.get("SGNET_TEST_POSTGRES_URL")
CPU_TASKS = ["--launcher", "slurm", "--launcher-set", "gpus_per_run=0", "--launcher-set", "cpus_per_run=1",
             "--launcher-set", "mem_gb=null", "--launcher-set", "time_min=20"]

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(not (shutil.which("sbatch") and os.environ.get("SLURM_CONF")),
                       reason="no SLURM cluster to submit to: needs sbatch and SLURM_CONF (.ci/run starts a "
                              "one-node cluster with .ci/slurm-up)"),
]


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch):
    monkeypatch.setattr(jobs, "SLURM_POLL_S", 1.0)


def scontrol(*args: str) -> None:
    subprocess.run(["scontrol", *args], check=True, capture_output=True, text=True, timeout=60)


def slurm_state(job_id: str) -> str:
    listed = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True, timeout=60)
    return dict(line.split() for line in listed.stdout.splitlines()).get(job_id, "")


def wait_until(condition, timeout_s: float, what: str) -> None:
    start = time.time()
    while not condition():
        assert time.time() - start < timeout_s, f"gave up waiting: {what}"
        time.sleep(0.1)


def test_slurm_array_with_a_requeued_task_equals_the_sequential_benchmark(micro_reference, tmp_path, capsys):
    bench_file = write_micro_benchmark(tmp_path, micro_reference["data"], tmp_path / "runs")
    bench_dir = tmp_path / "runs" / "micro"
    assert cli.main(["benchmark", "--config", str(bench_file), *CPU_TASKS]) == 0  # submits and returns
    array = re.search(r"as SLURM job (\d+) \(4 task", capsys.readouterr().out).group(1)

    # the array's first task (segguided seed 0), requeued once its first epoch's last.ckpt exists
    victim, job = bench_dir / "segguided" / "seed0", f"{array}_0"
    wait_until(lambda: (victim / "checkpoints" / "last.ckpt").is_file(), 300, "the first last.ckpt")
    scontrol("requeue", job)
    # SLURM holds a requeued job for 120 s (its BeginTime); let it start again at once
    wait_until(lambda: slurm_state(job) == "PENDING", 60, f"{job} back in the queue")
    scontrol("update", f"JobId={job}", "StartTime=now")
    bench = load_benchmark(bench_file)
    assert jobs.wait_for_benchmark(bench, bench["runs"]) == {}  # every run done, none failed

    task = json.loads((victim / "task.json").read_text())
    assert (task["job_id"], task["attempt"], task["resumed"]) == (job, 2, True)
    assert task["resumed_from_epoch"] < 2, "the requeue came after training: nothing was resumed mid-training"
    assert "DUE TO JOB REQUEUE" in Path(task["log"]).read_text()
    final = torch.load(victim / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    expected = torch.load(micro_reference["bench_dir"] / "segguided" / "seed0" / "checkpoints" / "last.ckpt",
                          map_location="cpu", weights_only=False)
    assert final["epoch"] == expected["epoch"] == 2
    assert all(torch.equal(final["state_dict"][k], v) for k, v in expected["state_dict"].items())

    # a rerun submits nothing (all done) and gathers exactly the sequential command's rows
    assert cli.main(["benchmark", "--config", str(bench_file), *CPU_TASKS]) == 0
    assert len(list((bench_dir / "jobs").glob("*_submission.sh"))) == 1
    pd.testing.assert_frame_equal(pd.read_csv(bench_dir / "results.csv"),
                                  pd.read_csv(micro_reference["bench_dir"] / "results.csv"))

    capsys.readouterr()
    assert cli.main(["benchmark", "status", "--config", str(bench_file)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert {(r[0], r[1], r[2]) for r in rows} == {(m, s, "done") for m in ("segguided", "sgnet") for s in "01"}
    assert sorted(r[3] for r in rows) == [f"{array}_{i}" for i in range(4)]
    assert all(Path(r[4]).is_file() for r in rows)


@pytest.mark.postgres
@pytest.mark.skipif(not POSTGRES_URL, reason="SGNET_TEST_POSTGRES_URL is not set: no PostgreSQL server for the "
                                             "study (.ci/run starts one)")
def test_two_sweep_workers_through_slurm_share_one_postgresql_study(sweep_phantom, tmp_path, capsys):
    study_name = f"slurm_{uuid.uuid4().hex[:10]}"  # the database outlives the test: a fresh study each run
    space = space_variant(TINY_GATE, tmp_path, seeds=[0], pruner={"name": "none"}, sampler={"name": "random"})
    runs = tmp_path / "runs"
    try:
        assert cli.main([*sweep_run_args(space, study_name, POSTGRES_URL, runs, 4, *sweep_phantom.sets), *CPU_TASKS,
                         "--workers", "2", "--wait"]) == 0
        study = optuna.load_study(study_name=study_name, storage=open_storage(POSTGRES_URL))
        check_two_worker_study(study, 4, runs)  # the target reached, no trial run twice, none left running

        capsys.readouterr()
        assert cli.main(["sweep", "status", "--study", study_name, "--storage", POSTGRES_URL,
                         "--runs-root", str(runs)]) == 0
        status = capsys.readouterr().out
        array = json.loads((runs / study_name / "launch.json").read_text())["jobs"][0]["job_id"].split("_")[0]
        trial_rows = [line for line in status.splitlines() if re.match(r"\d+\s+complete", line)]
        assert len(trial_rows) >= 4 and all(re.search(rf"\b{array}_[01]\b", row) for row in trial_rows)
        assert status.count(" done ") == 2  # both workers, each with its job and log
    finally:
        if study_name in optuna.get_all_study_names(storage=POSTGRES_URL):
            optuna.delete_study(study_name=study_name, storage=POSTGRES_URL)
