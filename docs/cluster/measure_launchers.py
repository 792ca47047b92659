"""Measure the launchers on this machine; write ``docs/cluster/launchers_cpu.json``.

    python docs/cluster/measure_launchers.py          (needs `make phantoms`; a few minutes on 2 cores)

The phantom micro-benchmark (``experiments/benchmarks/phantom_micro.yaml``: 2 models x 2 seeds) runs
twice from scratch: one run after another (``--launcher inline``) and side by side
(``--launcher local --workers 2``), each run on one torch thread (the local launcher's share of 2
cores; the inline command gets ``OMP_NUM_THREADS=1``), so both give the same numbers (checked:
``results.csv`` byte for byte). Recorded: each command's wall time, the per-run times of its
``run.json``, the machine's load, for the local launcher the seconds from starting each run's job
(``launch.json``) to its training process starting work (``task.json``; 1 s resolution), and the
wall time :mod:`sgnet_lightning.launch.projection` projects from the inline run's measured times.
"""

from __future__ import annotations

import filecmp
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG = "experiments/benchmarks/phantom_micro.yaml"
WAYS = {
    "inline": [],
    "local_2_workers": ["--launcher", "local", "--workers", "2"],
}


def job_start_seconds(bench_dir: Path) -> dict[str, float]:
    """Run folder -> seconds from its job's start (launch.json) to its run's start (task.json)."""
    def at(path: Path, key: str) -> datetime:
        return datetime.strptime(json.loads(path.read_text())[key], "%Y-%m-%dT%H:%M:%S")

    return {str(task.parent.relative_to(bench_dir)): (at(task, "started_at")
                                                     - at(task.with_name("launch.json"), "submitted_at")).total_seconds()
            for task in sorted(bench_dir.glob("*/seed*/task.json"))}


def main(out: Path) -> None:
    from sgnet_lightning.benchmark import load_benchmark
    from sgnet_lightning.launch.projection import measured_seconds, project
    from sgnet_lightning.tracking import git_commit

    measured = {}
    for way, launcher in WAYS.items():
        name = f"phantom_micro_{way}"
        shutil.rmtree(REPO / "runs" / name, ignore_errors=True)
        command = ["sgnet", "benchmark", "--config", CONFIG, "--set", f"name={name}", *launcher]
        load_before = os.getloadavg()
        start = time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        wall = time.perf_counter() - start
        measured[way] = {"command": " ".join(command), "wall_s": wall, "load_avg_before": load_before,
                         "load_avg_after": os.getloadavg(),
                         "run_seconds": measured_seconds(REPO / "runs" / name)}
        if launcher:
            measured[way]["job_start_seconds"] = job_start_seconds(REPO / "runs" / name)
    same = filecmp.cmp(REPO / "runs/phantom_micro_inline/results.csv",
                       REPO / "runs/phantom_micro_local_2_workers/results.csv", shallow=False)
    bench = load_benchmark(REPO / CONFIG, {"name": "phantom_micro_inline"})
    projection = project(bench, slots=[1, 2, 4, 8])
    out.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": git_commit(),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor(), "python": sys.version.split()[0]},
        "ways": measured,
        "results_identical": same,
        "projection_from_inline": projection,
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(REPO / "docs" / "cluster" / "launchers_cpu.json")
