"""Score label maps region by region: one case in memory, or a folder of predictions on disk.

Results are *tidy*: one row per subject x region x metric with columns
``subject, region, metric, value, convention``. ``metric`` is a name of
:data:`sgnet_lightning.evaluation.METRICS`; ``convention`` starts with the empty-mask case that
applied (``both_present``, ``both_empty``, ``pred_empty``, ``ref_empty``, or for lesion-wise rows
``no_scored_lesions``), followed after ``;`` by any setting that shaped the value
(``penalty_mm=374``, ``tolerance_mm=1``, the lesion-wise preset), so a report can count the cases
each convention touched and say which settings were used: ``convention.str.split(";").str[0]``.

Folder layout read by :func:`evaluate_folders`:

- predictions: ``<pred_dir>/<subject>.nii.gz`` (or ``.nii``), optionally named
  ``<subject>_pred.nii.gz``; integer label maps in the data set's canonical convention
  (:attr:`sgnet_lightning.datasets.Dataset.label_values`);
- references, by default: ``<ref_dir>/**/<subject>*.nii[.gz]`` label maps in the same convention.
  When some reference file names end in ``_seg``/``-seg``/``_label``/``-label`` (BraTS:
  ``BraTS-GLI-00000-000-seg.nii.gz``, ``BraTS2021_00000_seg.nii.gz``), only those are references and
  the subject ID is the name without that ending; otherwise every NIfTI file is one, named by its
  stem. Data sets whose references are not one label map per subject (``bml`` ships two binary
  masks per case) need a ``ref_loader`` (see :data:`ReferenceLoader`).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from sgnet_lightning.files import atomic_write_text
from sgnet_lightning.data.labels import get_task, label_map_to_masks
from sgnet_lightning.datasets import Task, get_dataset
from sgnet_lightning.errors import DataError, SgnetError
from sgnet_lightning.evaluation.lesions import LESION_SETTINGS, LesionSettings, lesion_metrics
from sgnet_lightning.evaluation.metrics import (
    DEFAULT_EMPTY_PENALTY_MM,
    DEFAULT_NSD_TOLERANCE_MM,
    PRED_EMPTY,
    REF_EMPTY,
    case_metrics,
)

log = logging.getLogger(__name__)

COLUMNS = ["subject", "region", "metric", "value", "convention"]

# Affines of prediction and reference may differ by this much (mm) and still count as one grid:
# NIfTI stores the affine in float32, so files of one grid written by different tools differ ~1e-5.
GRID_ATOL_MM = 1e-3

_NIFTI = re.compile(r"\.nii(\.gz)?$")
_PRED_SUFFIX = re.compile(r"_pred$")
_REF_SUFFIX = re.compile(r"[_-](seg|label)$")


@dataclass(frozen=True)
class Reference:
    """One subject's reference segmentation.

    Attributes:
        label_map: (X, Y, Z) integer label map in the data set's canonical convention.
        spacing_mm: voxel size (mm) along X, Y, Z.
        affine: (4, 4) voxel-to-world (mm) matrix; predictions must share it.
        file: where it was read from, for messages.
    """

    label_map: np.ndarray
    spacing_mm: tuple[float, float, float]
    affine: np.ndarray
    file: Path


# Finds the references under a folder: subject ID -> a function that reads that subject's
# reference. Reading is deferred so that a thousand subjects never sit in memory at once; with
# ``workers > 1`` the functions must be picklable (a module-level function or a ``partial`` of one).
ReferenceLoader = Callable[[Path], Mapping[str, Callable[[], Reference]]]


def default_lesion_settings(dataset: str, penalty_mm: float = DEFAULT_EMPTY_PENALTY_MM) -> LesionSettings:
    """The lesion-wise preset of ``dataset`` (its registry record's
    :attr:`~sgnet_lightning.datasets.Dataset.lesion_preset`: MET for the ``bml`` metastases, GLI
    for BraTS 2021 and 2023; pass ``LESION_SETTINGS["MET"]`` for BraTS-MET) with ``penalty_mm``."""
    preset = LESION_SETTINGS[get_dataset(dataset).lesion_preset]
    return dataclasses.replace(preset, penalty_mm=float(penalty_mm))


def evaluate_case(
    pred_label_map: np.ndarray,
    ref_label_map: np.ndarray,
    task: Task,
    spacing_mm: Sequence[float],
    *,
    distances: bool = True,
    lesions: bool = True,
    lesion_settings: LesionSettings | None = None,
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
    empty_penalty_mm: float = DEFAULT_EMPTY_PENALTY_MM,
) -> list[dict]:
    """Every metric of every region of ``task`` for one case.

    Args:
        pred_label_map, ref_label_map: (X, Y, Z) integer label maps in ``task.dataset``'s canonical
            convention, on one grid.
        task: defines the regions (label sets) scored, e.g. WT, TC, ET.
        spacing_mm: voxel size (mm) along X, Y, Z, from the header.
        distances: compute HD95, ASSD, NSD (and lesion-wise HD95).
        lesions: compute the lesion-wise metrics.
        lesion_settings: lesion-wise preset; default :func:`default_lesion_settings` of the data set
            with ``empty_penalty_mm`` as its penalty.
        nsd_tolerance_mm, empty_penalty_mm: see :func:`~sgnet_lightning.evaluation.metrics.case_metrics`.

    Returns:
        Rows ``{region, metric, value, convention}`` (see the module docstring).

    Raises:
        ValueError: shapes differ or a map holds a label value the data set does not define.
    """
    pred_label_map, ref_label_map = np.asarray(pred_label_map), np.asarray(ref_label_map)
    if pred_label_map.shape != ref_label_map.shape:
        raise ValueError(
            f"prediction and reference differ in shape: {pred_label_map.shape} vs {ref_label_map.shape}"
        )
    for role, label_map in (("prediction", pred_label_map), ("reference", ref_label_map)):
        unknown = _unknown_labels(label_map, task.dataset)
        if unknown:
            raise ValueError(
                f"{role} holds label values {unknown} not defined for {task.dataset} "
                f"(allowed: {list(get_dataset(task.dataset).label_values)})"
            )
    if lesions and lesion_settings is None:
        lesion_settings = default_lesion_settings(task.dataset, empty_penalty_mm)

    pred_masks = label_map_to_masks(pred_label_map, task.regions)
    ref_masks = label_map_to_masks(ref_label_map, task.regions)
    rows = []
    for region, pred, ref in zip(task.region_names, pred_masks, ref_masks):
        values = case_metrics(
            pred,
            ref,
            spacing_mm,
            distances=distances,
            nsd_tolerance_mm=nsd_tolerance_mm,
            empty_penalty_mm=empty_penalty_mm,
        )
        convention = values.pop("convention")
        for metric, value in values.items():
            note = convention
            if metric in ("hd95_mm", "assd_mm") and convention in (PRED_EMPTY, REF_EMPTY):
                note += f";penalty_mm={empty_penalty_mm:g}"
            elif metric == "nsd":
                note += f";tolerance_mm={nsd_tolerance_mm:g}"
            rows.append({"region": region, "metric": metric, "value": float(value), "convention": note})
        if lesions:
            values = lesion_metrics(pred, ref, spacing_mm, lesion_settings, distances=distances)
            note = f"{values.pop('convention')};{lesion_settings.describe()}"
            rows.extend(
                {"region": region, "metric": metric, "value": float(value), "convention": note}
                for metric, value in values.items()
            )
    return rows


def evaluate_folders(
    pred_dir: str | Path,
    ref_dir: str | Path,
    dataset: str,
    out_csv: str | Path,
    *,
    task: Task | str | None = None,
    ref_loader: ReferenceLoader | None = None,
    allow_missing: bool = False,
    workers: int = 1,
    progress: bool = True,
    distances: bool = True,
    lesions: bool = True,
    lesion_settings: LesionSettings | None = None,
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
    empty_penalty_mm: float = DEFAULT_EMPTY_PENALTY_MM,
    grid_atol_mm: float = GRID_ATOL_MM,
) -> pd.DataFrame:
    """Score every prediction in ``pred_dir`` against its reference and write a tidy CSV.

    Predictions are matched to reference subjects by subject ID (see the module docstring). Extra
    predictions (no reference) are reported and skipped. Missing predictions (a reference without
    one) stop the run unless ``allow_missing``, in which case they are reported, skipped and listed
    in the result's ``attrs["missing_subjects"]``: a skipped subject is usually a failed one, so say
    so wherever means are reported.

    Args:
        pred_dir: folder of prediction label maps.
        ref_dir: folder searched for references (by ``ref_loader`` when given).
        dataset: data set whose label convention both sides follow (``bml``, ``brats2021``, ...).
        out_csv: written atomically; columns ``subject, region, metric, value, convention``.
        task: a :class:`Task` or a task name of ``dataset``; default: the data set's default task.
        ref_loader: replaces the default NIfTI reference discovery (:data:`ReferenceLoader`).
        allow_missing: go on when some references have no prediction.
        workers: processes scoring subjects in parallel.
        progress: show a progress bar.
        distances, lesions, lesion_settings, nsd_tolerance_mm, empty_penalty_mm: see
            :func:`evaluate_case`.
        grid_atol_mm: largest affine difference (mm) still accepted as one grid.

    Returns:
        The rows written, sorted by subject; ``attrs`` holds ``missing_subjects`` and
        ``extra_subjects``.

    Raises:
        SgnetError: no prediction, no reference, no subject in common, or missing predictions.
        DataError: a file that cannot be scored (unreadable, not a 3D label map, unknown label
            values, or a grid that differs from its reference; the message names both files).
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    task = task if isinstance(task, Task) else get_task(dataset, task)
    if task.dataset != dataset:
        raise SgnetError(f"task {task.name!r} belongs to dataset {task.dataset!r}, not {dataset!r}")
    predictions = find_predictions(pred_dir)
    references = (ref_loader or nifti_references)(ref_dir)
    if not references:
        raise SgnetError(f"no reference segmentation found under {ref_dir}")

    matched = sorted(set(predictions) & set(references))
    missing = sorted(set(references) - set(predictions))
    extra = sorted(set(predictions) - set(references))
    if not matched:
        raise SgnetError(
            f"no prediction in {pred_dir} matches a reference subject in {ref_dir}: "
            f"predictions {_name_list(predictions)}; references {_name_list(references)}"
        )
    if extra:
        log.warning("%d prediction(s) without a reference, not scored: %s", len(extra), _name_list(extra))
    if missing:
        message = (
            f"{len(missing)} reference subject(s) have no prediction in {pred_dir}: {_name_list(missing)}"
        )
        if not allow_missing:
            raise SgnetError(message + " (allow_missing skips them)")
        log.warning("%s; skipped", message)

    options = dict(
        task=task,
        distances=distances,
        lesions=lesions,
        lesion_settings=lesion_settings,
        nsd_tolerance_mm=nsd_tolerance_mm,
        empty_penalty_mm=empty_penalty_mm,
        grid_atol_mm=grid_atol_mm,
    )
    jobs = {s: partial(_evaluate_subject, s, predictions[s], references[s], **options) for s in matched}
    rows_by_subject: dict[str, list[dict]] = {}
    with tqdm(total=len(jobs), desc="evaluate", unit="subject", disable=not progress) as bar:
        if workers > 1:
            # forkserver: workers fork from a clean server that imported this module once, so they
            # neither fork a process holding torch threads nor re-import torch and MONAI each
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([__name__])
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                futures = {pool.submit(job): subject for subject, job in jobs.items()}
                for future in as_completed(futures):
                    rows_by_subject[futures[future]] = future.result()
                    bar.update()
        else:
            for subject, job in jobs.items():
                rows_by_subject[subject] = job()
                bar.update()

    table = pd.DataFrame(
        [{"subject": s, **row} for s in matched for row in rows_by_subject[s]], columns=COLUMNS
    )
    if table["value"].isna().any():  # the policies above leave no NaN; never write one silently
        raise RuntimeError(f"NaN metric values:\n{table[table['value'].isna()]}")
    atomic_write_text(out_csv, table.to_csv(index=False))
    table.attrs.update(missing_subjects=missing, extra_subjects=extra)
    return table


def find_predictions(pred_dir: Path) -> dict[str, Path]:
    """Subject ID -> prediction file for every ``*.nii[.gz]`` directly in ``pred_dir``."""
    if not pred_dir.is_dir():
        raise SgnetError(f"prediction folder {pred_dir} does not exist")
    files = sorted(p for p in pred_dir.iterdir() if p.is_file() and _NIFTI.search(p.name))
    if not files:
        raise SgnetError(f"no prediction (*.nii.gz or *.nii) in {pred_dir}")
    return _by_subject(files, lambda stem: _PRED_SUFFIX.sub("", stem))


def find_reference_files(ref_dir: Path) -> dict[str, Path]:
    """Subject ID -> reference label map file under ``ref_dir`` (rules in the module docstring)."""
    if not ref_dir.is_dir():
        raise SgnetError(f"reference folder {ref_dir} does not exist")
    files = sorted(p for p in ref_dir.rglob("*") if p.is_file() and _NIFTI.search(p.name))
    marked = [p for p in files if _REF_SUFFIX.search(_stem(p))]
    if marked:
        return _by_subject(marked, lambda stem: _REF_SUFFIX.sub("", stem))
    return _by_subject(files, lambda stem: stem)


def nifti_references(ref_dir: Path) -> dict[str, Callable[[], Reference]]:
    """The default :data:`ReferenceLoader`: one NIfTI label map per subject."""
    files = find_reference_files(ref_dir)
    return {subject: partial(read_nifti_reference, subject, path) for subject, path in files.items()}


def read_nifti_reference(subject: str, path: Path) -> Reference:
    """Read one reference label map; spacing from the header (``get_zooms``)."""
    label_map, image = _read_label_map(subject, path)
    spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
    return Reference(label_map, spacing, image.affine, path)  # type: ignore[arg-type]


def _evaluate_subject(
    subject: str,
    pred_file: Path,
    load_reference: Callable[[], Reference],
    *,
    task: Task,
    grid_atol_mm: float,
    **case_options,
) -> list[dict]:
    reference = load_reference()
    pred, pred_image = _read_label_map(subject, pred_file)
    return score_prediction(subject, pred, pred_image.affine, pred_file, reference, task,
                            grid_atol_mm=grid_atol_mm, **case_options)


def score_prediction(
    subject: str,
    pred: np.ndarray,
    pred_affine: np.ndarray,
    pred_file: str | Path,
    reference: Reference,
    task: Task,
    *,
    grid_atol_mm: float = GRID_ATOL_MM,
    **case_options,
) -> list[dict]:
    """Score one subject's prediction on its reference's grid: check that both share one grid and
    hold only the data set's labels, then :func:`evaluate_case` at the reference's voxel spacing.

    ``sgnet evaluate`` calls it for each file it reads, and ``sgnet test`` for each prediction it
    has put back on the subject's original grid, so a test score is what ``evaluate`` recomputes from
    the written NIfTI.

    Args:
        pred: (X, Y, Z) uint8 label map; pred_affine: its (4, 4) voxel-to-world matrix (mm).
        pred_file: where the prediction is (or will be) written, for messages.
        reference: the subject's reference (:class:`Reference`).
        grid_atol_mm: largest affine difference (mm) still accepted as one grid.
        case_options: keyword options of :func:`evaluate_case`.

    Raises:
        DataError: naming the subject and file, for another grid or unknown label values.
    """
    problems = []
    if pred.shape != reference.label_map.shape:
        problems.append(f"shape {pred.shape} vs {reference.label_map.shape}")
    elif not np.allclose(pred_affine, reference.affine, rtol=0.0, atol=grid_atol_mm):
        difference = np.abs(np.asarray(pred_affine) - np.asarray(reference.affine)).max()
        problems.append(f"affine differs by up to {difference:.4g} mm (tolerance {grid_atol_mm:g})")
    if problems:
        raise DataError(
            subject,
            pred_file,
            f"prediction is not on the grid of its reference {reference.file}: {'; '.join(problems)}",
        )
    sides = (("prediction", pred, pred_file), ("reference", reference.label_map, reference.file))
    for role, label_map, file in sides:
        unknown = _unknown_labels(label_map, task.dataset)
        if unknown:
            raise DataError(
                subject,
                file,
                f"{role} holds label values {unknown} not defined for {task.dataset} "
                f"(allowed: {list(get_dataset(task.dataset).label_values)})",
            )
    return evaluate_case(pred, reference.label_map, task, reference.spacing_mm, **case_options)


def _read_label_map(subject: str, path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """(X, Y, Z) uint8 label map and the image (for header and affine); DataError when it is not one."""
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel raises many types for a damaged file
        raise DataError(subject, path, f"cannot read NIfTI file: {error}") from error
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(subject, path, f"expected a 3D label map, got shape {data.shape}")
    if data.dtype.kind == "f" and not np.all(np.isfinite(data) & (data == np.round(data))):
        raise DataError(subject, path, "not a label map: holds non-integer values")
    if data.min() < 0 or data.max() > 255:
        value_range = f"{data.min()}..{data.max()}"
        raise DataError(subject, path, f"not a label map: values range {value_range}, outside 0..255")
    return data.astype(np.uint8), image


def _unknown_labels(label_map: np.ndarray, dataset: str) -> list:
    """Values in ``label_map`` that are not labels of ``dataset`` (empty list when all are)."""
    label_map = np.asarray(label_map)
    if label_map.dtype.kind in "bu":  # counting is much faster than sorting for whole volumes
        present = np.flatnonzero(np.bincount(label_map.ravel()))
    else:
        present = np.unique(label_map)
    allowed = get_dataset(dataset).label_values
    return [v.item() for v in present if v not in allowed]


def _stem(path: Path) -> str:
    return _NIFTI.sub("", path.name)


def _by_subject(files: list[Path], subject_of: Callable[[str], str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in files:
        subject = subject_of(_stem(path))
        if subject in found:
            raise SgnetError(f"two files for subject {subject}: {found[subject]} and {path}")
        found[subject] = path
    return found


def _name_list(names, limit: int = 10) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "") if names else "none"
