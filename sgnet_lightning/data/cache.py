"""The preprocessed cache: what ``sgnet data preprocess`` writes and the DataModule reads.

Layout (one folder per settings key, so a changed setting never mixes with an old cache)::

    <cache_root>/<key>/settings.json          # PreprocessSettings as written, plus the manifest path
    <cache_root>/<key>/<subject>/image.npy    # float16 (C, X, Y, Z), intensities in [0, 1], RAS, spacing mm
    <cache_root>/<key>/<subject>/label.npy    # uint8 (X, Y, Z) canonical label map (absent without labels)
    <cache_root>/<key>/<subject>/meta.json    # geometry and provenance, written LAST: its presence marks
                                              # the subject complete

Arrays are plain ``.npy`` so training reads them with ``np.load(mmap_mode="r")``: nothing is
decompressed or resampled during training, and a 1,251-subject BraTS set never has to sit in RAM.
float16 keeps [0, 1] intensities to ~5e-4, far below MRI noise, at half the bytes of float32.

``meta.json`` keys:
    subject, dataset, modalities (channel order), spacing_mm (3 floats), affine (4x4 of the cached,
    cropped grid), shape (X, Y, Z of the cached grid), labels_present (list, e.g. ["whole", "core"]),
    original: {affine, shape, reference_modality, reference_file} (the input's own grid),
    resampled: {affine, shape} (RAS grid at spacing_mm before cropping),
    crop: {start: [x, y, z], stop: [x, y, z]} (voxel box of the resampled grid kept in the cache),
    source_hashes: {file: sha256}.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from sgnet_lightning.files import atomic_save_npy, atomic_write_json

IMAGE_FILE = "image.npy"
LABEL_FILE = "label.npy"
META_FILE = "meta.json"
SETTINGS_FILE = "settings.json"


def write_cached_subject(
    subject_dir: str | os.PathLike, image: np.ndarray, label: np.ndarray | None, meta: dict
) -> None:
    """Store one preprocessed subject; ``meta.json`` is written last and marks it complete.

    Args:
        image: (C, X, Y, Z) intensities in [0, 1]; stored as float16.
        label: (X, Y, Z) canonical label map or None; stored as uint8.
        meta: see the module docstring.
    """
    subject_dir = Path(subject_dir)
    (subject_dir / META_FILE).unlink(missing_ok=True)  # an old marker must not bless new arrays
    atomic_save_npy(subject_dir / IMAGE_FILE, image.astype(np.float16))
    if label is not None:
        atomic_save_npy(subject_dir / LABEL_FILE, label.astype(np.uint8))
    else:
        (subject_dir / LABEL_FILE).unlink(missing_ok=True)
    atomic_write_json(subject_dir / META_FILE, meta)


def is_complete(subject_dir: str | os.PathLike) -> bool:
    return (Path(subject_dir) / META_FILE).is_file()


def read_meta(subject_dir: str | os.PathLike) -> dict:
    return json.loads((Path(subject_dir) / META_FILE).read_text())


def load_image(subject_dir: str | os.PathLike, mmap: bool = True) -> np.ndarray:
    """(C, X, Y, Z) float16 array, memory-mapped by default."""
    return np.load(Path(subject_dir) / IMAGE_FILE, mmap_mode="r" if mmap else None)


def load_label(subject_dir: str | os.PathLike, mmap: bool = True) -> np.ndarray | None:
    """(X, Y, Z) uint8 canonical label map, or None when the subject has no label."""
    path = Path(subject_dir) / LABEL_FILE
    if not path.is_file():
        return None
    return np.load(path, mmap_mode="r" if mmap else None)
