"""Predictions put back on each subject's original grid, as the NIfTI files the suite writes.

A prediction is made on the cached grid (resampled, cropped); :func:`native_image` undoes that with
the cache's record of the original grid (:func:`~sgnet_lightning.data.preprocess.to_native`), so a
written file has exactly the reference file's shape and affine. ``sgnet test`` scores that image
(``SegmentationModule.test_step``) and writes it (:class:`~sgnet_lightning.writers.EvaluationWriter`);
``sgnet predict`` writes it for new cases.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

from sgnet_lightning.data.preprocess import to_native
from sgnet_lightning.files import atomic_write_bytes


def native_image(volume: np.ndarray, meta: dict, interpolation: str = "nearest") -> nib.Nifti1Image:
    """A volume on the cached grid put back on the subject's original grid, as it is written: a
    uint8 label map (``nearest``) or float32 maps (``linear``); see
    :func:`~sgnet_lightning.data.preprocess.to_native`. ``sgnet test`` scores this image."""
    return _as_written(to_native(volume, meta, interpolation), np.uint8 if interpolation == "nearest" else np.float32)


def save_native(volume: np.ndarray, meta: dict, path: Path, interpolation: str = "nearest") -> Path:
    """Put a volume on the cached grid back on the subject's original grid and write it as NIfTI."""
    return write_image(native_image(volume, meta, interpolation), path)


def _as_written(image: nib.Nifti1Image, dtype) -> nib.Nifti1Image:
    """``image`` with ``dtype`` data and its affine as both qform and sform."""
    out = nib.Nifti1Image(np.asarray(image.dataobj).astype(dtype), image.affine)
    out.set_qform(image.affine, code=1)
    out.set_sform(image.affine, code=1)
    return out


def write_image(image: nib.Nifti1Image, path: Path) -> Path:
    """Write ``image`` atomically (temporary name, then rename); gzipped for ``.nii.gz``."""
    atomic_write_bytes(path, image.to_bytes() if not str(path).endswith(".gz") else _gzip(image.to_bytes()))
    return path


def _gzip(raw: bytes) -> bytes:
    return gzip.compress(raw, compresslevel=6)
