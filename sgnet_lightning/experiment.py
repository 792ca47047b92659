"""Plain functions behind ``sgnet fit | validate | test | predict``: ``train(config) -> metrics``.

A config is the merged dict of :mod:`sgnet_lightning.config`. Lightning's ``LightningCLI`` parses
and validates it (types, unknown keys, links from the data to the model) and instantiates module,
DataModule and trainer; this module adds the run folder, checkpoints, loggers and results files.

The run folder (``run.root/run.name/<network>/<dataset>/seed<k>[/fold<f>]`` unless ``run.dir`` is
given) and its files are described in :mod:`sgnet_lightning.runs`: here the config is written
(``config.yaml``, ``config.lock``), checkpoints and logs during fit, ``run.json`` after each stage,
and the per-subject ``results.csv`` and predictions at test.
"""

from __future__ import annotations

import copy
import io
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import yaml

from sgnet_lightning import runs, tracking
from sgnet_lightning.config import get_dotted, set_dotted
from sgnet_lightning.config_lock import ConfigChangedError, lock_differences, locked_config, write_lock
from sgnet_lightning.files import atomic_write_text
from sgnet_lightning.errors import SgnetError
from sgnet_lightning.runs import run_dir_for
from sgnet_lightning.writers import EvaluationWriter

log = logging.getLogger(__name__)


SUITE_KEYS = ("run",)  # top-level config sections the suite handles itself, not LightningCLI
MIN_FREE_DISK_MB = 200


def check_writable(folder: Path, min_free_mb: int = MIN_FREE_DISK_MB) -> None:
    """Fail before hours of work when the output folder cannot be written or the disk is full."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as err:
        raise SgnetError(f"output folder {folder} is not writable: {err.strerror or err}") from None
    free_mb = shutil.disk_usage(folder).free / 2**20
    if free_mb < min_free_mb:
        raise SgnetError(f"only {free_mb:.0f} MB free under {folder}; at least {min_free_mb} MB are needed")


def build(config: dict[str, Any], run_dir: Path, callbacks: Sequence = (), stage: str = "fit"):
    """Parse ``config`` with LightningCLI and return ``(module, datamodule, trainer)``.

    Args:
        config: merged experiment config (see :mod:`sgnet_lightning.config`).
        run_dir: run folder (checkpoints, logs).
        callbacks: extra Lightning callbacks (e.g. Optuna's pruning callback).
        stage: ``fit``, ``validate`` or ``test``: where the CSV log goes, and whether the resolved
            config is written (fit only: it is the config the run was trained with).
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    from sgnet_lightning.lightning_config import SuiteCLI

    cli_config = {k: v for k, v in config.items() if k not in SUITE_KEYS}
    best = ModelCheckpoint(
        dirpath=runs.checkpoints_dir(run_dir), filename=runs.BEST, monitor="val/dice", mode="max",
        save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False,
    )
    # Its own callback: Lightning 2.6's `save_last` only writes when the best improved, but resuming
    # needs the state of the latest epoch.
    # Saved at the very end of each epoch (after validation), so a resumed run starts cleanly at the
    # next epoch and redraws exactly that epoch's patches.
    last = ModelCheckpoint(dirpath=runs.checkpoints_dir(run_dir), filename=runs.LAST, monitor=None, save_top_k=1,
                           every_n_epochs=1, save_on_train_epoch_end=True, enable_version_counter=False)
    loggers = tracking.make_loggers(run_dir, config, get_dotted(config, "run.wandb"), stage)
    with tempfile.TemporaryDirectory() as tmp:
        config_file = Path(tmp) / "config.yaml"
        config_file.write_text(yaml.safe_dump(cli_config))
        cli = SuiteCLI(
            args=["--config", str(config_file)],
            run=False,
            trainer_defaults={"default_root_dir": str(run_dir), "logger": False,
                              "callbacks": [best, last, *callbacks]},
        )
    cli.trainer.loggers = loggers  # set after parsing: logger objects are not config values
    if stage == "fit":
        resolved = cli.parser.dump(cli.config, format="yaml", skip_none=False)
        atomic_write_text(run_dir / runs.CONFIG_FILE, resolved + yaml.safe_dump({"run": config.get("run", {})}))
    return cli.model, cli.datamodule, cli.trainer


def train(config: dict[str, Any], run_dir: str | Path | None = None, callbacks: Sequence = (),
          resume: bool | None = None) -> dict[str, float]:
    """Fit one model; return its final and best validation metrics.

    Resumes from ``checkpoints/last.ckpt`` when it exists (``run.resume``, default True), so a killed
    run continues where it stopped and ends as an uninterrupted one would; but only when the folder's
    ``config.lock`` records this config (:mod:`sgnet_lightning.config_lock`), else
    :class:`ConfigChangedError` lists the changed keys. The lock is (re)written before training.

    Returns:
        e.g. ``{"val/dice": ..., "val/loss": ..., "best_val_dice": ..., "epochs": ..., "steps": ...}``.
    """
    run_dir = Path(run_dir) if run_dir is not None else run_dir_for(config)
    check_writable(run_dir)
    resume = get_dotted(config, "run.resume", True) if resume is None else resume
    last = runs.checkpoint_file(run_dir, runs.LAST)
    ckpt_path = str(last) if resume and last.is_file() else None
    locked = locked_config(config)
    if ckpt_path:  # before build(), which writes this config into the folder
        changes = lock_differences(run_dir, locked)
        if changes:
            raise ConfigChangedError(
                f"{run_dir} holds a run trained with another config, so it does not resume: {'; '.join(changes)} "
                "(restore the config, or set run.resume=false to train anew in this folder)"
            )
    module, datamodule, trainer = build(config, run_dir, callbacks)
    if ckpt_path:
        log.info("resuming %s from %s", run_dir, last)
        _keep_training_log(trainer, Path(ckpt_path))
    runs.update_run_json(run_dir, config_hash=write_lock(run_dir, locked), **tracking.provenance(),
                    network=module.hparams.network,
                    n_parameters=sum(p.numel() for p in module.net.parameters()),
                    deterministic=bool(get_dotted(config, "trainer.deterministic", False)))
    start = time.perf_counter()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        with _explain_out_of_memory():
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    finally:
        tracking.finish_wandb()
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    best = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
    metrics["best_val_dice"] = float(best) if best is not None else float("nan")
    metrics["epochs"], metrics["steps"] = trainer.current_epoch, trainer.global_step
    runs.update_run_json(run_dir, train_time_s=time.perf_counter() - start + _previous_train_time(run_dir, ckpt_path),
                    peak_memory_mb=_peak_memory_mb(), fit_metrics=metrics)
    return metrics


def _keep_training_log(trainer, ckpt_path: Path) -> None:
    """Carry the CSV log of the interrupted run over into the resumed one.

    Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts; the rows up to the
    checkpoint's epoch are put back (later ones belong to the epoch being redone) and the writer is
    told their columns, so resumed rows append under the same header.
    """
    import csv

    from lightning.pytorch.loggers import CSVLogger

    csv_logger = next((lg for lg in trainer.loggers if isinstance(lg, CSVLogger)), None)
    if csv_logger is None:
        return
    log_file = Path(csv_logger.log_dir) / "metrics.csv"
    if not log_file.is_file():
        return
    with log_file.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header, rows = list(reader.fieldnames or []), list(reader)
    last_epoch = torch.load(ckpt_path, map_location="cpu", weights_only=False)["epoch"]
    rows = [row for row in rows if row.get("epoch") in (None, "") or int(float(row["epoch"])) <= last_epoch]
    writer = csv_logger.experiment  # starting the writer removes the old file
    buffer = io.StringIO()
    out = csv.DictWriter(buffer, fieldnames=header)
    out.writeheader()
    out.writerows(rows)
    atomic_write_text(log_file, buffer.getvalue())
    writer.metrics_keys = list(header)


def _previous_train_time(run_dir: Path, ckpt_path: str | None) -> float:
    if not ckpt_path:
        return 0.0
    return float(runs.read_run_json(run_dir).get("train_time_s", 0.0))


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class _explain_out_of_memory:
    """Turn a CUDA out-of-memory error into a message that names the settings to lower."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, torch.cuda.OutOfMemoryError):
            raise SgnetError(
                "out of GPU memory: lower data.batch_size (training) or "
                "model.sliding_window.sw_batch_size / set model.sliding_window.stitch_on_cpu: true "
                "(validation and test), or data.patch_size"
            ) from exc
        return False


def run_test(config: dict[str, Any], run_dir: str | Path | None = None, ckpt: str | None = "best",
             save_predictions: bool = True, save_nifti: bool | None = None,
             gate_threshold: str | float | None = None, callbacks: Sequence = ()) -> pd.DataFrame:
    """Test a trained run on its test split; write ``results.csv`` (one row per subject x region x
    metric, plus SG-Net's ``gate_open_fraction_<level>`` rows) atomically and return it.

    Each prediction is put back on its subject's original grid and scored there against the
    original reference file, by the code ``sgnet evaluate`` runs (see ``SegmentationModule.test_step``):
    ``sgnet evaluate`` on ``predictions_nifti/`` gives the same rows. The module computes; an
    :class:`~sgnet_lightning.writers.EvaluationWriter` writes the rows and predictions.

    Args:
        ckpt: ``"best"``, ``"last"`` or a checkpoint path.
        save_predictions: keep predictions on the cached grid in ``predictions/`` (for the report).
        save_nifti: also write them as NIfTI on each subject's original grid in ``predictions_nifti/``;
            default the config's ``run.test_nifti`` (False).
        gate_threshold: hard gates' threshold at test: None (as trained), a number, or
            ``"validated"``: the operating point chosen on validation by ``sgnet gate-scan --store``
            (:func:`~sgnet_lightning.operating_point.resolve_gate_threshold`). ``run.json`` records the
            threshold used (``test_gate_threshold``, ``test_gate_threshold_source``).
        callbacks: extra Lightning callbacks (a launched run's, :mod:`sgnet_lightning.launch.tasks`).
    """
    from sgnet_lightning.operating_point import hard_gated_network, resolve_gate_threshold

    run_dir = Path(run_dir) if run_dir is not None else run_dir_for(config)
    ckpt_path = runs.find_checkpoint(run_dir, ckpt)
    threshold, source = resolve_gate_threshold(gate_threshold, run_dir, ckpt_path)
    if save_nifti is None:
        save_nifti = bool(get_dotted(config, "run.test_nifti", False))
    test_config = _scoring_config(config, "test", maps=save_predictions)
    writer = EvaluationWriter(results_file=run_dir / runs.RESULTS_FILE,
                              prediction_dir=run_dir / runs.PREDICTIONS_DIR if save_predictions else None,
                              nifti_dir=run_dir / runs.NIFTI_DIR if save_nifti else None)
    module, datamodule, trainer = build(test_config, run_dir, [*callbacks, writer], stage="test")
    if threshold is not None:  # an attribute, not a weight: loading the checkpoint keeps it
        hard_gated_network(module, f"sgnet test --gate-threshold {gate_threshold}").gate_threshold = threshold
    used = getattr(module.net, "gate_threshold", None) if getattr(module.net, "gate_mode", None) == "hard" else None
    with _explain_out_of_memory():
        trainer.test(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None, verbose=False)
    seconds = module.test_inference_seconds
    runs.update_run_json(run_dir, inference_time_s_per_volume=float(np.median(seconds)) if seconds else float("nan"),
                         tested_checkpoint=str(ckpt_path), n_test_subjects=len(seconds),
                         test_gate_threshold=used, test_gate_threshold_source=source if used is not None else None)
    return pd.DataFrame(module.test_rows)


def validation_scorer(config: dict[str, Any], run_dir: str | Path, metric_options: dict[str, Any] | None = None,
                      callbacks: Sequence = ()):
    """``(module, datamodule, trainer)`` whose ``trainer.test(module, datamodule=datamodule,
    ckpt_path=...)`` scores the **validation** split subject by subject, by the code of ``sgnet test``
    (rows in ``module.test_rows``): the DataModule's ``test_split`` is ``"val"``, so the test split's
    loader is never built and no test subject is opened. Used by the sweeps and ``sgnet gate-scan``;
    its log goes to ``logs/validate/``, beside the training log.

    Args:
        metric_options: keyword options of ``evaluate_case`` (``distances``, ``lesions``, ...), on top
            of the config's ``run.test_metrics``.
        callbacks: e.g. an :class:`~sgnet_lightning.writers.EvaluationWriter` for the rows.
    """
    eval_config = _scoring_config(config, "val", metric_options)
    return build(eval_config, Path(run_dir), callbacks, stage="validate")


def _scoring_config(config: dict[str, Any], split: str, metric_options: dict[str, Any] | None = None,
                    maps: bool = False) -> dict[str, Any]:
    """``config`` set up to score ``split`` subject by subject with ``trainer.test``: the DataModule's
    ``test_split``, the module's ``test_metrics`` (the config's ``run.test_metrics``, then
    ``metric_options``) and ``test_maps`` (``maps``: gate and attention maps too); W&B off."""
    scored = copy.deepcopy(config)
    scored.setdefault("run", {})["wandb"] = {**(get_dotted(config, "run.wandb") or {}), "enabled": False}
    set_dotted(scored, "data.test_split", split)
    set_dotted(scored, "model.test_metrics", {**(get_dotted(config, "run.test_metrics") or {}),
                                              **(metric_options or {})})
    set_dotted(scored, "model.test_maps", maps)
    return scored


def validate(config: dict[str, Any], run_dir: str | Path | None = None, ckpt: str | None = "best") -> dict[str, float]:
    """Validate a trained run on its validation split; return the logged metrics."""
    run_dir = Path(run_dir) if run_dir is not None else run_dir_for(config)
    ckpt_path = runs.find_checkpoint(run_dir, ckpt)
    val_config = copy.deepcopy(config)
    val_config.setdefault("run", {})["wandb"] = {"enabled": False}
    module, datamodule, trainer = build(val_config, run_dir, stage="validate")
    (results,) = trainer.validate(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None,
                                  verbose=False)
    return {k: float(v) for k, v in results.items()}
