"""Surface distances in mm by DeepMind's ``surface-distance`` definition.

This is the definition the official BraTS 2023 metric code calls (and the one this project reports):

- the surface of a mask is made of *surface elements* ("surfels") that sit on the corners of the
  voxel grid: every 2x2x2 neighbourhood of voxels that is neither all inside nor all outside the
  mask holds one, and its area (mm^2) comes from the marching-cubes triangles of that
  neighbourhood, scaled by the voxel spacing;
- the distance of a surfel to the other surface is the Euclidean distance (mm) to the nearest
  surfel of the other mask;
- statistics weight every surfel by its area, so a percentile or a mean does not depend on how
  finely a flat face happens to be sampled.

Why our own implementation: the reference package (PyPI ``surface-distance`` 0.1) is unmaintained;
it uses ``np.Inf``, which NumPy 2 removed, so it raises as soon as one mask is empty, and it sorts
surfels with a Python ``sorted`` over tuples (slow on whole-brain masks). This module reproduces its
numbers (tests compare the two on random anisotropic masks) with NumPy sorting, takes the
surfel-area table from MONAI (a port of DeepMind's table), and refuses empty masks: the empty-mask
policy (:mod:`sgnet_lightning.evaluation.metrics`) must be applied before any distance is computed.

Areas come from MONAI's table in float32 (relative error ~1e-7), which can move a weighted
percentile only when a cumulative area fraction lands within that error of the percentile itself.

All masks are boolean (X, Y, Z) arrays on one grid; ``spacing_mm`` is the voxel size along X, Y, Z.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from monai.metrics.utils import get_code_to_measure_table
from scipy import ndimage


@dataclass(frozen=True)
class SurfaceDistances:
    """Surfel distances and areas between a reference and a predicted mask.

    Each direction is sorted by distance (ties by area), as in DeepMind's package.

    Attributes:
        distances_ref_to_pred: (N_ref,) mm, from every reference surfel to the predicted surface.
        areas_ref: (N_ref,) mm^2, area of those reference surfels.
        distances_pred_to_ref: (N_pred,) mm, from every predicted surfel to the reference surface.
        areas_pred: (N_pred,) mm^2, area of those predicted surfels.
    """

    distances_ref_to_pred: np.ndarray
    areas_ref: np.ndarray
    distances_pred_to_ref: np.ndarray
    areas_pred: np.ndarray


def check_spacing(spacing_mm: Sequence[float]) -> tuple[float, float, float]:
    """Return ``spacing_mm`` as three positive finite floats, or raise ``ValueError`` naming it."""
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing_mm must be three positive voxel sizes in mm, got {spacing_mm!r}")
    return spacing  # type: ignore[return-value]


def compute_surface_distances(
    ref: np.ndarray, pred: np.ndarray, spacing_mm: Sequence[float]
) -> SurfaceDistances:
    """Distances between the surfaces of two non-empty boolean masks (X, Y, Z).

    Both distance maps are computed once, on the bounding box of ``ref | pred`` padded by one voxel
    of background: every surfel lies in that box and the distance of a surfel to the other surface
    only involves surfels, so the crop changes no number; the padding also gives masks that touch the
    image border a surface there (the grid outside the image counts as background, as in DeepMind's
    package).

    Raises:
        ValueError: if the masks differ in shape, are not 3D, or either is empty (apply the
            empty-mask policy of :func:`sgnet_lightning.evaluation.metrics.case_metrics` first).
    """
    spacing = check_spacing(spacing_mm)
    ref, pred = np.asarray(ref, dtype=bool), np.asarray(pred, dtype=bool)
    if ref.shape != pred.shape or ref.ndim != 3:
        raise ValueError(f"masks must be 3D and of one shape, got {ref.shape} and {pred.shape}")
    if not ref.any() or not pred.any():
        empty = "reference" if not ref.any() else "prediction"
        raise ValueError(
            f"the {empty} mask is empty: surface distances are undefined; apply the empty-mask "
            "policy before computing distances"
        )
    box = _bounding_box(ref | pred)
    ref_crop = np.pad(ref[box], 1)
    pred_crop = np.pad(pred[box], 1)

    area_table, kernel = _area_table(spacing)
    surfels_ref, areas_ref = _surfels(ref_crop, kernel, area_table)
    surfels_pred, areas_pred = _surfels(pred_crop, kernel, area_table)
    # distance (mm) of every corner point to the nearest surfel of each mask
    distance_to_ref = ndimage.distance_transform_edt(~surfels_ref, sampling=spacing)
    distance_to_pred = ndimage.distance_transform_edt(~surfels_pred, sampling=spacing)

    d_ref, a_ref = _sorted(distance_to_pred[surfels_ref], areas_ref)
    d_pred, a_pred = _sorted(distance_to_ref[surfels_pred], areas_pred)
    return SurfaceDistances(d_ref, a_ref, d_pred, a_pred)


def hd95_mm(distances: SurfaceDistances, percent: float = 95.0) -> float:
    """Robust Hausdorff distance (mm): the larger of the two directed area-weighted percentiles.

    For each direction, the distance of the first surfel (in sorted order) at which the cumulative
    area fraction reaches ``percent`` / 100; DeepMind's ``compute_robust_hausdorff``.
    """
    return max(
        _weighted_percentile(distances.distances_ref_to_pred, distances.areas_ref, percent),
        _weighted_percentile(distances.distances_pred_to_ref, distances.areas_pred, percent),
    )


def assd_mm(distances: SurfaceDistances) -> float:
    """Average symmetric surface distance (mm): the area-weighted mean over the surfels of both
    surfaces pooled, ``(sum d_r a_r + sum d_p a_p) / (sum a_r + sum a_p)``.

    DeepMind's package returns the two directed means; pooling them by area is the surfel form of
    the classic ASSD (mean over the points of both surfaces).
    """
    weighted = np.sum(distances.distances_ref_to_pred * distances.areas_ref) + np.sum(
        distances.distances_pred_to_ref * distances.areas_pred
    )
    return float(weighted / (np.sum(distances.areas_ref) + np.sum(distances.areas_pred)))


def normalised_surface_dice(distances: SurfaceDistances, tolerance_mm: float) -> float:
    """Normalised surface Dice in [0, 1]: the area fraction of both surfaces lying within
    ``tolerance_mm`` of the other surface; DeepMind's ``compute_surface_dice_at_tolerance``."""
    within = np.sum(distances.areas_ref[distances.distances_ref_to_pred <= tolerance_mm]) + np.sum(
        distances.areas_pred[distances.distances_pred_to_ref <= tolerance_mm]
    )
    return float(within / (np.sum(distances.areas_ref) + np.sum(distances.areas_pred)))


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice]:
    """Smallest box (slices) holding every True voxel of a non-empty mask."""
    box = []
    for axis in range(mask.ndim):
        other_axes = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other_axes))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)  # type: ignore[return-value]


@functools.lru_cache(maxsize=16)
def _area_table(spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Surfel area (mm^2) of each of the 256 neighbourhood codes, and the (2, 2, 2) bit weights
    that make a neighbourhood's code; cached because lesion-wise scoring asks once per lesion."""
    area_table, kernel = get_code_to_measure_table(spacing)
    return area_table.cpu().numpy().astype(np.float64), kernel.cpu().numpy()[0, 0]


def _surfels(mask: np.ndarray, kernel: np.ndarray, area_table: np.ndarray):
    """Surfel positions (bool, one per 2x2x2 neighbourhood) and their areas (mm^2).

    ``mask`` must carry at least one voxel of background padding on every side. The neighbourhood
    code of a corner point is the sum of the kernel's bit weights over the voxels of its 2x2x2
    neighbourhood that are inside the mask; codes 0 (all outside) and 255 (all inside) hold no
    surface.
    """
    codes = ndimage.correlate(mask.astype(np.uint8), kernel.astype(np.uint8), mode="constant", cval=0)
    is_surfel = (codes != 0) & (codes != 255)
    return is_surfel, area_table[codes[is_surfel]]


def _sorted(distances: np.ndarray, areas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort by distance, then by area (the tuple order DeepMind's package sorts by)."""
    order = np.lexsort((areas, distances))
    return distances[order], areas[order]


def _weighted_percentile(distances: np.ndarray, areas: np.ndarray, percent: float) -> float:
    cumulative = np.cumsum(areas) / np.sum(areas)
    index = int(np.searchsorted(cumulative, percent / 100.0))
    return float(distances[min(index, len(distances) - 1)])
