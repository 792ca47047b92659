"""Run provenance and loggers: CSV always (the source of truth), W&B offline when enabled.

W&B rules from ``shared/pitfalls.md``: the mode is chosen before the first ``wandb.init`` (offline
by default, error reporting off, files under the run folder), the full resolved config goes to
``init``, only rank 0 creates a run (Lightning's ``WandbLogger`` does that), checkpoints are not
uploaded, and every run is finished so trials in one process never merge.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from sgnet_lightning.runs import LOGS_DIR

log = logging.getLogger(__name__)

_PACKAGES = ("sgnet-lightning", "torch", "lightning", "monai", "torchio", "nibabel", "numpy", "scipy",
             "optuna", "wandb")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def git_commit() -> str:
    """Commit of the suite's source tree (with ``+dirty`` when it has uncommitted changes)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit or "unknown") + ("+dirty" if dirty else "")


def hardware() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                            "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
        info["cuda"] = torch.version.cuda
    return info


def provenance() -> dict[str, Any]:
    return {"versions": versions(), "commit": git_commit(), "hardware": hardware()}


def wandb_available() -> bool:
    try:
        import wandb  # noqa: F401
    except ImportError:
        return False
    return True


def make_loggers(run_dir: Path, config: dict[str, Any], wandb_cfg: dict[str, Any] | None,
                 stage: str = "fit") -> list:
    """CSV logger under ``run_dir/logs`` (``logs/<stage>`` for validate and test, so they never
    replace the training log); a W&B logger too when ``wandb_cfg["enabled"]``.

    ``wandb_cfg`` keys: ``enabled`` (default True), ``project``, ``entity``, ``group``, ``name``,
    ``tags``, ``mode`` (default ``offline``; ``online`` to stream, ``disabled`` to switch off).
    """
    from lightning.pytorch.loggers import CSVLogger

    # flush every logged row: a killed run keeps its log up to the kill (one appended line per row)
    loggers: list = [CSVLogger(save_dir=str(run_dir), name=LOGS_DIR, version="" if stage == "fit" else stage,
                               flush_logs_every_n_steps=1)]
    wandb_cfg = dict(wandb_cfg or {})
    if not wandb_cfg.pop("enabled", True) or wandb_cfg.get("mode") == "disabled":
        return loggers
    if not wandb_available():
        log.warning("wandb is not installed: logging to CSV only")
        return loggers
    configure_wandb_environment(run_dir, wandb_cfg.pop("mode", None))
    from lightning.pytorch.loggers import WandbLogger

    loggers.append(
        WandbLogger(
            save_dir=str(run_dir),
            project=wandb_cfg.pop("project", "sgnet-lightning"),
            config=config,
            log_model=False,  # checkpoints stay on disk; the pitfalls list says do not upload by default
            **{k: v for k, v in wandb_cfg.items() if v is not None},
        )
    )
    return loggers


def configure_wandb_environment(run_dir: Path, mode: str | None = None) -> None:
    """Set W&B's environment before its first ``init``: offline unless the user chose a mode."""
    if mode:
        os.environ["WANDB_MODE"] = mode
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ["WANDB_DIR"] = str(run_dir)
    Path(run_dir).mkdir(parents=True, exist_ok=True)


def finish_wandb() -> None:
    """Close the current W&B run, if any, so the next trial or run starts its own."""
    if not wandb_available():
        return
    import wandb

    if wandb.run is not None:
        wandb.finish()


def log_summary_run(bench_dir: Path, tables: dict[str, Any], figures: list[Path], group: str,
                    project: str = "sgnet-lightning", mode: str | None = None) -> Path | None:
    """Log a benchmark's statistics (as W&B Tables) and report figures (as images) to one summary
    run in the benchmark's group; returns the run's folder, or None when W&B is not installed."""
    if not wandb_available():
        log.warning("wandb is not installed: no summary run logged")
        return None
    import wandb

    configure_wandb_environment(Path(bench_dir), mode)
    run = wandb.init(project=project, group=group, name=f"{group}-summary", job_type="summary",
                     dir=str(bench_dir), config={"benchmark": str(bench_dir)}, reinit="finish_previous")
    try:
        for name, frame in tables.items():
            run.log({name: wandb.Table(dataframe=frame.astype(object).where(frame.notna(), None))})
        run.log({f"figures/{path.stem}": wandb.Image(str(path)) for path in figures})
        return Path(run.dir).parent
    finally:
        run.finish()
