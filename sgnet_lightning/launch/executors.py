"""Starting jobs: side by side on this machine (submitit's ``LocalExecutor``) or as one SLURM array
(submitit's ``SlurmExecutor``).

**Local.** submitit's ``LocalExecutor`` starts every job it is given at once, in its own process
group, with ``CUDA_VISIBLE_DEVICES`` set from ``visible_gpus``; it has no queue. :func:`run_local`
therefore keeps one job per *slot* (a GPU, ``runs_per_gpu`` slots per GPU, or one of ``workers``
CPU slots) and starts the next request on a slot as soon as its job ends: the only scheduling here,
a loop over ``job.done()``. Each slot gets an equal share of the CPUs (:class:`Resources`).

**SLURM.** :func:`submit_slurm` submits all requests as one array (``executor.batch()``), one task
each, at most ``array_parallelism`` running at once; submitit writes the sbatch file, pickles each
call, runs it through ``srun`` and requeues a task at its time limit (``time_min``, warned
``signal_delay_s`` before). Logs and pickles go to the folder given (under the benchmark or study
folder, so on the shared file system the nodes read).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm import tqdm

from sgnet_lightning.errors import SgnetError
from sgnet_lightning.launch.tasks import Resources

log = logging.getLogger(__name__)

LOCAL_POLL_S = 1.0  # how often the local launcher looks for finished jobs


@dataclass(frozen=True)
class Slot:
    """Where one local job runs: ``gpus`` (indices for ``CUDA_VISIBLE_DEVICES``; empty: CPU only)
    and its share of the CPUs."""

    gpus: tuple[int, ...]
    resources: Resources


@dataclass
class Request:
    """One job to start: ``function(*args, resources=<the slot's share>)``; ``record(job)`` is
    called once the job is started (local) or submitted (SLURM)."""

    name: str
    function: Callable
    args: tuple
    record: Callable[[Any], None] | None = field(default=None, repr=False)


def visible_gpus() -> list[int]:
    """The GPUs this process may use, as indices ``CUDA_VISIBLE_DEVICES`` understands: its entries
    when it is set (SLURM sets it for a task's GPUs), else every GPU torch counts."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        try:
            return [int(entry) for entry in listed.split(",") if entry.strip()]
        except ValueError:
            raise SgnetError(f"CUDA_VISIBLE_DEVICES={listed} names GPUs by UUID; give --gpus with indices") from None
    import torch

    return list(range(torch.cuda.device_count()))


def available_cpus() -> int:
    """Cores this process may use: a SLURM task's ``SLURM_CPUS_PER_TASK``, else its CPU affinity."""
    return int(os.environ.get("SLURM_CPUS_PER_TASK") or len(os.sched_getaffinity(0)))


def local_slots(settings: dict[str, Any], n_jobs: int) -> list[Slot]:
    """The slots of a local launcher's ``settings`` (``gpus``, ``runs_per_gpu``, ``workers``,
    ``cpus``), no more than ``n_jobs``: fewer jobs than slots leave the CPUs undivided among
    slots that would stay empty. Slots take the GPUs in turn, so the first jobs spread over them."""
    gpus = settings["gpus"] if settings.get("gpus") is not None else visible_gpus()
    if gpus:
        placements = [(gpu,) for _ in range(settings["runs_per_gpu"]) for gpu in gpus]
    else:
        placements = [()] * settings["workers"]
    placements = placements[:max(1, n_jobs)]
    resources = Resources.share(settings.get("cpus") or available_cpus(), len(placements))
    return [Slot(gpus, resources) for gpus in placements]


def run_local(requests: Sequence[Request], slots: Sequence[Slot], folder: Path, timeout_min: float, desc: str,
              progress: Callable[[], int] | None = None, progress_total: int | None = None,
              unit: str = "run") -> dict[str, str | None]:
    """Run every request as a local submitit job, one per slot at a time; wait for all of them.

    Args:
        requests: the jobs, started in this order.
        slots: where they may run (:func:`local_slots`).
        folder: submitit's folder (pickles and ``<job>_0_log.out``, stdout and stderr).
        timeout_min: a job still going after this is stopped.
        desc: progress-bar label.
        progress: polled for the bar's count (default: jobs finished) out of ``progress_total``.

    Returns:
        request name -> None (finished) or the last line of its error.

    A ``KeyboardInterrupt`` (or any error here) cancels the jobs still going before it propagates.
    """
    import submitit

    executor = submitit.LocalExecutor(folder=folder)
    pending, running, outcome = list(requests), {}, {}
    bar = tqdm(total=progress_total or len(pending), desc=desc, unit=unit)
    try:
        while pending or running:
            for index, slot in enumerate(slots):
                if index in running or not pending:
                    continue
                request = pending.pop(0)
                executor.update_parameters(timeout_min=timeout_min, gpus_per_node=len(slot.gpus),
                                           visible_gpus=slot.gpus, stderr_to_stdout=True)
                job = executor.submit(request.function, *request.args, resources=slot.resources)
                if request.record is not None:
                    request.record(job)
                running[index] = (request, job)
            bar.set_postfix_str(", ".join(request.name for request, _ in running.values()), refresh=False)
            time.sleep(LOCAL_POLL_S)
            for index, (request, job) in list(running.items()):
                if job.done():
                    del running[index]
                    outcome[request.name] = job_error(job)
                    if progress is None:
                        bar.update(1)
            if progress is not None:  # workers finishing together may overshoot the target by a few
                bar.n = min(progress(), bar.total) if bar.total else progress()
                bar.refresh()
    except BaseException:
        for _, job in running.values():
            job.cancel(check=False)
        raise
    finally:
        bar.close()
    return outcome


def job_error(job) -> str | None:
    """None for a job that returned, else the last line of what went wrong."""
    try:
        error = job.exception()
    except Exception as err:  # the job left no result: killed, or never started
        error = err
    if error is None:
        return None
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def sbatch_parameters(settings: dict[str, Any]) -> dict[str, Any]:
    """submitit ``SlurmExecutor`` parameters from a slurm launcher's settings."""
    parameters = {
        "job_name": settings["job_name"],
        "time": settings["time_min"],
        "cpus_per_task": settings["cpus_per_run"] * settings["runs_per_gpu"],
        "array_parallelism": settings["array_parallelism"],
        "signal_delay_s": settings["signal_delay_s"],
        "stderr_to_stdout": True,  # one log per task: what status shows
        "setup": list(settings["setup"]),
        "additional_parameters": dict(settings["sbatch"]),
    }
    if settings["partition"]:
        parameters["partition"] = settings["partition"]
    if settings["gpus_per_run"]:
        parameters["gpus_per_node"] = settings["gpus_per_run"]
    if settings["mem_gb"]:
        parameters["mem"] = f"{settings['mem_gb'] * settings['runs_per_gpu']}GB"
    return parameters


def submit_slurm(requests: Sequence[Request], settings: dict[str, Any], folder: Path,
                 resources: Resources) -> list:
    """Submit ``requests`` as one SLURM array (one task each); return submitit's jobs
    (``job.job_id`` is ``<array>_<task>``; a single request is a plain job)."""
    import submitit

    try:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=settings["max_requeues"])
    except RuntimeError as err:  # no srun: not a SLURM machine
        raise SgnetError(f"--launcher slurm: {err} (submit from a machine of the cluster)") from None
    executor.update_parameters(**sbatch_parameters(settings))
    try:
        with executor.batch():
            jobs = [executor.submit(r.function, *r.args, resources=resources) for r in requests]
    except Exception as err:  # sbatch refused the array: say why in one line
        message = " ".join(str(err).split())
        raise SgnetError(f"sbatch refused the array job: {message[-400:]}") from None
    for request, job in zip(requests, jobs):
        if request.record is not None:
            request.record(job)
    return jobs


def run_side_by_side(bench_dir: str, runs: list[dict], settings: dict[str, Any], cwd: str) -> None:
    """Inside one SLURM task: its runs side by side (``runs_per_gpu``) as local jobs on the task's
    GPU(s), the task's CPUs divided; raise if any failed (the task then counts as failed)."""
    from sgnet_lightning.launch.jobs import JOBS_DIR, run_name
    from sgnet_lightning.launch.tasks import BenchmarkRuns

    slots = local_slots({"gpus": None, "runs_per_gpu": settings.get("runs_per_gpu", 1), "workers": len(runs),
                         "cpus": None}, len(runs))
    requests = [Request(run_name(run), BenchmarkRuns(), (bench_dir, [run], cwd)) for run in runs]
    outcome = run_local(requests, slots, Path(bench_dir) / JOBS_DIR, settings.get("time_min", 1440),
                        desc="runs of this task")
    failed = {name: error for name, error in outcome.items() if error}
    if failed:
        raise SgnetError("; ".join(f"{name}: {error}" for name, error in failed.items()))
