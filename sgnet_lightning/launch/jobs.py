"""Benchmarks and sweeps through a launcher: which runs (workers) to start, recording them, waiting,
and the status tables.

A benchmark run launched here is the same fit + test + ``COMPLETE`` as in the sequential command
(:func:`sgnet_lightning.benchmark.run_one`), in the same run folder. Its ``launch.json`` records the
launcher, the job id (SLURM ``<array>_<task>``, or the local job's id) and the log files under
``<benchmark>/jobs/``; ``task.json`` is written by the process doing the run. A sweep keeps
``<runs root>/<study>/launch.json`` (its workers' jobs) and ``workers/<job>.json``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from functools import partial
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sgnet_lightning.files import atomic_write_json
from sgnet_lightning.errors import ConfigError
from sgnet_lightning.launch.settings import Launcher
from sgnet_lightning.runs import RUN_FILE, benchmark_run_dir, can_resume, is_complete, study_dir as study_folder
from sgnet_lightning.launch.status import (LAUNCH_FILE, TASK_FILE, WORKERS_DIR, State, duration_text, format_table,
                                           job_state, read_record, squeue_states)

log = logging.getLogger(__name__)

JOBS_DIR = "jobs"  # submitit's folder (pickles, logs) under the benchmark or study folder
SLURM_POLL_S = 10.0  # how often --wait asks squeue


def run_name(run: dict) -> str:
    return f"{run['label']} seed {run['seed']}" + (f" fold {run['fold']}" if run.get("fold") is not None else "")


def _run_dir(bench_dir: Path, run: dict) -> Path:
    return benchmark_run_dir(bench_dir, run["label"], run["seed"], run.get("fold"))


def _launch_record(launcher: str, job=None, **fields) -> dict[str, Any]:
    record = {"launcher": launcher, "job_id": None, "log": None, "host": socket.gethostname(),
              "pid": os.getpid(), "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **fields}
    if job is not None:
        record.update(job_id=str(job.job_id), log=str(job.paths.stdout))  # stderr goes there too
    return record


def _record_runs(run_dirs: list[Path], launcher: str, job) -> None:
    for run_dir in run_dirs:
        atomic_write_json(run_dir / LAUNCH_FILE, _launch_record(launcher, job))


# -- benchmarks -------------------------------------------------------------------------------------------
def launch_benchmark_runs(bench: dict, runs: list[dict], launcher: Launcher) -> dict[str, str]:
    """Start ``runs`` of ``bench`` with ``launcher``; return run name -> error of the runs that failed.

    local: one job per run, as many at once as the launcher has slots (GPUs x ``runs_per_gpu``, or
    ``workers`` on a CPU-only machine), each with its share of the CPUs; waits for all of them.
    slurm: one array, one task per run (or per ``runs_per_gpu`` runs, side by side on the task's
    GPU); returns once it is submitted (:func:`wait_for_benchmark` waits).
    """
    from sgnet_lightning.launch.executors import Request, local_slots, run_local, submit_slurm
    from sgnet_lightning.launch.tasks import BenchmarkRuns, Resources

    bench_dir = Path(bench["dir"]).resolve()
    folder, cwd = bench_dir / JOBS_DIR, os.getcwd()
    if launcher.kind == "local":
        for run in runs:  # visible to `status` while they wait for a slot
            atomic_write_json(_run_dir(bench_dir, run) / LAUNCH_FILE, _launch_record("local"))
        requests = [Request(run_name(run), BenchmarkRuns(), (str(bench_dir), [run], cwd),
                            record=partial(_record_runs, [_run_dir(bench_dir, run)], "local")) for run in runs]
        slots = local_slots(launcher.settings, len(runs))
        log.info("local launcher: %d run(s), %d at a time (%s), %s thread(s) and at most %s loader worker(s) each",
                 len(runs), len(slots), ", ".join(f"GPU {s.gpus[0]}" if s.gpus else "CPU" for s in slots),
                 slots[0].resources.threads, slots[0].resources.loader_workers)
        outcome = run_local(requests, slots, folder, launcher["timeout_min"], desc=f"benchmark {bench['name']}")
        states = dict(zip(map(run_name, runs), benchmark_states(bench, runs)))
        return {name: f"{states[name].detail or error} ({states[name].log})"
                for name, error in outcome.items() if error or states[name].state != "done"}

    per_task = launcher["runs_per_gpu"]
    groups = [runs[i:i + per_task] for i in range(0, len(runs), per_task)]
    cpus = launcher["cpus_per_run"]
    requests = [Request(", ".join(map(run_name, group)), BenchmarkRuns(),
                        (str(bench_dir), group, cwd, launcher.settings),
                        record=partial(_record_runs, [_run_dir(bench_dir, run) for run in group], "slurm"))
                for group in groups]
    jobs = submit_slurm(requests, launcher.settings, folder, Resources(threads=cpus, loader_workers=cpus - 1))
    array = str(jobs[0].job_id).split("_")[0]
    print(f"submitted {len(runs)} run(s) as SLURM job {array} ({len(jobs)} task(s)); logs in {folder}")
    return {}


def benchmark_states(bench: dict, runs: list[dict] | None = None) -> list[State]:
    """The state of each run of ``bench`` (default: all its runs), in order."""
    runs = bench["runs"] if runs is None else runs
    bench_dir = Path(bench["dir"])
    records = []
    for run in runs:
        run_dir = _run_dir(bench_dir, run)
        records.append((run_dir, read_record(run_dir / LAUNCH_FILE), read_record(run_dir / TASK_FILE)))
    slurm_jobs = {str(r["job_id"]) for _, *pair in records for r in pair
                  if r and r.get("launcher") == "slurm" and r.get("job_id")}
    live = squeue_states(slurm_jobs)
    states = []
    for run_dir, launch, task in records:
        if is_complete(run_dir):
            info = read_record(run_dir / RUN_FILE) or {}
            seconds = info.get("train_time_s", 0.0) + info.get("test_time_s", 0.0) if "train_time_s" in info else None
            states.append(State("done", (task or launch or {}).get("job_id"), (task or launch or {}).get("log"),
                                duration_text(seconds)))
            continue
        state = job_state(launch, task, live)
        if state.state == "missing" and can_resume(run_dir):
            state = State("missing", state.job_id, state.log, "partial: resumes from last.ckpt")
        states.append(state)
    return states


def wait_for_benchmark(bench: dict, runs: list[dict]) -> dict[str, str]:
    """Poll until none of ``runs`` is queued or running (a bar counts the finished ones); return run
    name -> error line (and log) of those that did not finish."""
    bar = tqdm(total=len(runs), desc=f"benchmark {bench['name']} (SLURM)", unit="run")
    try:
        while True:
            states = benchmark_states(bench, runs)
            bar.n = sum(s.state == "done" for s in states)
            bar.set_postfix_str(", ".join(f"{n} {k}" for k in ("running", "queued", "failed")
                                          if (n := sum(s.state == k for s in states))), refresh=False)
            bar.refresh()
            if not any(s.state in ("queued", "running") for s in states):
                return {run_name(run): f"{state.detail} ({state.log})" for run, state in zip(runs, states)
                        if state.state != "done"}
            time.sleep(SLURM_POLL_S)
    finally:
        bar.close()


def format_benchmark_status(bench: dict) -> str:
    """``sgnet benchmark status``: a summary line, then one line per run."""
    states = benchmark_states(bench)
    counts = {k: sum(s.state == k for s in states) for k in ("done", "running", "queued", "failed", "missing")}
    rows = [{"model": run["label"], "seed": run["seed"], "fold": run.get("fold"), "state": s.state, "job": s.job_id,
             "log": s.log, "detail": s.detail} for run, s in zip(bench["runs"], states)]
    columns = ["model", "seed"] + (["fold"] if any(r["fold"] is not None for r in rows) else [])
    summary = f"benchmark {bench['name']} ({bench['dir']}): {len(states)} runs, " + ", ".join(
        f"{n} {k}" for k, n in counts.items() if n)
    return summary + "\n" + format_table(rows, columns + ["state", "job", "log", "detail"])


# -- sweeps -------------------------------------------------------------------------------------------------
def launch_sweep_workers(space_file: str, space_overrides: dict, study: str, run_options: dict[str, Any],
                         launcher: Launcher, workers: int | None, wait: bool) -> dict[str, str]:
    """Start ``workers`` sweep workers on one study; return worker -> error of those that failed.

    Each worker runs ``run_sweep`` until the study holds ``n_trials`` finished trials; the study's
    storage is what they share, so a SLURM sweep needs an RDB URL (PostgreSQL): Optuna's journal
    files are corrupted on network file systems (optuna #5138).
    """
    from sgnet_lightning.launch.executors import Request, local_slots, run_local, submit_slurm
    from sgnet_lightning.launch.tasks import Resources, SweepWorker
    from sgnet_lightning.sweeps.storage import is_url

    storage = run_options.get("storage")
    if launcher.kind == "slurm" and not (storage and is_url(storage)):
        raise ConfigError("a sweep through SLURM needs --storage postgresql+psycopg2://user@host/db: its workers "
                          "share the study on several nodes, and Optuna's journal files get corrupted on network "
                          "file systems (optuna #5138)")
    run_options = {**run_options, "runs_root": str(Path(run_options["runs_root"]).resolve())}
    study_dir = study_folder(run_options["runs_root"], study)
    folder, cwd = study_dir / JOBS_DIR, os.getcwd()
    args = (str(Path(space_file).resolve()), space_overrides, study, run_options, cwd)
    if launcher.kind == "local":
        settings = {**launcher.settings, "workers": workers or launcher["workers"]}
        n_workers = workers or len(local_slots(settings, 10**6))  # default: one per slot
        slots = local_slots(settings, n_workers)
        requests = [Request(f"worker {i}", SweepWorker(), args) for i in range(n_workers)]
        outcome = run_local(requests, slots, folder, settings["timeout_min"], desc=f"study {study}",
                            progress=partial(_finished_trials, study, run_options), unit="trial",
                            progress_total=run_options.get("n_trials"))
        return {name: error for name, error in outcome.items() if error}

    n_workers = workers or 1
    cpus = launcher["cpus_per_run"]
    requests = [Request(f"worker {i}", SweepWorker(), args) for i in range(n_workers)]
    jobs = submit_slurm(requests, {**launcher.settings, "runs_per_gpu": 1}, folder,
                        Resources(threads=cpus, loader_workers=cpus - 1))
    atomic_write_json(study_dir / LAUNCH_FILE, {**_launch_record("slurm"), "jobs": [
        {"job_id": str(j.job_id), "log": str(j.paths.stdout)} for j in jobs]})
    print(f"submitted {n_workers} sweep worker(s) as SLURM job {str(jobs[0].job_id).split('_')[0]}; logs in {folder}")
    if not wait:
        return {}
    bar = tqdm(total=run_options.get("n_trials"), desc=f"study {study} (SLURM)", unit="trial")
    try:
        while any(s.state in ("queued", "running") for s in worker_states(study_dir)):
            bar.n = min(_finished_trials(study, run_options), bar.total)
            bar.refresh()
            time.sleep(SLURM_POLL_S)
        bar.n = min(_finished_trials(study, run_options), bar.total)
    finally:
        bar.close()
    return {w["job"]: f"{w['detail']} ({w['log']})" for w in worker_rows(study_dir) if w["state"] == "failed"}


def _finished_trials(study: str, run_options: dict[str, Any]) -> int:
    from sgnet_lightning.sweeps import load_study
    from sgnet_lightning.sweeps.storage import default_storage
    from sgnet_lightning.sweeps.study import FINISHED

    storage = run_options.get("storage") or default_storage(run_options["runs_root"], study)
    try:
        return len(load_study(study, storage).get_trials(deepcopy=False, states=FINISHED))
    except Exception:  # the first worker has not created the study yet
        return 0


def worker_states(study_dir: Path) -> list[State]:
    return [State(w["state"], w["job"], w["log"], w["detail"]) for w in worker_rows(study_dir)]


def worker_rows(study_dir: Path) -> list[dict[str, Any]]:
    """One row per sweep worker the launcher submitted (or that recorded itself)."""
    launch = read_record(study_dir / LAUNCH_FILE) or {}
    records = {p.stem: read_record(p) for p in sorted((study_dir / WORKERS_DIR).glob("*.json"))}
    submitted = {str(job["job_id"]): {"launcher": launch["launcher"], "submitted_at": launch["submitted_at"], **job}
                 for job in launch.get("jobs", [])}
    job_ids = list(submitted) + [job_id for job_id in records if job_id not in submitted]
    live = squeue_states({j for j in job_ids if (submitted.get(j) or records.get(j) or {}).get("launcher") == "slurm"})
    rows = []
    for job_id in job_ids:
        task = records.get(job_id)
        if task and task.get("state") == "done":
            state = State("done", job_id, task.get("log"), f"ended {task.get('ended_at')}")
        else:
            state = job_state(submitted.get(job_id), task, live)
        rows.append({"job": job_id, "state": state.state, "worker": f"{task['host']}:{task['pid']}" if task else None,
                     "log": state.log, "detail": state.detail})
    return rows


def format_sweep_status(study_name: str, storage: str, runs_root: str) -> str:
    """``sgnet sweep status``: the study's trials (state, values, worker, job, log) and its workers."""
    from sgnet_lightning.sweeps import load_study
    from sgnet_lightning.sweeps.storage import safe_url

    study = load_study(study_name, storage)
    study_dir = study_folder(Path(runs_root).resolve(), study_name)
    workers = worker_rows(study_dir)
    job_of = {w["worker"]: w for w in workers if w["worker"]}
    trials = study.get_trials(deepcopy=False)
    rows = []
    for trial in trials:
        worker = trial.user_attrs.get("worker")
        job = job_of.get(worker, {})
        values = ", ".join(f"{k.split('.')[-1]}={v:.4g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                           for k, v in (trial.user_attrs.get("config_values") or {}).items())
        objective = "" if trial.values is None else ", ".join(f"{v:.4g}" for v in trial.values)
        rows.append({"trial": trial.number, "state": trial.state.name.lower(), "values": values, "objective": objective,
                     "worker": worker, "job": job.get("job"), "log": job.get("log"),
                     "error": trial.user_attrs.get("error") or ""})
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    text = (f"study {study_name} ({safe_url(storage)}): {len(trials)} trials, "
            + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + "\n"
            + format_table(rows, ["trial", "state", "values", "objective", "worker", "job", "log", "error"]))
    if workers:
        text += "\nworkers:\n" + format_table(workers, ["job", "state", "worker", "log", "detail"])
    return text
