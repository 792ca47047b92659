"""The run folder: where a run writes, what each file is called, and how a run is marked done.

Every stage that writes or reads a run folder (training and testing in
:mod:`sgnet_lightning.experiment`, the benchmark, the sweeps, the launchers, gathering and
reporting) takes names and paths from here, so the layout is typed once::

    <run>/config.yaml           resolved config as run (fit)
    <run>/config.lock           the locked config and its hash (sgnet_lightning.config_lock)
    <run>/run.json              provenance, config_hash, timings; updated by every stage (merged, atomic)
    <run>/checkpoints/best.ckpt best by validation Dice;  checkpoints/last.ckpt  for resuming
    <run>/logs/                 CSV log (logs/metrics.csv, logs/test/, logs/validate/); wandb/ when on
    <run>/results.csv           per-subject test results: RUN_RESULTS_COLUMNS (+ SG-Net's gate rows),
                                written (as the next three) by sgnet_lightning.writers.EvaluationWriter
    <run>/validation_results.csv   the same rows on the validation split (a sweep trial's seed)
    <run>/predictions/<subject>.npz          test predictions on the cached grid (for the report)
    <run>/predictions_nifti/<subject>.nii.gz test predictions on each subject's original grid
    <run>/gate_scan/            SG-Net's gate-threshold scan on validation (sgnet_lightning.gate_scan)
    <run>/operating_point.json  the threshold it chose, with --store (sgnet_lightning.operating_point)
    <run>/COMPLETE              written last by a benchmark run: the run is done and may be gathered

Where run folders go:

- a single experiment: ``<run.root>/<run.name>/<network>/<dataset>/seed<k>[/fold<f>]``
  (:func:`run_dir_for`), unless the config sets ``run.dir``;
- a benchmark: ``<root>/<name>/<model label>/seed<k>[/fold<f>]`` beside ``benchmark.json`` and the
  gathered ``results.csv`` (:func:`benchmark_run_dir`; gathering reads the names back with
  :func:`parse_seed_dir` and :func:`parse_fold_dir`);
- a sweep: ``<runs root>/<study>/trial<N>/seed<k>`` (:func:`study_dir`, :func:`trial_dir`, :func:`seed_dir`).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from sgnet_lightning.config import get_dotted
from sgnet_lightning.errors import SgnetError
from sgnet_lightning.files import atomic_write_json, atomic_write_text

CONFIG_FILE = "config.yaml"
LOCK_FILE = "config.lock"
RUN_FILE = "run.json"
COMPLETE_FILE = "COMPLETE"
CHECKPOINTS_DIR = "checkpoints"
BEST, LAST = "best", "last"  # checkpoint names: <run>/checkpoints/<name>.ckpt
LOGS_DIR = "logs"
RESULTS_FILE = "results.csv"
VALIDATION_RESULTS_FILE = "validation_results.csv"
PREDICTIONS_DIR = "predictions"
NIFTI_DIR = "predictions_nifti"
BENCHMARK_FILE = "benchmark.json"  # in a benchmark's folder, beside its run folders
OPERATING_POINT = "operating_point.json"  # the gate threshold chosen on validation (sgnet_lightning.operating_point)

# the columns of a run's results.csv (one row per subject x region x metric)
RUN_RESULTS_COLUMNS = ["subject", "region", "metric", "value", "convention"]

_SEED_DIR = re.compile(r"^seed(\d+)$")
_FOLD_DIR = re.compile(r"^fold(\d+)$")


# -- where run folders go -------------------------------------------------------------------------------
def seed_dir(parent: str | Path, seed: int, fold: int | None = None) -> Path:
    """``<parent>/seed<k>[/fold<f>]``: the last levels of every run folder."""
    path = Path(parent) / f"seed{int(seed)}"
    return path / f"fold{int(fold)}" if fold is not None else path


def run_dir_for(config: dict[str, Any]) -> Path:
    """Where a config's run writes: ``run.dir`` if set, else root/name/network/dataset/seed[/fold]."""
    from sgnet_lightning.data.manifest import Manifest  # reads the manifest: only when no run.dir is set

    if get_dotted(config, "run.dir"):
        return Path(get_dotted(config, "run.dir"))
    dataset = Manifest.load(get_dotted(config, "data.manifest"), root=get_dotted(config, "data.data_root")).dataset
    parent = (Path(get_dotted(config, "run.root", "runs")) / get_dotted(config, "run.name", "default")
              / get_dotted(config, "model.network", "sgnet") / dataset)
    return seed_dir(parent, get_dotted(config, "seed_everything", 0), get_dotted(config, "data.fold"))


def benchmark_run_dir(bench_dir: str | Path, model: str, seed: int, fold: int | None = None) -> Path:
    """``<bench_dir>/<model>/seed<k>[/fold<f>]``: one run of a benchmark."""
    return seed_dir(Path(bench_dir) / model, seed, fold)


def parse_seed_dir(name: str) -> int | None:
    """The seed of a folder named ``seed<k>``; None for any other name (``seed0.replaced-<time>``)."""
    match = _SEED_DIR.match(name)
    return int(match.group(1)) if match else None


def parse_fold_dir(name: str) -> int | None:
    """The fold of a folder named ``fold<f>``; None for any other name."""
    match = _FOLD_DIR.match(name)
    return int(match.group(1)) if match else None


def study_dir(runs_root: str | Path, study_name: str) -> Path:
    """``<runs root>/<study>``: a sweep's trial folders (and its workers' records)."""
    return Path(runs_root) / study_name


def trial_dir(study_dir: str | Path, trial_number: int) -> Path:
    """``<study_dir>/trial<N>``: one sweep trial; its seeds are :func:`seed_dir` below it."""
    return Path(study_dir) / f"trial{int(trial_number)}"


# -- checkpoints ---------------------------------------------------------------------------------------
def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def checkpoint_file(run_dir: str | Path, name: str) -> Path:
    """``<run>/checkpoints/<name>.ckpt`` (``name``: :data:`BEST` or :data:`LAST`), existing or not."""
    return checkpoints_dir(run_dir) / f"{name}.ckpt"


def run_dir_of_checkpoint(checkpoint: str | Path) -> Path:
    """The run folder of ``<run>/checkpoints/<name>.ckpt`` (where gate-scan stores the operating point)."""
    return Path(checkpoint).resolve().parent.parent


def can_resume(run_dir: str | Path) -> bool:
    """Whether the run folder holds ``last.ckpt``, the state a killed run resumes from."""
    return checkpoint_file(run_dir, LAST).is_file()


def find_checkpoint(run_dir: str | Path, ckpt: str | None) -> Path | None:
    """``"best"`` / ``"last"`` of a run folder, or a path (None: none); a clear error when it does not exist."""
    path = checkpoint_file(run_dir, ckpt) if ckpt in (BEST, LAST) else Path(ckpt) if ckpt else None
    if path is not None and not path.is_file():
        raise SgnetError(f"checkpoint not found: {path} (train first with `sgnet fit`)")
    return path


def trained_checkpoint(run_dir: str | Path) -> Path:
    """The run's ``best.ckpt``, else its ``last.ckpt`` (a run whose validation never improved)."""
    checkpoint = next((path for path in (checkpoint_file(run_dir, BEST), checkpoint_file(run_dir, LAST))
                       if path.is_file()), None)
    if checkpoint is None:
        raise SgnetError(f"{run_dir}: no checkpoint to evaluate (training saved none)")
    return checkpoint


# -- run.json and the completion marker ---------------------------------------------------------------------
def read_run_json(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``run.json``; empty when the run has none yet."""
    path = Path(run_dir) / RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def update_run_json(run_dir: str | Path, **fields) -> dict[str, Any]:
    """Merge ``fields`` into the run's ``run.json`` (written atomically: a reader sees the old or
    the new file, never a mix); return the merged record. Stages add their fields one after another
    (provenance at fit, timings after fit and test, identity when a benchmark run completes)."""
    info = {**read_run_json(run_dir), **fields}
    atomic_write_json(Path(run_dir) / RUN_FILE, info)
    return info


def mark_complete(run_dir: str | Path) -> None:
    """Write ``COMPLETE`` (its content: the time). Call it last: gathering reads only runs that have it."""
    atomic_write_text(Path(run_dir) / COMPLETE_FILE, time.strftime("%Y-%m-%dT%H:%M:%S\n"))


def is_complete(run_dir: str | Path) -> bool:
    return (Path(run_dir) / COMPLETE_FILE).is_file()


# -- per-subject outputs ---------------------------------------------------------------------------------
def prediction_file(run_dir: str | Path, subject: str) -> Path:
    """A test prediction on the cached grid, ``<run>/predictions/<subject>.npz``."""
    return Path(run_dir) / PREDICTIONS_DIR / f"{subject}.npz"
