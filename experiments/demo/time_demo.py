"""Time every step of ``make demo`` after installation, as on a fresh clone, and keep its table.

The steps are the Makefile's ``demo`` recipe, each timed as a child process (user and system CPU
seconds from ``getrusage``, wall seconds, load average before and after):

1. ``sgnet data synth`` of the phantom set (``make phantoms``' command) into a scratch folder,
2. ``sgnet data check`` of the committed manifest against those fresh files (so the phantoms
   synthesised now are the ones the manifest hashes),
3. ``sgnet benchmark`` of ``experiments/benchmarks/demo.yaml`` into ``runs/demo`` (removed first),
   reading the fresh phantoms and building its cache in the scratch folder (``data_root`` and
   ``cache_root`` are not part of a run's locked config, so a later ``make demo`` finds these runs
   complete),
4. ``sgnet stats``, 5. ``sgnet report`` (with the example slices it reads from that cache),
6. ``sgnet summary``.

Writes ``docs/demo/demo_time.json`` and ``docs/demo/summary.txt`` (the printed table).

On a machine shared with other jobs, set ``OMP_NUM_THREADS=1``: two OpenMP threads waiting for cores
that other processes hold made training steps several times slower there (``docs/performance.md``),
while one thread's CPU seconds are close to what the step costs alone. The JSON records the thread
count and the load averages; CPU seconds on one thread are an upper estimate of the wall time on an
idle 2-core machine, where the two threads share the work.

    OMP_NUM_THREADS=1 python experiments/demo/time_demo.py
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sgnet_lightning.files import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "demo"
BENCH_DIR = ROOT / "runs" / "demo"
CONFIG = "experiments/benchmarks/demo.yaml"
PHANTOM_N, PHANTOM_SIZE = 24, 64  # the Makefile's PHANTOM_N and PHANTOM_SIZE


def timed(name: str, command: list[str], steps: list[dict], capture: bool = False) -> str:
    """Run ``command`` from the repository root; append its times to ``steps``; return its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before, start = os.getloadavg(), time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, check=True, text=True,
                          stdout=subprocess.PIPE if capture else None)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    steps.append({
        "step": name, "command": " ".join(command), "wall_s": round(wall, 1),
        "user_s": round(after.ru_utime - before.ru_utime, 1), "sys_s": round(after.ru_stime - before.ru_stime, 1),
        "load_average_1_5_15_before": [round(v, 2) for v in load_before],
        "load_average_1_5_15_after": [round(v, 2) for v in os.getloadavg()],
    })
    print(f"{name}: {steps[-1]['user_s'] + steps[-1]['sys_s']:.0f} CPU s, {wall:.0f} s wall", flush=True)
    return done.stdout or ""


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, text=True, stdout=subprocess.PIPE).stdout.strip()


def main() -> int:
    steps: list[dict] = []
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    shutil.rmtree(BENCH_DIR, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="sgnet-demo-") as scratch:
        phantoms, cache = Path(scratch) / "phantom_bml", Path(scratch) / "cache"
        timed("synth", ["sgnet", "data", "synth", "--kind", "bml", "--n", str(PHANTOM_N), "--size", str(PHANTOM_SIZE),
                        "--seed", "0", "--out", str(phantoms)], steps)
        timed("check", ["sgnet", "data", "check", "data_manifests/phantom_bml.csv", "--root", str(phantoms)], steps)
        timed("benchmark", ["sgnet", "benchmark", "--config", CONFIG,
                            "--set", f"budget.data.data_root={phantoms}", "--set", f"budget.data.cache_root={cache}"],
              steps)
        # the report reads example slices from the cache that benchmark.json names: keep it until then
        timed("stats", ["sgnet", "stats", "--results", "runs/demo", "--reference", "unet", "--out", "runs/demo/stats"],
              steps)
        timed("report", ["sgnet", "report", "--benchmark", "runs/demo", "--out", "runs/demo/report", "--reference",
                         "unet"], steps)
        table = timed("summary", ["sgnet", "summary", "runs/demo"], steps, capture=True)
    print(table)

    runs = []
    for run_json in sorted(BENCH_DIR.glob("*/seed*/run.json")):
        info = json.loads(run_json.read_text())
        runs.append({"model": run_json.parent.parent.name, "seed": int(run_json.parent.name[4:]),
                     **{k: round(info[k], 2) for k in ("train_time_s", "wall_time_s", "inference_time_s_per_volume")
                        if k in info}})
    record = {
        "what": "make demo's steps after installation, fresh phantoms and cache (experiments/demo/time_demo.py)",
        "started_utc": started, "finished_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "commit": _git("rev-parse", "--short", "HEAD"), "config": CONFIG,
        "config_sha256": hashlib.sha256((ROOT / CONFIG).read_bytes()).hexdigest(),
        "config_committed": not _git("status", "--porcelain", "--", CONFIG),
        "cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        "total_cpu_s": round(sum(s["user_s"] + s["sys_s"] for s in steps), 1),
        "total_wall_s": round(sum(s["wall_s"] for s in steps), 1),
        "steps": steps, "runs": runs,
    }
    atomic_write_json(OUT / "demo_time.json", record)
    atomic_write_text(OUT / "summary.txt", table)
    print(f"total: {record['total_cpu_s']:.0f} CPU s, {record['total_wall_s']:.0f} s wall -> {OUT / 'demo_time.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
