"""Writing what a test computed: the Lightning callback between the module's test step and the run folder.

:meth:`SegmentationModule.test_step <sgnet_lightning.module.SegmentationModule.test_step>` computes
each subject's prediction and result rows and writes nothing; :class:`EvaluationWriter` writes them, into
the files the experiment names when it builds the trainer (see :mod:`sgnet_lightning.runs` for the
run folder's layout). Every file is written atomically, so a killed test leaves whole files only.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd

from sgnet_lightning.files import atomic_write_bytes, atomic_write_text
from sgnet_lightning.nifti import write_image


class EvaluationWriter(pl.Callback):
    """Writes the outputs of ``SegmentationModule.test_step``.

    Args:
        results_file: the per-subject result rows of the whole test (``results.csv``, or
            ``validation_results.csv`` when the validation split is scored) as CSV, written once
            the test has ended; None: not written.
        prediction_dir: each subject's prediction on the cached grid, ``<subject>.npz`` (see
            :func:`save_prediction`; the report's figures read them); None: not written. Maps are
            stored where the module returns them (its ``test_maps``).
        nifti_dir: each subject's label map on its original grid, ``<subject>.nii.gz``, the image the
            test scored (``sgnet evaluate`` on this folder gives the same rows); None: not written.
    """

    def __init__(self, results_file: str | Path | None = None, prediction_dir: str | Path | None = None,
                 nifti_dir: str | Path | None = None):
        self.results_file = Path(results_file) if results_file is not None else None
        self.prediction_dir = Path(prediction_dir) if prediction_dir is not None else None
        self.nifti_dir = Path(nifti_dir) if nifti_dir is not None else None

    def on_test_batch_end(self, trainer, pl_module, outputs: dict[str, Any], batch, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        subject = outputs["subject"]
        if self.prediction_dir is not None:
            save_prediction(self.prediction_dir / f"{subject}.npz", outputs["prediction"], outputs["maps"])
        if self.nifti_dir is not None:
            write_image(outputs["native"], self.nifti_dir / f"{subject}.nii.gz")

    def on_test_end(self, trainer, pl_module) -> None:
        if self.results_file is not None:
            buffer = io.StringIO()
            pd.DataFrame(pl_module.test_rows).to_csv(buffer, index=False)
            atomic_write_text(self.results_file, buffer.getvalue())


def save_prediction(path: str | Path, pred: np.ndarray, maps: dict[str, Any]) -> None:
    """Store a test prediction on the cached grid as ``.npz``: ``pred`` uint8 (R, X, Y, Z) and, where
    ``maps`` has them, ``attention`` (S, X, Y, Z) / ``gate`` (L, X, Y, Z) float16 maps (``maps``
    holds tensors of batch size 1, as ``predict_volume`` returns them)."""
    arrays = {"pred": pred.astype(np.uint8)}
    for key in ("attention", "gate"):
        if key in maps:
            arrays[key] = maps[key][0].float().cpu().numpy().astype(np.float16)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
