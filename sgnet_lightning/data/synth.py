"""Synthetic brain-MRI phantoms written in the exact file layouts of the real data sets.

The phantoms let every part of the pipeline (discovery, preprocessing, training, evaluation) run
end to end on a laptop or in CI without the licensed data, and let tests check geometry and label
logic against a known truth. They also hold the bright non-tumour structures that make
soft-attention U-Nets over-segment (the "over-segmentation paradox" hard gating is meant to cure),
with a recorded truth map, so that false-positive lesions on them can be counted. They are not a
substitute for real data in any reported figure.

How a subject is made:

1. **Anatomy**: the MNI152 (2009c) 1 mm template's grey-matter, white-matter and brain maps
   from nilearn (offline), plus a ventricle map taken from its CSF, optionally resampled to a
   coarser isotropic grid (``size``). Each subject warps them with its own random affine (rotation,
   scaling) and smooth non-linear displacement.
2. **Tumours** (labelled), drawn in millimetres on the subject's grid: ``bml`` gets two to five
   brain metastases at the grey/white-matter junction, each an enhancing rim around a necrotic
   centre (where the core has an interior voxel) with vasogenic edema spreading through white
   matter; core diameter 5-15 mm (the diameter of the sphere of the core's volume) and drawn at
   least :data:`MIN_LESION_DIAMETER_VOXELS` voxels across, whole tumour (core + edema) under 2 %
   of the brain volume (:data:`BML_MAX_TUMOUR_FRACTION`). BraTS gets one
   glioma with a necrotic centre (NCR), an enhancing rim (ET) and surrounding edema (ED).
   Internally the lesion map uses the BraTS 2023 values (1 NCR, 2 ED, 3 ET).
3. **Distractors** (unlabelled), every subject of every kind, drawn after the tumours and kept
   :data:`DISTRACTOR_MARGIN_VOXELS` voxels (26-connected) away from every voxel any label file marks
   (for ``bml`` also the FLAIR-grid ``whole_seg`` as a reader puts it back on the T1ce grid):

   - *vessels* (1): three to six cortical veins, smooth random curves 40-90 mm long and 2-5 mm
     across, running 2-8 mm under the brain surface; enhancing on T1ce, dark on T2 and FLAIR (flow
     void), no edema around them;
   - *dura* (2): the falx (a 1.5-3 mm sheet on the mid-sagittal plane, its free edge arching over
     the corpus callosum, over a random front-to-back stretch) and one or two convexity patches
     (the brain's outer 1-2 mm under a 10-20 degree cap); enhancing on T1ce, dark on T2;
   - *choroid plexus* (3): one ellipsoid 6-12 mm across in each lateral ventricle (its atrium
     where the grid shows one), within a voxel of the ventricle; enhancing on T1ce;
   - *FLAIR lesions* (4): two to six periventricular white-matter lesions, ellipsoids 4-12 mm
     across centred within 10 mm of a lateral ventricle; bright on FLAIR and T2 like edema,
     hypointense on T1 and not enhancing on T1ce.

   Enhancing distractors are about as bright on T1ce as the enhancing rim (relative means: vessels
   and choroid plexus 1.9, dura 1.75, rim 1.6; partial volume dims thin structures most), so T1ce
   brightness alone cannot tell them from tumour; their shape and context
   can (tubes, sheets, intraventricular blobs; no FLAIR edema, no necrotic centre). Tubes and sheets
   are at least :data:`MIN_DISTRACTOR_THICKNESS_VOXELS` voxels thick and blobs
   :data:`MIN_LESION_DIAMETER_VOXELS` voxels across, so coarse grids keep them (the millimetre
   ranges above grow to those minimums there). Each subject's distractor map (uint8: 1 vessel,
   2 dura, 3 choroid plexus, 4 FLAIR lesion; :data:`DISTRACTOR_VALUES`) is written on the reference
   (T1ce) grid to ``<out>/phantom_truth/<case>_distractors.nii.gz``, outside the case folders and
   named so that no data-set reader takes it for a subject file.
4. **Contrast**: each modality (T1, T1ce, T2, FLAIR) maps tissue, tumour and distractor classes to
   typical relative intensities (:data:`CONTRAST`), jittered per subject, with a smooth texture, a
   multiplicative bias field and Rician noise; zero outside the brain (skull-stripped); stored as
   int16 like most real releases.
5. **Layout**: files named and placed exactly as in the real releases (each data set's
   :class:`~sgnet_lightning.datasets.PhantomLayout` in the registry names cases and files),
   including the ``bml`` quirks: FLAIR and ``whole_seg`` on their own, thicker-sliced grid, and
   some cases without ``core_seg`` and/or ``whole_seg`` (:func:`bml_missing_labels`).
   ``dataset_info.json`` records the settings, the missing labels, the number of tumours and the
   distractor voxel counts per case.

Grids coarser than 5 mm (``size`` < 47) have no room for a 15 mm core with a rim around a
necrosis: there a metastasis core is drawn 2.5 voxels across and may be up to 3 voxels across as
drawn (:func:`metastasis_core_diameter_mm`), fewer than two metastases may fit the 2 % budget, and
the ventricles are so small that a glioma may leave no room for choroid plexus.

Subject ``i`` of data set ``kind`` depends only on ``(seed, kind, i, size)``: the same call writes
byte-identical files, and a larger ``n`` only appends subjects.
"""

from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from tqdm import tqdm

from sgnet_lightning.datasets import Dataset, get_dataset, list_datasets
from sgnet_lightning.files import atomic_write_bytes, atomic_write_json
from sgnet_lightning.data.io import resample_to_grid

SYNTH_VERSION = 2

MIN_SIZE = 32  # below this a 2.5-voxel lesion no longer fits the bml tumour budget
MIN_LESION_DIAMETER_VOXELS = 2.5  # lesions and blob-like distractors stay visible on coarse grids
MIN_DISTRACTOR_THICKNESS_VOXELS = 1.5  # vessels and dura: thick enough to survive coarse grids
DISTRACTOR_MARGIN_VOXELS = 2  # free voxels (26-connected) between any label and any distractor
BML_MAX_TUMOUR_FRACTION = 0.02  # whole tumour / brain volume, per bml case
METASTASIS_COUNT = (2, 5)  # metastases per bml case, both ends included
METASTASIS_CORE_DIAMETER_MM = (5.0, 15.0)  # diameter of the sphere of the core's volume
LESION_TRIES = 40  # placements tried per tumour or distractor before it is dropped
PARTIAL_VOLUME_SIGMA_VOXELS = 0.4  # blur of lesion class maps before mixing intensities
INTENSITY_GAIN_RANGE = (400.0, 1200.0)  # scanner units of white matter, drawn per modality

# Internal lesion values (the BraTS 2023 convention); a layout's lesion_labels name them.
NCR, ED, ET = 1, 2, 3
_LESION_VALUES = {"NCR": NCR, "ED": ED, "ET": ET}
# Values of the distractor truth map, written to <out>/TRUTH_DIR/<case>_distractors.nii.gz.
DISTRACTOR_VALUES = {"vessel": 1, "dura": 2, "choroid_plexus": 3, "flair_lesion": 4}
TRUTH_DIR = "phantom_truth"

_FULL_3X3X3 = np.ones((3, 3, 3), dtype=bool)


# ================================================================================================
# Anatomy
# ================================================================================================


@dataclass(frozen=True)
class Anatomy:
    """Tissue probability maps on one grid, each (X, Y, Z) float32 in [0, 1].

    Attributes:
        affine: (4, 4) voxel -> world (mm, RAS) of the grid; axis-aligned, isotropic.
        gm, wm: grey- and white-matter probabilities.
        brain: brain probability (the template's brain mask, smoothed by resampling); the
            skull-stripping mask is ``brain > 0.5`` and CSF is what is brain but neither GM nor WM.
        ventricles: lateral (and third) ventricle probability, a part of the CSF.
    """

    affine: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    brain: np.ndarray
    ventricles: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.gm.shape

    @property
    def spacing(self) -> float:
        """Isotropic voxel size in mm."""
        return float(abs(self.affine[0, 0]))

    @property
    def mask(self) -> np.ndarray:
        return self.brain > 0.5

    @property
    def csf(self) -> np.ndarray:
        return np.clip(self.brain - self.gm - self.wm, 0.0, 1.0)


@functools.lru_cache(maxsize=1)
def _mni_anatomy() -> Anatomy:
    """The 1 mm MNI152 template maps from nilearn (bundled, no download), once per process."""
    from nilearn import datasets  # slow import, only needed here

    template = datasets.load_mni152_template(resolution=1)
    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    brain = (template.get_fdata(dtype=np.float32) > 0).astype(np.float32)
    ventricles = _ventricles(np.clip(brain - gm - wm, 0.0, 1.0) > 0.5, template.affine)
    return _read_only(
        Anatomy(
            affine=template.affine.copy(),
            gm=gm,
            wm=wm,
            brain=brain,
            ventricles=ventricles.astype(np.float32),
        )
    )


def _ventricles(csf: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The ventricles (X, Y, Z) bool in the 1 mm template's CSF mask ``csf``.

    Within the MNI box x -40..40, y -65..35, z -10..35 mm the ventricles are the CSF components of
    at least 1 mL that do not reach the box's faces; the sulcal and cisternal CSF around them does.
    (The MNI template ships no ventricle map; on the 2009c template this rule picks the lateral
    and third ventricles as one component and nothing else.)
    """
    lower = np.floor(np.linalg.solve(affine, [-40.0, -65.0, -10.0, 1.0])[:3]).astype(int)
    upper = np.ceil(np.linalg.solve(affine, [40.0, 35.0, 35.0, 1.0])[:3]).astype(int) + 1
    box = tuple(slice(max(lo, 0), min(hi, n)) for lo, hi, n in zip(lower, upper, csf.shape))
    components, _ = ndi.label(csf[box])
    ventricles = np.zeros(csf.shape, dtype=bool)
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    for number, extent in enumerate(ndi.find_objects(components), start=1):
        inner = all(0 < s.start and s.stop < b.stop - b.start for s, b in zip(extent, box))
        if inner and np.count_nonzero(components[extent] == number) * voxel_ml >= 1.0:
            ventricles[box][extent] |= components[extent] == number
    return ventricles


@functools.lru_cache(maxsize=4)
def template_anatomy(size: int | None = None) -> Anatomy:
    """The MNI anatomy, resampled so its longest axis has ``size`` voxels (None: native 1 mm).

    The coarse grid keeps the template's field of view: voxel ``i`` covers native voxels
    ``[i * s, (i + 1) * s)`` with ``s = longest_axis / size`` mm, and the affine says so. An
    anti-aliasing Gaussian precedes the linear interpolation.
    """
    native = _mni_anatomy()
    if size is None:
        return native
    step = max(native.shape) / size  # native voxels per coarse voxel = coarse spacing in mm
    shape = tuple(int(round(n / step)) for n in native.shape)
    offset = (step - 1.0) / 2.0  # coarse voxel centre in native voxel coordinates

    def resample(volume: np.ndarray) -> np.ndarray:
        smooth = ndi.gaussian_filter(volume, sigma=max(step - 1.0, 0.0) / 2.0)
        return ndi.affine_transform(
            smooth, [step] * 3, offset=offset, output_shape=shape, order=1, output=np.float32
        )

    scale = np.diag([step, step, step, 1.0])
    scale[:3, 3] = offset
    return _read_only(
        Anatomy(
            affine=native.affine @ scale,
            gm=resample(native.gm),
            wm=resample(native.wm),
            brain=resample(native.brain),
            ventricles=resample(native.ventricles),
        )
    )


def _read_only(anatomy: Anatomy) -> Anatomy:
    """Freeze the arrays of a cached anatomy: every later subject shares them."""
    for array in (anatomy.affine, anatomy.gm, anatomy.wm, anatomy.brain, anatomy.ventricles):
        array.flags.writeable = False
    return anatomy


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], n_control: int) -> np.ndarray:
    """A smooth random field on ``shape`` with zero mean and unit SD, float32.

    Normal values on an ``n_control``-point grid per axis are upsampled with a cubic spline to a
    small intermediate grid, then linearly to ``shape`` (a full-size cubic zoom costs seconds).
    """
    control = rng.standard_normal((n_control,) * len(shape))
    mid = ndi.zoom(control, 4, order=3)
    field = ndi.zoom(mid, [n / m for n, m in zip(shape, mid.shape)], order=1, output=np.float32)
    field -= field.mean()
    field /= max(float(field.std()), 1e-6)
    return field


def _deform(template: Anatomy, rng: np.random.Generator) -> tuple[Anatomy, np.ndarray]:
    """One subject's anatomy: the template warped by a random affine and a smooth displacement.

    The affine rotates up to 5 degrees about each axis and scales each axis by 0.92-1.08 about
    the brain's centre; the displacement field is smooth (about 5 control points per axis) with a
    peak of 1.5-4 mm. The output grid is the template's grid.

    Returns:
        The subject's anatomy, and (3, X, Y, Z) float32: the template-space (MNI, mm) position of
        each subject voxel, which places structures the tissue maps do not show (the midline).
    """
    shape, spacing = template.shape, template.spacing
    angles = np.deg2rad(rng.uniform(-5, 5, size=3))
    matrix = _rotation_matrix(angles) @ np.diag(rng.uniform(0.92, 1.08, size=3))
    centre = np.argwhere(template.mask).mean(axis=0)
    peak_mm = rng.uniform(1.5, 4.0)
    displacement = [
        _smooth_field(rng, shape, 5) * (peak_mm / 3.0 / spacing) for _ in range(3)
    ]  # unit SD scaled so that +-3 SD is the peak, in voxels

    axes = [np.arange(n, dtype=np.float32) - c for n, c in zip(shape, centre)]
    grids = np.meshgrid(*axes, indexing="ij", sparse=True)
    coords = [
        centre[i] + sum(matrix[i, j] * grids[j] for j in range(3)) + displacement[i]
        for i in range(3)
    ]

    def warp(volume: np.ndarray) -> np.ndarray:
        return ndi.map_coordinates(volume, coords, order=1, mode="constant", output=np.float32)

    anatomy = Anatomy(
        affine=template.affine,
        gm=warp(template.gm),
        wm=warp(template.wm),
        brain=warp(template.brain),
        ventricles=warp(template.ventricles),
    )
    linear, shift = template.affine[:3, :3], template.affine[:3, 3]
    mni_mm = np.stack(
        [sum(linear[i, j] * coords[j] for j in range(3)) + shift[i] for i in range(3)]
    ).astype(np.float32)
    return anatomy, mni_mm


def _rotation_matrix(angles: np.ndarray) -> np.ndarray:
    """(3, 3) rotation by ``angles`` (radians) about the x, y then z axis."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


# ================================================================================================
# Lesions
# ================================================================================================


@dataclass(frozen=True)
class LesionShape:
    """One lesion's geometry, in mm.

    The core is a lumpy ellipsoid: along direction ``d`` its radius is
    ``core_radius_mm * |axes-scaled d| * (1 + sum_k a_k cos(pi f_k (d . v_k) + phi_k))``.

    Attributes:
        core_radius_mm: mean radius of the tumour core (enhancing rim + necrosis).
        necrosis_fraction: necrotic centre radius as a fraction of the core radius.
        edema_margin_mm: how far edema reaches beyond the core in pure white matter.
        edema_floor: fraction of that reach in tissue without white matter (0: edema only in WM).
        axes: (3,) elongation of the core along its own axes.
        rotation: (3, 3) orientation of those axes.
        lobes: (K, 6) rows ``(a_k, f_k, phi_k, v_k)`` of the lumpiness terms.
    """

    core_radius_mm: float
    necrosis_fraction: float
    edema_margin_mm: float
    edema_floor: float
    axes: np.ndarray
    rotation: np.ndarray
    lobes: np.ndarray

    def shrunk(self, factor: float, min_radius_mm: float) -> LesionShape:
        """The same lesion, ``factor`` times smaller (core not below ``min_radius_mm``)."""
        return LesionShape(
            core_radius_mm=max(self.core_radius_mm * factor, min_radius_mm),
            necrosis_fraction=self.necrosis_fraction,
            edema_margin_mm=self.edema_margin_mm * factor,
            edema_floor=self.edema_floor,
            axes=self.axes,
            rotation=self.rotation,
            lobes=self.lobes,
        )


def _random_shape(
    rng: np.random.Generator,
    core_radius_mm: float,
    necrosis_fraction: float,
    edema_margin_mm: float,
    edema_floor: float,
    lumpiness: float,
) -> LesionShape:
    directions = rng.standard_normal((3, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    lobes = np.column_stack(
        [
            rng.uniform(0, lumpiness, 3),  # amplitude
            rng.uniform(1, 3, 3),  # angular frequency
            rng.uniform(0, 2 * np.pi, 3),  # phase
            directions,
        ]
    )
    return LesionShape(
        core_radius_mm=core_radius_mm,
        necrosis_fraction=necrosis_fraction,
        edema_margin_mm=edema_margin_mm,
        edema_floor=edema_floor,
        axes=rng.uniform(0.85, 1.15, 3),
        rotation=_rotation_matrix(rng.uniform(-np.pi, np.pi, 3)),
        lobes=lobes,
    )


@dataclass(frozen=True)
class LesionMasks:
    """Boolean masks of one lesion inside the box ``box`` (tuple of slices) of the grid.

    ``core_in_brain`` says whether the whole core fell inside the brain (nothing was clipped).
    """

    box: tuple[slice, slice, slice]
    core_in_brain: bool
    core: np.ndarray
    necrosis: np.ndarray
    whole: np.ndarray


def _draw_lesion(
    shape: LesionShape, centre: np.ndarray, anatomy: Anatomy, edema_ring: bool
) -> LesionMasks:
    """Rasterise ``shape`` at voxel position ``centre`` (3,) on ``anatomy``'s grid.

    The necrotic centre is kept one voxel (26-connected) inside the core, so the enhancing rim
    always encloses it; it holds at least the core's innermost such voxel, so it survives on
    coarse grids wherever the core is thick enough for a rim around it. With ``edema_ring`` the
    whole tumour also holds a one-voxel edema ring around the core (BraTS gliomas: ED encloses
    TC) wherever that ring is brain. Everything is clipped to the brain mask.
    """
    spacing = anatomy.spacing
    max_lobe = 1.0 + shape.lobes[:, 0].sum()
    # furthest whole-tumour voxel from the centre, in mm (the edema test below, solved for mm)
    reach_mm = shape.axes.max() * (
        shape.core_radius_mm * max_lobe + shape.edema_margin_mm / shape.axes.mean()
    )
    half = int(np.ceil(reach_mm / spacing)) + 2
    lower = np.maximum(np.floor(centre).astype(int) - half, 0)
    upper = np.minimum(np.floor(centre).astype(int) + half + 1, anatomy.shape)
    box = tuple(slice(int(lo), int(hi)) for lo, hi in zip(lower, upper))

    offsets = np.stack(
        np.meshgrid(*[np.arange(s.start, s.stop) - c for s, c in zip(box, centre)], indexing="ij"),
        axis=-1,
    ) * spacing  # (x, y, z, 3) mm from the centre
    local = offsets @ shape.rotation / shape.axes  # in the lesion's own, normalised axes
    distance = np.linalg.norm(local, axis=-1)
    direction = local / np.maximum(distance, 1e-6)[..., None]
    lumps = 1.0 + sum(
        a * np.cos(np.pi * f * (direction @ v) + phi)
        for a, f, phi, *v in shape.lobes
    )
    core_radius = shape.core_radius_mm * lumps  # mm, per direction
    rho = distance / core_radius  # 1 on the core surface

    brain = anatomy.mask[box]
    core = (rho <= 1.0) & brain
    core_interior = ndi.binary_erosion(core, _FULL_3X3X3)
    necrosis = (rho <= shape.necrosis_fraction) & core_interior
    if core_interior.any():
        necrosis |= core_interior & (rho == rho[core_interior].min())
    wm = anatomy.wm[box]
    reach = shape.edema_margin_mm * (shape.edema_floor + (1.0 - shape.edema_floor) * wm)
    whole = core | (((distance - core_radius) * shape.axes.mean() <= reach) & brain)
    if edema_ring:
        whole |= ndi.binary_dilation(core, _FULL_3X3X3) & brain
    core_in_brain = not ((rho <= 1.0) & ~brain).any()
    return LesionMasks(
        box=box, core_in_brain=core_in_brain, core=core, necrosis=necrosis, whole=whole
    )


def _fits(masks: LesionMasks, lesions: np.ndarray, need_necrosis: bool) -> bool:
    """A lesion fits when its core lies wholly inside the brain, its whole tumour, grown by a
    voxel, touches no lesion already placed, and (``need_necrosis``) it has a necrotic centre."""
    if not masks.core_in_brain or not masks.core.any():
        return False
    if need_necrosis and not masks.necrosis.any():
        return False
    return not (ndi.binary_dilation(masks.whole, _FULL_3X3X3) & (lesions[masks.box] > 0)).any()


def _paint(masks: LesionMasks, lesions: np.ndarray) -> None:
    """Write one lesion into the internal lesion map (1 NCR, 2 ED, 3 ET) in place."""
    view = lesions[masks.box]
    view[masks.whole] = ED
    view[masks.core] = ET
    view[masks.necrosis] = NCR


def _place(
    rng: np.random.Generator,
    shapes: list[LesionShape],
    candidates: np.ndarray,
    anatomy: Anatomy,
    glioma: bool,
    min_radius_mm: float,
    max_whole_voxels: int,
    core_diameter_mm: tuple[float, float] | None = None,
) -> tuple[np.ndarray, int]:
    """Place ``shapes`` at random ``candidates`` (N, 3) voxel positions.

    A ``glioma`` gets a one-voxel edema ring and must show a necrotic centre (BraTS: NCR inside
    ET inside ED); metastases may be too small for a visible necrosis. With ``core_diameter_mm``
    a placement counts only if the core as drawn, measured as the diameter of the sphere of its
    volume, lies in that range (lumps and voxels change it from the nominal radius).

    Each lesion gets :data:`LESION_TRIES` tries; every 10 failed tries shrink it by 20 % (a large
    lesion may fit nowhere, or exceed its share of the budget of ``max_whole_voxels`` whole-tumour
    voxels: what is left, split evenly over the lesions still to place, so the first lesions
    cannot crowd out the others; the last 10 tries may use all that is left, which only coarse
    grids need). A lesion that never fits is dropped, except the first: every case has at least
    one lesion.

    Returns:
        The lesion map (X, Y, Z) uint8 (1 NCR, 2 ED, 3 ET) and the number of lesions placed.
    """
    lesions = np.zeros(anatomy.shape, dtype=np.uint8)
    placed = 0
    for number, shape in enumerate(shapes):
        for attempt in range(LESION_TRIES):
            centre = candidates[rng.integers(len(candidates))] + rng.uniform(-0.5, 0.5, 3)
            masks = _draw_lesion(shape, centre, anatomy, edema_ring=glioma)
            left = max_whole_voxels - np.count_nonzero(lesions)
            share = left if attempt >= LESION_TRIES - 10 else left / (len(shapes) - number)
            if (
                masks.whole.sum() <= share
                and _fits(masks, lesions, need_necrosis=glioma)
                and _core_diameter_in(masks, anatomy.spacing, core_diameter_mm)
            ):
                _paint(masks, lesions)
                placed += 1
                break
            if attempt % 10 == 9:
                shape = shape.shrunk(0.8, min_radius_mm)
        else:
            if number == 0:
                raise RuntimeError(
                    "could not place a lesion in the phantom; the grid may be too coarse "
                    f"({anatomy.spacing:.1f} mm voxels)"
                )
    return lesions, placed


def _core_diameter_in(
    masks: LesionMasks, spacing: float, bounds_mm: tuple[float, float] | None
) -> bool:
    """Whether the core's equivalent-sphere diameter (mm) lies in ``bounds_mm`` (None: any)."""
    if bounds_mm is None:
        return True
    diameter_mm = (6.0 * np.count_nonzero(masks.core) / np.pi) ** (1.0 / 3.0) * spacing
    return bounds_mm[0] <= diameter_mm <= bounds_mm[1]


def metastasis_core_diameter_mm(spacing: float) -> tuple[float, float]:
    """Bounds (mm) on a metastasis core's diameter as drawn (equivalent sphere) on a grid of
    ``spacing`` mm voxels: :data:`METASTASIS_CORE_DIAMETER_MM`, except that on grids coarser than
    5 mm the upper bound is 3 voxels (the nominal diameter is at least
    :data:`MIN_LESION_DIAMETER_VOXELS` voxels, and voxels round it up)."""
    smallest, largest = METASTASIS_CORE_DIAMETER_MM
    return smallest, max(largest, (MIN_LESION_DIAMETER_VOXELS + 0.5) * spacing)


def _metastases(rng: np.random.Generator, anatomy: Anatomy) -> tuple[np.ndarray, int]:
    """Lesion map (X, Y, Z) uint8 of two to five brain metastases at the grey/white-matter
    junction, and their number.

    Nominal core diameters are log-uniform over 5-15 mm (at least
    :data:`MIN_LESION_DIAMETER_VOXELS` voxels), and the cores as drawn must lie within
    :func:`metastasis_core_diameter_mm`; edema reaches 0.5-2 core radii plus 0-5 mm beyond
    the core, through white matter; the whole tumour stays under :data:`BML_MAX_TUMOUR_FRACTION`
    of the brain volume (edema and cores shrink to fit).
    """
    smallest, largest = METASTASIS_CORE_DIAMETER_MM
    smallest = max(smallest, MIN_LESION_DIAMETER_VOXELS * anatomy.spacing)
    largest = max(largest, smallest)
    low, high = METASTASIS_COUNT
    shapes = []
    for _ in range(int(rng.integers(low, high + 1))):
        radius = np.exp(rng.uniform(np.log(smallest), np.log(largest))) / 2.0
        shapes.append(
            _random_shape(
                rng,
                core_radius_mm=radius,
                necrosis_fraction=rng.uniform(0.3, 0.6),
                edema_margin_mm=radius * rng.uniform(0.5, 2.0) + rng.uniform(0.0, 5.0),
                edema_floor=0.1,  # vasogenic edema spreads through white matter, spares cortex
                lumpiness=0.06,
            )
        )
    junction = (anatomy.gm > 0.3) & (anatomy.wm > 0.3) & anatomy.mask
    # 0.9 x the limit: a reader's label (FLAIR-grid whole_seg put back on the T1ce grid) is a
    # little larger than the lesion map
    budget = int(0.9 * BML_MAX_TUMOUR_FRACTION * np.count_nonzero(anatomy.mask))
    return _place(
        rng, shapes, np.argwhere(junction), anatomy, glioma=False, min_radius_mm=smallest / 2.0,
        max_whole_voxels=budget, core_diameter_mm=metastasis_core_diameter_mm(anatomy.spacing),
    )


def _glioma(rng: np.random.Generator, anatomy: Anatomy) -> tuple[np.ndarray, int]:
    """Lesion map (X, Y, Z) uint8 of one glioma centred in white matter, and 1: core radius
    12-25 mm (at least 2.5 voxels, so a necrotic centre survives inside a one-voxel rim), edema
    8-25 mm beyond, reaching further in white matter."""
    min_radius_mm = 2.5 * anatomy.spacing
    shape = _random_shape(
        rng,
        core_radius_mm=max(rng.uniform(12.0, 25.0), min_radius_mm),
        necrosis_fraction=rng.uniform(0.35, 0.7),
        edema_margin_mm=rng.uniform(8.0, 25.0),
        edema_floor=0.4,
        lumpiness=0.15,
    )
    deep_white_matter = (anatomy.wm > 0.6) & anatomy.mask
    return _place(
        rng,
        [shape],
        np.argwhere(deep_white_matter),
        anatomy,
        glioma=True,
        min_radius_mm=min_radius_mm,
        max_whole_voxels=np.count_nonzero(anatomy.mask),
    )


# ================================================================================================
# Distractors: bright non-tumour structures, unlabelled
# ================================================================================================


def _distractors(
    rng: np.random.Generator, anatomy: Anatomy, mni_mm: np.ndarray, exclusion: np.ndarray
) -> np.ndarray:
    """Distractor map (X, Y, Z) uint8 (:data:`DISTRACTOR_VALUES`, 0 none) of one subject.

    Args:
        anatomy: the subject's anatomy.
        mni_mm: (3, X, Y, Z) template-space position of each voxel (from :func:`_deform`).
        exclusion: (X, Y, Z) bool, voxels no distractor may occupy (labels and their margin).
            Compact distractors (vessels, choroid plexus, FLAIR lesions) that would reach it are
            drawn again elsewhere; sheets (dura) are trimmed by it.

    Types are painted in the order FLAIR lesions, choroid plexus, dura, vessels: where two meet the
    later wins (a vein on the dura stays a vein).
    """
    depth_mm = ndi.distance_transform_edt(anatomy.mask, sampling=anatomy.spacing)
    ventricles = anatomy.ventricles > 0.5
    layers = (
        ("flair_lesion", _flair_lesions(rng, anatomy, ventricles, exclusion)),
        ("choroid_plexus", _choroid_plexus(rng, anatomy, mni_mm, ventricles, exclusion)),
        ("dura", _dura(rng, anatomy, mni_mm, depth_mm, exclusion)),
        ("vessel", _vessels(rng, anatomy, depth_mm, exclusion)),
    )
    distractors = np.zeros(anatomy.shape, dtype=np.uint8)
    for name, mask in layers:
        distractors[mask] = DISTRACTOR_VALUES[name]
    return distractors


def _vessels(
    rng: np.random.Generator, anatomy: Anatomy, depth_mm: np.ndarray, exclusion: np.ndarray
) -> np.ndarray:
    """Cortical veins (X, Y, Z) bool: three to six smooth random curves 40-90 mm long, 2-5 mm
    across (at least :data:`MIN_DISTRACTOR_THICKNESS_VOXELS`), running along the brain surface
    2-8 mm deep (at least one voxel), as superficial veins run in the sulci."""
    spacing = anatomy.spacing
    inward = np.stack(np.gradient(depth_mm))  # (3, X, Y, Z): the surface normal, pointing inward
    vessels = np.zeros(anatomy.shape, dtype=bool)
    for _ in range(int(rng.integers(3, 7))):
        radius_mm = max(rng.uniform(1.0, 2.5), MIN_DISTRACTOR_THICKNESS_VOXELS * spacing / 2.0)
        length_mm = rng.uniform(40.0, 90.0)
        target_mm = rng.uniform(max(2.0, spacing), max(8.0, 2.0 * spacing))
        starts = np.argwhere(
            anatomy.mask & (np.abs(depth_mm - target_mm) <= spacing / 2.0) & ~exclusion
        )
        for _attempt in range(LESION_TRIES):
            curve = _surface_curve(
                rng, starts, anatomy.mask, depth_mm, inward, target_mm, length_mm, spacing
            )
            if curve is None:
                continue
            tube = _tube(curve, radius_mm / spacing, anatomy.shape) & anatomy.mask
            if not (tube & exclusion).any():
                vessels |= tube
                break
    return vessels


def _surface_curve(
    rng: np.random.Generator,
    starts: np.ndarray,
    mask: np.ndarray,
    depth_mm: np.ndarray,
    inward: np.ndarray,
    target_mm: float,
    length_mm: float,
    spacing: float,
) -> np.ndarray | None:
    """(K, 3) voxel positions a quarter voxel apart along a smooth random curve that starts at one
    of ``starts`` (N, 3) and follows the brain surface at depth ``target_mm``; None when it leaves
    the brain before half of ``length_mm``.

    Each step turns the direction by a random angle (it decorrelates over about 30 mm), removes
    its component along the surface normal, and steers back towards the target depth.
    """
    if not len(starts):
        return None
    step_voxels = 0.25
    bend = np.sqrt(step_voxels * spacing / 30.0)  # radians per step
    position = starts[rng.integers(len(starts))] + rng.uniform(-0.5, 0.5, 3)
    direction = rng.standard_normal(3)
    n_steps = int(length_mm / (step_voxels * spacing))
    points = [position]
    for _ in range(n_steps):
        voxel = tuple(np.rint(position).astype(int))
        normal = inward[(slice(None), *voxel)]
        normal = normal / max(float(np.linalg.norm(normal)), 1e-6)
        direction = direction + bend * rng.standard_normal(3)
        direction -= (direction @ normal) * normal
        direction += 0.5 * (target_mm - depth_mm[voxel]) / spacing * normal
        direction /= max(float(np.linalg.norm(direction)), 1e-6)
        position = position + step_voxels * direction
        voxel = np.rint(position).astype(int)
        if (voxel < 0).any() or (voxel >= mask.shape).any() or not mask[tuple(voxel)]:
            break
        points.append(position)
    if len(points) < n_steps // 2:
        return None
    return np.array(points)


def _tube(points: np.ndarray, radius_voxels: float, shape: tuple[int, int, int]) -> np.ndarray:
    """(X, Y, Z) bool: the voxels whose centre lies within ``radius_voxels`` of a point of the
    densely sampled curve ``points`` (K, 3)."""
    lower = np.maximum(np.floor(points.min(axis=0) - radius_voxels).astype(int), 0)
    upper = np.minimum(np.ceil(points.max(axis=0) + radius_voxels).astype(int) + 1, shape)
    axes = [np.arange(lo, hi) for lo, hi in zip(lower, upper)]
    centres = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    distance, _ = cKDTree(points).query(centres, distance_upper_bound=radius_voxels)
    tube = np.zeros(shape, dtype=bool)
    tube[tuple(centres[np.isfinite(distance)].T)] = True
    return tube


def _ellipsoid(
    centre: np.ndarray, radii_voxels: np.ndarray, rotation: np.ndarray, shape: tuple[int, int, int]
) -> np.ndarray:
    """(X, Y, Z) bool: the voxels inside the ellipsoid with ``centre`` (3,) and ``radii_voxels``
    (3,) along the axes ``rotation`` (3, 3)."""
    half = int(np.ceil(radii_voxels.max())) + 1
    lower = np.maximum(np.floor(centre).astype(int) - half, 0)
    upper = np.minimum(np.floor(centre).astype(int) + half + 1, shape)
    box = tuple(slice(int(lo), int(hi)) for lo, hi in zip(lower, upper))
    offsets = np.stack(
        np.meshgrid(*[np.arange(s.start, s.stop) - c for s, c in zip(box, centre)], indexing="ij"),
        axis=-1,
    )
    inside = np.linalg.norm(offsets @ rotation / radii_voxels, axis=-1) <= 1.0
    blob = np.zeros(shape, dtype=bool)
    blob[box] = inside
    return blob


def _dura(
    rng: np.random.Generator,
    anatomy: Anatomy,
    mni_mm: np.ndarray,
    depth_mm: np.ndarray,
    exclusion: np.ndarray,
) -> np.ndarray:
    """Dura (X, Y, Z) bool: thin enhancing sheets, trimmed by ``exclusion``.

    - The falx: 1.5-3 mm thick (at least :data:`MIN_DISTRACTOR_THICKNESS_VOXELS`) on the
      template's mid-sagittal plane (MNI x = 0, warped with the subject), upwards from its free
      edge, an arch over the corpus callosum (z 25-40 mm at y = -15 mm, 10-25 mm lower 60 mm in
      front and behind), over a random stretch from y -90..-50 to y 10..50 mm.
    - One or two convexity patches: the brain's outer 1-2 mm (at least that many voxels) within
      10-20 degrees of a random upward direction from the brain's centre.
    """
    thinnest_mm = MIN_DISTRACTOR_THICKNESS_VOXELS * anatomy.spacing
    x, y, z = mni_mm
    half_thickness_mm = max(rng.uniform(1.5, 3.0), thinnest_mm) / 2.0
    y_back, y_front = rng.uniform(-90, -50), rng.uniform(10, 50)
    z_edge = rng.uniform(25, 40) - rng.uniform(10, 25) * ((y + 15.0) / 60.0) ** 2
    dura = (np.abs(x) <= half_thickness_mm) & (y >= y_back) & (y <= y_front) & (z >= z_edge)

    offsets = mni_mm - mni_mm[:, anatomy.mask].mean(axis=1)[:, None, None, None]
    distance = np.linalg.norm(offsets, axis=0)
    for _ in range(int(rng.integers(1, 3))):
        direction = rng.standard_normal(3)
        direction[2] = abs(direction[2])  # the convexity, not the skull base
        direction /= np.linalg.norm(direction)
        cap = np.cos(np.deg2rad(rng.uniform(10.0, 20.0)))
        thickness_mm = max(rng.uniform(1.0, 2.0), thinnest_mm)
        in_cap = np.tensordot(direction, offsets, axes=1) >= cap * distance
        dura |= (depth_mm <= thickness_mm) & in_cap
    return dura & anatomy.mask & ~exclusion


def _choroid_plexus(
    rng: np.random.Generator,
    anatomy: Anatomy,
    mni_mm: np.ndarray,
    ventricles: np.ndarray,
    exclusion: np.ndarray,
) -> np.ndarray:
    """Choroid plexus (X, Y, Z) bool: one ellipsoid 6-12 mm across (at least
    :data:`MIN_LESION_DIAMETER_VOXELS`) per lateral ventricle, centred in its atrium (MNI
    y < -20 mm) where the grid shows one and the tumour leaves room (else anywhere in that
    ventricle), kept within a voxel of the ventricle."""
    spacing = anatomy.spacing
    smallest_radius_mm = MIN_LESION_DIAMETER_VOXELS * spacing / 2.0
    room = ndi.binary_dilation(ventricles, _FULL_3X3X3) & anatomy.mask
    choroid = np.zeros(anatomy.shape, dtype=bool)
    for side in (-1.0, 1.0):
        lateral = ventricles & (side * mni_mm[0] > 3.0) & ~exclusion  # not the third ventricle
        atrium = lateral & (mni_mm[1] < -20.0)
        for attempt in range(LESION_TRIES):
            prefer_atrium = atrium.any() and attempt < LESION_TRIES // 2
            candidates = np.argwhere(atrium if prefer_atrium else lateral)
            if not len(candidates):
                break
            centre = candidates[rng.integers(len(candidates))] + rng.uniform(-0.5, 0.5, 3)
            radii_mm = rng.uniform(3.0, 6.0) * rng.uniform(0.8, 1.25, 3)
            radii_mm = np.maximum(radii_mm, smallest_radius_mm)
            rotation = _rotation_matrix(rng.uniform(-np.pi, np.pi, 3))
            blob = _ellipsoid(centre, radii_mm / spacing, rotation, anatomy.shape) & room
            if blob.any() and not (blob & exclusion).any():
                choroid |= blob
                break
    return choroid


def _flair_lesions(
    rng: np.random.Generator, anatomy: Anatomy, ventricles: np.ndarray, exclusion: np.ndarray
) -> np.ndarray:
    """Periventricular white-matter lesions (X, Y, Z) bool: two to six ellipsoids 4-12 mm across
    (at least :data:`MIN_LESION_DIAMETER_VOXELS`), centred in white matter within 10 mm (at least
    two voxels) of a ventricle, clipped to white matter outside the ventricles."""
    spacing = anatomy.spacing
    smallest_radius_mm = MIN_LESION_DIAMETER_VOXELS * spacing / 2.0
    from_ventricles_mm = ndi.distance_transform_edt(~ventricles, sampling=spacing)
    white = (anatomy.wm > 0.3) & anatomy.mask & ~ventricles
    candidates = np.argwhere(
        white
        & (anatomy.wm > 0.5)
        & (from_ventricles_mm <= max(10.0, 2.0 * spacing))
        & ~exclusion
    )
    lesions = np.zeros(anatomy.shape, dtype=bool)
    if not len(candidates):
        return lesions
    for _ in range(int(rng.integers(2, 7))):
        for _attempt in range(LESION_TRIES):
            centre = candidates[rng.integers(len(candidates))] + rng.uniform(-0.5, 0.5, 3)
            radii_mm = rng.uniform(2.0, 6.0) * rng.uniform(0.7, 1.4, 3)
            radii_mm = np.maximum(radii_mm, smallest_radius_mm)
            rotation = _rotation_matrix(rng.uniform(-np.pi, np.pi, 3))
            blob = _ellipsoid(centre, radii_mm / spacing, rotation, anatomy.shape) & white
            if blob.any() and not (blob & exclusion).any():
                lesions |= blob
                break
    return lesions


# ================================================================================================
# Modality contrast
# ================================================================================================

# Relative mean intensity of each tissue class per modality (white matter near 0.5-0.85).
# T1: WM > GM > CSF; T1ce adds a bright enhancing rim; T2: CSF and edema bright;
# FLAIR: like T2 with CSF suppressed, so edema is the brightest tissue.
# Distractors: vessels, dura and choroid plexus enhance about as much as the rim (vessels more,
# since partial volume dims a thin tube most) but are dark on T2 and FLAIR (flow void, fibrous
# dura) or, the choroid plexus, grey; FLAIR lesions are edema-bright on T2 and FLAIR, T1-dark and
# do not enhance.
CONTRAST: dict[str, dict[str, float]] = {
    "t1": dict(
        csf=0.30, gm=0.62, wm=0.85, edema=0.55, necrosis=0.35, enhancing=0.62,
        vessel=0.50, dura=0.50, choroid_plexus=0.60, flair_lesion=0.62,
    ),
    "t1ce": dict(
        csf=0.28, gm=0.60, wm=0.80, edema=0.55, necrosis=0.30, enhancing=1.60,
        vessel=1.90, dura=1.75, choroid_plexus=1.90, flair_lesion=0.62,
    ),
    "t2": dict(
        csf=1.00, gm=0.55, wm=0.40, edema=0.85, necrosis=0.95, enhancing=0.65,
        vessel=0.25, dura=0.30, choroid_plexus=0.70, flair_lesion=0.85,
    ),
    "flair": dict(
        csf=0.12, gm=0.62, wm=0.48, edema=0.95, necrosis=0.55, enhancing=0.80,
        vessel=0.35, dura=0.45, choroid_plexus=0.55, flair_lesion=0.95,
    ),
}
_LESION_CLASSES = {"necrosis": NCR, "edema": ED, "enhancing": ET}


def _class_fractions(class_map: np.ndarray, classes: dict[str, int]) -> dict[str, np.ndarray]:
    """Partial-volume fraction (X, Y, Z) float32 of each class ``name -> value`` of ``class_map``:
    its mask, blurred."""
    return {
        name: ndi.gaussian_filter(
            (class_map == value).astype(np.float32), PARTIAL_VOLUME_SIGMA_VOXELS
        )
        for name, value in classes.items()
    }


def _render(
    modality: str,
    anatomy: Anatomy,
    tumour: dict[str, np.ndarray],
    distractors: dict[str, np.ndarray],
    texture: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Noise-free image (X, Y, Z) float32 of one modality in relative units, zero outside the brain.

    ``tumour`` and ``distractors`` give each class's partial-volume fraction (a key of
    :data:`CONTRAST`). Means are jittered by +-8 % per subject; a texture adds 3 % variation in
    healthy tissue and distractors and 10 % in tumour; a smooth bias field multiplies everything
    by exp(N(0, SD 3-12 %)).
    """
    means = {name: value * rng.uniform(0.92, 1.08) for name, value in CONTRAST[modality].items()}
    brain = np.maximum(anatomy.brain, 1e-3)  # tissue mix of each voxel, as if all of it were brain
    tissue = anatomy.csf * means["csf"] + anatomy.gm * means["gm"] + anatomy.wm * means["wm"]
    healthy = tissue / brain
    fractions = {**tumour, **distractors}
    image = (1.0 - sum(fractions.values())) * healthy
    for name, fraction in fractions.items():
        image += fraction * means[name]
    image *= 1.0 + (0.03 + 0.07 * sum(tumour.values())) * texture
    image *= np.exp(rng.uniform(0.03, 0.12) * _smooth_field(rng, anatomy.shape, 4))
    image[~anatomy.mask] = 0.0
    return image.astype(np.float32)


def _acquire(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scanner image (X, Y, Z) int16 from a relative one: a random gain and Rician noise (SD 2-5 %
    of white matter; close to Gaussian at these SNRs) inside ``mask``, zero outside."""
    gain = rng.uniform(*INTENSITY_GAIN_RANGE)
    sigma = rng.uniform(0.02, 0.05) * 0.6  # relative units: white matter sits near 0.6
    signal = image[mask]
    real = signal + sigma * rng.standard_normal(signal.shape)
    imaginary = sigma * rng.standard_normal(signal.shape)
    out = np.zeros(image.shape, dtype=np.int16)
    out[mask] = np.clip(np.rint(gain * np.hypot(real, imaginary)), 1, np.iinfo(np.int16).max)
    return out


def _texture(rng: np.random.Generator, anatomy: Anatomy) -> np.ndarray:
    """Unit-SD texture (X, Y, Z) float32: random control values every 24 mm, spline-smoothed."""
    n_control = max(4, int(round(max(anatomy.shape) * anatomy.spacing / 24.0)))
    return _smooth_field(rng, anatomy.shape, n_control)


@dataclass(frozen=True)
class Subject:
    """One synthetic subject on the template grid.

    Attributes:
        anatomy: the subject's warped tissue maps.
        lesions: (X, Y, Z) uint8 lesion map, 1 NCR, 2 ED, 3 ET.
        n_tumours: number of tumours in ``lesions``.
        distractors: (X, Y, Z) uint8 distractor map (:data:`DISTRACTOR_VALUES`, 0 none).
        images: modality -> (X, Y, Z) float32 noise-free image in relative units.
    """

    anatomy: Anatomy
    lesions: np.ndarray
    n_tumours: int
    distractors: np.ndarray
    images: dict[str, np.ndarray]


def _make_subject(
    rng: np.random.Generator,
    template: Anatomy,
    tumour: str,
    modalities: tuple[str, ...],
    labelled_voxels,
) -> Subject:
    """One subject with ``tumour`` ``"metastases"`` or ``"glioma"``.

    ``labelled_voxels(lesions) -> (X, Y, Z) bool`` says which voxels of this grid the subject's
    label files will mark once a reader puts them on it; distractors keep
    :data:`DISTRACTOR_MARGIN_VOXELS` away from those.
    """
    anatomy, mni_mm = _deform(template, rng)
    place = _metastases if tumour == "metastases" else _glioma
    lesions, n_tumours = place(rng, anatomy)
    exclusion = ndi.binary_dilation(
        labelled_voxels(lesions), _FULL_3X3X3, iterations=DISTRACTOR_MARGIN_VOXELS
    )
    distractors = _distractors(rng, anatomy, mni_mm, exclusion)
    tumour_fractions = _class_fractions(lesions, _LESION_CLASSES)
    distractor_fractions = _class_fractions(distractors, DISTRACTOR_VALUES)
    texture = _texture(rng, anatomy)
    images = {
        m: _render(m, anatomy, tumour_fractions, distractor_fractions, texture, rng)
        for m in modalities
    }
    return Subject(
        anatomy=anatomy,
        lesions=lesions,
        n_tumours=n_tumours,
        distractors=distractors,
        images=images,
    )


# ================================================================================================
# Writing files
# ================================================================================================


def _nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """Gzipped NIfTI-1 of ``array`` with ``affine`` in both qform and sform (scanner space, mm).

    Compressed here, with the gzip timestamp fixed, so the same data always give the same bytes.
    """
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header["descrip"] = f"sgnet synthetic phantom v{SYNTH_VERSION}".encode()
    return gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    atomic_write_bytes(path, _nifti_bytes(array, affine))


def _subject_rng(seed: int, dataset: Dataset, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, dataset.phantom.seed_stream, index])


# ================================================================================================
# Layout: Brain-Mets-Lung-MRI-Path-Segs
# ================================================================================================


def bml_missing_labels(case_number: int) -> frozenset[str]:
    """Label files (``"core"``, ``"whole"``) that case ``BML-<case_number>`` (1-based) lacks.

    Like the release (107 of 111 cases with core, 104 with whole), about one case in eight lacks a
    label: every eighth case, cycling through missing core, missing whole, missing both.
    Cases 1 to 7 always have both, so small test sets are complete.
    """
    if case_number < 1:
        raise ValueError(f"case_number must be >= 1, got {case_number}")
    if case_number % 8:
        return frozenset()
    return [frozenset({"core"}), frozenset({"whole"}), frozenset({"core", "whole"})][
        (case_number // 8 - 1) % 3
    ]


def _flair_grid(
    rng: np.random.Generator, affine: np.ndarray, shape: tuple[int, int, int]
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A FLAIR acquisition grid covering the same head as the T1ce grid (``affine``, ``shape``).

    In-plane voxels 0.85-1.15 times the T1ce spacing, thicker axial slices (3-5 mm, at least
    1.4-2 times the T1ce spacing), and a field of view shifted by up to 10 mm with up to 10 mm of
    extra margin per side: a different shape, spacing and origin, but the same physical brain.
    """
    spacing = abs(affine[0, 0])
    flair_spacing = np.array(
        [
            spacing * rng.uniform(0.85, 1.15),
            spacing * rng.uniform(0.85, 1.15),
            max(rng.uniform(3.0, 5.0), spacing * rng.uniform(1.4, 2.0)),
        ]
    )
    extent_mm = np.array(shape) * spacing
    margin_mm = rng.uniform(0.0, 10.0, 3)
    flair_shape = tuple(int(n) for n in np.ceil((extent_mm + 2 * margin_mm) / flair_spacing))
    first_corner = affine[:3, 3] - spacing / 2.0 - margin_mm + rng.uniform(-10.0, 10.0, 3)
    flair_affine = np.diag([*flair_spacing, 1.0])
    flair_affine[:3, 3] = first_corner + flair_spacing / 2.0
    return flair_affine, flair_shape


def _to_grid(
    volume: np.ndarray,
    affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape: tuple[int, int, int],
) -> np.ndarray:
    """Resample ``volume`` (on ``affine``) onto an axis-aligned target grid by world coordinates.

    Each target voxel averages over its own thickness: a Gaussian along each axis whose target
    spacing is coarser (FWHM = that spacing) precedes linear interpolation, like a thick slice.
    """
    zoom = np.diag(target_affine)[:3] / np.diag(affine)[:3]  # source voxels per target voxel
    fwhm_to_sigma = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    sigma = [max(z - 1.0, 0.0) * fwhm_to_sigma for z in zoom]
    source_index = np.linalg.solve(affine, target_affine)  # target voxel -> source voxel
    return ndi.affine_transform(
        ndi.gaussian_filter(volume, sigma),
        np.diag(source_index)[:3],
        offset=source_index[:3, 3],
        output_shape=target_shape,
        order=1,
        output=np.float32,
    )


def _write_bml_case(
    case_dir: Path, case: str, case_number: int, dataset: Dataset, template: Anatomy, rng: np.random.Generator
) -> Subject:
    """Case ``case_number`` (1-based) of a ``bml``-writer data set: the T1ce image and ``core_seg``
    on the template grid, the FLAIR image and ``whole_seg`` on the case's own FLAIR grid."""
    layout = dataset.phantom
    affine, shape = template.affine, template.shape
    flair_affine, flair_shape = _flair_grid(rng, affine, shape)

    def on_flair_grid(volume: np.ndarray) -> np.ndarray:
        return _to_grid(volume, affine, flair_affine, flair_shape)

    def flair_whole_seg(lesions: np.ndarray) -> np.ndarray:
        """The whole-tumour mask on the FLAIR grid (before clipping to the FLAIR brain)."""
        return on_flair_grid((lesions > 0).astype(np.float32)) >= 0.5

    def labelled_voxels(lesions: np.ndarray) -> np.ndarray:
        """T1ce-grid voxels of the lesions and of whole_seg as a reader puts it on this grid
        (nearest neighbour; thick FLAIR slices make it reach a little beyond the lesions)."""
        back = resample_to_grid(
            flair_whole_seg(lesions).astype(np.uint8), flair_affine, shape, affine, order=0
        )
        return (lesions > 0) | (back > 0)

    subject = _make_subject(rng, template, layout.tumour, ("t1ce", "flair"), labelled_voxels)
    anatomy = subject.anatomy
    core = np.isin(subject.lesions, (NCR, ET))
    flair_mask = on_flair_grid(anatomy.brain) > 0.5
    flair = on_flair_grid(subject.images["flair"])
    flair_whole = flair_whole_seg(subject.lesions)
    images = {  # by phantom contrast
        "t1ce": (_acquire(subject.images["t1ce"], anatomy.mask, rng), affine),
        "flair": (_acquire(flair, flair_mask, rng), flair_affine),
    }
    for modality, contrast in layout.contrasts.items():
        array, part_affine = images[contrast]
        _write_nifti(case_dir / layout.file_name(case, modality + dataset.image_suffix), array, part_affine)
    labels = {
        "core": (core.astype(np.uint8), affine),
        "whole": ((flair_whole & flair_mask).astype(np.uint8), flair_affine),
    }
    missing = bml_missing_labels(case_number)
    for label, (array, part_affine) in labels.items():
        path = case_dir / layout.file_name(case, dataset.label_parts[label])
        if label in missing:
            path.unlink(missing_ok=True)  # a rerun must not leave an older label behind
            continue
        _write_nifti(path, array, part_affine)
    return subject


# ================================================================================================
# Layout: BraTS 2021 and BraTS 2023 GLI
# ================================================================================================


def _write_brats_case(
    case_dir: Path, case: str, dataset: Dataset, template: Anatomy, rng: np.random.Generator
) -> Subject:
    """One case of a ``brats``-writer data set: every modality and the ``seg`` map on one grid, the
    lesion classes written with the edition's values (``phantom.lesion_labels``)."""
    layout = dataset.phantom
    contrasts = tuple(layout.contrasts.values())
    subject = _make_subject(rng, template, layout.tumour, contrasts, lambda lesions: lesions > 0)
    for modality, contrast in layout.contrasts.items():
        image = _acquire(subject.images[contrast], subject.anatomy.mask, rng)
        path = case_dir / layout.file_name(case, modality + dataset.image_suffix)
        _write_nifti(path, image, template.affine)
    seg = np.zeros(subject.lesions.shape, dtype=np.uint8)
    for lesion_class, value in layout.lesion_labels.items():
        seg[subject.lesions == _LESION_VALUES[lesion_class]] = value
    _write_nifti(case_dir / layout.file_name(case, dataset.label_parts["seg"]), seg, template.affine)
    return subject


# ================================================================================================
# Public entry point
# ================================================================================================


def _with_phantom(kind: str) -> Dataset:
    """The registry record of data set ``kind``; ValueError when it is unknown or has no phantom."""
    dataset = get_dataset(kind)
    if dataset.phantom is None:
        raise ValueError(
            f"dataset {kind!r} has no phantom layout; phantoms: {', '.join(list_datasets(with_phantom=True))}"
        )
    return dataset


def synthesize_dataset(
    kind: str,
    n: int,
    out_dir: str | os.PathLike,
    seed: int = 0,
    size: int | None = None,
    progress: bool = True,
) -> list[Path]:
    """Write ``n`` synthetic cases of data set ``kind`` under ``out_dir``, in the real file layout.

    Args:
        kind: a data set with a phantom layout (:func:`sgnet_lightning.datasets.list_datasets`
            ``(with_phantom=True)``: ``"bml"``, ``"brats2021"``, ``"brats2023"``); its record's
            :attr:`~sgnet_lightning.datasets.Dataset.phantom` names the cases and files.
        n: number of cases (>= 1).
        out_dir: folder to write into (created): one sub-folder per case, ``dataset_info.json``,
            and ``phantom_truth/<case>_distractors.nii.gz`` (distractor maps, see the module
            docstring).
        seed: base seed; case ``i`` is drawn from ``(seed, kind, i)`` alone.
        size: voxels along the longest axis of a coarser isotropic grid (>= 32; e.g. 48 gives
            4.9 mm voxels and ~0.1 s per case); None keeps the 1 mm MNI grid (197 x 233 x 189).
        progress: show a tqdm bar over cases.

    Returns:
        The case folders, in case order. Existing files of the same names are replaced.

    Raises:
        ValueError: unknown ``kind`` (an :class:`~sgnet_lightning.datasets.UnknownDatasetError`) or
            one without a phantom layout, bad ``n`` or ``size``.
    """
    dataset = _with_phantom(kind)
    layout = dataset.phantom
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if size is not None and (not isinstance(size, (int, np.integer)) or size < MIN_SIZE):
        raise ValueError(f"size must be None or an integer >= {MIN_SIZE}, got {size!r}")
    out_dir = Path(out_dir)
    template = template_anatomy(None if size is None else int(size))
    cases = layout.case_ids(n)
    truth_dir = out_dir / TRUTH_DIR
    case_dirs, n_tumours, distractor_voxels = [], {}, {}
    for index, case in enumerate(tqdm(cases, desc=f"synth {kind}", disable=not progress)):
        case_dir = out_dir / case
        case_dir.mkdir(parents=True, exist_ok=True)
        rng = _subject_rng(seed, dataset, index)
        if layout.writer == "bml":
            subject = _write_bml_case(case_dir, case, layout.first_number + index, dataset, template, rng)
        else:
            subject = _write_brats_case(case_dir, case, dataset, template, rng)
        truth_dir.mkdir(exist_ok=True)
        _write_nifti(truth_dir / f"{case}_distractors.nii.gz", subject.distractors, template.affine)
        n_tumours[case] = subject.n_tumours
        distractor_voxels[case] = {
            name: int(np.count_nonzero(subject.distractors == value))
            for name, value in DISTRACTOR_VALUES.items()
        }
        case_dirs.append(case_dir)
    info = {
        "generator": "sgnet_lightning.data.synth",
        "generator_version": SYNTH_VERSION,
        "kind": kind,
        "n": int(n),
        "seed": int(seed),
        "size": None if size is None else int(size),
        "shape": list(template.shape),
        "spacing_mm": template.spacing,
        "cases": cases,
        "tumours": n_tumours,
        "distractor_maps": f"{TRUTH_DIR}/<case>_distractors.nii.gz (on the T1ce grid)",
        "distractor_values": DISTRACTOR_VALUES,
        "distractor_voxels": distractor_voxels,
    }
    if layout.writer == "bml":
        info["missing_labels"] = {
            case: sorted(bml_missing_labels(number))
            for number, case in enumerate(cases, start=layout.first_number)
            if bml_missing_labels(number)
        }
    atomic_write_json(out_dir / "dataset_info.json", info)
    return case_dirs
