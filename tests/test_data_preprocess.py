"""Preprocessing into the cache and back to the native grid, on tiny real NIfTI files."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from _nifti_helpers import ball, brain, make_bml_case, write_nifti
from sgnet_lightning import files
from sgnet_lightning.data import cache
from sgnet_lightning.data.manifest import make_manifest
from sgnet_lightning.data.preprocess import (
    PreprocessError,
    PreprocessSettings,
    preprocess_images,
    preprocess_manifest,
    preprocess_subject,
    to_native,
)
from sgnet_lightning.data.sources import SubjectRecord, get_source
from sgnet_lightning.errors import ConfigError, DataError

BML = get_source("bml")
META_KEYS = {
    "subject", "dataset", "modalities", "spacing_mm", "affine", "shape", "labels_present",
    "original", "resampled", "crop", "source_hashes",
}


def rotation(degrees_z: float, degrees_x: float) -> np.ndarray:
    a, b = np.radians(degrees_z), np.radians(degrees_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def world_coordinates(shape, affine) -> np.ndarray:
    """(X, Y, Z, 3) world position (mm) of every voxel centre."""
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    return (affine[:3, :3] @ ijk + affine[:3, 3:4]).T.reshape(*shape, 3)


def world_centroid(mask: np.ndarray, affine) -> np.ndarray:
    return nib.affines.apply_affine(affine, np.argwhere(mask).mean(axis=0))


def bml_record(folder: Path, t1ce, flair, whole=None, core=None, affine=None, flair_affine=None, whole_affine=None):
    """Write one bml subject with the given arrays (and grids) and return its record."""
    images = {
        "t1ce": write_nifti(folder / "S_t1ce_img.nii.gz", t1ce, affine),
        "flair": write_nifti(folder / "S_flair_img.nii.gz", flair, flair_affine if flair_affine is not None else affine),
    }
    labels = {}
    if whole is not None:
        labels["whole"] = write_nifti(
            folder / "S_whole_seg.nii.gz", whole, whole_affine if whole_affine is not None else affine
        )
    if core is not None:
        labels["core"] = write_nifti(folder / "S_core_seg.nii.gz", core, affine)
    return SubjectRecord("S", images, labels)


# -- settings ---------------------------------------------------------------------------------------


def test_settings_key_is_stable_and_changes_with_every_setting():
    base = PreprocessSettings()
    assert base.key() == PreprocessSettings(spacing_mm=[1, 1, 1], percentiles=[0.5, 99.5]).key()
    assert len(base.key()) == 12
    others = [
        PreprocessSettings(spacing_mm=(1.0, 1.0, 2.0)),
        PreprocessSettings(percentiles=(1.0, 99.0)),
        PreprocessSettings(crop_margin_vox=4),
        PreprocessSettings(reference_modality="flair"),
    ]
    assert len({base.key(), *(s.key() for s in others)}) == 5


@pytest.mark.parametrize(
    "kwargs, message",
    [({"spacing_mm": (1, 0, 1)}, "spacing_mm"), ({"percentiles": (99, 1)}, "percentiles"),
     ({"crop_margin_vox": -1}, "crop_margin_vox")],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PreprocessSettings(**kwargs)


@pytest.mark.parametrize("order", [0, 1])
def test_voxel_copy_shortcut_equals_scipy_affine_transform(order):
    """resample_to_grid copies voxels when grids differ by an axis permutation, flips and an integer
    shift (partly outside the source here); that must equal scipy's general interpolation."""
    from scipy.ndimage import affine_transform

    from sgnet_lightning.data.io import resample_to_grid

    rng = np.random.default_rng(0)
    data = rng.uniform(1, 2, (9, 7, 5)).astype(np.float32)
    source_affine = np.array([[0, 0, -1, 4.0], [1, 0, 0, -2.0], [0, -1, 0, 3.0], [0, 0, 0, 1]])
    for shift in [(0, 0, 0), (3, -2, 1), (-3, 1, -2), (-1, 3, -1)]:
        grid_affine = np.eye(4)
        grid_affine[:3, 3] = shift
        expected_map = np.linalg.inv(source_affine) @ grid_affine
        expected = affine_transform(data, expected_map[:3, :3], expected_map[:3, 3], output_shape=(6, 8, 10),
                                    order=order, mode="constant", cval=0)
        got = resample_to_grid(data, source_affine, (6, 8, 10), grid_affine, order)
        assert got.any() and np.array_equal(got, expected)


# -- one subject ------------------------------------------------------------------------------------

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
LPS[:3, 3] = (23.0, 19.0, -7.0)
PERMUTED = np.array([[0.0, -1.0, 0.0, 12.0], [0.0, 0.0, 1.0, -30.0], [-1.0, 0.0, 0.0, 5.0], [0, 0, 0, 1]])


@pytest.mark.parametrize("affine", [LPS, PERMUTED], ids=["LPS", "permuted-axes"])
def test_label_round_trip_is_voxel_exact_on_1mm_grids(tmp_path, affine):
    shape = (24, 20, 22)  # unequal sides catch a swapped axis
    t1ce = brain(shape, seed=1)
    whole = (ball(shape, (13, 9, 12), 5) & (t1ce > 0)).astype(np.uint8)
    core = (ball(shape, (14, 10, 12), 2)).astype(np.uint8)
    whole[0, 0, 0] = 1  # outside the brain: kept by the crop, so it must come back too
    record = bml_record(tmp_path, t1ce, brain(shape, seed=2), whole, core, affine)

    image, label, meta = preprocess_subject(record, BML, PreprocessSettings(crop_margin_vox=2))
    assert set(meta) == META_KEYS
    assert image.shape == (2, *meta["shape"]) and label.shape == tuple(meta["shape"])
    assert image.dtype == np.float32 and label.dtype == np.uint8
    np.testing.assert_allclose(np.diag(meta["resampled"]["affine"])[:3], 1.0)  # RAS, 1 mm

    native = to_native(label, meta, "nearest")
    expected = np.where(core > 0, 2, whole).astype(np.uint8)
    assert native.shape == shape and native.get_data_dtype() == np.uint8
    np.testing.assert_allclose(native.affine, affine)
    assert np.array_equal(np.asarray(native.dataobj), expected)
    # intensities come back on the same voxels (linear interpolation at exact voxel centres)
    t1ce_native = np.asarray(to_native(image[0], meta, "linear").dataobj)
    assert np.array_equal(t1ce_native > 0, t1ce > np.percentile(t1ce[t1ce > 0], 0.5))


def test_oblique_anisotropic_lps_keeps_world_positions(tmp_path):
    affine = np.eye(4)
    affine[:3, :3] = rotation(25, 10) @ np.diag([-1.2, -0.9, 2.5])  # oblique, LPS-like, anisotropic
    affine[:3, 3] = (40.0, 25.0, -12.0)
    shape = (30, 36, 14)
    world = world_coordinates(shape, affine)
    centre = world_coordinates(shape, affine)[15, 18, 7]
    blob_world = centre + np.array([4.0, -3.0, 2.0])
    in_brain = np.linalg.norm(world - centre, axis=-1) < 14
    in_blob = np.linalg.norm(world - blob_world, axis=-1) < 4
    t1ce = np.where(in_brain, 100.0, 0.0).astype(np.float32)
    t1ce[in_blob] = 1000.0
    record = bml_record(tmp_path, t1ce, t1ce.copy(), in_blob.astype(np.uint8), None, affine)

    image, label, meta = preprocess_subject(record, BML, PreprocessSettings())
    cached_affine = np.array(meta["affine"])
    resampled_affine = np.array(meta["resampled"]["affine"])
    start, stop = np.array(meta["crop"]["start"]), np.array(meta["crop"]["stop"])
    # geometry in meta is self-consistent: the crop is a translation of the resampled RAS grid
    np.testing.assert_allclose(resampled_affine[:3, :3], np.eye(3))
    np.testing.assert_allclose(cached_affine[:3, :3], np.eye(3))
    np.testing.assert_allclose(cached_affine[:3, 3], nib.affines.apply_affine(resampled_affine, start))
    assert list(stop - start) == meta["shape"] == list(label.shape)
    assert np.all(start >= 0) and np.all(stop <= meta["resampled"]["shape"])
    np.testing.assert_allclose(meta["original"]["affine"], affine)
    assert meta["original"]["shape"] == list(shape)
    # the blob stays where it was in the world, in the image and in the label
    assert np.linalg.norm(world_centroid(image[0] > 0.5, cached_affine) - blob_world) < 0.3
    assert np.linalg.norm(world_centroid(label == 1, cached_affine) - blob_world) < 0.3
    assert np.linalg.norm(world_centroid(in_blob, affine) - blob_world) < 0.3  # the reference itself
    # and back on the native grid
    native = np.asarray(to_native(label, meta, "nearest").dataobj)
    assert (native == in_blob).mean() > 0.99


def test_flair_and_whole_seg_on_a_coarser_shifted_grid_land_on_the_t1ce_grid(tmp_path):
    shape = (24, 24, 24)
    t1ce = brain(shape, radius=10)
    coarse = np.diag([2.0, 2.0, 2.0, 1.0])
    coarse[:3, 3] = (-1.3, -0.7, -2.1)
    coarse_shape = (14, 14, 14)
    coarse_world = world_coordinates(coarse_shape, coarse)
    flair = np.where(  # intensity = 100 + world x (mm) inside the brain
        np.linalg.norm(coarse_world - 11.5, axis=-1) < 11.5, 100 + coarse_world[..., 0], 0
    ).astype(np.float32)
    tumour_world = np.array([14.0, 10.0, 12.0])
    whole = (np.linalg.norm(coarse_world - tumour_world, axis=-1) < 3.5).astype(np.uint8)
    record = bml_record(tmp_path, t1ce, flair, whole, None, np.eye(4), flair_affine=coarse, whole_affine=coarse)

    image, label, meta = preprocess_subject(record, BML, PreprocessSettings(percentiles=(0, 100)))
    np.testing.assert_allclose(meta["resampled"]["affine"], np.eye(4))  # the T1CE's own grid
    cached_world = world_coordinates(label.shape, np.array(meta["affine"]))
    # away from the FLAIR brain's edge (where linear interpolation blends in the zeros outside)
    inside = (np.linalg.norm(cached_world - 11.5, axis=-1) < 8) & (image[0] > 0)
    assert inside.sum() > 1000
    r = np.corrcoef(image[1][inside], cached_world[..., 0][inside])[0, 1]
    assert r > 0.9999  # FLAIR intensity still follows world x on the new grid
    # nearest neighbour from 2 mm voxels: within half a source voxel of where the mask was
    source_centroid = world_centroid(whole > 0, coarse)
    assert np.linalg.norm(world_centroid(label == 1, np.array(meta["affine"])) - source_centroid) < 1.0


def test_intensities_are_scaled_inside_the_brain_and_zero_outside(tmp_path):
    t1ce = brain(seed=5)
    record = bml_record(tmp_path, t1ce, brain(seed=6) * 7, None, None, np.eye(4))
    image, label, meta = preprocess_subject(record, BML, PreprocessSettings(crop_margin_vox=0))
    assert label is None and meta["labels_present"] == []
    box = tuple(slice(a, b) for a, b in zip(meta["crop"]["start"], meta["crop"]["stop"]))
    brain_mask = t1ce[box] > 0  # identity grid: the cache is a crop of the source
    for channel in image:
        assert channel.min() == 0.0 and channel.max() == 1.0
        assert not channel[~brain_mask].any()
        assert 0.004 < (channel[brain_mask] == 1.0).mean() < 0.01  # clipped above the 99.5th percentile
    # crop margin 0: the brain touches every face of the cached box
    assert all(np.any(np.moveaxis(brain_mask, a, 0)[[0, -1]]) for a in range(3))


def test_preprocess_images_is_the_training_path_without_labels(tmp_path):
    files = make_bml_case(tmp_path, "P1")
    record = SubjectRecord("P1", {m: files[m] for m in ("t1ce", "flair")}, {"whole": files["whole"]})
    settings = PreprocessSettings()
    image, label, meta = preprocess_subject(record, BML, settings)
    predicted_image, predicted_meta = preprocess_images({m: str(files[m]) for m in ("t1ce", "flair")}, BML, settings, "P1")
    # the label's box lies inside the brain's here, so both crops coincide
    assert np.array_equal(image, predicted_image)
    assert predicted_meta["labels_present"] == [] and meta["labels_present"] == ["whole"]
    assert predicted_meta["affine"] == meta["affine"]

    probabilities = np.stack([image[0], image[1], image[0]])
    native = to_native(probabilities, predicted_meta, "linear")
    assert native.shape == (24, 24, 24, 3) and native.get_data_dtype() == np.float32
    with pytest.raises(ValueError, match="not on the cached grid"):
        to_native(image[0, 1:], meta)
    with pytest.raises(DataError, match="flair file does not exist"):
        preprocess_images({"t1ce": files["t1ce"], "flair": tmp_path / "nope.nii.gz"}, BML, settings, "P1")
    with pytest.raises(DataError, match="missing modality flair"):
        preprocess_images({"t1ce": files["t1ce"]}, BML, settings, "P1")


def test_absurd_voxel_size_is_refused(tmp_path):
    metres = np.diag([1000.0, 1000.0, 1000.0, 1.0])  # a header in micrometres read as mm
    record = bml_record(tmp_path, brain(), brain(), None, None, metres)
    with pytest.raises(DataError, match="check the voxel size"):
        preprocess_subject(record, BML, PreprocessSettings())


# -- the whole manifest -----------------------------------------------------------------------------


def _manifest(tmp_path: Path, n: int = 6):
    """``n`` BML cases ``C0 ...`` (C1 without core, C2 without whole) and their manifest; returns both."""
    root = tmp_path / "données brutes"
    for i in range(n):
        make_bml_case(root, f"C{i}", core=i != 1, whole=i != 2, seed=i)
    return _remake_manifest(tmp_path, root), root


def _remake_manifest(tmp_path: Path, root: Path):
    """The manifest of the cases under ``root`` (2 folds, 1 test subject), written afresh."""
    return make_manifest("bml", root, tmp_path / "bml.csv", {"name": "kfold", "n_folds": 2, "test_size": 1}, seed=0,
                         progress=False)


def test_preprocess_manifest_writes_skips_and_keys(tmp_path):
    manifest, root = _manifest(tmp_path)
    settings = PreprocessSettings()
    folder = preprocess_manifest(manifest, tmp_path / "cache", settings, workers=2, progress=False)
    assert folder == tmp_path / "cache" / settings.key()
    saved = json.loads((folder / cache.SETTINGS_FILE).read_text())
    assert saved["settings"]["spacing_mm"] == [1.0, 1.0, 1.0] and saved["dataset"] == "bml"
    assert saved["manifest"] == str(manifest.path.absolute())
    for subject in manifest.subjects:
        assert cache.is_complete(folder / subject)
    assert cache.load_label(folder / "C0") is not None and cache.read_meta(folder / "C0")["labels_present"] == ["whole", "core"]
    assert cache.read_meta(folder / "C2")["labels_present"] == ["core"]
    # the process pool gives the same arrays as preprocessing in this process
    image, label, _ = preprocess_subject(manifest.record("C3"), BML, settings)
    assert np.array_equal(cache.load_image(folder / "C3"), image.astype(np.float16))
    assert np.array_equal(cache.load_label(folder / "C3"), label)

    stamps = {s: (folder / s / cache.META_FILE).stat().st_mtime_ns for s in manifest.subjects}
    assert preprocess_manifest(manifest, tmp_path / "cache", settings, progress=False) == folder
    assert stamps == {s: (folder / s / cache.META_FILE).stat().st_mtime_ns for s in manifest.subjects}

    # a source file replaced and the manifest remade: only that subject is redone
    write_nifti(root / "C4" / "C4_flair_img.nii.gz", brain(seed=44))
    manifest = _remake_manifest(tmp_path, root)
    preprocess_manifest(manifest, tmp_path / "cache", settings, progress=False)
    changed = {s for s in manifest.subjects if (folder / s / cache.META_FILE).stat().st_mtime_ns != stamps[s]}
    assert changed == {"C4"}

    other = preprocess_manifest(manifest, tmp_path / "cache", PreprocessSettings(crop_margin_vox=3), progress=False)
    assert other != folder and other.parent == folder.parent and cache.is_complete(other / "C0")


def test_preprocess_manifest_reports_every_failed_subject_and_keeps_the_others(tmp_path):
    manifest, root = _manifest(tmp_path)
    nan = brain(seed=100)
    nan[12, 12, 12] = np.nan
    write_nifti(root / "C1" / "C1_flair_img.nii.gz", nan)  # also no longer the manifest's file
    (root / "C3" / "C3_t1ce_img.nii.gz").unlink()
    write_nifti(root / "C5" / "C5_t1ce_img.nii.gz", brain(seed=55))  # valid, but changed

    with pytest.raises(PreprocessError) as info:
        preprocess_manifest(manifest, tmp_path / "cache", PreprocessSettings(), progress=False)
    errors = {e.subject: e for e in info.value.errors}
    assert set(errors) == {"C1", "C3", "C5"}
    assert errors["C1"].file == str(root / "C1" / "C1_flair_img.nii.gz") and "1 NaN" in errors["C1"].problem
    assert "t1ce file does not exist" in errors["C3"].problem
    assert errors["C5"].file == str(root / "C5" / "C5_t1ce_img.nii.gz") and "SHA-256 differs" in errors["C5"].problem
    assert "3 of 6 subjects" in str(info.value)
    folder = info.value.folder
    assert [cache.is_complete(folder / s) for s in ("C0", "C1", "C2", "C3", "C4", "C5")] == [
        True, False, True, False, True, False
    ]
    # excluding them lets the run finish
    preprocess_manifest(manifest, tmp_path / "cache", PreprocessSettings(), exclude=["C1", "C3", "C5"], progress=False)


def test_cache_folder_of_another_dataset_is_refused(tmp_path):
    manifest, _ = _manifest(tmp_path, n=4)
    settings = PreprocessSettings()
    folder = tmp_path / "cache" / settings.key()
    files.atomic_write_json(folder / cache.SETTINGS_FILE, {"dataset": "brats2021"})
    with pytest.raises(ConfigError, match="holds brats2021 data"):
        preprocess_manifest(manifest, tmp_path / "cache", settings, progress=False)
