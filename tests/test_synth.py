"""Synthetic phantoms: exact layouts, determinism, label conventions, geometry, contrast, and the
unlabelled distractors (vessels, dura, choroid plexus, FLAIR lesions) with their truth maps.

Labels and images are read back through the data-set readers (:mod:`sgnet_lightning.data.sources`),
so the checks hold for what training and evaluation see."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from sgnet_lightning.data.io import resample_to_grid
from sgnet_lightning.data.sources import get_source
from sgnet_lightning.data.synth import bml_missing_labels, synthesize_dataset, template_anatomy
from sgnet_lightning.datasets import get_dataset

SIZE = 48  # 4.9 mm voxels: a case takes well under a second
DEMO_SIZE = 64  # 3.6 mm voxels, the size `make demo` trains on
FULL_3X3X3 = np.ones((3, 3, 3), dtype=bool)
# distractor truth values, as the module docstring and README document them
VESSEL, DURA, CHOROID_PLEXUS, FLAIR_LESION = 1, 2, 3, 4
DISTRACTOR_NAMES = {
    "vessel": VESSEL, "dura": DURA, "choroid_plexus": CHOROID_PLEXUS, "flair_lesion": FLAIR_LESION
}


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(path)
    return np.asarray(image.dataobj), image.affine


@pytest.fixture(scope="module")
def bml(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bml")
    synthesize_dataset("bml", 8, out, seed=3, size=SIZE, progress=False)
    return out


@pytest.fixture(scope="module")
def bml_demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bml_demo")
    synthesize_dataset("bml", 4, out, seed=0, size=DEMO_SIZE, progress=False)
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
    top_level = cases + ["dataset_info.json", "phantom_truth"]
    assert sorted(p.name for p in bml.iterdir()) == sorted(top_level)
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
    assert get_dataset(kind).phantom.case_ids(2) == cases
    top_level = cases + ["dataset_info.json", "phantom_truth"]
    assert sorted(p.name for p in out.iterdir()) == sorted(top_level)
    for case in cases:
        expected = {p.name for p in brats_files(kind, out / case).values()}
        assert {p.name for p in (out / case).iterdir()} == expected


def test_dataset_info(bml):
    info = json.loads((bml / "dataset_info.json").read_text())
    assert info["kind"] == "bml" and info["n"] == 8 and info["seed"] == 3 and info["size"] == SIZE
    assert info["generator_version"] >= 1
    assert info["cases"] == get_dataset("bml").phantom.case_ids(8)
    assert info["missing_labels"] == {"BML-0008": ["core"]}
    assert set(info["tumours"]) == set(info["distractor_voxels"]) == set(info["cases"])
    assert info["distractor_values"] == DISTRACTOR_NAMES


def test_returns_case_folders(tmp_path):
    dirs = synthesize_dataset("brats2023", 1, tmp_path, size=32, progress=False)
    assert dirs == [tmp_path / "BraTS-GLI-00000-000"]


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'brats2020'; known: bml, "):
        synthesize_dataset("brats2020", 1, tmp_path)
    with pytest.raises(ValueError, match="size"):
        synthesize_dataset("bml", 1, tmp_path, size=8)
    with pytest.raises(ValueError, match="n must"):
        synthesize_dataset("bml", 0, tmp_path)


# --------------------------------------------------------------------------------- determinism


def all_files(out: Path) -> dict[str, bytes]:
    """Every file under ``out`` (case folders, truth maps, dataset_info.json) by relative path."""
    return {str(f.relative_to(out)): f.read_bytes() for f in sorted(out.rglob("*")) if f.is_file()}


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    for name, seed in (("a", 11), ("b", 11), ("c", 12)):
        synthesize_dataset("bml", 2, tmp_path / name, seed=seed, size=32, progress=False)
    first, again, other = (all_files(tmp_path / name) for name in "abc")
    assert len(first) == 2 * 4 + 2 + 1  # 4 files per case, 2 truth maps, dataset_info.json
    assert first == again
    for name in first:
        if name.endswith(("t1ce_img.nii.gz", "_distractors.nii.gz")):
            assert first[name] != other[name], name


@pytest.mark.parametrize("kind", ["bml", "brats2021"])
def test_one_more_case_only_appends(tmp_path, kind):
    synthesize_dataset(kind, 2, tmp_path / "two", seed=2, size=32, progress=False)
    synthesize_dataset(kind, 3, tmp_path / "three", seed=2, size=32, progress=False)
    two, three = all_files(tmp_path / "two"), all_files(tmp_path / "three")
    info_two, info_three = (json.loads(d.pop("dataset_info.json")) for d in (two, three))
    new_case = get_dataset(kind).phantom.case_ids(3)[2]
    assert {name: data for name, data in three.items() if new_case not in name} == two
    for key in ("tumours", "distractor_voxels"):
        assert {case: info_three[key][case] for case in info_two[key]} == info_two[key]


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
    for number, case in enumerate(get_dataset("bml").phantom.case_ids(8), start=1):
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
    for case in get_dataset(kind).phantom.case_ids(2):
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
    for case in get_dataset(kind).phantom.case_ids(2):
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
    for case in get_dataset("bml").phantom.case_ids(3):
        t1ce, _ = load(bml / case / f"{case}_t1ce_img.nii.gz")
        core, _ = load(bml / case / f"{case}_core_seg.nii.gz")
        flair, _ = load(bml / case / f"{case}_flair_img.nii.gz")
        whole, _ = load(bml / case / f"{case}_whole_seg.nii.gz")
        healthy_wm = white_matter & ~ndi.binary_dilation(core > 0, FULL_3X3X3, iterations=3)
        assert t1ce[core > 0].mean() > 1.2 * t1ce[healthy_wm].mean()
        assert flair[whole > 0].mean() > 1.2 * np.median(flair[flair > 0])


# ------------------------------------------------------------ tumour sizes, distractors, truth


# reader modality name -> the internal one (t1, t1ce, t2, flair)
INTERNAL_MODALITY = {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair"}


@dataclass
class ReadSubject:
    """One subject as the data-set reader sees it, with its distractor truth map."""

    kind: str
    subject: str
    images: dict[str, np.ndarray]  # internal modality name -> (X, Y, Z) on the reference grid
    affine: np.ndarray
    label: np.ndarray | None  # canonical label map on the reference grid
    rim: np.ndarray | None  # enhancing rim: BraTS ET; bml: the core's outer voxel layer
    distractors: np.ndarray
    distractor_affine: np.ndarray


def read_subjects(kind: str, out: Path) -> list[ReadSubject]:
    """Every subject under ``out`` through the reader of ``kind``; other grids (the bml FLAIR)
    resampled onto the reference grid by world position (linear)."""
    source = get_source(kind)
    subjects = []
    for record in source.discover(out):
        reference = nib.load(record.images[source.reference_modality])
        images = {}
        for modality, path in record.images.items():
            image = nib.load(path)
            images[INTERNAL_MODALITY.get(modality, modality)] = resample_to_grid(
                np.asarray(image.dataobj, dtype=np.float32), image.affine,
                reference.shape, reference.affine, order=1,
            )
        label = source.load_label_map(record, reference)
        rim = None
        if label is not None and kind == "bml" and (label == 2).any():
            core = label == 2
            rim = core & ~ndi.binary_erosion(core, FULL_3X3X3)
        elif label is not None:
            rim = label == (4 if kind == "brats2021" else 3)  # ET in each edition's own values
        truth = nib.load(out / "phantom_truth" / f"{record.subject}_distractors.nii.gz")
        subjects.append(
            ReadSubject(
                kind, record.subject, images, reference.affine, label, rim,
                np.asarray(truth.dataobj), truth.affine,
            )
        )
    return subjects


@pytest.fixture(scope="module")
def read_bml(bml, bml_demo) -> dict[int, list[ReadSubject]]:
    return {SIZE: read_subjects("bml", bml), DEMO_SIZE: read_subjects("bml", bml_demo)}


@pytest.fixture(scope="module")
def read_brats(brats) -> tuple[str, list[ReadSubject]]:
    kind, out = brats
    return kind, read_subjects(kind, out)


def every_read_subject(read_bml, read_brats) -> list[ReadSubject]:
    return read_bml[SIZE] + read_bml[DEMO_SIZE] + read_brats[1]


@pytest.mark.parametrize("size", [SIZE, DEMO_SIZE])
def test_bml_has_two_to_five_metastases_of_5_to_15_mm(bml, bml_demo, size):
    out = {SIZE: bml, DEMO_SIZE: bml_demo}[size]
    info = json.loads((out / "dataset_info.json").read_text())
    checked = 0
    for number, case in enumerate(info["cases"], start=1):
        if "core" in bml_missing_labels(number):
            continue
        core, affine = load(out / case / f"{case}_core_seg.nii.gz")
        components, n_metastases = ndi.label(core > 0, FULL_3X3X3)
        assert 2 <= n_metastases <= 5 and n_metastases == info["tumours"][case], case
        voxel_mm3 = abs(np.linalg.det(affine[:3, :3]))
        volumes_mm3 = np.bincount(components.ravel())[1:] * voxel_mm3
        diameters_mm = (6.0 * volumes_mm3 / np.pi) ** (1.0 / 3.0)  # equivalent sphere
        assert ((diameters_mm >= 5.0) & (diameters_mm <= 15.0)).all(), (case, diameters_mm)
        checked += 1
    assert checked >= 4


def test_bml_whole_tumour_is_under_two_percent_of_the_brain(read_bml):
    fractions = [
        np.count_nonzero(s.label) / np.count_nonzero(s.images["t1ce"])
        for s in read_bml[SIZE] + read_bml[DEMO_SIZE]
        if s.label is not None
    ]
    assert len(fractions) == 12 and max(fractions) < 0.02
    assert min(fractions) > 0.002  # several visible lesions, not specks


def test_every_subject_has_every_distractor_type_on_the_reference_grid(
    read_bml, read_brats, bml, brats
):
    for out, subjects in ((bml, read_bml[SIZE]), (brats[1], read_brats[1])):
        info = json.loads((out / "dataset_info.json").read_text())
        for s in subjects:
            assert s.distractors.dtype == np.uint8, s.subject
            assert s.distractors.shape == s.images[next(iter(s.images))].shape
            np.testing.assert_allclose(s.distractor_affine, s.affine)
            values, counts = np.unique(s.distractors, return_counts=True)
            assert values.tolist() == [0, VESSEL, DURA, CHOROID_PLEXUS, FLAIR_LESION], s.subject
            recorded = info["distractor_voxels"][s.subject]
            assert [recorded[name] for name in DISTRACTOR_NAMES] == counts[1:].tolist()


def test_distractors_never_touch_a_label(read_bml, read_brats):
    # a distractor may not be a label voxel nor any of its 26 neighbours: at least one free voxel
    # between them, on the reference grid the reader puts every label on
    subjects = [s for s in every_read_subject(read_bml, read_brats) if s.label is not None]
    assert len(subjects) == 14
    for s in subjects:
        near_label = ndi.binary_dilation(s.label > 0, FULL_3X3X3)
        assert not (near_label & (s.distractors > 0)).any(), s.subject


def test_enhancing_distractors_are_as_bright_as_the_rim_without_flair_edema(read_bml, read_brats):
    subjects = [s for s in read_bml[DEMO_SIZE] + read_brats[1] if s.rim is not None and s.rim.any()]
    assert len(subjects) == 6
    for s in subjects:
        t1ce, flair = s.images["t1ce"], s.images["flair"]
        rim_t1ce = t1ce[s.rim].mean()
        edema = s.label == (1 if s.kind == "bml" else 2)  # canonical maps: bml 1 whole-not-core
        for value in (VESSEL, DURA, CHOROID_PLEXUS):
            distractor = s.distractors == value
            assert t1ce[distractor].mean() >= 0.8 * rim_t1ce, (s.subject, value)
            assert flair[distractor].mean() < 0.8 * flair[edema].mean(), (s.subject, value)
        # no edema around vessels: their neighbourhood is no brighter on FLAIR than the brain
        vessels = s.distractors == VESSEL
        around_vessels = ndi.binary_dilation(vessels, FULL_3X3X3) & (s.distractors == 0)
        assert flair[around_vessels].mean() < 1.1 * np.median(flair[t1ce > 0]), s.subject


def test_flair_lesions_are_bright_on_flair_and_t2_and_do_not_enhance(read_bml, read_brats):
    for s in read_bml[DEMO_SIZE] + read_brats[1]:
        white_matter = healthy_white_matter(s)
        lesion = s.distractors == FLAIR_LESION
        for modality in ("flair", "t2"):  # bml has no T2
            if modality in s.images:
                image = s.images[modality]
                ratio = image[lesion].mean() / image[white_matter].mean()
                assert ratio > 1.2, (s.subject, modality, ratio)
        t1ce = s.images["t1ce"]
        assert t1ce[lesion].mean() < t1ce[white_matter].mean(), s.subject
        if s.rim is not None and s.rim.any():
            assert t1ce[lesion].mean() < 0.6 * t1ce[s.rim].mean(), s.subject


def healthy_white_matter(s: ReadSubject) -> np.ndarray:
    """Template white matter (eroded, so a subject's warp keeps it white) away from everything."""
    white_matter, _ = template_tissue(max(s.distractors.shape))
    busy = (s.distractors > 0) | (s.label > 0 if s.label is not None else False)
    return white_matter & ~ndi.binary_dilation(busy, FULL_3X3X3, iterations=2)


def test_distractor_shapes(read_bml, read_brats):
    """Vessels are long thin tubes, dura thin sheets, choroid plexus inside the ventricles."""
    for s in read_bml[DEMO_SIZE] + read_brats[1]:
        spacing = abs(s.affine[0, 0])
        for value in (VESSEL, DURA):
            mask = s.distractors == value
            # no voxel with all six face neighbours inside: nothing thicker than two voxels
            interior = ndi.binary_erosion(mask, ndi.generate_binary_structure(3, 1))
            assert interior.sum() <= 0.05 * mask.sum(), (s.subject, value)
        components, n = ndi.label(s.distractors == VESSEL, FULL_3X3X3)
        lengths_mm = [
            spacing * max(sl.stop - sl.start for sl in extent)
            for extent in ndi.find_objects(components)
        ]
        assert max(lengths_mm) >= 25.0, s.subject
        ventricles = template_anatomy(max(s.distractors.shape)).ventricles > 0.5
        near_ventricles = ndi.binary_dilation(ventricles, FULL_3X3X3, iterations=3)
        choroid = s.distractors == CHOROID_PLEXUS
        assert (choroid & near_ventricles).sum() >= 0.9 * choroid.sum(), s.subject


def test_truth_maps_lie_outside_the_cases_and_readers_ignore_them(bml, brats):
    for kind, out in (("bml", bml), brats):
        cases = json.loads((out / "dataset_info.json").read_text())["cases"]
        assert sorted(p.name for p in (out / "phantom_truth").iterdir()) == sorted(
            f"{case}_distractors.nii.gz" for case in cases
        )
        records = get_source(kind).discover(out)
        assert [r.subject for r in records] == cases
        for record in records:
            assert all(path.parent == out / record.subject for path in record.files().values())


@pytest.mark.slow
def test_full_resolution_case(tmp_path):
    case_dir = synthesize_dataset("brats2023", 1, tmp_path, seed=1, progress=False)[0]
    image, affine = load(case_dir / "BraTS-GLI-00000-000-t1c.nii.gz")
    native = template_anatomy(None)
    assert image.shape == native.shape and image.dtype == np.int16
    np.testing.assert_allclose(affine, native.affine)
    brain_ml = (image > 0).sum() / 1000
    assert 1200 < brain_ml < 2600  # an adult brain, give or take the subject's scaling
