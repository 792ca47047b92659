"""Reading NIfTI volumes with every way they go wrong turned into one clear :class:`DataError`.

Every loader of this package reads source volumes through :func:`inspect_nifti` (which collects
*all* problems of a file, for ``sgnet data check``) or :func:`load_nifti` (which raises on the
first fatal problem, for preprocessing and prediction). Both return 3D images: a trailing singleton
4th (or 5th) dimension, as some converters write, is squeezed away.

Problems recognised, each named with subject, file and what is wrong:
missing file, folder instead of file, empty file, truncated or corrupt gzip stream, a NIfTI name on a
file that is not NIfTI (or a plain ``.nii`` named ``.nii.gz``), 4D or 2D data, a singular or
non-finite voxel-to-world affine, NaN/Inf voxels (counted), and an all-zero image (images only:
an all-zero label is a valid "no tumour" label).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import affine_transform

from sgnet_lightning.errors import DataError

# bytes 344..347 of a NIfTI-1 header hold its magic: "n+1\0" (single file) or "ni1\0" (hdr/img pair)
_NIFTI1_MAGIC_OFFSET = 344
_NIFTI1_MAGICS = (b"n+1\x00", b"ni1\x00")
_GZIP_MAGIC = b"\x1f\x8b"
# a voxel-to-world matrix whose determinant is below this (mm^3 per voxel) cannot map voxels to space
_MIN_ABS_DET = 1e-6


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (constant memory for any file size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _shape_text(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def _gzip_stream_problem(path: Path) -> str | None:
    """Decompress a ``.gz`` file to its end and say what is wrong with the stream, if anything.

    nibabel reads only as many decompressed bytes as the header asks for, so a flipped byte in the
    middle of the stream can go unnoticed (the CRC at the end is never checked). Reading to the end
    costs a few milliseconds per volume and catches truncation and corruption.
    """
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass
    except EOFError:
        return "is truncated (the compressed stream ends early)"
    except gzip.BadGzipFile as exc:
        if "Not a gzipped file" not in str(exc):
            return f"is corrupt ({exc})"
        with open(path, "rb") as fh:
            head = fh.read(_NIFTI1_MAGIC_OFFSET + 4)
        if head[_NIFTI1_MAGIC_OFFSET:] in _NIFTI1_MAGICS:
            return "is an uncompressed NIfTI file named .gz (rename it to .nii)"
        return "is named .nii.gz but is not gzip-compressed (not a NIfTI file)"
    except (zlib.error, OSError) as exc:
        return f"is corrupt ({exc})"
    return None


def _squeeze_to_3d(shape: tuple[int, ...]) -> tuple[tuple[int, ...] | None, str | None]:
    """The 3D shape a volume of ``shape`` is read as, or the problem that prevents it."""
    shape = tuple(int(s) for s in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 3:
        return None, (
            f"is {len(shape)}D (shape {_shape_text(shape)}); expected one 3D volume"
        )
    if len(shape) < 3 or min(shape) <= 1:
        return None, f"is 2D (shape {_shape_text(shape)}); expected a 3D volume"
    return shape, None


def _affine_problem(affine: np.ndarray) -> str | None:
    if not np.all(np.isfinite(affine)):
        return "has a non-finite (NaN/Inf) voxel-to-world affine"
    det = float(np.linalg.det(affine[:3, :3]))
    if abs(det) < _MIN_ABS_DET:
        return f"has a singular voxel-to-world affine (determinant {det:.3g}); check the header"
    return None


def inspect_nifti(
    path: str | os.PathLike, subject: str, role: str, *, label: bool = False
) -> tuple[nib.Nifti1Image | None, list[DataError]]:
    """Read one volume and collect every problem with it instead of stopping at the first.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        subject: subject ID, used in the problem messages.
        role: what the file is, e.g. ``"t1ce"`` or ``"whole_seg"``; starts every problem message.
        label: the file is a segmentation: an all-zero volume is then not a problem, and the data
            keep their stored type (images are read as float32).

    Returns:
        ``(image, problems)``. ``image`` is a 3D :class:`nibabel.Nifti1Image` holding the data in
        memory, or None when the file cannot be read as one 3D volume with a usable affine.
        ``problems`` are :class:`DataError` s; ``fatal`` ones make the file unusable.
    """
    path = Path(path)
    problems: list[DataError] = []

    def problem(text: str, fatal: bool = True) -> None:
        problems.append(DataError(subject, path, f"{role} {text}", fatal=fatal))

    if not path.exists():
        problem("file does not exist")
        return None, problems
    if not path.is_file():
        problem("is a folder, not a file")
        return None, problems
    if path.stat().st_size == 0:
        problem("file is empty (0 bytes)")
        return None, problems
    if path.name.lower().endswith(".gz") and (stream_problem := _gzip_stream_problem(path)):
        problem(stream_problem)
        return None, problems

    try:
        img = nib.load(path, mmap=False)
    except nib.filebasedimages.ImageFileError:
        problem("is not a NIfTI file (nibabel cannot read it)")
        return None, problems
    except Exception as exc:  # nibabel raises many types for damaged headers; name what it said
        problem(f"cannot be read as NIfTI ({type(exc).__name__}: {exc})".replace("\n", " "))
        return None, problems
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        problem(f"is a {type(img).__name__}, not a NIfTI file")
        return None, problems

    shape, shape_problem = _squeeze_to_3d(img.shape)
    if shape_problem:
        problem(shape_problem)
        return None, problems
    affine = np.asarray(img.affine, dtype=np.float64)
    affine_problem = _affine_problem(affine)
    if affine_problem:
        problem(affine_problem)

    try:
        data = img.get_fdata(dtype=np.float32) if not label else np.asanyarray(img.dataobj)
    except Exception as exc:  # truncated uncompressed files raise OSError, bad dtypes ValueError
        problem(f"data cannot be read: the file is truncated or corrupt ({exc})".replace("\n", " "))
        return None, problems
    data = data.reshape(shape)

    finite = True
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        finite = False
        n_nan = int(np.count_nonzero(np.isnan(data)))
        n_inf = int(np.count_nonzero(np.isinf(data)))
        problem(f"contains {n_nan + n_inf} non-finite voxels ({n_nan} NaN, {n_inf} Inf)")
    if not label and not np.any(data if finite else data[np.isfinite(data)]):
        problem("is all zero (an empty image)")

    if affine_problem:
        return None, problems
    # an explicit dtype keeps labels stored as int64 readable (nibabel refuses them otherwise)
    return nib.Nifti1Image(data, affine, dtype=data.dtype), problems


def load_nifti(
    path: str | os.PathLike, subject: str, role: str, *, label: bool = False
) -> nib.Nifti1Image:
    """Load one 3D volume (float32 for images, stored type for labels) or raise :class:`DataError`.

    The error's problem lists every fatal problem of the file, joined by ``"; "``. See
    :func:`inspect_nifti` for the arguments and what is checked.
    """
    img, problems = inspect_nifti(path, subject, role, label=label)
    fatal = [p.problem for p in problems if p.fatal]
    if fatal or img is None:
        raise DataError(subject, path, "; ".join(fatal))
    return img


def load_array(
    path: str | os.PathLike, subject: str, role: str, *, label: bool = False
) -> np.ndarray:
    """The (X, Y, Z) voxel array of :func:`load_nifti` (float32 for images)."""
    return np.asanyarray(load_nifti(path, subject, role, label=label).dataobj)


# ---------------------------------------------------------------------------------------------
# Geometry: a grid is (shape (X, Y, Z), affine 4x4 voxel -> world mm); resampling maps by world mm.


def grid_corners_world(shape, affine: np.ndarray) -> np.ndarray:
    """World (mm) positions of the 8 outer corners of a voxel grid (voxel edges, not centres): (8, 3)."""
    lo, hi = -0.5, np.asarray(shape[:3], dtype=np.float64) - 0.5
    corners = np.array(
        [[(lo, hi[0])[i], (lo, hi[1])[j], (lo, hi[2])[k]] for i in (0, 1) for j in (0, 1) for k in (0, 1)]
    )
    return nib.affines.apply_affine(affine, corners)


def world_overlap_fraction(grid_a, grid_b) -> float:
    """Volume of the intersection of two grids' world bounding boxes over the volume of ``grid_a``'s
    box (0 when they are disjoint). Grids are ``(shape, affine)``."""
    box_a, box_b = grid_corners_world(*grid_a), grid_corners_world(*grid_b)
    lo = np.maximum(box_a.min(0), box_b.min(0))
    hi = np.minimum(box_a.max(0), box_b.max(0))
    inter = float(np.prod(np.clip(hi - lo, 0, None)))
    return inter / float(np.prod(box_a.max(0) - box_a.min(0)))


def resample_to_grid(
    data: np.ndarray, affine: np.ndarray, grid_shape, grid_affine: np.ndarray, order: int
) -> np.ndarray:
    """Values of ``data`` (X, Y, Z) on another voxel grid, matched by world (mm) position.

    Same mapping as :func:`nibabel.processing.resample_from_to` (scipy's ``affine_transform`` with
    the voxel-to-voxel matrix ``inv(affine) @ grid_affine``), but for arrays, so callers need not wrap
    uint8 labels or float16 caches in images. Points outside ``data`` get 0.

    Args:
        order: 0 nearest neighbour (labels), 1 linear (intensities: pass float data).
    """
    grid_shape = tuple(int(s) for s in grid_shape[:3])
    to_vox2from_vox = np.linalg.inv(affine) @ np.asarray(grid_affine, dtype=np.float64)
    moved = _move_voxels(data, to_vox2from_vox, grid_shape)
    if moved is not None:
        return moved
    return affine_transform(
        data,
        to_vox2from_vox[:3, :3],
        to_vox2from_vox[:3, 3],
        output_shape=grid_shape,
        order=order,
        # "grid-constant" pads with zeros beyond the edge but still interpolates a point that lies
        # on the edge up to float round-off (-1e-12 voxels); "constant" would zero it, so an
        # oblique grid's outer face came back empty depending on how the input's axes were stored.
        mode="grid-constant",
        cval=0,
    )


def _move_voxels(data: np.ndarray, to_vox2from_vox: np.ndarray, grid_shape) -> np.ndarray | None:
    """The resampled array when every target voxel centre falls exactly on a source voxel centre
    (the voxel map is an axis permutation with flips and an integer shift): then resampling is a
    copy of voxels, the result of any interpolation order, made with slicing ~10x faster than
    ``affine_transform``. None when the grids are not related that way.

    This is the common case (BraTS and most T1CE images are axis-aligned at 1 mm), so it is worth
    its few lines.
    """
    matrix, shift = to_vox2from_vox[:3, :3], to_vox2from_vox[:3, 3]
    rounded_matrix, rounded_shift = np.rint(matrix), np.rint(shift)
    if not (
        np.allclose(matrix, rounded_matrix, atol=1e-6)
        and np.allclose(shift, rounded_shift, atol=1e-4)
        and np.array_equal(np.abs(rounded_matrix).sum(axis=0), [1, 1, 1])
        and np.array_equal(np.abs(rounded_matrix).sum(axis=1), [1, 1, 1])
    ):
        return None
    # target axis k reads source axis axes[k], forwards (sign +1) or backwards (-1)
    axes = [int(np.flatnonzero(rounded_matrix[:, k])[0]) for k in range(3)]
    signs = [int(rounded_matrix[axes[k], k]) for k in range(3)]
    source = np.transpose(data, axes)
    offsets = []
    for k in range(3):
        offset = int(rounded_shift[axes[k]])
        if signs[k] < 0:  # index = offset - o; after flipping the axis: (n - 1 - offset) + o
            source = np.flip(source, axis=k)
            offset = source.shape[k] - 1 - offset
        offsets.append(offset)
    out = np.zeros(grid_shape, dtype=data.dtype)
    target, taken = [], []
    for k in range(3):
        lo = max(0, -offsets[k])
        hi = min(grid_shape[k], source.shape[k] - offsets[k])
        if hi <= lo:
            return out  # no overlap at all
        target.append(slice(lo, hi))
        taken.append(slice(lo + offsets[k], hi + offsets[k]))
    out[tuple(target)] = source[tuple(taken)]
    return out
