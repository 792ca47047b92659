"""Synthetic phantoms: exact layouts, determinism, label conventions, geometry and contrast."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from sgnet_lightning.data.synth import (
    bml_missing_labels,
    case_ids,
    synthesize_dataset,
    template_anatomy,
)

SIZE = 40  # 5.8 mm voxels: a case takes well under a second
FULL_3X3X3 = np.ones((3, 3, 3), dtype=bool)


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(path)
    return np.asarray(image.dataobj), image.affine


@pytest.fixture(scope="module")
def bml(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bml")
    synthesize_dataset("bml", 8, out, seed=3, size=SIZE, progress=False)
    return out


@pytest.fixture(scope="module", params=["brats2021", "brats2023"])
def brats(request, tmp_path_factory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp(request.param)
    synthesize_dataset(request.param, 2, out, seed=5, size=SIZE, progress=False)
    return request.param, out


def brats_files(kind: str, case_dir: Path) -> dict[str, Path]:
    """Internal modality name -> file, spelled out per edition (the layout under test)."""
    case = case_dir.name
    if kind == "brats2021":
        names = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"}
        return {key: case_dir / f"{case}_{name}.nii.gz" for key, name in names.items()}
    names = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}
    return {key: case_dir / f"{case}-{name}.nii.gz" for key, name in names.items()}


def template_tissue(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Voxels that are white matter / CSF in the template whatever a subject's small warp does."""
    anatomy = template_anatomy(size)
    white_matter = ndi.binary_erosion(anatomy.wm > 0.8)
    csf = anatomy.csf > 0.6  # mostly ventricles; none survive an erosion at this voxel size
    assert white_matter.sum() > 50 and csf.sum() > 20
    return white_matter, csf


# ------------------------------------------------------------------------------------- layouts


def test_bml_layout_is_exact(bml):
    cases = [f"BML-{i:04d}" for i in range(1, 9)]
    assert sorted(p.name for p in bml.iterdir()) == sorted(cases + ["dataset_info.json"])
    for number, case in enumerate(cases, start=1):
        expected = {f"{case}_t1ce_img.nii.gz", f"{case}_flair_img.nii.gz"}
        for label in ("core", "whole"):
            if label not in bml_missing_labels(number):
                expected.add(f"{case}_{label}_seg.nii.gz")
        assert {p.name for p in (bml / case).iterdir()} == expected


def test_brats_layout_is_exact(brats):
    kind, out = brats
    cases = ["BraTS2021_00000", "BraTS2021_00001"] if kind == "brats2021" else [
        "BraTS-GLI-00000-000",
        "BraTS-GLI-00001-000",
    ]
    assert case_ids(kind, 2) == cases
    assert sorted(p.name for p in out.iterdir()) == sorted(cases + ["dataset_info.json"])
    for case in cases:
        expected = {p.name for p in brats_files(kind, out / case).values()}
        assert {p.name for p in (out / case).iterdir()} == expected


def test_dataset_info(bml):
    info = json.loads((bml / "dataset_info.json").read_text())
    assert info["kind"] == "bml" and info["n"] == 8 and info["seed"] == 3 and info["size"] == SIZE
    assert info["generator_version"] >= 1
    assert info["cases"] == case_ids("bml", 8)
    assert info["missing_labels"] == {"BML-0008": ["core"]}


def test_returns_case_folders(tmp_path):
    dirs = synthesize_dataset("brats2023", 1, tmp_path, size=32, progress=False)
    assert dirs == [tmp_path / "BraTS-GLI-00000-000"]


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown kind"):
        synthesize_dataset("brats2020", 1, tmp_path)
    with pytest.raises(ValueError, match="size"):
        synthesize_dataset("bml", 1, tmp_path, size=8)
    with pytest.raises(ValueError, match="n must"):
        synthesize_dataset("bml", 0, tmp_path)


# --------------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    first = synthesize_dataset("bml", 2, tmp_path / "a", seed=11, size=32, progress=False)
    again = synthesize_dataset("bml", 2, tmp_path / "b", seed=11, size=32, progress=False)
    other = synthesize_dataset("bml", 2, tmp_path / "c", seed=12, size=32, progress=False)
    for a, b, c in zip(first, again, other):
        for file in sorted(a.iterdir()):
            assert file.read_bytes() == (b / file.name).read_bytes(), file.name
        t1ce = f"{a.name}_t1ce_img.nii.gz"
        assert not np.array_equal(load(a / t1ce)[0], load(c / t1ce.replace(a.name, c.name))[0])


def test_a_case_does_not_depend_on_n(tmp_path):
    one = synthesize_dataset("brats2021", 1, tmp_path / "one", seed=2, size=32, progress=False)[0]
    two = synthesize_dataset("brats2021", 2, tmp_path / "two", seed=2, size=32, progress=False)[0]
    for file in one.iterdir():
        assert file.read_bytes() == (two / file.name).read_bytes()


# ------------------------------------------------------------------------------------ geometry


def test_size_sets_the_longest_axis_and_keeps_the_field_of_view(bml):
    image, affine = load(bml / "BML-0001" / "BML-0001_t1ce_img.nii.gz")
    assert max(image.shape) == SIZE
    native = template_anatomy(None)
    spacing = max(native.shape) / SIZE
    np.testing.assert_allclose(np.abs(np.diag(affine)[:3]), spacing)
    extent = np.array(image.shape) * spacing
    native_extent = np.array(native.shape) * 1.0
    np.testing.assert_allclose(extent, native_extent, atol=spacing)
    # first voxel's outer corner coincides with the native grid's
    np.testing.assert_allclose(affine[:3, 3] - spacing / 2, native.affine[:3, 3] - 0.5, atol=1e-4)


def test_bml_flair_grid_differs_but_shows_the_same_brain(bml):
    case_dir = bml / "BML-0002"
    t1ce, t1ce_affine = load(case_dir / "BML-0002_t1ce_img.nii.gz")
    core, core_affine = load(case_dir / "BML-0002_core_seg.nii.gz")
    flair, flair_affine = load(case_dir / "BML-0002_flair_img.nii.gz")
    whole, whole_affine = load(case_dir / "BML-0002_whole_seg.nii.gz")
    assert core.shape == t1ce.shape and np.allclose(core_affine, t1ce_affine)
    assert whole.shape == flair.shape and np.allclose(whole_affine, flair_affine)
    assert flair.shape != t1ce.shape and not np.allclose(flair_affine, t1ce_affine)
    assert np.diag(flair_affine)[2] > 1.3 * np.diag(t1ce_affine)[2]  # thicker slices

    # resampled by the headers' world coordinates, the brains and the tumours coincide
    flair_to_t1ce = np.linalg.solve(flair_affine, t1ce_affine)
    def on_t1ce(volume):
        return ndi.affine_transform(
            volume.astype(np.float32), flair_to_t1ce[:3, :3], offset=flair_to_t1ce[:3, 3],
            output_shape=t1ce.shape, order=1,
        ) >= 0.5
    brain, flair_brain = t1ce > 0, on_t1ce(flair > 0)
    dice = 2 * (brain & flair_brain).sum() / (brain.sum() + flair_brain.sum())
    assert dice > 0.9
    whole_on_t1ce = ndi.binary_dilation(on_t1ce(whole), FULL_3X3X3)
    assert (core.astype(bool) & whole_on_t1ce).sum() >= 0.8 * core.sum()


def test_missing_label_rule():
    missing = [bml_missing_labels(number) for number in range(1, 112)]
    assert not missing[0] and not missing[1]
    assert sum(bool(m) for m in missing[:16]) == 2
    assert 0.1 < np.mean([bool(m) for m in missing]) < 0.15
    kinds = {m for m in missing[:24] if m}
    assert kinds == {frozenset({"core"}), frozenset({"whole"}), frozenset({"core", "whole"})}
    with pytest.raises(ValueError):
        bml_missing_labels(0)


# -------------------------------------------------------------------------------------- labels


def test_bml_masks_are_binary_inside_the_brain_and_small(bml):
    for number, case in enumerate(case_ids("bml", 8), start=1):
        t1ce, t1ce_affine = load(bml / case / f"{case}_t1ce_img.nii.gz")
        flair, flair_affine = load(bml / case / f"{case}_flair_img.nii.gz")
        brain_ml = (t1ce > 0).sum() * abs(np.linalg.det(t1ce_affine[:3, :3])) / 1000
        if "core" not in bml_missing_labels(number):
            core, _ = load(bml / case / f"{case}_core_seg.nii.gz")
            assert core.dtype == np.uint8 and set(np.unique(core)) == {0, 1}
            assert (t1ce[core > 0] > 0).all()
        if "whole" not in bml_missing_labels(number):
            whole, _ = load(bml / case / f"{case}_whole_seg.nii.gz")
            assert whole.dtype == np.uint8 and set(np.unique(whole)) == {0, 1}
            assert (flair[whole > 0] > 0).all()
            whole_ml = whole.sum() * abs(np.linalg.det(flair_affine[:3, :3])) / 1000
            assert whole_ml < 0.02 * brain_ml


def test_brats_label_values_and_nesting(brats):
    kind, out = brats
    et_value = 4 if kind == "brats2021" else 3
    for case in case_ids(kind, 2):
        files = brats_files(kind, out / case)
        seg, seg_affine = load(files["seg"])
        assert seg.dtype == np.uint8 and set(np.unique(seg)) == {0, 1, 2, et_value}
        t1, t1_affine = load(files["t1"])
        assert np.allclose(seg_affine, t1_affine) and seg.shape == t1.shape
        brain = t1 > 0
        assert brain[seg > 0].all()
        ncr, tc, wt = seg == 1, np.isin(seg, (1, et_value)), seg > 0
        # the enhancing rim encloses the necrosis; the edema encloses the core (within the brain)
        assert not (ndi.binary_dilation(ncr, FULL_3X3X3) & ~tc).any()
        assert not (ndi.binary_dilation(tc, FULL_3X3X3) & brain & ~wt).any()


# ------------------------------------------------------------------------------------ contrast


def test_brats_contrasts(brats):
    kind, out = brats
    et_value = 4 if kind == "brats2021" else 3
    white_matter, csf = template_tissue(SIZE)
    for case in case_ids(kind, 2):
        files = brats_files(kind, out / case)
        seg, _ = load(files["seg"])
        healthy_wm = white_matter & ~ndi.binary_dilation(seg > 0, FULL_3X3X3, iterations=2)
        healthy_csf = csf & (seg == 0)
        image = {m: load(files[m])[0].astype(float) for m in ("t1ce", "t2", "flair")}
        assert image["t1ce"][seg == et_value].mean() > 1.2 * image["t1ce"][healthy_wm].mean()
        assert image["flair"][seg == 2].mean() > 1.2 * image["flair"][healthy_wm].mean()
        assert image["t2"][seg == 2].mean() > 1.2 * image["t2"][healthy_wm].mean()
        assert image["flair"][healthy_csf].mean() < image["flair"][healthy_wm].mean()
        assert image["t2"][healthy_csf].mean() > image["t2"][healthy_wm].mean()


def test_bml_core_enhances_and_whole_is_bright_on_flair(bml):
    white_matter, _ = template_tissue(SIZE)
    for case in case_ids("bml", 3):
        t1ce, _ = load(bml / case / f"{case}_t1ce_img.nii.gz")
        core, _ = load(bml / case / f"{case}_core_seg.nii.gz")
        flair, _ = load(bml / case / f"{case}_flair_img.nii.gz")
        whole, _ = load(bml / case / f"{case}_whole_seg.nii.gz")
        healthy_wm = white_matter & ~ndi.binary_dilation(core > 0, FULL_3X3X3, iterations=3)
        assert t1ce[core > 0].mean() > 1.2 * t1ce[healthy_wm].mean()
        assert flair[whole > 0].mean() > 1.2 * np.median(flair[flair > 0])


@pytest.mark.slow
def test_full_resolution_case(tmp_path):
    case_dir = synthesize_dataset("brats2023", 1, tmp_path, seed=1, progress=False)[0]
    image, affine = load(case_dir / "BraTS-GLI-00000-000-t1c.nii.gz")
    native = template_anatomy(None)
    assert image.shape == native.shape and image.dtype == np.int16
    np.testing.assert_allclose(affine, native.affine)
    brain_ml = (image > 0).sum() / 1000
    assert 1200 < brain_ml < 2600  # an adult brain, give or take the subject's scaling
