"""What runs inside a launched job: benchmark runs and sweep workers, and the records they leave.

Each job body is a :class:`submitit.helpers.Checkpointable`: when SLURM is about to stop a task at its
time limit, submitit (signal USR2, ``signal_delay_s`` before) requeues the task with the same
arguments, and every run resumes from its ``last.ckpt``. A task requeued by anyone else
(``scontrol requeue <array>_<task>``, preemption, node failure) starts again the same way. Runs
already ``COMPLETE`` are skipped, so a task is idempotent.

Records (JSON, written atomically), read by ``sgnet benchmark status`` / ``sgnet sweep status``:

- ``<run>/task.json``: the process doing a run: ``launcher`` (inline, local or slurm), ``job_id``
  (SLURM ``<array>_<task>`` or the local job's id), ``host``, ``pid``, ``log`` (its submitit log:
  stdout and stderr), ``attempt`` (1, 2, ... over requeues and reruns), ``resumed`` (started from a
  ``last.ckpt``) and ``resumed_from_epoch``, ``threads``, ``loader_workers``, ``state`` (running,
  done or failed), ``error`` (the exception's last line), ``started_at``/``ended_at``, ``history``
  (the earlier attempts).
- ``<study runs>/<study>/workers/<job>.json``: the same for a sweep worker.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import os
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback
from submitit.helpers import Checkpointable

from sgnet_lightning.config import get_dotted, set_dotted
from sgnet_lightning.files import atomic_write_json
from sgnet_lightning.launch.status import WORKERS_DIR

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resources:
    """The share of a machine one run gets when several go at once.

    ``threads``: torch intra-op threads (None: torch's default, every core). ``loader_workers``: upper
    bound on the run's ``data.num_workers`` (None: as configured). On a CPU, float sums depend on the
    thread count: runs are bit-identical across launchers at equal ``threads``.
    """

    threads: int | None = None
    loader_workers: int | None = None

    @classmethod
    def share(cls, cpus: int, concurrent: int) -> Resources:
        """``cpus`` cores divided among ``concurrent`` runs: ``share`` threads each and at most
        ``share - 1`` loader workers (one core for the training process itself)."""
        share = max(1, cpus // max(1, concurrent))
        return cls(threads=share, loader_workers=share - 1)

    def set_threads(self) -> None:
        """Give this process's torch ``threads`` (if set)."""
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)

    def cap(self, config: dict[str, Any]) -> dict[str, Any]:
        """``config`` with its loader workers lowered to ``loader_workers`` where it asks for more.

        Not with ``data.torchio_transforms``: those draw random numbers in the workers, so their
        number is part of the run (:mod:`sgnet_lightning.config_lock` keeps it) and is left as set.
        """
        if self.loader_workers is None:
            return config
        configured = get_dotted(config, "data.num_workers", _datamodule_default("num_workers"))
        if configured <= self.loader_workers:
            return config
        if get_dotted(config, "data.torchio_transforms"):
            log.warning("data.num_workers %d left as set (more than this run's share, %d): with "
                        "data.torchio_transforms the number of workers changes the run", configured,
                        self.loader_workers)
            return config
        config = copy.deepcopy(config)
        set_dotted(config, "data.num_workers", self.loader_workers)
        return config


def _datamodule_default(name: str) -> Any:
    from sgnet_lightning.data.datamodule import SegmentationDataModule

    return inspect.signature(SegmentationDataModule.__init__).parameters[name].default


class LeaveRequeueToSubmitit(Callback):
    """Lightning's ``SLURMEnvironment(auto_requeue=False)`` for a run that submitit requeues.

    Lightning detects SLURM and by default saves an HPC checkpoint and requeues the job on SIGUSR1
    itself; with submitit doing the same on its own signal, both would act on one preemption
    (Lightning PR #10601, issue #14893). The environment is chosen by Lightning, not by the config
    (a ``trainer.plugins`` entry would enter the run's locked config and make SLURM runs look
    changed next to local ones), so this callback turns its requeueing off at ``setup``, before the
    trainer registers its signal handlers (fit, validate and test alike).
    """

    def setup(self, trainer, pl_module, stage: str) -> None:
        from lightning.fabric.plugins.environments import SLURMEnvironment

        environment = trainer._accelerator_connector.cluster_environment  # what the signal connector reads
        if isinstance(environment, SLURMEnvironment):
            environment.auto_requeue = False


def launched_run_callbacks() -> list[Callback]:
    """Callbacks every run of a benchmark or sweep trains and tests with (inline ones too: harmless
    outside SLURM)."""
    return [LeaveRequeueToSubmitit()]


def job_identity() -> dict[str, Any]:
    """Which launcher and job this process runs under, and its submitit log.

    A SLURM job id wins over a local one: runs side by side inside a SLURM task (``runs_per_gpu``)
    are local submitit jobs of that task, and SLURM is what says whether they are still going.
    """
    identity: dict[str, Any] = {"launcher": "inline", "job_id": None, "log": None}
    if os.environ.get("SUBMITIT_EXECUTOR"):
        import submitit

        environment = submitit.JobEnvironment()
        identity.update(launcher=environment.cluster, job_id=environment.job_id, log=str(environment.paths.stdout))
    if os.environ.get("SLURM_JOB_ID"):
        array = os.environ.get("SLURM_ARRAY_JOB_ID")
        identity.update(launcher="slurm", job_id=(f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array
                                                  else os.environ["SLURM_JOB_ID"]))
    return identity


HISTORY_KEYS = ("attempt", "launcher", "job_id", "host", "state", "error", "started_at", "ended_at")
HISTORY_LENGTH = 20  # earlier attempts kept in a record


class TaskRecord:
    """Context manager writing ``path`` (``task.json``) when a task starts, ends or fails; the
    earlier attempts' records are kept in its ``history`` (a requeued attempt that was killed before
    it could write its end stays ``running`` there)."""

    def __init__(self, path: Path, resources: Resources | None = None, **fields: Any):
        self.path, self.resources, self.fields = Path(path), resources or Resources(), fields

    def __enter__(self) -> TaskRecord:
        previous = _read_json(self.path)
        earlier = previous.get("history", []) + ([{k: previous.get(k) for k in HISTORY_KEYS}] if previous else [])
        self.record = {
            **job_identity(), "host": socket.gethostname(), "pid": os.getpid(),
            "attempt": int(previous.get("attempt", 0)) + 1, "threads": self.resources.threads,
            "loader_workers": self.resources.loader_workers, "state": "running", "error": None,
            "started_at": _now(), "ended_at": None, **self.fields, "history": earlier[-HISTORY_LENGTH:],
        }
        atomic_write_json(self.path, self.record)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.record.update(state="done", ended_at=_now())
        else:
            self.record.update(state="failed", ended_at=_now(), error=last_error_line(exc))
        atomic_write_json(self.path, self.record)
        return False


def last_error_line(exc: BaseException) -> str:
    """``Type: message`` on one line, as the status table shows it."""
    text = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return " ".join(text.split())


class BenchmarkRuns(Checkpointable):
    """Job body: benchmark runs, through :func:`sgnet_lightning.benchmark.run_one` each.

    One run: done in this process. Several (``runs_per_gpu`` > 1 in a SLURM task): side by side,
    each in its own local submitit job on this task's GPU(s), the task's CPUs divided.

    Args (of a call):
        bench_dir: the benchmark folder (absolute).
        runs: ``{"label", "seed", "fold", "config"}`` dicts (see ``load_benchmark``).
        cwd: the submitting command's folder: relative paths in the configs mean the same here.
        side_by_side: the launcher's settings for several runs in one task.
        resources: this process's share (threads, loader workers).
    """

    def __call__(self, bench_dir: str, runs: list[dict], cwd: str, side_by_side: dict | None = None, *,
                 resources: Resources) -> list[str]:
        from sgnet_lightning.benchmark import run_one

        os.chdir(cwd)
        if len(runs) > 1:
            from sgnet_lightning.launch.executors import run_side_by_side

            run_side_by_side(bench_dir, runs, side_by_side or {}, cwd)
        else:
            for run in runs:
                run_one({"dir": bench_dir}, run, resources=resources)
        return [run["label"] for run in runs]


class SweepWorker(Checkpointable):
    """Job body: one ``sgnet sweep run`` worker, sharing its study with the others through the storage.

    A requeued worker starts again; a trial its earlier attempt left RUNNING is failed by the RDB
    heartbeat and retried from its last checkpoint (:mod:`sgnet_lightning.sweeps.storage`).
    """

    def __call__(self, space_file: str, space_overrides: dict, study: str, run_options: dict, cwd: str, *,
                 resources: Resources) -> int:
        from sgnet_lightning.sweeps import load_space, run_sweep

        os.chdir(cwd)
        resources.set_threads()
        space = load_space(space_file, overrides=space_overrides)
        space = dataclasses.replace(space, base_config=resources.cap(space.base_config))
        job = job_identity()["job_id"] or f"{socket.gethostname()}-{os.getpid()}"
        record = Path(run_options["runs_root"]) / study / WORKERS_DIR / f"{job}.json"
        with TaskRecord(record, resources, study=study):
            result = run_sweep(space, study, callbacks=launched_run_callbacks(), **run_options)
        return len(result.get_trials(deepcopy=False))


def checkpoint_epoch(path: Path) -> int | None:
    """The epoch a Lightning checkpoint was saved at (None: no readable checkpoint); memory-mapped,
    so the weights are not read."""
    import torch

    try:
        return int(torch.load(path, map_location="cpu", mmap=True, weights_only=False)["epoch"])
    except Exception:  # absent or unreadable: training itself reports a corrupt checkpoint
        return None


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")
