"""Reading volumes, discovering subjects, manifests and validation, on tiny real NIfTI files."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from _nifti_helpers import (
    SHAPE,
    brain,
    make_bml_case,
    make_brats_case,
    tumour,
    write_nifti,
    write_singular_affine,
)
from sgnet_lightning.data.io import inspect_nifti, load_array, load_nifti, sha256_file
from sgnet_lightning.data.manifest import Manifest, assign_splits, check_split_rule, load_split_rule, make_manifest
from sgnet_lightning.data.sources import SubjectRecord, get_source
from sgnet_lightning.data.validate import check_manifest
from sgnet_lightning.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]


# -- io ---------------------------------------------------------------------------------------------


def _good(tmp_path: Path, name: str = "ok.nii.gz") -> Path:
    return write_nifti(tmp_path / name, brain())


def _truncated(tmp_path):
    raw = _good(tmp_path).read_bytes()
    path = tmp_path / "trunc.nii.gz"
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _corrupt(tmp_path):
    raw = bytearray(_good(tmp_path).read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte: nibabel alone would not notice
    path = tmp_path / "corrupt.nii.gz"
    path.write_bytes(bytes(raw))
    return path


def _text(tmp_path, name):
    path = tmp_path / name
    path.write_text("this is not an image\n" * 30)
    return path


def _gzipped_text(tmp_path):
    path = tmp_path / "gz_text.nii.gz"
    path.write_bytes(gzip.compress(b"this is not an image\n" * 30))
    return path


def _plain_named_gz(tmp_path):
    plain = _good(tmp_path, "plain.nii")
    path = tmp_path / "plain_named.nii.gz"
    shutil.copy(plain, path)
    return path


def _truncated_plain(tmp_path):
    raw = _good(tmp_path, "ok.nii").read_bytes()
    path = tmp_path / "trunc.nii"
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _empty(tmp_path):
    path = tmp_path / "empty.nii.gz"
    path.write_bytes(b"")
    return path


def _four_d(tmp_path):
    return write_nifti(tmp_path / "4d.nii.gz", np.stack([brain()] * 3, axis=-1))


def _two_d(tmp_path):
    return write_nifti(tmp_path / "2d.nii.gz", brain()[:, :, 10:11])


def _nan(tmp_path):
    data = brain()
    data[0, 0, :5] = np.nan
    data[1, 1, :2] = np.inf
    return write_nifti(tmp_path / "nan.nii.gz", data)


BAD_FILES = {
    "missing": (lambda p: p / "absent.nii.gz", "does not exist"),
    "empty": (_empty, "empty (0 bytes)"),
    "truncated": (_truncated, "truncated"),
    "corrupt": (_corrupt, "corrupt"),
    "truncated .nii": (_truncated_plain, "truncated or corrupt"),
    "text .nii": (lambda p: _text(p, "text.nii"), "not a NIfTI file"),
    "text .nii.gz": (lambda p: _text(p, "text.nii.gz"), "not gzip-compressed"),
    "gzipped text": (_gzipped_text, "not a NIfTI file"),
    "plain named .gz": (_plain_named_gz, "uncompressed NIfTI file named .gz"),
    "4D": (_four_d, "is 4D (shape 24x24x24x3)"),
    "2D": (_two_d, "is 2D"),
    "singular affine": (lambda p: write_singular_affine(p / "sing.nii.gz", brain()), "singular"),
    "NaN/Inf": (_nan, "7 non-finite voxels (5 NaN, 2 Inf)"),
    "all zero": (lambda p: write_nifti(p / "zero.nii.gz", np.zeros(SHAPE, np.float32)), "all zero"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_load_nifti_names_subject_file_and_problem(tmp_path, case):
    make, expected = BAD_FILES[case]
    path = make(tmp_path)
    with pytest.raises(DataError) as info:
        load_nifti(path, "S01", "t1ce")
    error = info.value
    assert error.subject == "S01" and error.file == str(path)
    assert expected in error.problem and error.problem.startswith("t1ce ")
    assert "\n" not in str(error)


def test_inspect_collects_every_problem_of_a_file(tmp_path):
    data = np.zeros(SHAPE, np.float32)
    data[0, 0, 0] = np.nan
    path = write_singular_affine(tmp_path / "bad.nii.gz", data)
    img, problems = inspect_nifti(path, "S01", "flair")
    assert img is None
    texts = " | ".join(p.problem for p in problems)
    assert "singular" in texts and "1 non-finite" in texts and "all zero" in texts


def test_trailing_singleton_dimension_is_squeezed_and_labels_may_be_empty(tmp_path):
    path = write_nifti(tmp_path / "t.nii.gz", brain()[..., None])
    img = load_nifti(path, "S01", "t1ce")
    assert img.shape == SHAPE and img.get_data_dtype() == np.float32
    label = load_array(write_nifti(tmp_path / "seg.nii", np.zeros(SHAPE, np.uint8)), "S01", "seg", label=True)
    assert label.dtype == np.uint8 and not label.any()


def test_paths_with_spaces_and_non_ascii(tmp_path):
    path = write_nifti(tmp_path / "dossier étrange" / "Ünïcode case 1_t1ce_img.nii.gz", brain())
    assert np.array_equal(load_array(path, "S", "t1ce"), brain())
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


# -- sources ----------------------------------------------------------------------------------------


def test_bml_discovery_any_depth_layout_and_extension(tmp_path):
    root = tmp_path / "Brain Mets (copy) é"
    make_bml_case(root, "A01")  # one folder per case
    make_bml_case(root, "A02", folder="deep/er/still", ext=".nii")  # deeper, uncompressed
    make_bml_case(root, "A03", folder="", core=False)  # flat in the root, no core label
    make_bml_case(root, "A04", whole=False, core=False)  # unlabelled
    # a layout with bare part names: the subject is the folder's name
    write_nifti(root / "other" / "B01" / "t1ce.nii.gz", brain())
    write_nifti(root / "other" / "B01" / "flair.nii.gz", brain(seed=1))
    # macOS resource forks and unrelated NIfTI files are ignored
    (root / "A01" / "._A01_t1ce_img.nii.gz").write_bytes(b"junk")
    write_nifti(root / "A01" / "A01_mask.nii.gz", tumour())

    records = get_source("bml").discover(root)
    assert [r.subject for r in records] == ["A01", "A02", "A03", "A04", "B01"]
    by_id = {r.subject: r for r in records}
    assert list(by_id["A02"].images) == ["t1ce", "flair"]
    assert by_id["A02"].images["flair"].name == "A02_flair_img.nii"
    assert set(by_id["A01"].labels) == {"whole", "core"}
    assert set(by_id["A03"].labels) == {"whole"}
    assert by_id["A04"].labels == {} and by_id["B01"].labels == {}


def test_bml_duplicate_subject_names_both_paths(tmp_path):
    make_bml_case(tmp_path, "A01")
    copy = write_nifti(tmp_path / "backup" / "A01_t1ce_img.nii", brain())
    with pytest.raises(DataError) as info:
        get_source("bml").discover(tmp_path)
    message = str(info.value)
    assert info.value.subject == "A01" and "duplicate t1ce" in message
    assert str(copy) in message and str(tmp_path / "A01" / "A01_t1ce_img.nii.gz") in message


def test_missing_modality_names_every_incomplete_subject_and_exclude_skips_them(tmp_path):
    for case in ("A01", "A02", "A03"):
        make_bml_case(tmp_path, case)
    (tmp_path / "A02" / "A02_flair_img.nii.gz").unlink()
    (tmp_path / "A03" / "A03_flair_img.nii.gz").unlink()
    with pytest.raises(DataError) as info:
        get_source("bml").discover(tmp_path)
    assert info.value.subject == "A02" and "missing modality flair" in info.value.problem
    assert "A03" in info.value.problem
    assert [r.subject for r in get_source("bml").discover(tmp_path, exclude=["A02", "A03"])] == ["A01"]


def test_empty_or_absent_data_folder(tmp_path):
    write_nifti(tmp_path / "unrelated.nii.gz", brain())
    with pytest.raises(DataError, match="no brats2021 subjects found.*1 other NIfTI"):
        get_source("brats2021").discover(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        get_source("bml").discover(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="unknown dataset"):
        get_source("brats2019")


def test_brats_discovery_2021_2023_and_mets(tmp_path):
    make_brats_case(tmp_path / "2021", "brats2021", 7)
    (records,) = get_source("brats2021").discover(tmp_path / "2021")
    assert records.subject == "BraTS2021_00007"
    assert list(records.images) == ["t1", "t1ce", "t2", "flair"] and set(records.labels) == {"seg"}

    make_brats_case(tmp_path / "2023", "brats2023", 3)
    for part in ("t1n", "t1c", "t2w", "t2f"):  # a METS subject without its seg (validation data)
        write_nifti(tmp_path / "2023" / "mets" / f"BraTS-MET-00012-001-{part}.nii.gz", brain())
    records = get_source("brats2023").discover(tmp_path / "2023")
    assert [r.subject for r in records] == ["BraTS-GLI-00003-000", "BraTS-MET-00012-001"]
    assert list(records[0].images) == ["t1n", "t1c", "t2w", "t2f"] and records[1].labels == {}
    assert get_source("brats2023").reference_modality == "t1c"


def test_bml_label_map_merges_masks_from_another_grid(tmp_path):
    """whole_seg on a 2 mm grid shifted by 2.6 mm lands at its world position on the T1CE grid."""
    t1ce = write_nifti(tmp_path / "c_t1ce_img.nii.gz", brain())
    flair = write_nifti(tmp_path / "c_flair_img.nii.gz", brain())
    coarse = np.diag([2.0, 2.0, 2.0, 1.0])
    coarse[:3, 3] = 2.6
    whole = np.zeros((12, 12, 12), np.uint8)
    whole[4:7, 4:7, 4:7] = 1  # voxels span world 9.6..15.6 mm, i.e. T1CE voxel centres 10..15
    whole_path = write_nifti(tmp_path / "c_whole_seg.nii.gz", whole, coarse)
    core = np.zeros(SHAPE, np.uint8)
    core[12:14, 12:14, 12:14] = 255  # a 0/255 mask is read as 0/1
    core_path = write_nifti(tmp_path / "c_core_seg.nii.gz", core)
    record = SubjectRecord("c", {"t1ce": t1ce, "flair": flair}, {"whole": whole_path, "core": core_path})

    label = get_source("bml").load_label_map(record, nib.load(t1ce))
    assert label.shape == SHAPE and label.dtype == np.uint8
    assert set(np.unique(label)) == {0, 1, 2}
    assert np.array_equal(np.argwhere(label > 0).min(0), [10, 10, 10])
    assert np.array_equal(np.argwhere(label > 0).max(0), [15, 15, 15])
    assert (label[12:14, 12:14, 12:14] == 2).all() and (label == 2).sum() == 8

    no_core = SubjectRecord("c", record.images, {"whole": whole_path})
    assert set(np.unique(get_source("bml").load_label_map(no_core, nib.load(t1ce)))) == {0, 1}
    assert get_source("bml").load_label_map(SubjectRecord("c", record.images, {}), nib.load(t1ce)) is None


@pytest.mark.parametrize(
    "dataset, values, expected, fatal",
    [
        ("bml", [0, 255], "0/255 mask, read as 0/1", False),
        ("bml", [0, 1, 2], "expected a binary 0/1 mask", True),
        ("bml", [0.0, 0.5, 1.0], "non-integer values (e.g. 0.5)", True),
        ("brats2023", [0, 1, 2, 4], "values 4 outside brats2023's labels (0, 1, 2, 3)", True),
        ("brats2021", [0, 1, 2, 3], "values 3 outside brats2021", True),
        ("brats2021", [0.0, 1.0, 2.0, 4.0], None, None),
    ],
)
def test_label_value_problems(dataset, values, expected, fatal):
    source = get_source(dataset)
    problems = source.label_value_problems(source.label_names[0], np.array(values))
    if expected is None:
        assert problems == []
    else:
        ((text, is_fatal),) = problems
        assert expected in text and is_fatal is fatal


def test_brats_label_map_refuses_values_of_the_other_edition(tmp_path):
    files = make_brats_case(tmp_path, "brats2021", 1)  # ET written as 4
    source = get_source("brats2023")
    record = SubjectRecord("BraTS-GLI-00001-000", {}, {"seg": files["seg"]})
    with pytest.raises(DataError, match="seg holds values 4 outside brats2023.*remap 4 -> 3"):
        source.load_label_map(record, nib.load(files["t1"]))


# -- manifests --------------------------------------------------------------------------------------


def test_seed_way_split_matches_the_notebook():
    ids = [f"P{i:03d}" for i in range(92)][::-1]  # order of discovery must not matter
    assignment = assign_splits(ids, check_split_rule({"name": "seed_way"}))
    split_of = {s: split for s, (split, _) in assignment.items()}
    counts = {name: sum(v == name for v in split_of.values()) for name in ("train", "val", "test")}
    assert counts == {"train": 64, "val": 9, "test": 19}
    assert [s for s in sorted(ids) if split_of[s] == "train"] == sorted(ids)[:64]
    assert [s for s in sorted(ids) if split_of[s] == "test"] == sorted(ids)[73:]


def test_kfold_split_fixed_test_set_and_disjoint_folds():
    ids = [f"P{i:03d}" for i in range(40)]
    rule = check_split_rule({"name": "kfold", "n_folds": 5, "test_size": 8, "seed": 3})
    assignment = assign_splits(ids, rule)
    assert assignment == assign_splits(list(reversed(ids)), rule)  # deterministic
    test = {s for s, (split, _) in assignment.items() if split == "test"}
    assert len(test) == 8 and all(fold is None for s, (_, fold) in assignment.items() if s in test)
    folds = [sorted(s for s, (_, f) in assignment.items() if f == k) for k in range(5)]
    assert [len(f) for f in folds] == [7, 7, 6, 6, 6] and not set().union(*folds) & test
    other_seed = assign_splits(ids, {**rule, "seed": 4})
    assert {s for s, (split, _) in other_seed.items() if split == "test"} != test
    fraction = assign_splits(ids, check_split_rule({"name": "kfold", "test_size": 0.2, "seed": 0}))
    assert sum(split == "test" for split, _ in fraction.values()) == 8


@pytest.mark.parametrize(
    "rule, message",
    [
        ({"name": "random"}, "split_rule.name"),
        ({"name": "kfold", "n_folds": 1}, "n_folds"),
        ({"name": "kfold", "test_size": 1.5}, "test_size"),
        ({"name": "kfold", "folds": 5}, "unknown kfold keys folds"),
        ({"name": "seed_way", "seed": 1}, "no options"),
    ],
)
def test_bad_split_rules(rule, message):
    with pytest.raises(ConfigError, match=message):
        check_split_rule(rule)


def test_committed_split_rules_load():
    folder = REPO / "data_manifests" / "splits"
    rules = {path.stem: load_split_rule(path) for path in folder.glob("*.yaml")}
    assert {"bml_seed_way", "bml_kfold", "brats2021_kfold", "brats2023_kfold"} <= set(rules)
    assert rules["bml_seed_way"] == {"name": "seed_way"}
    assert rules["brats2021_kfold"]["test_size"] == 251 and rules["brats2021_kfold"]["n_folds"] == 5
    assert rules["brats2023_kfold"]["test_size"] == 251


KFOLD_SMALL = {"name": "kfold", "n_folds": 2, "test_size": 2}


def _bml_set(root: Path, n: int = 12) -> Path:
    for i in range(n):
        make_bml_case(root, f"Case{i:03d}", core=i % 4 != 0, whole=i != 5, seed=i)
    return root


def test_make_manifest_rows_sidecar_and_root_override(tmp_path):
    root = _bml_set(tmp_path / "data ä")
    out = tmp_path / "manifests" / "bml.csv"
    manifest = make_manifest("bml", root, out, {"name": "seed_way"}, seed=42, task=None, progress=False)

    rows = manifest.rows.set_index("subject")
    assert rows.loc["Case005", "split"] == "unlabelled" and rows.loc["Case005", "labels_present"] == "core"
    assert rows.loc["Case004", "labels_present"] == "whole"  # enough for the default "whole" task
    assert (rows["split"] != "unlabelled").sum() == 11
    assert rows.loc["Case001", "image_flair"] == "Case001/Case001_flair_img.nii.gz"
    assert rows.loc["Case001", "shape_t1ce"] == "24x24x24" and rows.loc["Case001", "spacing_t1ce"] == "1x1x1"
    assert rows.loc["Case001", "sha256_t1ce"] == sha256_file(root / "Case001" / "Case001_t1ce_img.nii.gz")
    assert rows.loc["Case004", "label_core"] == "" and rows.loc["Case004", "sha256_label_core"] == ""
    assert rows.loc["Case001", "size_bytes"] == sum(p.stat().st_size for p in (root / "Case001").iterdir())
    assert manifest.split_subjects() == {
        "train": [f"Case{i:03d}" for i in (0, 1, 2, 3, 4, 6, 7)],
        "val": ["Case008"],
        "test": ["Case009", "Case010", "Case011"],
    }

    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["dataset"] == "bml" and sidecar["split_rule"] == {"name": "seed_way"}
    assert sidecar["seed"] == 42 and sidecar["n_subjects"] == 12 and sidecar["version"] == 2
    # a data folder beside the manifest's folder is recorded relative to it (portable clones)
    assert sidecar["root"] == "../data ä" and Manifest.load(out).root.resolve() == root.resolve()
    assert "created" in sidecar
    assert {p.name for p in out.parent.iterdir()} == {"bml.csv", "bml.json"}  # no temporary files left

    moved = tmp_path / "elsewhere"
    shutil.copytree(root, moved)
    loaded = Manifest.load(out, root=moved)
    record = loaded.record("Case004")
    assert record.images["t1ce"] == moved / "Case004" / "Case004_t1ce_img.nii.gz"
    assert set(record.labels) == {"whole"} and record.labels["whole"].is_file()
    assert loaded.rows.equals(manifest.rows) and loaded.root == moved
    with pytest.raises(DataError, match="data folder of the manifest does not exist"):
        check_manifest(Manifest.load(out, root=tmp_path / "not here"), progress=False)


def test_numeric_looking_subject_ids_stay_strings(tmp_path):
    for case in ("0007", "0010", "0100"):
        make_bml_case(tmp_path / "data", case)
    make_manifest("bml", tmp_path / "data", tmp_path / "m.csv", {"name": "kfold", "n_folds": 2, "test_size": 1},
                  seed=0, progress=False)
    loaded = Manifest.load(tmp_path / "m.csv")
    assert loaded.subjects == ["0007", "0010", "0100"]
    assert loaded.record("0007").images["t1ce"].is_file()


def test_kfold_manifest_for_a_task_needing_both_labels(tmp_path):
    root = _bml_set(tmp_path / "data")
    manifest = make_manifest(
        "bml", root, tmp_path / "k.csv", {"name": "kfold", "n_folds": 3, "test_size": 2}, seed=7,
        task="core_whole", progress=False,
    )
    assert manifest.split_rule == {"name": "kfold", "n_folds": 3, "test_size": 2, "seed": 7}
    unlabelled = sorted(manifest.rows.loc[manifest.rows["split"] == "unlabelled", "subject"])
    assert unlabelled == ["Case000", "Case004", "Case005", "Case008"]  # no core (or no whole)
    test = manifest.split_subjects(0)["test"]
    vals = []
    for fold in range(3):
        parts = manifest.split_subjects(fold)
        assert parts["test"] == test and not set(parts["train"]) & set(parts["val"])
        assert len(parts["train"]) + len(parts["val"]) == 6
        vals += parts["val"]
    assert sorted(vals) == sorted(set(vals)) and len(vals) == 6
    assert manifest.split_subjects(None) == manifest.split_subjects(0)
    with pytest.raises(ConfigError, match="folds 0..2"):
        manifest.split_subjects(3)
    with pytest.raises(DataError, match="split val is empty"):
        manifest.split_subjects(0, exclude=manifest.split_subjects(0)["val"])


def test_manifest_refuses_empty_splits_and_missing_labels(tmp_path):
    root = tmp_path / "data"
    for i in range(3):
        make_bml_case(root, f"C{i}", seed=i)
    with pytest.raises(DataError, match="split val would be empty: 3 labelled subjects"):
        make_manifest("bml", root, tmp_path / "m.csv", {"name": "seed_way"}, seed=0, progress=False)
    with pytest.raises(DataError, match="too few for a test set of 2 and 5 folds"):
        make_manifest("bml", root, tmp_path / "m.csv", {"name": "kfold", "test_size": 2}, seed=0, progress=False)
    assert not (tmp_path / "m.csv").exists()
    bare = tmp_path / "bare"
    make_bml_case(bare, "C0", whole=False, core=False)
    with pytest.raises(DataError, match="no subject has the labels task 'whole' needs"):
        make_manifest("bml", bare, tmp_path / "m.csv", {"name": "seed_way"}, seed=0, progress=False)


# -- validation -------------------------------------------------------------------------------------


def test_check_manifest_reports_every_problem(tmp_path):
    root = _bml_set(tmp_path / "data", n=11)  # Case010 stays intact
    manifest = make_manifest("bml", root, tmp_path / "m.csv", KFOLD_SMALL, seed=0, progress=False)
    clean = check_manifest(manifest, progress=False)
    (unlabelled,) = clean.problems  # Case005 has no whole_seg: named as a warning, nothing else
    assert clean.ok and clean.n_subjects == 11 and unlabelled.subject == "Case005" and not unlabelled.fatal
    assert "unlabelled for task 'whole': no whole_seg file (label files found: core_seg)" in unlabelled.problem

    def case(i, part):
        return root / f"Case{i:03d}" / f"Case{i:03d}_{part}.nii.gz"

    case(0, "flair_img").unlink()  # missing
    raw = case(1, "t1ce_img").read_bytes()
    case(1, "t1ce_img").write_bytes(raw[: len(raw) // 2])  # truncated
    write_nifti(case(2, "flair_img"), np.stack([brain()] * 2, -1))  # 4D
    nan = brain()
    nan[3, 3, 3] = np.nan
    write_nifti(case(3, "t1ce_img"), nan)  # NaN, and an empty label (warning) in the same subject
    write_nifti(case(3, "whole_seg"), np.zeros(SHAPE, np.uint8))
    write_nifti(case(4, "flair_img"), np.zeros(SHAPE, np.float32))  # empty brain
    two_values = tumour(radius=4)
    two_values[tumour(radius=2) > 0] = 2
    write_nifti(case(6, "whole_seg"), two_values)  # a 0/1/2 map where a binary mask belongs
    write_nifti(case(5, "core_seg"), tumour(radius=2) * 255)  # a 0/255 mask: a warning only
    far = np.eye(4)
    far[:3, 3] = 500.0
    write_nifti(case(7, "flair_img"), brain(), far)  # does not overlap the T1CE
    write_singular_affine(case(8, "t1ce_img"), brain())  # singular affine
    data = brain(seed=99)  # a valid file, but not the one the manifest hashed
    write_nifti(case(9, "t1ce_img"), data)

    report = check_manifest(manifest, progress=False)
    lines = report.format().splitlines()
    assert len(lines) == len(report.problems) and not report.ok

    def has(i, part, text, fatal=True):
        return any(
            p.subject == f"Case{i:03d}" and p.file == str(case(i, part)) and text in p.problem and p.fatal is fatal
            for p in report.problems
        )

    assert has(0, "flair_img", "flair file does not exist")
    assert has(1, "t1ce_img", "t1ce is truncated")
    assert has(2, "flair_img", "flair is 4D")
    assert has(3, "t1ce_img", "contains 1 non-finite voxels (1 NaN, 0 Inf)")
    assert has(3, "whole_seg", "whole_seg is all zero", fatal=False)
    assert has(4, "flair_img", "flair is all zero")
    assert has(6, "whole_seg", "whole_seg holds values 1, 2; expected a binary 0/1 mask")
    assert has(5, "core_seg", "core_seg is a 0/255 mask, read as 0/1", fatal=False)
    assert has(7, "flair_img", "does not overlap the t1ce image")
    assert has(8, "t1ce_img", "singular")
    assert has(9, "t1ce_img", "changed since the manifest was made")
    # every rewritten file also fails its hash; without the hash check Case005 (0/255 mask) and
    # Case009 (a valid but different file) pass
    assert report.fatal_subjects == [f"Case{i:03d}" for i in range(10)]
    no_hashes = check_manifest(manifest, verify_hashes=False, progress=False)
    assert no_hashes.fatal_subjects == [f"Case{i:03d}" for i in (0, 1, 2, 3, 4, 6, 7, 8)]
    assert any(line.startswith("FATAL: subject Case002 [") and "flair is 4D" in line for line in lines)

    report.to_json(tmp_path / "report.json")
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["ok"] is False and saved["fatal_subjects"] == report.fatal_subjects
    assert len(saved["problems"]) == len(report.problems)

    partial = check_manifest(manifest, exclude=report.fatal_subjects, verify_hashes=False, progress=False)
    assert partial.ok and partial.n_subjects == 1 and partial.excluded == report.fatal_subjects


def test_check_manifest_with_workers(tmp_path):
    root = _bml_set(tmp_path / "data", n=10)
    manifest = make_manifest("bml", root, tmp_path / "m.csv", KFOLD_SMALL, seed=0, progress=False)
    write_nifti(root / "Case002" / "Case002_t1ce_img.nii.gz", np.zeros(SHAPE, np.float32))
    serial = check_manifest(manifest, progress=False)
    parallel = check_manifest(manifest, progress=False, workers=2)
    assert parallel.problems == serial.problems and parallel.fatal_subjects == ["Case002"]


# -- one pass over a folder of faults ---------------------------------------------------------------


def _brats_fault_folder(root: Path) -> dict[str, str]:
    """Thirteen BraTS 2023 subjects: ten with one fault each, three good. Returns subject -> what
    `sgnet data manifest` + `sgnet data check` must say about it."""

    def sid(i):
        return f"BraTS-GLI-{i:05d}-000"

    def path(i, part):
        return root / sid(i) / f"{sid(i)}-{part}.nii.gz"

    for i in range(13):
        make_brats_case(root, "brats2023", i)
    path(0, "t2f").unlink()  # missing modality
    path(1, "seg").unlink()  # missing label
    raw = bytearray(path(2, "t1n").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path(2, "t1n").write_bytes(bytes(raw))  # corrupt gzip stream
    write_nifti(path(3, "t2w"), brain(shape=(24, 24, 20)))  # another shape than the t1c
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps[:2, 3] = 23.0  # the same box in space, axes flipped: only the orientation is wrong
    write_nifti(path(4, "t2f"), brain(seed=4), lps)
    nan = brain(seed=5)
    nan[10, 10, 10] = np.nan
    write_nifti(path(5, "t1c"), nan)  # NaN voxel
    write_nifti(path(6, "t1n"), np.zeros(SHAPE, np.float32))  # empty image
    (root / "backup").mkdir()
    shutil.copy(path(7, "t1c"), root / "backup" / f"{sid(7)}-t1c.nii.gz")  # two files for one modality
    fractional = tumour(radius=4).astype(np.float32) * 0.5
    write_nifti(path(8, "seg"), fractional)  # non-integer label values
    seg = tumour(radius=4)
    seg[tumour(radius=1).astype(bool)] = 4
    write_nifti(path(9, "seg"), seg)  # BraTS 2021's ET value in a 2023 set
    return {
        sid(0): "missing modality t2f",
        sid(1): "unlabelled for task 'regions': no seg file",
        sid(2): "t1n is corrupt",
        sid(3): "t2w is not on the t1c grid: shape 24x24x20 (t1c 24x24x24)",
        sid(4): "t2f is not on the t1c grid: orientation LPS (t1c RAS)",
        sid(5): "t1c contains 1 non-finite voxels (1 NaN, 0 Inf)",
        sid(6): "t1n is all zero",
        sid(7): f"2 t1c files, expected one: {sid(7)}/{sid(7)}-t1c.nii.gz, backup/{sid(7)}-t1c.nii.gz",
        sid(8): "seg holds non-integer values (e.g. 0.5)",
        sid(9): "seg holds values 4 outside brats2023's labels",
    }


def test_one_manifest_and_one_check_name_every_fault(tmp_path, capsys):
    from sgnet_lightning.cli import main

    expected = _brats_fault_folder(tmp_path / "data")
    out = tmp_path / "faults.csv"
    split = REPO / "data_manifests" / "splits" / "phantom_kfold.yaml"
    code = main(["data", "manifest", "--dataset", "brats2023", "--root", str(tmp_path / "data"),
                 "--split", str(split), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "13 subjects" in printed and "2 incomplete" in printed
    manifest = Manifest.load(out)
    status = manifest.rows.set_index("subject")["status"]
    assert status[status != "ok"].to_dict() == {
        "BraTS-GLI-00000-000": "incomplete", "BraTS-GLI-00001-000": "unlabelled", "BraTS-GLI-00007-000": "incomplete",
    }  # fmt: skip

    code = main(["data", "check", str(out), "--json", str(tmp_path / "check.json")])
    lines = capsys.readouterr().out.splitlines()
    assert code == 2
    for subject, text in expected.items():
        assert any(f"subject {subject}" in line and text in line for line in lines), (subject, text, lines)
    named = {p["subject"] for p in json.loads((tmp_path / "check.json").read_text())["problems"]}
    assert named == set(expected)  # the three good subjects pass
    fatal = set(json.loads((tmp_path / "check.json").read_text())["fatal_subjects"])
    assert fatal == set(expected) - {"BraTS-GLI-00001-000"}  # an unlabelled subject is a warning


def test_incomplete_subjects_are_refused_until_excluded(tmp_path):
    from sgnet_lightning.data.preprocess import PreprocessSettings, preprocess_manifest

    root = tmp_path / "data"
    for i in range(5):
        make_bml_case(root, f"C{i}", seed=i)
    (root / "C1" / "C1_flair_img.nii.gz").unlink()
    write_nifti(root / "copy" / "C3_t1ce_img.nii.gz", brain(seed=3))
    manifest = make_manifest("bml", root, tmp_path / "m.csv", {"name": "kfold", "n_folds": 2, "test_size": 1},
                             seed=0, progress=False)
    assert manifest.incomplete_subjects == ["C1", "C3"]
    assert manifest.issues("C1") == ["missing modality flair (found core_seg, t1ce, whole_seg)"]
    # they keep the split their labels give them, so fixing them later moves no one
    assert set(manifest.rows.loc[manifest.rows["subject"].isin(["C1", "C3"]), "split"]) <= {"train", "test"}
    with pytest.raises(DataError) as info:
        preprocess_manifest(manifest, tmp_path / "cache", PreprocessSettings(), progress=False)
    message = str(info.value)
    assert info.value.subject == "C1" and "incomplete subject (missing modality flair" in message
    assert "1 more incomplete subject(s): C3" in message and "exclude them" in message and "\n" not in message
    folder = preprocess_manifest(manifest, tmp_path / "cache", PreprocessSettings(), exclude=["C1", "C3"],
                                 progress=False)
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["C0", "C2", "C4"]
