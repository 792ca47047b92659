"""Tiny NIfTI data sets in the real naming, written by the data-layer tests themselves.

Volumes are 24^3 (or so) so that every test reads real files on disk in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (24, 24, 24)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Save ``data`` with ``affine`` (identity: 1 mm RAS) as ``.nii`` or ``.nii.gz`` by suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    img = nib.Nifti1Image(data, affine, dtype=data.dtype)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, path)
    return path


def write_singular_affine(path: Path, data: np.ndarray) -> Path:
    """A file whose sform maps every voxel onto one plane (nibabel refuses to build that from an
    affine, so the header is written directly)."""
    header = nib.Nifti1Header()
    header.set_data_shape(data.shape)
    header.set_data_dtype(data.dtype)
    singular = np.diag([1.0, 1.0, 0.0, 1.0])
    header.set_sform(singular, code=1)
    header["qform_code"] = 0
    img = nib.Nifti1Image(data, None, header=header)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


def ball(shape, centre_vox, radius_vox) -> np.ndarray:
    """Boolean ball in voxel coordinates."""
    grid = np.indices(shape, dtype=np.float64)
    dist2 = sum((g - c) ** 2 for g, c in zip(grid, centre_vox))
    return dist2 <= radius_vox**2


def brain(shape=SHAPE, seed: int = 0, radius: float | None = None) -> np.ndarray:
    """A 'skull-stripped brain': noisy positive intensities in a ball, exact zeros outside."""
    rng = np.random.default_rng(seed)
    radius = radius if radius is not None else min(shape) / 2 - 2
    mask = ball(shape, [(n - 1) / 2 for n in shape], radius)
    return np.where(mask, rng.uniform(50, 150, shape), 0).astype(np.float32)


def tumour(shape=SHAPE, centre=None, radius: float = 3.0) -> np.ndarray:
    centre = centre if centre is not None else [n // 2 + 2 for n in shape]
    return ball(shape, centre, radius).astype(np.uint8)


def make_bml_case(
    root: Path,
    case: str,
    folder: str | None = None,
    ext: str = ".nii.gz",
    whole: bool = True,
    core: bool = True,
    seed: int = 0,
) -> dict[str, Path]:
    """The four files of one Brain-Mets-Lung case under ``root/folder`` (default ``root/case``),
    named ``<case>_t1ce_img``, ``<case>_flair_img``, ``<case>_whole_seg``, ``<case>_core_seg``."""
    where = root / (folder if folder is not None else case)
    files = {
        "t1ce": write_nifti(where / f"{case}_t1ce_img{ext}", brain(seed=seed)),
        "flair": write_nifti(where / f"{case}_flair_img{ext}", brain(seed=seed + 100)),
    }
    whole_mask = tumour(radius=4)
    if whole:
        files["whole"] = write_nifti(where / f"{case}_whole_seg{ext}", whole_mask)
    if core:
        files["core"] = write_nifti(where / f"{case}_core_seg{ext}", tumour(radius=2))
    return files


def make_brats_case(root: Path, dataset: str, index: int, seg: np.ndarray | None = None) -> dict[str, Path]:
    """One BraTS 2021 or 2023 (GLI) subject folder in the official naming."""
    if dataset == "brats2021":
        subject = f"BraTS2021_{index:05d}"
        parts = ("t1", "t1ce", "t2", "flair", "seg")
        sep = "_"
    else:
        subject = f"BraTS-GLI-{index:05d}-000"
        parts = ("t1n", "t1c", "t2w", "t2f", "seg")
        sep = "-"
    et = 4 if dataset == "brats2021" else 3
    if seg is None:
        seg = tumour(radius=4)
        seg[tumour(radius=3).astype(bool)] = 1
        seg[tumour(radius=1).astype(bool)] = et
    files = {}
    for i, part in enumerate(parts):
        data = seg.astype(np.uint8) if part == "seg" else brain(seed=index * 10 + i)
        files[part] = write_nifti(root / subject / f"{subject}{sep}{part}.nii.gz", data)
    return files
