"""A tiny Brain-Mets-Lung data set in the real layout, made from shapes defined in world millimetres.

Every file samples the same world-space head (an ellipsoidal brain, one tumour ball with a core), so
files on different grids agree wherever they overlap, whatever the grids: T1ce and ``core_seg`` on an
(optionally oblique, anisotropic) T1ce grid, FLAIR and ``whole_seg`` on their own axis-aligned grid,
as the release ships them. Volumes are a few thousand voxels: a manifest and cache take a second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from _nifti_helpers import write_nifti

BRAIN_RADII_MM = np.array([13.0, 14.0, 12.0])
FIELD_OF_VIEW_MM = 34.0  # every grid covers this cube around the brain's centre (the world origin)
FLAIR_SPACING_MM = 1.8
OBLIQUE_SPACING_MM = (1.3, 1.5, 2.6)  # anisotropic T1ce voxels
OBLIQUE_ANGLES_DEG = (15.0, -10.0)  # T1ce grid turned about x, then z


def grid_affine(spacing_mm, angles_deg=(0.0, 0.0)) -> tuple[tuple[int, int, int], np.ndarray]:
    """``(shape, affine)`` of a grid with ``spacing_mm`` voxels, turned about x then z by
    ``angles_deg``, centred on the world origin and covering :data:`FIELD_OF_VIEW_MM`."""
    ax, az = np.deg2rad(angles_deg)
    about_x = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    about_z = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    spacing = np.asarray(spacing_mm, dtype=float)
    shape = tuple(int(n) for n in np.ceil(FIELD_OF_VIEW_MM / spacing) + 1)
    affine = np.eye(4)
    affine[:3, :3] = about_z @ about_x @ np.diag(spacing)
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    return shape, affine


def _world(shape, affine) -> np.ndarray:
    """(X, Y, Z, 3) world position (mm) of every voxel centre."""
    index = np.stack(np.indices(shape), axis=-1).astype(float)
    return index @ affine[:3, :3].T + affine[:3, 3]


def _head(world: np.ndarray, index: int) -> dict[str, np.ndarray]:
    """Masks of subject ``index`` at the given world positions: brain, whole tumour, core."""
    tumour_centre = np.array([3.0 + index % 3, -2.0 + index % 2, 1.0])
    tumour_radius = 4.5 + 0.4 * (index % 4)
    distance = np.linalg.norm(world - tumour_centre, axis=-1)
    return {
        "brain": (np.sum((world / BRAIN_RADII_MM) ** 2, axis=-1) <= 1.0),
        "whole": distance <= tumour_radius,
        "core": distance <= tumour_radius / 2,
    }


def write_tiny_bml(root: Path, n_subjects: int = 10, oblique: bool = False) -> Path:
    """Write ``n_subjects`` cases ``BML-0001 ...`` under ``root``; return ``root``.

    With ``oblique`` the T1ce grid is turned and anisotropic (:data:`OBLIQUE_SPACING_MM`), so no
    cached 1 mm (or 2 mm) grid coincides with it; otherwise it is axis-aligned at 2 mm.
    """
    t1_grid = grid_affine(OBLIQUE_SPACING_MM, OBLIQUE_ANGLES_DEG) if oblique else grid_affine((2.0, 2.0, 2.0))
    flair_grid = grid_affine((FLAIR_SPACING_MM,) * 3)
    for index in range(n_subjects):
        case = f"BML-{index + 1:04d}"
        rng = np.random.default_rng(index)
        for (shape, affine), parts in ((t1_grid, ("t1ce_img", "core_seg")), (flair_grid, ("flair_img", "whole_seg"))):
            head = _head(_world(shape, affine), index)
            for part in parts:
                if part.endswith("_seg"):
                    data = head[part.removesuffix("_seg")].astype(np.uint8)
                else:
                    lesion = head["whole"] if part == "flair_img" else head["core"]
                    data = np.where(head["brain"], 80 + 60 * lesion + rng.uniform(0, 20, shape), 0).astype(np.float32)
                write_nifti(root / case / f"{case}_{part}.nii.gz", data, affine)
    return root
