"""SLURM's time limit, for real: a benchmark run that hits it is requeued and ends as if never stopped.

``tests/test_slurm.py`` requeues a task by hand (``scontrol requeue``). This script lets SLURM do it:
one SG-Net run of a phantom benchmark (a little over a minute on one thread) is submitted with a
2-minute time limit and the warning signal 60 s before it (``--launcher-set time_min=2
signal_delay_s=60``), so submitit receives USR2 during training (slurmctld checks time limits on its
own tick, so the moment varies by up to 30 s), requeues the task, and the run resumes from its
``last.ckpt`` until it is done. The signal must come after the task's Python has started (about 20 s
here, importing torch and Lightning): of two tries at ``time_min=1 signal_delay_s=40``, one had USR2
arrive before submitit's handler was installed, which kills the task unrequeued. So
``signal_delay_s`` must stay well under ``time_min`` (as shipped: 120 s of 1,440 min). The same benchmark run inline (the sequential command, one torch thread like the SLURM task)
is the reference: the script checks that the final weights and the per-subject results are equal.

Needs a SLURM cluster (``.ci/slurm-up DIR`` and ``export SLURM_CONF=DIR/slurm.conf``). SLURM holds a
requeued job for 120 s (its BeginTime); the script releases it at once (``scontrol update
StartTime=now``), as a busy cluster's scheduler would start it when a slot frees.

    python docs/cluster/time_limit_check.py      # writes docs/cluster/time_limit.json
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from sgnet_lightning.files import atomic_write_json

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "cluster" / "time_limit.json"
SLURM = ["--launcher", "slurm", "--launcher-set", "gpus_per_run=0", "--launcher-set", "cpus_per_run=1",
         "--launcher-set", "mem_gb=null", "--launcher-set", "time_min=2", "--launcher-set", "signal_delay_s=60",
         "--launcher-set", "max_requeues=30"]


def sgnet(*args: str, env: dict | None = None) -> str:
    done = subprocess.run(["sgnet", *args], cwd=ROOT, check=True, text=True, capture_output=True,
                          env={**os.environ, **(env or {})})
    return done.stdout


def write_benchmark(folder: Path, data: Path, manifest: Path, runs_root: Path) -> Path:
    """One SG-Net run (seed 0) of 40 epochs x 8 steps on 16^3 patches: a few minutes on one thread."""
    experiment = yaml.safe_load((ROOT / "experiments" / "datasets" / "phantom_bml.yaml").read_text())
    experiment["defaults"] = [str(ROOT / "experiments" / "base" / "trainer.yaml")]
    experiment["data"].update(manifest=str(manifest), data_root=str(data), cache_root=str(folder / "cache"),
                              spacing_mm=3.0, patch_size=[16, 16, 16], batch_size=2, steps_per_epoch=8,
                              samples_per_volume=2, queue_length=4, num_workers=0)
    experiment["model"] = {"optimizer": {"name": "adam", "lr": 3.0e-3}, "scheduler": {"name": "none"},
                           "sliding_window": {"roi_size": [16, 16, 16], "sw_batch_size": 2}}
    experiment["trainer"].update(max_epochs=40, log_every_n_steps=1, enable_progress_bar=False,
                                 enable_model_summary=False, deterministic=True)
    experiment["run"] = {"wandb": {"enabled": False}}
    (folder / "experiment.yaml").write_text(yaml.safe_dump(experiment))
    bench = folder / f"{runs_root.name}.yaml"
    bench.write_text(yaml.safe_dump({
        "name": "time_limit", "root": str(runs_root), "experiment": str(folder / "experiment.yaml"),
        "models": {"sgnet": {"defaults": [str(ROOT / "experiments" / "models" / "sgnet.yaml")]}}, "seeds": [0]}))
    return bench


def squeue(job: str) -> tuple[str, str]:
    """(state, reason) of a job, ("", "") once SLURM no longer lists it."""
    listed = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T %r"], capture_output=True, text=True, timeout=60)
    state, reason = (listed.stdout.strip().split(maxsplit=1) + ["", ""])[:2]
    return state, reason


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="sgnet-time-limit-") as tmp:
        tmp = Path(tmp)
        data, manifest = tmp / "phantom_bml", tmp / "manifest.csv"
        sgnet("data", "synth", "--kind", "bml", "--n", "8", "--size", "48", "--seed", "0", "--out", str(data))
        sgnet("data", "manifest", "--dataset", "bml", "--root", str(data), "--out", str(manifest),
              "--split", str(ROOT / "data_manifests" / "splits" / "phantom_kfold.yaml"))

        reference = write_benchmark(tmp, data, manifest, tmp / "sequential")
        start = time.time()
        sgnet("benchmark", "--config", str(reference), env={"OMP_NUM_THREADS": "1"})
        sequential_s = time.time() - start

        slurm_bench = write_benchmark(tmp, data, manifest, tmp / "slurm")
        start = time.time()
        submitted = sgnet("benchmark", "--config", str(slurm_bench), *SLURM)
        job = re.search(r"as SLURM job (\d+) \(1 task", submitted).group(1)
        run_dir = tmp / "slurm" / "time_limit" / "sgnet" / "seed0"
        released, states, gone_since = 0, [], None
        while not (run_dir / "COMPLETE").is_file():
            if time.time() - start > 1200:
                raise SystemExit(f"gave up after 20 min; states seen: {states}")
            state, reason = squeue(job)
            if not states or states[-1] != f"{state} {reason}".strip():
                states.append(f"{state} {reason}".strip())
            if state == "PENDING" and "BeginTime" in reason:
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=60)
                released += 1
            gone_since = (gone_since or time.time()) if state == "" else None
            if gone_since and time.time() - gone_since > 30:  # SLURM dropped it: neither running nor requeued
                raise SystemExit(f"job {job} ended without completing its run; states seen: {states}")
            time.sleep(1)
        slurm_s = time.time() - start
        sgnet("benchmark", "--config", str(slurm_bench), *SLURM)  # all done: submits nothing, gathers

        task = json.loads((run_dir / "task.json").read_text())
        log_text = Path(task["log"]).read_text()
        attempts_log = sorted(run_dir.parent.parent.glob("jobs/*_log.*"))
        timed_out = sum(p.read_text().count("this job is timed-out") for p in attempts_log)
        requeue_lines = sorted({line.strip() for p in attempts_log for line in p.read_text().splitlines()
                                if "timed-out" in line or "Exiting gracefully" in line or "resum" in line.lower()})
        final = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        expected = torch.load(tmp / "sequential" / "time_limit" / "sgnet" / "seed0" / "checkpoints" / "last.ckpt",
                              map_location="cpu", weights_only=False)
        same_weights = all(torch.equal(final["state_dict"][k], v) for k, v in expected["state_dict"].items())
        slurm_rows = pd.read_csv(tmp / "slurm" / "time_limit" / "results.csv")
        sequential_rows = pd.read_csv(tmp / "sequential" / "time_limit" / "results.csv")
        same_rows = slurm_rows.equals(sequential_rows)
        report = {
            "what": "one SG-Net benchmark run through SLURM with a 2-minute time limit and USR2 60 s before it, "
                    "against the same run inline (docs/cluster/time_limit_check.py)",
            "command": "sgnet benchmark --config <bench> " + " ".join(SLURM),
            "slurm_version": subprocess.run(["sinfo", "--version"], capture_output=True, text=True).stdout.strip(),
            "job": job,
            "attempts": task["attempt"],
            "timed_out_signals_logged": timed_out,
            "resumed": task["resumed"],
            "resumed_from_epoch_last_attempt": task.get("resumed_from_epoch"),
            "earlier_attempts": [{k: h.get(k) for k in ("attempt", "started_at", "ended_at", "resumed_from_epoch", "error")}
                                 for h in task.get("history", [])],
            "released_from_begin_time_hold": released,
            "slurm_states_seen": states,
            "log_lines": requeue_lines[:20],
            "final_epoch": {"slurm": final["epoch"], "sequential": expected["epoch"]},
            "weights_equal": same_weights,
            "results_rows": len(slurm_rows),
            "results_equal": same_rows,
            "wall_s": {"sequential": round(sequential_s, 1), "slurm_with_requeues": round(slurm_s, 1)},
            "log_mentions_requeue": "timed-out" in log_text,
        }
    atomic_write_json(OUT, report)
    print(json.dumps(report, indent=2))
    return 0 if same_weights and same_rows and task["attempt"] > 1 else 1


if __name__ == "__main__":
    sys.exit(main())
