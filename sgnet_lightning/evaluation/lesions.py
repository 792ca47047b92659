"""Lesion-wise Dice and HD95 exactly as the official BraTS 2023 metric code defines them.

Source followed: ``rachitsaluja/BraTS-2023-Metrics`` (``eval.py`` and
``brats_2023_metrics/surface_distance/brats_metrics.py``, functions ``get_lesion_wise_score`` and
``get_lesion_wise_results``). For one binary region:

1. Lesions are 26-connected components. The reference mask is dilated (``dilation_iterations``
   iterations of the 18-connected 3x3x3 structuring element) and the dilated mask is split into
   26-connected *blobs*; the reference voxels inside one blob form one lesion, so nearby parts of
   one tumour count once.
2. A predicted component matches a lesion when it touches the lesion's dilated region. All matched
   components, whole, are merged for that lesion's Dice and HD95 (DeepMind surface distance against
   the undilated lesion). A lesion with no match is a false negative: Dice 0, HD95 ``penalty_mm``.
3. Predicted components that touch no dilated lesion are false positives (no size threshold);
   each adds a Dice 0 and an HD95 ``penalty_mm`` to the averages.
4. Reference lesions with volume ``<= volume_threshold_mm3`` (voxel count times voxel volume, as the
   official code computes it; at 1 mm isotropic that is "50 voxels or fewer") are left out of the
   averages and of the TP/FN counts; predicted components touching them are not false positives.
5. ``lesion_dice = sum(Dice of kept lesions) / (kept + FP)``, likewise ``lesion_hd95_mm`` with
   ``FP * penalty_mm`` added; with nothing to average (no kept lesion, no FP) they are 1 and 0.

Where this implementation differs in *how*, never in the numbers:
- connected components come from ``scipy.ndimage.label`` with a full 3x3x3 structure instead of
  ``cc3d`` (same components, other numbering; every result is order-independent);
- the official code dilates every lesion again to find its matches; that re-dilation equals the
  lesion's blob (each voxel's dilation is connected, so it stays in its own blob, and the blob is the
  union of its voxels' dilations), so the blob is used directly;
- everything runs on the bounding box of ``pred | ref`` grown by ``dilation_iterations`` voxels
  (clipped at the image border, where the official dilation is clipped too), and each lesion's
  distances on the box of the lesion and its matches; no voxel outside can change a result;
- the official code hard-codes the penalty 374 mm; here it is ``LesionSettings.penalty_mm``.

``lesion_f1`` (not in the official code) is ``2 TP / (2 TP + FP + FN)`` from the counts above;
with TP = FP = FN = 0 (nothing to find and nothing found) it is 1, matching ``lesion_dice``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from sgnet_lightning.evaluation.metrics import (
    BOTH_EMPTY,
    DEFAULT_EMPTY_PENALTY_MM,
    empty_convention,
)
from sgnet_lightning.evaluation.surface import check_spacing, compute_surface_distances, hd95_mm

NO_SCORED_LESIONS = "no_scored_lesions"  # convention: only lesions under the threshold, no FP

_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)
_DILATION_18 = ndimage.generate_binary_structure(3, 2)


@dataclass(frozen=True)
class LesionSettings:
    """Parameters of the lesion-wise metrics (one BraTS 2023 challenge's values).

    Attributes:
        name: preset name, recorded with every result (e.g. ``"GLI"``).
        dilation_iterations: iterations of the 18-connected dilation of the reference before
            matching (0: no dilation).
        volume_threshold_mm3: reference lesions with volume <= this (mm^3) are not scored.
        penalty_mm: HD95 of a missed or false-positive lesion.
    """

    name: str
    dilation_iterations: int
    volume_threshold_mm3: float
    penalty_mm: float = DEFAULT_EMPTY_PENALTY_MM

    def __post_init__(self):
        if self.dilation_iterations < 0:
            raise ValueError(f"dilation_iterations must be >= 0, got {self.dilation_iterations}")
        if self.volume_threshold_mm3 < 0 or self.penalty_mm < 0:
            raise ValueError("volume_threshold_mm3 and penalty_mm must be >= 0")

    def describe(self) -> str:
        """One line naming every value, for the ``convention`` column of results."""
        return (
            f"{self.name}(dilation={self.dilation_iterations},"
            f"volume_threshold_mm3={self.volume_threshold_mm3:g},penalty_mm={self.penalty_mm:g})"
        )


# Official values: GLI (also SSA, PED) dilate 3 times and ignore lesions <= 50 mm^3;
# MET dilates once and ignores lesions <= 2 mm^3.
LESION_SETTINGS: dict[str, LesionSettings] = {
    "GLI": LesionSettings("GLI", dilation_iterations=3, volume_threshold_mm3=50.0),
    "MET": LesionSettings("MET", dilation_iterations=1, volume_threshold_mm3=2.0),
}


def lesion_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing_mm: Sequence[float],
    settings: LesionSettings,
    *,
    distances: bool = True,
) -> dict[str, float | int | str]:
    """Lesion-wise metrics of one binary region of one case (see the module docstring).

    Args:
        pred, ref: boolean masks (X, Y, Z) on one grid.
        spacing_mm: voxel size (mm) along X, Y, Z.
        settings: e.g. ``LESION_SETTINGS["GLI"]``.
        distances: also compute ``lesion_hd95_mm`` (one surface-distance computation per matched
            lesion).

    Returns:
        ``lesion_dice``, ``lesion_hd95_mm`` (with ``distances``), ``lesion_tp`` (scored reference
        lesions found), ``lesion_fn`` (scored reference lesions missed), ``lesion_fp`` (predicted
        components touching no reference lesion), ``lesion_f1``, and ``convention``: the mask-level
        empty convention, or ``no_scored_lesions`` when nothing was left to average.
    """
    spacing = check_spacing(spacing_mm)
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape or pred.ndim != 3:
        raise ValueError(f"pred and ref must be 3D masks of one shape, got {pred.shape} and {ref.shape}")
    convention = empty_convention(pred, ref)
    if convention == BOTH_EMPTY:
        return _result(1.0, 0.0, 0, 0, 0, convention, distances)

    box = _grown_box(pred | ref, settings.dilation_iterations)
    pred, ref = pred[box], ref[box]

    dilated = ref
    if settings.dilation_iterations > 0:
        dilated = ndimage.binary_dilation(ref, _DILATION_18, iterations=settings.dilation_iterations)
    blobs, n_lesions = ndimage.label(dilated, _CONNECTIVITY_26)
    lesions = np.where(ref, blobs, 0)  # lesion id of every reference voxel
    components, n_components = ndimage.label(pred, _CONNECTIVITY_26)

    # (lesion, component) pairs where the component touches the lesion's dilated region
    touching = (blobs > 0) & (components > 0)
    pairs = np.unique(np.stack([blobs[touching], components[touching]]), axis=1)
    matches = {lesion: pairs[1, pairs[0] == lesion] for lesion in range(1, n_lesions + 1)}
    n_fp = n_components - len(np.unique(pairs[1]))

    voxel_mm3 = float(np.prod(spacing))
    lesion_volumes_mm3 = np.bincount(lesions.ravel(), minlength=n_lesions + 1) * voxel_mm3
    lesion_boxes = ndimage.find_objects(lesions)
    component_boxes = ndimage.find_objects(components)

    dice_sum, hd95_sum, n_tp, n_fn = 0.0, 0.0, 0, 0
    for lesion in range(1, n_lesions + 1):
        if lesion_volumes_mm3[lesion] <= settings.volume_threshold_mm3:
            continue
        matched = matches[lesion]
        if len(matched) == 0:
            n_fn += 1
            hd95_sum += settings.penalty_mm
            continue
        n_tp += 1
        region = _union_box([lesion_boxes[lesion - 1]] + [component_boxes[c - 1] for c in matched])
        lesion_mask = lesions[region] == lesion
        matched_mask = np.isin(components[region], matched)
        overlap = np.count_nonzero(lesion_mask & matched_mask)
        dice_sum += 2.0 * overlap / (np.count_nonzero(lesion_mask) + np.count_nonzero(matched_mask))
        if distances:
            hd95_sum += hd95_mm(compute_surface_distances(lesion_mask, matched_mask, spacing))

    n_scored = n_tp + n_fn + n_fp
    if n_scored == 0:
        return _result(1.0, 0.0, 0, 0, 0, NO_SCORED_LESIONS, distances)
    lesion_dice = dice_sum / n_scored
    lesion_hd95 = (hd95_sum + n_fp * settings.penalty_mm) / n_scored
    return _result(lesion_dice, lesion_hd95, n_tp, n_fn, n_fp, convention, distances)


def false_positive_components(pred: np.ndarray, ref: np.ndarray, settings: LesionSettings
                              ) -> tuple[np.ndarray, np.ndarray]:
    """The predicted lesions :func:`lesion_metrics` counts as false positives, as masks, to ask
    where they lie (e.g. on which unlabelled structure of a phantom).

    Args:
        pred, ref: boolean masks (X, Y, Z) of one region on one grid.
        settings: the lesion-wise preset (its dilation decides what touches a lesion).

    Returns:
        ``(components, false_positive_ids)``: the prediction's 26-connected components (int array
        (X, Y, Z), 0 = background) and the ids of those touching no dilated reference lesion;
        ``len(false_positive_ids)`` equals ``lesion_metrics(...)["lesion_fp"]``.
    """
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    dilated = ref
    if settings.dilation_iterations > 0 and ref.any():
        dilated = ndimage.binary_dilation(ref, _DILATION_18, iterations=settings.dilation_iterations)
    components, n_components = ndimage.label(pred, _CONNECTIVITY_26)
    touching = np.unique(components[dilated & (components > 0)])
    return components, np.setdiff1d(np.arange(1, n_components + 1), touching)


def _result(dice, hd95, tp, fn, fp, convention, distances) -> dict[str, float | int | str]:
    detected = 2 * tp + fp + fn
    row: dict[str, float | int | str] = {"lesion_dice": float(dice)}
    if distances:
        row["lesion_hd95_mm"] = float(hd95)
    row.update(
        lesion_tp=tp,
        lesion_fn=fn,
        lesion_fp=fp,
        lesion_f1=2.0 * tp / detected if detected else 1.0,
        convention=convention,
    )
    return row


def _grown_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Bounding box of a non-empty mask grown by ``margin`` voxels, clipped to the array."""
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    return tuple(
        slice(max(s.start - margin, 0), min(s.stop + margin, size)) for s, size in zip(box, mask.shape)
    )


def _union_box(boxes: list[tuple[slice, ...]]) -> tuple[slice, ...]:
    return tuple(
        slice(min(b[axis].start for b in boxes), max(b[axis].stop for b in boxes))
        for axis in range(len(boxes[0]))
    )
