"""Evaluation: overlap metrics and the empty-mask policy, surface distances against DeepMind's
``surface-distance`` package, BraTS 2023 lesion-wise metrics against a literal transcription of the
official algorithm, attention-map overlap, and folder evaluation on real NIfTI files."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage
from scipy.spatial.distance import cdist

from sgnet_lightning.data.labels import get_task
from sgnet_lightning.errors import DataError, SgnetError
from sgnet_lightning.evaluation import METRICS
from sgnet_lightning.evaluation.attention import attention_overlap, overlap_dice
from sgnet_lightning.evaluation.evaluate import Reference, evaluate_case, evaluate_folders
from sgnet_lightning.evaluation.lesions import LESION_SETTINGS, LesionSettings, lesion_metrics
from sgnet_lightning.evaluation.metrics import case_metrics, dice_per_channel
from sgnet_lightning.evaluation.surface import (
    assd_mm,
    compute_surface_distances,
    hd95_mm,
    normalised_surface_dice,
)

ANISOTROPIC = (1.0, 0.7, 3.0)


def _box(shape, *slices):
    mask = np.zeros(shape, dtype=bool)
    mask[slices] = True
    return mask


def _random_masks(seed: int, shape=(18, 16, 12)):
    """A blobby reference and a prediction that overlaps it imperfectly."""
    rng = np.random.default_rng(seed)
    ref = ndimage.binary_opening(rng.random(shape) < 0.55)
    pred = ndimage.binary_dilation(np.roll(ref, rng.integers(-2, 3), axis=rng.integers(3)))
    pred ^= rng.random(shape) < 0.03  # speckle: far, small surface pieces
    return ref, pred


# ---------------------------------------------------------------- overlap and the empty policy


def test_case_metrics_hand_computed():
    ref = _box((4, 4, 4), slice(0, 3), slice(0, 2), 0)  # 6 voxels
    pred = _box((4, 4, 4), slice(1, 3), slice(0, 2), 0)  # 4 voxels, all inside ref
    pred[3, 3, 3] = True  # ... but one: 5 voxels, 4 in ref
    row = case_metrics(pred, ref, (1.0, 0.5, 2.0), distances=False)
    assert row["dice"] == pytest.approx(2 * 4 / (5 + 6))
    assert row["precision"] == pytest.approx(4 / 5)
    assert row["recall"] == pytest.approx(4 / 6)
    assert row["volume_pred_ml"] == pytest.approx(5 * 1.0 / 1000)  # 1 mm^3 voxels
    assert row["volume_ref_ml"] == pytest.approx(6 * 1.0 / 1000)
    assert row["convention"] == "both_present"
    assert "hd95_mm" not in row


_PERFECT = dict(dice=1, precision=1, recall=1, hd95_mm=0, assd_mm=0, nsd=1)
_PENALISED = dict(dice=0, precision=0, recall=0, hd95_mm=373.13, assd_mm=373.13, nsd=0)


@pytest.mark.parametrize(
    "pred_any, ref_any, expected",
    [
        (False, False, dict(_PERFECT, convention="both_empty")),
        (False, True, dict(_PENALISED, convention="pred_empty")),
        (True, False, dict(_PENALISED, convention="ref_empty")),
    ],
)
def test_empty_mask_policy(pred_any, ref_any, expected):
    cube = _box((6, 6, 6), slice(1, 4), slice(1, 4), slice(1, 4))
    empty = np.zeros_like(cube)
    pred, ref = (cube if pred_any else empty), (cube if ref_any else empty)
    row = case_metrics(pred, ref, ANISOTROPIC, empty_penalty_mm=373.13)
    for key, value in expected.items():
        assert row[key] == value, key
    assert not any(isinstance(v, float) and math.isnan(v) for v in row.values())


def test_dice_per_channel_matches_case_metrics_and_policy():
    rng = np.random.default_rng(3)
    pred = torch.from_numpy(rng.random((2, 3, 5, 5, 4)) < 0.4)
    ref = torch.from_numpy(rng.random((2, 3, 5, 5, 4)) < 0.4)
    pred[0, 1], ref[0, 1] = False, False  # both empty -> 1
    pred[1, 2] = False  # prediction empty -> 0
    dice = dice_per_channel(pred, ref)
    assert dice.shape == (2, 3)
    for b in range(2):
        for c in range(3):
            expected = case_metrics(pred[b, c].numpy(), ref[b, c].numpy(), (1, 1, 1), distances=False)["dice"]
            assert dice[b, c].item() == pytest.approx(expected, abs=1e-6)
    assert dice[0, 1] == 1 and dice[1, 2] == 0


# ---------------------------------------------------------------- surface distances


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("spacing", [ANISOTROPIC, (0.45, 1.3, 2.2)])
def test_surface_metrics_match_deepmind_package(seed, spacing):
    surface_distance = pytest.importorskip("surface_distance")  # dev dependency: surface-distance
    ref, pred = _random_masks(seed)
    if seed == 0:  # masks touching the image border have a surface there
        ref[0], pred[:, -1] = True, True
    ours = compute_surface_distances(ref, pred, spacing)
    theirs = surface_distance.compute_surface_distances(ref, pred, spacing)
    np.testing.assert_allclose(ours.distances_ref_to_pred, theirs["distances_gt_to_pred"], atol=1e-9)
    np.testing.assert_allclose(ours.distances_pred_to_ref, theirs["distances_pred_to_gt"], atol=1e-9)
    np.testing.assert_allclose(ours.areas_ref, theirs["surfel_areas_gt"], rtol=1e-6)
    np.testing.assert_allclose(ours.areas_pred, theirs["surfel_areas_pred"], rtol=1e-6)

    assert hd95_mm(ours) == pytest.approx(surface_distance.compute_robust_hausdorff(theirs, 95), abs=1e-6)
    assert normalised_surface_dice(ours, 1.0) == pytest.approx(
        surface_distance.compute_surface_dice_at_tolerance(theirs, 1.0), abs=1e-6
    )
    ref_to_pred, pred_to_ref = surface_distance.compute_average_surface_distance(theirs)
    area_ref, area_pred = theirs["surfel_areas_gt"].sum(), theirs["surfel_areas_pred"].sum()
    pooled = (ref_to_pred * area_ref + pred_to_ref * area_pred) / (area_ref + area_pred)
    assert assd_mm(ours) == pytest.approx(pooled, abs=1e-6)


def test_crop_to_union_box_changes_no_distance():
    """Small masks in a large grid: compare with brute-force distances between all surfels of the
    whole (uncropped) grid."""
    ref, pred = _random_masks(7, shape=(10, 9, 8))
    big_ref, big_pred = np.zeros((40, 35, 30), bool), np.zeros((40, 35, 30), bool)
    big_ref[20:30, 3:12, 22:30], big_pred[20:30, 3:12, 22:30] = ref, pred
    ours = compute_surface_distances(big_ref, big_pred, ANISOTROPIC)

    kernel = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]], dtype=np.uint16)

    def surfel_points_mm(mask):
        codes = ndimage.correlate(np.pad(mask, 1).astype(np.uint16), kernel, mode="constant")
        return np.argwhere((codes != 0) & (codes != 255)) * np.asarray(ANISOTROPIC)

    points_ref, points_pred = surfel_points_mm(big_ref), surfel_points_mm(big_pred)
    between = cdist(points_ref, points_pred)
    np.testing.assert_allclose(ours.distances_ref_to_pred, np.sort(between.min(axis=1)), atol=1e-9)
    np.testing.assert_allclose(ours.distances_pred_to_ref, np.sort(between.min(axis=0)), atol=1e-9)
    tight = compute_surface_distances(ref, pred, ANISOTROPIC)
    assert hd95_mm(ours) == hd95_mm(tight) and assd_mm(ours) == pytest.approx(assd_mm(tight), abs=1e-12)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_hd95_of_two_single_voxels_by_hand(axis):
    """Two single voxels k apart along one axis: each has 8 corner surfels of equal area; 4 lie
    (k-1) voxel steps from the other voxel's nearest corner, 4 lie k steps away. The 95th area
    percentile is therefore k * spacing, the mean (k - 1/2) * spacing."""
    k = 3
    ref = np.zeros((9, 9, 9), bool)
    pred = np.zeros_like(ref)
    ref[2, 2, 2] = True
    position = [2, 2, 2]
    position[axis] += k
    pred[tuple(position)] = True
    distances = compute_surface_distances(ref, pred, ANISOTROPIC)
    step = ANISOTROPIC[axis]
    assert hd95_mm(distances) == pytest.approx(k * step)
    assert assd_mm(distances) == pytest.approx((k - 0.5) * step)
    assert normalised_surface_dice(distances, (k - 1) * step) == pytest.approx(0.5)


def test_hd95_ignores_a_single_voxel_outlier_that_hausdorff_sees():
    """A 6x6x6 cube, and the same cube plus one voxel 4 voxels above it. The outlier's 8 corner
    surfels hold 8 * |(1/8, 1/8, 1/8)| = 1.7 mm^2 of more than 100 mm^2 of surface (< 5 %): every
    other surfel lies on the common surface, so HD95 is 0, while the maximum (HD100) is the
    outlier's far corner to the cube's top corner: 5 mm."""
    ref = _box((12, 12, 16), slice(2, 8), slice(2, 8), slice(2, 8))
    pred = ref.copy()
    pred[2, 2, 12] = True
    distances = compute_surface_distances(ref, pred, (1.0, 1.0, 1.0))
    assert hd95_mm(distances) == 0.0
    assert hd95_mm(distances, percent=100) == pytest.approx(5.0)


def test_surface_distances_refuse_empty_masks():
    cube = _box((5, 5, 5), slice(1, 3), slice(1, 3), slice(1, 3))
    with pytest.raises(ValueError, match="prediction mask is empty"):
        compute_surface_distances(cube, np.zeros_like(cube), ANISOTROPIC)
    with pytest.raises(ValueError, match="spacing_mm"):
        compute_surface_distances(cube, cube, (1.0, 0.0, 1.0))


# ---------------------------------------------------------------- lesion-wise (BraTS 2023)


def _official_lesion_metrics(pred, ref, spacing, dilation, threshold, penalty):
    """Literal transcription of the official BraTS 2023 algorithm (get_lesion_wise_score and
    get_lesion_wise_results): whole-grid arrays, one re-dilation per lesion, inf HD95 for a
    missed lesion replaced by the penalty."""
    surface_distance = pytest.importorskip("surface_distance")
    struct = ndimage.generate_binary_structure(3, 2)
    full = np.ones((3, 3, 3))
    gt_cc, _ = ndimage.label(ref, full)
    pred_cc, _ = ndimage.label(pred, full)
    gt_dil_cc, n_dil = ndimage.label(ndimage.binary_dilation(ref, struct, iterations=dilation), full)
    combined = np.zeros_like(gt_dil_cc)
    for comp in range(1, n_dil + 1):
        part = (gt_dil_cc == comp) * gt_cc
        combined += np.where(part > 0, comp, 0)
    tp_components, pairs, fn, gt_tp = [], [], [], []
    for comp in range(1, combined.max() + 1):
        gt_tmp = combined == comp
        gt_tmp_dilation = ndimage.binary_dilation(gt_tmp, struct, iterations=dilation)
        intersecting = np.unique(pred_cc * gt_tmp_dilation)
        intersecting = intersecting[intersecting != 0]
        tp_components += list(intersecting)
        pred_tmp = np.isin(pred_cc, intersecting) & (pred_cc > 0)
        dice = 2 * (pred_tmp & gt_tmp).sum() / (pred_tmp.sum() + gt_tmp.sum())
        if pred_tmp.any():
            hd = surface_distance.compute_robust_hausdorff(
                surface_distance.compute_surface_distances(gt_tmp, pred_tmp, spacing), 95
            )
        else:
            hd = np.inf
        pairs.append((len(intersecting), gt_tmp.sum() * np.prod(spacing), dice, hd))
        (gt_tp if len(intersecting) else fn).append(comp)
    fp = np.unique(pred_cc[np.isin(pred_cc, tp_components + [0], invert=True)])
    kept = [p for p in pairs if p[1] > threshold]
    denominator = len(kept) + len(fp)
    dice = sum(p[2] for p in kept) / denominator if denominator else 1.0
    hd95_sum = sum(penalty if np.isinf(p[3]) else p[3] for p in kept) + len(fp) * penalty
    hd95 = hd95_sum / denominator if denominator else 0.0
    n_tp = len(gt_tp) - sum(1 for p in pairs if p[0] and p[1] <= threshold)
    n_fn = len(fn) - sum(1 for p in pairs if not p[0] and p[1] <= threshold)
    return dict(lesion_dice=dice, lesion_hd95_mm=hd95, lesion_tp=n_tp, lesion_fn=n_fn, lesion_fp=len(fp))


def _random_lesions(rng, shape, n):
    mask = np.zeros(shape, bool)
    for _ in range(n):
        size = rng.integers(1, 6, 3)
        corner = [rng.integers(0, s - z) for s, z in zip(shape, size)]
        mask[tuple(slice(c, c + z) for c, z in zip(corner, size))] = True
    return mask


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("preset", ["GLI", "MET"])
def test_lesion_metrics_match_the_official_algorithm(seed, preset):
    rng = np.random.default_rng(seed)
    shape = (30, 28, 20)
    ref = _random_lesions(rng, shape, 6)
    components, n = ndimage.label(ref, np.ones((3, 3, 3)))
    missed = np.isin(components, 1 + np.flatnonzero(rng.random(n) < 0.4))
    pred = ref & ~missed & (rng.random(shape) < 0.9)  # found lesions, eroded by noise
    pred |= _random_lesions(rng, shape, 3)  # false positives or extensions
    settings = LESION_SETTINGS[preset]
    spacing = (1.0, 1.0, 1.5)
    ours = lesion_metrics(pred, ref, spacing, settings)
    official = _official_lesion_metrics(
        pred, ref, spacing, settings.dilation_iterations, settings.volume_threshold_mm3, settings.penalty_mm
    )
    for key, value in official.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key
    # the crop to the union box changes nothing: the same case inside a larger grid
    padded = lesion_metrics(np.pad(pred, 7), np.pad(ref, 7), spacing, settings)
    assert padded == ours


def test_lesion_metrics_found_missed_and_false_positive():
    shape = (40, 40, 40)
    found = _box(shape, slice(2, 7), slice(2, 7), slice(2, 7))  # 125 voxels
    missed = _box(shape, slice(20, 25), slice(2, 7), slice(2, 7))
    false_positive = _box(shape, slice(30, 32), slice(30, 32), slice(30, 32))
    settings = LesionSettings("test", dilation_iterations=3, volume_threshold_mm3=50, penalty_mm=100.0)
    row = lesion_metrics(found | false_positive, found | missed, (1, 1, 1), settings)
    assert (row["lesion_tp"], row["lesion_fn"], row["lesion_fp"]) == (1, 1, 1)
    # found lesion: Dice 1, HD95 0; missed and false positive: Dice 0, HD95 = penalty
    assert row["lesion_dice"] == pytest.approx((1 + 0 + 0) / 3)
    assert row["lesion_hd95_mm"] == pytest.approx((0 + 100 + 100) / 3)
    assert row["lesion_f1"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    assert row["convention"] == "both_present"


def test_lesion_metrics_ignore_small_reference_lesions_by_volume():
    shape = (30, 30, 30)
    big = _box(shape, slice(2, 7), slice(2, 7), slice(2, 7))
    tiny = _box(shape, slice(20, 22), slice(20, 22), slice(20, 22))  # 8 voxels
    touching_tiny = _box(shape, slice(22, 24), slice(20, 22), slice(20, 22))  # next to it, not on it
    gli = lesion_metrics(big | touching_tiny, big | tiny, (1, 1, 1), LESION_SETTINGS["GLI"])
    # 8 mm^3 <= 50: the tiny lesion is neither missed nor found, and what touches it is no FP
    assert (gli["lesion_tp"], gli["lesion_fn"], gli["lesion_fp"], gli["lesion_dice"]) == (1, 0, 0, 1.0)
    met = lesion_metrics(big, big | tiny, (1, 1, 1), LESION_SETTINGS["MET"])
    assert (met["lesion_tp"], met["lesion_fn"]) == (1, 1)  # 8 mm^3 > 2: scored under MET
    # the threshold is a volume: 30 voxels of 2 mm^3 (60 mm^3 > 50) count under GLI
    thirty = _box(shape, slice(10, 13), slice(22, 27), slice(2, 4))
    assert lesion_metrics(big, big | thirty, (1, 1, 2), LESION_SETTINGS["GLI"])["lesion_fn"] == 1
    assert lesion_metrics(big, big | thirty, (1, 1, 1), LESION_SETTINGS["GLI"])["lesion_fn"] == 0
    # the official comparison is "<= threshold": 50 voxels at 1 mm are ignored, 51 are scored
    fifty = _box(shape, slice(10, 15), slice(22, 27), slice(2, 4))
    fifty_one = _box(shape, slice(10, 27), slice(20, 23), slice(2, 3))
    assert lesion_metrics(big, big | fifty, (1, 1, 1), LESION_SETTINGS["GLI"])["lesion_fn"] == 0
    assert lesion_metrics(big, big | fifty_one, (1, 1, 1), LESION_SETTINGS["GLI"])["lesion_fn"] == 1
    only_tiny = lesion_metrics(np.zeros_like(tiny), tiny, (1, 1, 1), LESION_SETTINGS["GLI"])
    assert only_tiny["convention"] == "no_scored_lesions"
    assert (only_tiny["lesion_dice"], only_tiny["lesion_hd95_mm"], only_tiny["lesion_f1"]) == (1.0, 0.0, 1.0)


def test_met_and_gli_dilation_differ():
    """Two reference parts 3 voxels apart: GLI's 3 dilations merge them into one lesion, MET's one
    dilation does not. A prediction 2 voxels from a part is found under GLI, a miss plus a false
    positive under MET."""
    shape = (40, 20, 20)
    left = _box(shape, slice(2, 8), slice(5, 11), slice(5, 11))
    right = _box(shape, slice(11, 17), slice(5, 11), slice(5, 11))  # gap: x = 8, 9, 10
    nearby = _box(shape, slice(19, 23), slice(5, 11), slice(5, 11))  # 2 voxels past `right`
    ref = left | right
    gli = lesion_metrics(np.zeros_like(ref), ref, (1, 1, 1), LESION_SETTINGS["GLI"])
    met = lesion_metrics(np.zeros_like(ref), ref, (1, 1, 1), LESION_SETTINGS["MET"])
    assert gli["lesion_fn"] == 1 and met["lesion_fn"] == 2
    gli = lesion_metrics(left | nearby, ref, (1, 1, 1), LESION_SETTINGS["GLI"])
    assert (gli["lesion_tp"], gli["lesion_fn"], gli["lesion_fp"]) == (1, 0, 0)
    met = lesion_metrics(left | nearby, ref, (1, 1, 1), LESION_SETTINGS["MET"])
    assert (met["lesion_tp"], met["lesion_fn"], met["lesion_fp"]) == (1, 1, 1)


def test_lesion_metrics_both_empty():
    empty = np.zeros((8, 8, 8), bool)
    row = lesion_metrics(empty, empty, ANISOTROPIC, LESION_SETTINGS["GLI"])
    assert row == dict(
        lesion_dice=1.0,
        lesion_hd95_mm=0.0,
        lesion_tp=0,
        lesion_fn=0,
        lesion_fp=0,
        lesion_f1=1.0,
        convention="both_empty",
    )


def test_attention_overlap_hand_computed_threshold_and_both_empty():
    """Map 0: 8 voxels above 0.5 (4 more at exactly 0.5, not counted), 4 of them inside a 12-voxel
    mask: Dice 2*4/(8+12). Map 1 and its mask are both empty: NaN, not a convention's 1."""
    attention = np.zeros((2, 6, 6, 4), np.float32)
    attention[0, 0:2, 0:2, 0:2] = 0.9  # 8 voxels, 4 of them (z = 0) inside the mask
    attention[0, 4:6, 4:6, 0] = 0.5  # at the threshold: not attended
    reference = np.zeros((2, 6, 6, 4), bool)
    reference[0, 0:2, 0:6, 0] = True  # 12 voxels
    overlap = attention_overlap(attention, reference, ["TC", "ET"])
    assert list(overlap) == ["TC", "ET"]
    assert overlap["TC"] == pytest.approx(2 * 4 / (8 + 12))
    assert math.isnan(overlap["ET"])
    assert overlap_dice(attention[0], reference[0], threshold=0.4) == pytest.approx(2 * 4 / (12 + 12))


def test_attention_overlap_refuses_maps_of_another_shape():
    with pytest.raises(ValueError, match=r"attention has shape \(2, 4, 4, 4\).*\(TC, ET\) \(2, 4, 4, 3\)"):
        attention_overlap(np.zeros((2, 4, 4, 4)), np.zeros((2, 4, 4, 3), bool), ["TC", "ET"])


# ---------------------------------------------------------------- one case and folders


def _brats_label_map(shape=(24, 22, 16), shift=0):
    label = np.zeros(shape, np.uint8)
    label[4 + shift : 16 + shift, 4:16, 3:12] = 2  # edema
    label[6 + shift : 13 + shift, 6:13, 4:10] = 1  # necrosis
    label[8 + shift : 11 + shift, 8:11, 5:8] = 3  # enhancing
    return label


def test_evaluate_case_rows_cover_every_region_and_metric():
    task = get_task("brats2023")
    rows = evaluate_case(_brats_label_map(shift=1), _brats_label_map(), task, ANISOTROPIC)
    table = pd.DataFrame(rows)
    assert set(table["metric"]) <= set(METRICS)
    assert table.groupby("region").size().to_dict() == {"ET": 14, "TC": 14, "WT": 14}
    assert table["value"].notna().all()
    lesion_notes = table.loc[table["metric"] == "lesion_dice", "convention"]
    assert lesion_notes.str.contains("GLI(dilation=3", regex=False).all()  # brats -> GLI preset
    with pytest.raises(ValueError, match=r"label values \[4\]"):
        evaluate_case(_brats_label_map() * 0 + 4, _brats_label_map(), task, ANISOTROPIC)


def test_evaluate_case_bml_defaults_to_met_and_penalty_setting():
    task = get_task("bml")
    ref = np.zeros((10, 10, 10), np.uint8)
    ref[2:5, 2:5, 2:5] = 2
    rows = pd.DataFrame(evaluate_case(np.zeros_like(ref), ref, task, (1, 1, 1), empty_penalty_mm=373.13))
    value = rows.set_index("metric")["value"]
    assert value["hd95_mm"] == 373.13 and value["lesion_hd95_mm"] == 373.13
    notes = rows.set_index("metric")["convention"]
    assert notes["hd95_mm"] == "pred_empty;penalty_mm=373.13"
    assert notes["lesion_dice"].startswith("pred_empty;MET(dilation=1")


def _save(path, label_map, zooms=(1.0, 1.0, 2.0), offset=0.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*zooms, 1.0])
    affine[0, 3] = offset
    nib.save(nib.Nifti1Image(label_map, affine), path)


def test_evaluate_folders_matches_subjects_and_writes_tidy_csv(tmp_path):
    refs, preds = tmp_path / "ref", tmp_path / "pred"
    subjects = [f"BraTS-GLI-0000{i}-000" for i in range(3)]
    for subject in subjects:
        _save(refs / subject / f"{subject}-seg.nii.gz", _brats_label_map())
        _save(refs / subject / f"{subject}-t1c.nii.gz", np.zeros((24, 22, 16), np.float32))  # not a reference
    _save(preds / f"{subjects[0]}.nii.gz", _brats_label_map())  # perfect
    _save(preds / f"{subjects[1]}_pred.nii.gz", _brats_label_map(shift=2))
    _save(preds / "BraTS-GLI-00009-000.nii.gz", _brats_label_map())  # no reference

    with pytest.raises(SgnetError, match=subjects[2]):
        evaluate_folders(preds, refs, "brats2023", tmp_path / "out.csv", progress=False)
    assert not (tmp_path / "out.csv").exists()

    table = evaluate_folders(
        preds, refs, "brats2023", tmp_path / "out.csv", allow_missing=True, progress=False
    )
    assert table.attrs["missing_subjects"] == [subjects[2]]
    assert table.attrs["extra_subjects"] == ["BraTS-GLI-00009-000"]
    written = pd.read_csv(tmp_path / "out.csv")
    assert list(written.columns) == ["subject", "region", "metric", "value", "convention"]
    assert len(written) == 2 * 3 * 14
    assert set(written["subject"]) == set(subjects[:2])
    pd.testing.assert_frame_equal(written, table.reset_index(drop=True), check_dtype=False)
    perfect = written[written["subject"] == subjects[0]].set_index(["region", "metric"])["value"]
    assert perfect.loc[(slice(None), "dice")].eq(1.0).all()
    # spacing comes from the header: 1 x 1 x 2 mm voxels
    wt_voxels = np.count_nonzero(_brats_label_map())
    assert perfect[("WT", "volume_ref_ml")] == pytest.approx(wt_voxels * 2.0 / 1000)


def test_evaluate_folders_errors_name_subjects_and_files(tmp_path):
    refs, preds = tmp_path / "ref", tmp_path / "pred"
    _save(refs / "caseA.nii.gz", _brats_label_map())
    _save(preds / "caseB.nii.gz", _brats_label_map())
    with pytest.raises(SgnetError, match="no prediction .* matches .*caseB.*caseA"):
        evaluate_folders(preds, refs, "brats2023", tmp_path / "out.csv", progress=False)

    _save(preds / "caseA.nii.gz", _brats_label_map(), offset=0.5)  # same shape, shifted origin
    with pytest.raises(DataError, match=r"caseA.*pred/caseA\.nii\.gz.*not on the grid.*ref/caseA\.nii\.gz"):
        evaluate_folders(preds, refs, "brats2023", tmp_path / "out.csv", allow_missing=True, progress=False)

    _save(preds / "caseA.nii.gz", _brats_label_map() * 0 + 4)  # BraTS 2021 label in a 2023 map
    with pytest.raises(DataError, match=r"label values \[4\]"):
        evaluate_folders(preds, refs, "brats2023", tmp_path / "out.csv", allow_missing=True, progress=False)


def test_evaluate_folders_with_a_reference_loader(tmp_path):
    """The hook replaces NIfTI discovery (e.g. for bml, whose cases ship two binary masks)."""
    preds = tmp_path / "pred"
    ref_map = np.zeros((12, 12, 12), np.uint8)
    ref_map[2:8, 2:8, 2:8] = 1
    ref_map[3:6, 3:6, 3:6] = 2
    affine = np.eye(4)
    for subject in ("p1", "p2"):
        _save(preds / f"{subject}.nii.gz", ref_map, zooms=(1.0, 1.0, 1.0))

    def loader(ref_dir):
        return {s: lambda s=s: Reference(ref_map, (1.0, 1.0, 1.0), affine, ref_dir / s) for s in ("p1", "p2")}

    table = evaluate_folders(
        preds, tmp_path, "bml", tmp_path / "out.csv", task="whole", ref_loader=loader, progress=False
    )
    assert set(table["subject"]) == {"p1", "p2"} and set(table["region"]) == {"WT"}
    assert table.loc[table["metric"] == "dice", "value"].eq(1.0).all()


def test_evaluate_folders_workers_give_the_same_rows(tmp_path):
    refs, preds = tmp_path / "ref", tmp_path / "pred"
    for i in range(2):
        _save(refs / f"s{i}_seg.nii.gz", _brats_label_map())
        _save(preds / f"s{i}.nii.gz", _brats_label_map(shift=i))
    serial = evaluate_folders(preds, refs, "brats2023", tmp_path / "a.csv", progress=False)
    parallel = evaluate_folders(preds, refs, "brats2023", tmp_path / "b.csv", workers=2, progress=False)
    pd.testing.assert_frame_equal(serial, parallel)
