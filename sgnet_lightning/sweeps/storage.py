"""Where a study lives: an embedded journal file on one machine, an RDB server for many.

``--storage`` takes either

- a file path (default ``runs/sweeps/<study>.journal``): Optuna's ``JournalStorage`` on a local
  file, which several worker processes of ONE machine append to safely (file lock). Do not put it
  on a network file system: journal files there have been corrupted (optuna #5138). Optuna's
  journal storage has no heartbeat (optuna #6615), so a trial whose worker was killed stays
  RUNNING in the record; it does not hold the study up (``--n-trials`` counts finished trials)
  but it is not retried. Use an RDB URL where workers may be killed;
- an SQLAlchemy URL, ``postgresql+psycopg2://user@host:5432/db`` (many machines),
  ``sqlite:///runs/sweeps/x.db`` (one machine, few workers) or ``mysql+pymysql://...``: Optuna's
  ``RDBStorage`` with a small connection pool checked before use (each worker holds at most
  ``POOL_SIZE + MAX_OVERFLOW`` connections; PostgreSQL allows 100 by default, optuna #1347), and a
  heartbeat: a trial whose worker stops beating for ``grace_period`` seconds is marked FAIL by the
  next worker that asks for a trial, and re-queued with the same parameters (up to ``max_retry``
  times; the retry resumes from the killed attempt's last checkpoint).
"""

from __future__ import annotations

import logging
import random
import time
import warnings
from pathlib import Path

import optuna

log = logging.getLogger(__name__)

# Two connections cover a worker's main thread and its heartbeat thread; one more absorbs a burst.
POOL_SIZE, MAX_OVERFLOW = 2, 1
SQLITE_BUSY_TIMEOUT_S = 60  # wait this long for another process's write lock instead of failing
MIN_SAFE_HEARTBEAT_S = 60  # shorter intervals have failed live trials (optuna #4234)

try:  # Optuna >= 4.9 renamed the retry callback and its storage argument
    from optuna.storages import RetryHeartbeatStaleTrialCallback as _RetryCallback

    _RETRY_ARGUMENT = "heartbeat_stale_trial_callback"
except ImportError:  # pragma: no cover - older Optuna
    from optuna.storages import RetryFailedTrialCallback as _RetryCallback

    _RETRY_ARGUMENT = "failed_trial_callback"


def default_storage(runs_root: str | Path, study_name: str) -> str:
    """The embedded storage of a study: ``<runs_root>/<study>.journal``."""
    return str(Path(runs_root) / f"{study_name}.journal")


def is_url(storage: str) -> bool:
    return "://" in storage


def engine_kwargs(url: str) -> dict:
    """SQLAlchemy engine options for an RDB storage URL."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    return {"pool_size": POOL_SIZE, "max_overflow": MAX_OVERFLOW, "pool_pre_ping": True, "pool_recycle": 3600}


def safe_url(storage: str) -> str:
    """The storage as printable text: an RDB URL with its password masked."""
    if not is_url(storage):
        return storage
    from sqlalchemy.engine import make_url

    return make_url(storage).render_as_string(hide_password=True)


def open_storage(storage: str, heartbeat_interval: int = 60, grace_period: int = 300,
                 max_retry: int = 2) -> optuna.storages.BaseStorage:
    """Open (creating if needed) the storage named by ``storage`` (see the module docstring).

    Args:
        storage: file path of a journal, or an SQLAlchemy URL.
        heartbeat_interval: seconds between a running trial's heartbeats (RDB storages).
        grace_period: seconds without a heartbeat after which a trial counts as dead.
        max_retry: how often a dead trial is re-queued.
    """
    if not is_url(storage):
        from optuna.storages.journal import JournalFileBackend

        Path(storage).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(storage)))

    if heartbeat_interval < MIN_SAFE_HEARTBEAT_S:
        log.warning("heartbeat interval %d s is below %d s: live trials may be failed as stale "
                    "(fine for tests, not for GPU runs)", heartbeat_interval, MIN_SAFE_HEARTBEAT_S)
    if grace_period <= heartbeat_interval:
        log.warning("grace period %d s is not longer than the heartbeat interval %d s", grace_period,
                    heartbeat_interval)
    import sqlalchemy.exc

    def connect() -> optuna.storages.RDBStorage:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.x
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", FutureWarning)
            return optuna.storages.RDBStorage(
                storage,
                engine_kwargs=engine_kwargs(storage),
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                **{_RETRY_ARGUMENT: _RetryCallback(max_retry=max_retry)},
            )

    # Workers started together on an empty database race to create Optuna's tables (PostgreSQL
    # refuses the second CREATE TYPE): the loser waits and opens the schema the winner made.
    for _ in range(SCHEMA_ATTEMPTS - 1):
        try:
            return connect()
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            time.sleep(1.0 + 2.0 * random.random())
    return connect()


SCHEMA_ATTEMPTS = 5


def retry_history(study: optuna.Study, number: int) -> list[int]:
    """Numbers of the earlier attempts that running trial ``number`` repeats (empty for a first attempt)."""
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    frozen = next((t for t in running if t.number == number), None)
    if frozen is None:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return list(_RetryCallback.retry_history(frozen))
