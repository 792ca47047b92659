"""Per-case overlap and surface metrics of one binary region, with one empty-mask policy.

Empty-mask policy (applied before any distance is computed, the same everywhere in the project, and
recorded per row as ``convention`` so reports can count the affected cases):

============== ===== ========= ====== ============================ =====
convention     dice  precision recall hd95_mm / assd_mm             nsd
============== ===== ========= ====== ============================ =====
``both_empty`` 1     1         1      0                            1
``pred_empty`` 0     0         0      ``empty_penalty_mm``         0
``ref_empty``  0     0         0      ``empty_penalty_mm``         0
============== ===== ========= ====== ============================ =====

``both_present`` rows hold the plain definitions. The penalty (374 mm by default, the value the
official BraTS 2023 metric code substitutes for an infinite HD95; older code and nnU-Net used
373.13) is a setting, never NaN: a NaN that a later mean skips would drop exactly the worst cases.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from sgnet_lightning.data.labels import label_map_to_masks, regions_to_label_map
from sgnet_lightning.datasets import Task
from sgnet_lightning.evaluation.surface import (
    assd_mm,
    check_spacing,
    compute_surface_distances,
    hd95_mm,
    normalised_surface_dice,
)

DEFAULT_EMPTY_PENALTY_MM = 374.0
DEFAULT_NSD_TOLERANCE_MM = 1.0

BOTH_PRESENT = "both_present"
BOTH_EMPTY = "both_empty"
PRED_EMPTY = "pred_empty"
REF_EMPTY = "ref_empty"


def empty_convention(pred: np.ndarray, ref: np.ndarray) -> str:
    """Which row of the empty-mask policy applies to a (pred, ref) pair of masks."""
    pred_any, ref_any = bool(np.any(pred)), bool(np.any(ref))
    if pred_any and ref_any:
        return BOTH_PRESENT
    if not pred_any and not ref_any:
        return BOTH_EMPTY
    return PRED_EMPTY if ref_any else REF_EMPTY


def case_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing_mm: Sequence[float],
    *,
    distances: bool = True,
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
    empty_penalty_mm: float = DEFAULT_EMPTY_PENALTY_MM,
) -> dict[str, float | str]:
    """Metrics of one binary region of one case.

    Args:
        pred, ref: boolean masks (X, Y, Z) on one grid.
        spacing_mm: voxel size (mm) along X, Y, Z, from the image header.
        distances: also compute ``hd95_mm``, ``assd_mm`` and ``nsd`` (two distance transforms on the
            union bounding box; the slow part of evaluation).
        nsd_tolerance_mm: tolerance of the normalised surface Dice.
        empty_penalty_mm: HD95 and ASSD when exactly one mask is empty.

    Returns:
        ``dice``, ``precision``, ``recall``, ``volume_pred_ml``, ``volume_ref_ml`` (floats), with
        ``distances`` also ``hd95_mm``, ``assd_mm``, ``nsd``, and ``convention`` (str: which row of
        the empty-mask policy applied).
    """
    spacing = check_spacing(spacing_mm)
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape or pred.ndim != 3:
        raise ValueError(f"pred and ref must be 3D masks of one shape, got {pred.shape} and {ref.shape}")
    convention = empty_convention(pred, ref)
    n_pred, n_ref = int(pred.sum()), int(ref.sum())
    n_overlap = int(np.count_nonzero(pred & ref))
    voxel_ml = float(np.prod(spacing)) / 1000.0

    if convention == BOTH_EMPTY:
        dice = precision = recall = 1.0
    elif convention == BOTH_PRESENT:
        dice = 2.0 * n_overlap / (n_pred + n_ref)
        precision, recall = n_overlap / n_pred, n_overlap / n_ref
    else:
        dice = precision = recall = 0.0
    row: dict[str, float | str] = {
        "dice": dice,
        "precision": precision,
        "recall": recall,
        "volume_pred_ml": n_pred * voxel_ml,
        "volume_ref_ml": n_ref * voxel_ml,
    }
    if distances:
        if convention == BOTH_PRESENT:
            surface = compute_surface_distances(ref, pred, spacing)
            row.update(
                hd95_mm=hd95_mm(surface),
                assd_mm=assd_mm(surface),
                nsd=normalised_surface_dice(surface, nsd_tolerance_mm),
            )
        elif convention == BOTH_EMPTY:
            row.update(hd95_mm=0.0, assd_mm=0.0, nsd=1.0)
        else:
            row.update(hd95_mm=float(empty_penalty_mm), assd_mm=float(empty_penalty_mm), nsd=0.0)
    row["convention"] = convention
    return row


def dice_per_channel(pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Dice of every channel of every batch item, for validation logging.

    Args:
        pred, ref: boolean tensors (B, C, X, Y, Z) (any number of spatial dimensions).

    Returns:
        float tensor (B, C); 1 where both masks are empty, 0 where exactly one is (the policy of
        :func:`case_metrics`).
    """
    if pred.shape != ref.shape:
        raise ValueError(f"pred and ref must have one shape, got {tuple(pred.shape)} and {tuple(ref.shape)}")
    pred, ref = pred.bool(), ref.bool()
    spatial = tuple(range(2, pred.ndim))
    overlap = (pred & ref).sum(dim=spatial).float()
    total = (pred.sum(dim=spatial) + ref.sum(dim=spatial)).float()
    return torch.where(total > 0, 2.0 * overlap / total.clamp_min(1.0), torch.ones_like(total))


def consolidate_regions(pred_regions: torch.Tensor, task: Task) -> torch.Tensor:
    """Predicted region masks as ``sgnet test``, ``predict`` and ``evaluate`` see them: the regions
    of the one label map made from them.

    Region channels are thresholded independently and may disagree (an ET voxel outside WT); the
    suite writes and scores one label map (:func:`~sgnet_lightning.data.labels.regions_to_label_map`),
    whose regions are then taken again. Validation Dice goes through the same step, so the
    checkpoint chosen by validation Dice and the sweeps' pruning see the test's consolidation.

    Args:
        pred_regions: (B, R, X, Y, Z) bool, R = ``len(task.regions)``.

    Returns:
        (B, R, X, Y, Z) bool on the input's device.
    """
    masks = [label_map_to_masks(regions_to_label_map(item, task), task.regions) for item in pred_regions.cpu().numpy()]
    return torch.from_numpy(np.stack(masks)).to(pred_regions.device)
