"""From source volumes to the preprocessed cache (see :mod:`sgnet_lightning.data.cache`), and back.

One code path serves training (:func:`preprocess_subject`, :func:`preprocess_manifest`) and
prediction (:func:`preprocess_images`); :func:`to_native` takes a volume on the cached grid back to
the reference image's own grid.

Steps for one subject:

1. Target grid. The reference modality (T1CE for ``bml`` and BraTS 2021, T1C for BraTS 2023)
   defines it: an axis-aligned RAS grid at ``spacing_mm`` whose first voxel centre is the
   lowest-coordinate voxel centre of the reference and which covers all of the reference's voxel
   centres. This is "reorient to RAS, resample to spacing_mm" as one geometric step: for an
   axis-aligned image already at ``spacing_mm`` (BraTS, most ``bml`` T1CE) it is a pure flip/permutation
   of the voxels, so nothing is interpolated; an oblique image is resampled onto world axes.
2. Every modality and label goes straight from its own grid onto the target grid by world (mm)
   position: intensities linear, labels nearest neighbour. A FLAIR or ``whole_seg`` on another grid
   (as ``bml`` ships them) is thus interpolated once, not first onto the T1CE grid and again.
   Where the target voxels fall exactly on source voxels, voxels are copied, not interpolated.
3. Brain = nonzero voxels of the resampled reference (the data are skull-stripped). Crop to the
   bounding box of the brain (and of the label, so no labelled voxel is ever cut off) plus
   ``crop_margin_vox``, clipped to the grid. The crop is found from the reference and the label
   first, so the other modalities are interpolated only inside it.
4. Each channel is scaled from its ``percentiles`` inside the brain to [0, 1] and clipped; voxels
   outside the brain are 0.

Geometry is done with nibabel affines and scipy's ``affine_transform`` (the mapping of
:func:`nibabel.processing.resample_from_to`) in float64: it is exact where the grids coincide,
and the inverse (:func:`to_native`) is the same operation with the grids swapped. TorchIO's
``Resample``/``ToCanonical`` would give the same grids but round-trip through SimpleITK's LPS
conventions, and keep oblique directions (the cache is meant to be axis-aligned RAS).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from sgnet_lightning import files
from sgnet_lightning.data import cache
from sgnet_lightning.data.io import load_nifti, resample_to_grid, sha256_file
from sgnet_lightning.data.manifest import Manifest
from sgnet_lightning.data.sources import DatasetSource, SubjectRecord, get_source
from sgnet_lightning.errors import ConfigError, DataError, SgnetError

# Bump when the preprocessing changes what it writes: the cache key changes with it.
PREPROCESS_VERSION = 1
# Header affines are stored as float32; grid sizes are rounded with this slack (in voxels) so that
# 239.00001 mm of extent at 1 mm still gives 240 voxels, not 241.
_GRID_TOLERANCE_VOX = 1e-3
# A resampled grid larger than this means a wrong voxel size in a header (e.g. micrometres), not a
# brain: refuse it instead of exhausting memory. 512^3 voxels at 1 mm is half a metre each way.
_MAX_GRID_VOXELS = 512**3
# PreprocessError lists at most this many failures in its message (all are in .errors)
_MAX_ERRORS_SHOWN = 20


@dataclass(frozen=True)
class PreprocessSettings:
    """Everything that decides what the cache holds; its :meth:`key` names the cache folder.

    Attributes:
        spacing_mm: voxel size of the cached grid (mm), (X, Y, Z).
        percentiles: intensity percentiles inside the brain mapped to 0 and 1.
        crop_margin_vox: voxels kept around the brain's bounding box.
        reference_modality: modality whose grid is the reference; None = the data set's default.
    """

    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    percentiles: tuple[float, float] = (0.5, 99.5)
    crop_margin_vox: int = 8
    reference_modality: str | None = None

    def __post_init__(self):
        try:
            spacing = tuple(float(s) for s in np.broadcast_to(np.asarray(self.spacing_mm, float), (3,)))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"spacing_mm must be one or three positive numbers; got {self.spacing_mm}") from exc
        percentiles = tuple(float(p) for p in self.percentiles)
        if not all(np.isfinite(spacing)) or min(spacing) <= 0:
            raise ConfigError(f"spacing_mm must be three positive numbers; got {self.spacing_mm}")
        if len(percentiles) != 2 or not 0 <= percentiles[0] < percentiles[1] <= 100:
            raise ConfigError(
                f"percentiles must be (low, high) with 0 <= low < high <= 100; got {self.percentiles}"
            )
        if int(self.crop_margin_vox) != self.crop_margin_vox or self.crop_margin_vox < 0:
            raise ConfigError(f"crop_margin_vox must be a non-negative integer; got {self.crop_margin_vox}")
        # frozen dataclass: normalise lists from YAML into hashable, canonical tuples
        object.__setattr__(self, "spacing_mm", spacing)
        object.__setattr__(self, "percentiles", percentiles)
        object.__setattr__(self, "crop_margin_vox", int(self.crop_margin_vox))

    def to_dict(self) -> dict:
        return {**asdict(self), "version": PREPROCESS_VERSION}

    def key(self) -> str:
        """12 hex digits naming the cache folder: a hash of the settings and PREPROCESS_VERSION."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def ras_grid(shape, affine: np.ndarray, spacing_mm) -> tuple[tuple[int, int, int], np.ndarray]:
    """The axis-aligned RAS grid at ``spacing_mm`` covering every voxel centre of a (shape, affine)
    grid: ``(shape, affine)``. Like :func:`nibabel.processing.vox2out_vox` (which it follows), with
    a tolerance for float32 header round-off."""
    centres = np.array(list(product(*[(0, n - 1) for n in shape[:3]])), dtype=np.float64)
    world = nib.affines.apply_affine(affine, centres)
    low, high = world.min(axis=0), world.max(axis=0)
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    n_vox = np.ceil((high - low) / spacing - _GRID_TOLERANCE_VOX).astype(int) + 1
    grid_affine = np.diag([*spacing, 1.0])
    grid_affine[:3, 3] = low
    return tuple(int(n) for n in n_vox), grid_affine


def _rescale(
    channel: np.ndarray, brain: np.ndarray, percentiles, subject: str, file: Path, name: str
) -> np.ndarray:
    """(X, Y, Z) intensities -> [0, 1] from the brain's percentiles, clipped, 0 outside the brain.

    Written out rather than ``tio.RescaleIntensity``: TorchIO warns and returns the *unscaled*
    image when the two percentiles coincide, which would put raw intensities in the cache silently.
    """
    low, high = np.percentile(channel[brain], percentiles)
    if not high > low:
        raise DataError(
            subject,
            file,
            f"{name} has constant intensity {low:g} inside the brain mask between the {percentiles[0]:g} "
            f"and {percentiles[1]:g} percentiles (no signal there: does it overlap the reference image?)",
        )
    out = (channel - np.float32(low)) / np.float32(high - low)
    np.clip(out, 0.0, 1.0, out=out)
    out[~brain] = 0.0
    return out.astype(np.float32, copy=False)


def _bounding_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start (inclusive) and stop (exclusive) voxel indices of the nonzero part of ``mask``."""
    start, stop = [], []
    for axis in range(mask.ndim):
        present = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        start.append(present[0])
        stop.append(present[-1] + 1)
    return np.array(start), np.array(stop)


def _preprocess(
    record: SubjectRecord, source: DatasetSource, settings: PreprocessSettings
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    subject = record.subject
    reference = settings.reference_modality or source.reference_modality
    if reference not in source.modalities:
        raise ConfigError(
            f"reference_modality {reference!r} is not one of {source.name}'s modalities "
            f"({', '.join(source.modalities)})"
        )
    missing = [m for m in source.modalities if m not in record.images]
    if missing:
        need = ", ".join(source.modalities)
        raise DataError(subject, None, f"missing modality {', '.join(missing)} (need {need})")

    reference_path = Path(record.images[reference])
    reference_img = load_nifti(reference_path, subject, reference)
    grid_shape, grid_affine = ras_grid(reference_img.shape, reference_img.affine, settings.spacing_mm)
    if np.prod(grid_shape, dtype=np.float64) > _MAX_GRID_VOXELS:
        raise DataError(
            subject,
            reference_path,
            f"{reference} would need a {'x'.join(map(str, grid_shape))} grid at {settings.spacing_mm} mm; "
            "check the voxel size in its header",
        )

    reference_full = resample_to_grid(
        np.asanyarray(reference_img.dataobj), reference_img.affine, grid_shape, grid_affine, order=1
    )
    brain_full = reference_full != 0
    if not brain_full.any():
        raise DataError(subject, reference_path, f"{reference} has no nonzero voxel on the resampled grid")
    label = source.load_label_map(record, (grid_shape, grid_affine)) if record.labels else None

    # The crop is known before the other modalities are read, so they are resampled straight onto
    # the cropped grid (the background around the brain is never interpolated).
    start, stop = _bounding_box(brain_full if label is None else brain_full | (label > 0))
    start = np.maximum(start - settings.crop_margin_vox, 0)
    stop = np.minimum(stop + settings.crop_margin_vox, grid_shape)
    box = tuple(slice(a, b) for a, b in zip(start, stop))
    crop_shape = tuple(int(n) for n in stop - start)
    cropped_affine = grid_affine.copy()
    cropped_affine[:3, 3] = nib.affines.apply_affine(grid_affine, start)
    brain = brain_full[box]
    if label is not None:
        label = np.ascontiguousarray(label[box])

    image = np.empty((len(source.modalities), *crop_shape), dtype=np.float32)
    for channel, modality in enumerate(source.modalities):
        path = Path(record.images[modality])
        if modality == reference:
            data = reference_full[box]
        else:
            img = load_nifti(path, subject, modality)
            # float32 data: linear interpolation must not round to integers
            data = resample_to_grid(np.asanyarray(img.dataobj), img.affine, crop_shape, cropped_affine, order=1)
        image[channel] = _rescale(data, brain, settings.percentiles, subject, path, modality)

    meta = {
        "subject": subject,
        "dataset": source.name,
        "modalities": list(source.modalities),
        "spacing_mm": list(settings.spacing_mm),
        "affine": cropped_affine.tolist(),
        "shape": list(image.shape[1:]),
        "labels_present": [n for n in source.label_names if n in record.labels] if label is not None else [],
        "original": {
            "affine": np.asarray(reference_img.affine, dtype=np.float64).tolist(),
            "shape": list(reference_img.shape),
            "reference_modality": reference,
            "reference_file": str(reference_path),
        },
        "resampled": {"affine": grid_affine.tolist(), "shape": list(grid_shape)},
        "crop": {"start": start.tolist(), "stop": stop.tolist()},
        "source_hashes": {str(path): sha256_file(path) for path in record.files().values()},
    }
    return image, label, meta


def preprocess_subject(
    record: SubjectRecord, source: DatasetSource, settings: PreprocessSettings
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Preprocess one subject (see the module docstring).

    Returns:
        image: float32 (C, X, Y, Z) in [0, 1], channels in ``source.modalities`` order, RAS, at
            ``settings.spacing_mm``, cropped.
        label: uint8 (X, Y, Z) canonical label map on the same grid, or None without label files.
        meta: the cache's ``meta.json`` content (keys in :mod:`sgnet_lightning.data.cache`).

    Raises:
        DataError: an unreadable or unusable file, named with its problem.
    """
    return _preprocess(record, source, settings)


def preprocess_images(
    images: dict[str, str | os.PathLike], source: DatasetSource, settings: PreprocessSettings, subject: str
) -> tuple[np.ndarray, dict]:
    """Preprocess an unlabelled case for prediction, exactly as :func:`preprocess_subject` does.

    Args:
        images: modality -> file, every modality of ``source``.

    Returns:
        ``(image (C, X, Y, Z) float32, meta)``; pass ``meta`` to :func:`to_native`.
    """
    record = SubjectRecord(subject, {m: Path(p) for m, p in images.items()}, {})
    image, _, meta = _preprocess(record, source, settings)
    return image, meta


def to_native(volume: np.ndarray, meta: dict, interpolation: str = "nearest") -> nib.Nifti1Image:
    """Put a volume on the cached grid back onto the reference image's original grid.

    Args:
        volume: (X, Y, Z) or (C, X, Y, Z) on the cached (cropped) grid of ``meta``.
        meta: the subject's cache meta (or the meta of :func:`preprocess_images`).
        interpolation: ``"nearest"`` (labels: values kept) or ``"linear"`` (probabilities, maps).

    Returns:
        A NIfTI image with exactly the original shape (plus a last axis of C for 4D input) and
        affine: the crop is padded back with zeros, then resampled by world position.
    """
    orders = {"nearest": 0, "linear": 1}
    if interpolation not in orders:
        raise ValueError(f"interpolation must be 'nearest' or 'linear'; got {interpolation!r}")
    volume = np.asarray(volume)
    start, stop = np.array(meta["crop"]["start"]), np.array(meta["crop"]["stop"])
    if volume.ndim not in (3, 4) or tuple(volume.shape[-3:]) != tuple(stop - start):
        raise ValueError(
            f"volume of shape {volume.shape} is not on the cached grid of subject {meta.get('subject')} "
            f"(expected (X, Y, Z) or (C, X, Y, Z) with X, Y, Z = {tuple(int(n) for n in stop - start)})"
        )
    if interpolation == "linear" or volume.dtype in (np.float16, np.bool_):
        # scipy cannot interpolate float16 and NIfTI has no bool; linear output is fractional
        volume = volume.astype(np.float32 if interpolation == "linear" or volume.dtype == np.float16 else np.uint8)
    channels = volume if volume.ndim == 4 else volume[None]
    resampled_shape = tuple(meta["resampled"]["shape"])
    resampled_affine = np.array(meta["resampled"]["affine"], dtype=np.float64)
    original_shape = tuple(meta["original"]["shape"])
    original_affine = np.array(meta["original"]["affine"], dtype=np.float64)
    box = tuple(slice(a, b) for a, b in zip(start, stop))
    native = []
    for channel in channels:
        padded = np.zeros(resampled_shape, dtype=channel.dtype)
        padded[box] = channel
        native.append(
            resample_to_grid(padded, resampled_affine, original_shape, original_affine, orders[interpolation])
        )
    data = native[0] if volume.ndim == 3 else np.stack(native, axis=-1)
    return nib.Nifti1Image(data, original_affine, dtype=data.dtype)


# -- the whole manifest ---------------------------------------------------------------------------


class PreprocessError(SgnetError):
    """Some subjects could not be preprocessed; the others are in the cache.

    Attributes:
        errors: one :class:`DataError` per failed subject.
        folder: the cache folder.
    """

    def __init__(self, errors: list[DataError], folder: Path, n_subjects: int):
        self.errors, self.folder = errors, folder
        shown = _MAX_ERRORS_SHOWN
        lines = "\n".join(f"  {e}" for e in errors[:shown])
        if len(errors) > shown:
            lines += f"\n  ... and {len(errors) - shown} more"
        super().__init__(
            f"{len(errors)} of {n_subjects} subjects could not be preprocessed into {folder} "
            f"(the others are cached; fix these or exclude them, then rerun):\n{lines}"
        )


def _is_up_to_date(subject_dir: Path, hashes: dict[str, str]) -> bool:
    """Complete, and made from files with the manifest's hashes (whatever root they were read from)."""
    if not cache.is_complete(subject_dir):
        return False
    try:
        made_from = cache.read_meta(subject_dir)["source_hashes"]
    except (OSError, ValueError, KeyError):
        return False
    return sorted(made_from.values()) == sorted(hashes.values())


def _preprocess_and_write(
    record: SubjectRecord,
    dataset: str,
    settings: PreprocessSettings,
    subject_dir: Path,
    expected_hashes: dict[str, str],
) -> tuple[str, str, str] | None:
    """Worker: preprocess one subject into ``subject_dir``. Returns None, or the DataError's
    ``(subject, file, problem)`` (DataError itself does not survive pickling between processes).

    A file whose SHA-256 differs from ``expected_hashes`` (the manifest's) is refused: the manifest
    is what experiments cite, so the cache must hold exactly the data it lists."""
    try:
        image, label, meta = preprocess_subject(record, get_source(dataset), settings)
    except DataError as exc:
        return exc.subject, exc.file, exc.problem
    for path, digest in meta["source_hashes"].items():
        if expected_hashes.get(path, digest) != digest:
            return record.subject, path, "file changed since the manifest was made (SHA-256 differs)"
    cache.write_cached_subject(subject_dir, image, label, meta)
    return None


def preprocess_manifest(
    manifest: Manifest,
    cache_root: str | os.PathLike,
    settings: PreprocessSettings,
    workers: int = 1,
    exclude=(),
    progress: bool = True,
) -> Path:
    """Build (or complete) the cache of every subject of ``manifest``.

    Subjects already cached from files with the manifest's hashes are skipped, so an interrupted
    run resumes where it stopped. Subjects run in parallel in ``workers`` processes. A source file
    whose SHA-256 no longer matches the manifest is refused (remake the manifest if the change is
    intended). Every failing subject is reported, after all the others are cached.

    Args:
        manifest: the data set's manifest (its root must hold the files).
        cache_root: parent folder of the cache; the cache is ``<cache_root>/<settings.key()>/``.
        settings: preprocessing settings.
        workers: processes (1: in this process).
        exclude: subject IDs to leave out.
        progress: show a progress bar.

    Returns:
        The cache folder.

    Raises:
        PreprocessError: listing every subject that failed (after all others are done).
        ConfigError: the cache folder belongs to another data set.
    """
    manifest.require_root()
    source = manifest.source
    folder = Path(cache_root) / settings.key()
    settings_path = folder / cache.SETTINGS_FILE
    if settings_path.is_file():
        recorded = json.loads(settings_path.read_text()).get("dataset")
        if recorded != manifest.dataset:
            raise ConfigError(
                f"cache folder {folder} holds {recorded} data, not {manifest.dataset}: use another cache_root"
            )
    files.atomic_write_json(
        settings_path,
        {
            "key": settings.key(),
            "settings": settings.to_dict(),
            "dataset": manifest.dataset,
            "modalities": list(source.modalities),
            "reference_modality": settings.reference_modality or source.reference_modality,
            "manifest": str(Path(manifest.path).absolute()),
        },
    )

    excluded = set(exclude)
    subjects = [s for s in manifest.subjects if s not in excluded]
    todo = [s for s in subjects if not _is_up_to_date(folder / s, manifest.hashes(s))]
    failures: list[DataError] = []
    bar = tqdm(total=len(subjects), initial=len(subjects) - len(todo), desc="preprocess", unit="subject",
               disable=not progress)

    def finished(outcome) -> None:
        if outcome is not None:
            failures.append(DataError(*outcome))
        bar.update(1)

    jobs = [(manifest.record(s), manifest.dataset, settings, folder / s, manifest.hashes(s)) for s in todo]
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            finished(_preprocess_and_write(*job))
    else:
        # spawn, not fork: a forked child of a process that has run torch/OpenMP threads can hang
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
            pending = {pool.submit(_preprocess_and_write, *job) for job in jobs}
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        finished(future.result())
            except BaseException:  # a bug or Ctrl-C: do not wait for the queued subjects
                for future in pending:
                    future.cancel()
                raise
    bar.close()
    if failures:
        failures.sort(key=lambda e: e.subject)
        raise PreprocessError(failures, folder, len(subjects))
    return folder
