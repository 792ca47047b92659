"""Where each run (or sweep worker) stands: done, running, queued, failed or missing.

The state comes from files and from SLURM, never from a launcher process that may be gone:

- ``COMPLETE`` in the run folder: done (written last by ``run_one``);
- ``launch.json`` (written when the launcher submitted or started the run) and ``task.json``
  (written by the process doing it, :mod:`sgnet_lightning.launch.tasks`), whichever is newer;
- for SLURM jobs, ``squeue``: PENDING (also after a requeue) is queued, RUNNING is running; a job
  SLURM no longer lists that left no ``COMPLETE`` failed (time limit without requeue, killed, ...);
- for local and inline runs, whether the recorded process is still alive on this host.

A failure shows its last error line: the exception recorded in ``task.json``, else the last line of
the job's log that looks like an error.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LAUNCH_FILE = "launch.json"  # written by the launcher (sgnet_lightning.launch.jobs)
TASK_FILE = "task.json"  # written by the process doing a run (sgnet_lightning.launch.tasks)
WORKERS_DIR = "workers"  # a study's worker records: <runs root>/<study>/workers/<job>.json
STATES = ("done", "running", "queued", "failed", "missing")
SLURM_QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESV_DEL_HOLD", "SUSPENDED"}
SLURM_RUNNING = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT"}
_ERROR_LINE = re.compile(r"(Error|Exception|error:|CANCELLED|TIME LIMIT|Killed|oom-kill|Traceback)")


@dataclass(frozen=True)
class State:
    """One run's or worker's state, its job, log and a detail (error line, duration, attempt)."""

    state: str
    job_id: str | None = None
    log: str | None = None
    detail: str = ""


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def squeue_states(job_ids: set[str]) -> dict[str, str] | None:
    """SLURM state of each of ``job_ids`` that ``squeue`` still lists (array tasks as
    ``<array>_<task>``); None when ``squeue`` cannot be asked (not a SLURM machine)."""
    if not job_ids:
        return {}
    if shutil.which("squeue") is None:
        return None
    try:
        done = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T"], capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    states = {}
    for line in done.stdout.splitlines():
        job, _, state = line.strip().partition("|")
        if job in job_ids:
            states[job] = state
    return states


def process_alive(record: dict[str, Any]) -> bool | None:
    """Whether the process a record names is alive; None when it ran on another host."""
    if record.get("host") != socket.gethostname():
        return None
    pid = record.get("pid")
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def last_error_in_log(path: str | None) -> str:
    """The last line of a job's log that looks like an error, else ''."""
    if not path or not Path(path).is_file():
        return ""
    with open(path, "rb") as fh:
        fh.seek(max(0, Path(path).stat().st_size - 65536))
        lines = fh.read().decode("utf-8", "replace").splitlines()
    for line in reversed(lines):
        if _ERROR_LINE.search(line):
            return " ".join(line.split())[:300]
    return ""


def current_task(launch: dict | None, task: dict | None) -> dict | None:
    """``task`` if it belongs to the launch on record (same job, or started after the submission),
    else None: a task record left by an earlier job of the same run."""
    if task is None:
        return None
    if launch is None or task.get("job_id") == launch.get("job_id"):
        return task
    return task if str(task.get("started_at", "")) >= str(launch.get("submitted_at", "")) else None


def job_state(launch: dict | None, task: dict | None, live: dict[str, str] | None) -> State:
    """The state of a job-backed piece of work that has not completed (see the module docstring).

    Args:
        launch: the launcher's record (``launch.json``), or None.
        task: the working process's record (``task.json``), or None.
        live: ``squeue_states`` of the SLURM jobs involved (None: SLURM could not be asked).
    """
    task = current_task(launch, task)
    record = task or launch
    if record is None:
        return State("missing")
    job_id = record.get("job_id")
    log = (task or {}).get("log") or (launch or {}).get("log")
    attempt = f"attempt {task['attempt']}" + (", resumed from last.ckpt" if task.get("resumed") else "") if task else ""
    if record.get("launcher") == "slurm" and job_id:
        if live is None:
            return State("running" if task and task.get("state") == "running" else "queued", job_id, log,
                         "squeue not available: state as last recorded")
        slurm_state = live.get(job_id)
        if slurm_state in SLURM_QUEUED:
            return State("queued", job_id, log, "requeued" if task else "")
        if slurm_state in SLURM_RUNNING:
            return State("running", job_id, log, attempt)
        error = (task or {}).get("error") or last_error_in_log(log) or "the job ended without finishing"
        return State("failed", job_id, log, error)
    if task is not None:
        if task.get("state") == "running":
            alive = process_alive(task)
            if alive or alive is None:
                return State("running", job_id, log, attempt if alive else f"{attempt} on {task.get('host')}")
            return State("failed", job_id, log, last_error_in_log(log) or
                         f"process {task.get('pid')} ended without finishing (killed?)")
        if task.get("state") == "failed":
            return State("failed", job_id, log, task.get("error") or "")
    if launch is not None and launch.get("job_id") is None:  # local: waiting for a slot
        if process_alive(launch) is not False:
            return State("queued", None, None, f"local launcher {launch.get('host')}:{launch.get('pid')}")
    return State("missing", job_id, log)


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Plain text columns (left-aligned), one row per line."""
    cells = [[str(row.get(c, "") if row.get(c) is not None else "-") for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)
