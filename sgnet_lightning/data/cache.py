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
import tempfile
from pathlib import Path

import numpy as np

IMAGE_FILE = "image.npy"
LABEL_FILE = "label.npy"
META_FILE = "meta.json"
SETTINGS_FILE = "settings.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: str, path: Path) -> None:
    """Give the temporary file normal permissions (mkstemp makes it 0600) and rename it into place."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename,
    so a reader never sees a half-written file, whatever kills the writer."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` through a temporary name and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npy")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, np.ascontiguousarray(array))
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


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
