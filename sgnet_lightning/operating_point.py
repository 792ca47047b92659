"""Which gate threshold SG-Net's hard gates run at in ``sgnet test`` and ``sgnet predict``: as
trained, a given number, or ``validated``: the operating point ``sgnet gate-scan --store`` chose on the
validation split and stored in the run folder (``operating_point.json``), bound to the checkpoint it
was chosen on by its SHA-256.

Kept apart from :mod:`sgnet_lightning.gate_scan`, which writes the operating point: testing and
predicting read it without importing the scan, which itself scores through the experiment.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sgnet_lightning.errors import ConfigError, SgnetError
from sgnet_lightning.runs import OPERATING_POINT

VALIDATED = "validated"  # --gate-threshold value that reads the run's operating_point.json


class NoHardGatesError(SgnetError):
    """A gate threshold was asked of a network without hard gates."""


def hard_gated_network(module, purpose: str):
    """The module's network when it has hard gates whose threshold can be set; else
    :class:`NoHardGatesError` saying why ``purpose`` does not apply (soft gates pass ``p`` itself;
    ``none`` has no gates)."""
    net = module.net
    mode = getattr(net, "gate_mode", None)
    if mode != "hard" or not hasattr(net, "gate_threshold"):
        what = f"gate_mode {mode!r}" if mode else f"network {module.hparams.network!r} has no gates"
        raise NoHardGatesError(f"{purpose}: a gate threshold acts only on hard gates ({what})")
    return net


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_operating_point(run_dir: str | Path) -> dict[str, Any]:
    """The run's stored operating point (``operating_point.json``); a clear error when there is none."""
    path = Path(run_dir) / OPERATING_POINT
    if not path.is_file():
        raise SgnetError(f"{path} not found: choose an operating point on validation first "
                         f"(sgnet gate-scan --config ... --run-dir {run_dir} --store)")
    try:
        point = json.loads(path.read_text())
        float(point["gate_threshold"]), str(point["checkpoint_sha256"])
    except (ValueError, KeyError, TypeError) as err:
        raise SgnetError(f"{path}: not an operating point written by sgnet gate-scan ({err})") from None
    return point


def resolve_gate_threshold(spec: str | float | None, run_dir: str | Path, checkpoint: str | Path | None
                           ) -> tuple[float | None, str]:
    """The gate threshold a test or prediction runs at, and where it came from.

    Args:
        spec: None (the trained threshold), a number in (0, 1), or ``"validated"`` (the run's
            ``operating_point.json``, which must belong to ``checkpoint``).
        run_dir: the run folder holding ``operating_point.json``.
        checkpoint: the checkpoint to be used (compared by sha256 with the operating point's).

    Returns:
        ``(threshold or None, source)``: source ``"trained"``, ``"given"`` or ``"validated"``.
    """
    if spec is None:
        return None, "trained"
    if isinstance(spec, str) and spec == VALIDATED:
        point = load_operating_point(run_dir)
        if checkpoint is not None and file_sha256(checkpoint) != point["checkpoint_sha256"]:
            raise SgnetError(f"{Path(run_dir) / OPERATING_POINT} was chosen on {point.get('checkpoint')}, "
                             f"not on {checkpoint} (its sha256 differs): rerun sgnet gate-scan --store")
        return float(point["gate_threshold"]), VALIDATED
    try:
        value = float(spec)
    except (TypeError, ValueError):
        raise ConfigError(f"--gate-threshold {spec!r}: give a number in (0, 1) or '{VALIDATED}'") from None
    if not 0 < value < 1:
        raise ConfigError(f"--gate-threshold {value:g}: must lie in (0, 1)")
    return value, "given"
