"""Patient-grouped splits: patient IDs per data set, kfold by patient, the seed way's straddling
patients named by `sgnet data check`, the --groups override, and manifests made before the column."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from _nifti_helpers import make_bml_case, make_brats_case
from sgnet_lightning.cli import main
from sgnet_lightning.data.manifest import Manifest, assign_splits, check_split_rule, make_manifest, read_groups
from sgnet_lightning.data.sources import get_source
from sgnet_lightning.data.validate import check_manifest
from sgnet_lightning.errors import ConfigError

# Repeat scans added to the phantom set: case -> the name of its second scan. The suffixes are the
# documented Brain-Mets-Lung rule (sources.py); "BML-0005" gets two more scans.
REPEATS = {
    "BML-0003": ["BML-0003_tp2"],
    "BML-0005": ["BML-0005-scan2", "BML-0005_recurrence"],
    "BML-0010": ["BML-0010_visit2"],
}


def _copy_case(source_dir: Path, case: str, new_case: str, dest_root: Path) -> None:
    """The phantom case's files under a new case ID (a repeat scan of the same patient)."""
    target = dest_root / new_case
    target.mkdir(parents=True)
    for path in source_dir.iterdir():
        shutil.copy(path, target / path.name.replace(case, new_case))


@pytest.fixture(scope="module")
def repeat_scans(phantom_bml, tmp_path_factory) -> Path:
    """The 12 phantom cases plus four repeat scans of three patients (16 cases, 12 patients)."""
    root = tmp_path_factory.mktemp("repeats") / "bml"
    for case_dir in sorted(p for p in phantom_bml["root"].iterdir() if p.is_dir()):
        shutil.copytree(case_dir, root / case_dir.name)
    for case, repeats in REPEATS.items():
        for new_case in repeats:
            _copy_case(phantom_bml["root"] / case, case, new_case, root)
    return root


@pytest.mark.parametrize(
    "dataset, subject, patient",
    [
        ("brats2023", "BraTS-GLI-00000-001", "BraTS-GLI-00000"),
        ("brats2023", "BraTS-MET-00123-000", "BraTS-MET-00123"),
        ("brats2021", "BraTS2021_00017", "BraTS2021_00017"),
        ("bml", "BML-0012_tp2", "BML-0012"),
        ("bml", "BML-0012-scan2", "BML-0012"),
        ("bml", "BML-0012 followup", "BML-0012"),
        ("bml", "BML-0012_Recurrence", "BML-0012"),
        ("bml", "BML-0012", "BML-0012"),  # no repeat-scan suffix: its own patient
        ("bml", "BML-0012_2", "BML-0012_2"),  # a bare number is not a documented suffix
        ("bml", "rec", "rec"),
    ],
)
def test_patient_of_each_data_set(dataset, subject, patient):
    assert get_source(dataset).patient_of(subject) == patient


def _old_subject_kfold(subjects: list[str], rule: dict) -> dict[str, tuple[str, int | None]]:
    """The version-1 rule (subjects, not patients), kept here to prove existing splits do not move."""
    subjects = sorted(subjects)
    n_test = math.ceil(rule["test_size"] * len(subjects)) if isinstance(rule["test_size"], float) else rule["test_size"]
    order = np.random.default_rng(rule["seed"]).permutation(len(subjects))
    out = {subjects[i]: ("test", None) for i in order[:n_test]}
    out.update({subjects[i]: ("train", k % rule["n_folds"]) for k, i in enumerate(order[n_test:])})
    return out


def test_kfold_with_one_subject_per_patient_keeps_the_previous_split():
    ids = [f"BraTS-GLI-{i:05d}-000" for i in range(57)]
    patients = {s: get_source("brats2023").patient_of(s) for s in ids}
    for rule in ({"name": "kfold", "n_folds": 5, "test_size": 0.2, "seed": 42},
                 {"name": "kfold", "n_folds": 3, "test_size": 11, "seed": 0}):  # fmt: skip
        rule = check_split_rule(rule)
        assert assign_splits(ids, rule, patients) == _old_subject_kfold(ids, rule)


def test_kfold_keeps_every_patient_in_one_part_and_balances_folds():
    rng = np.random.default_rng(5)
    sizes = rng.choice([1, 1, 1, 2, 3], size=40)  # 40 patients, 1-3 scans each
    patients = {f"P{p:02d}_tp{t}": f"P{p:02d}" for p, n in enumerate(sizes) for t in range(n)}
    rule = check_split_rule({"name": "kfold", "n_folds": 4, "test_size": 0.25, "seed": 1})
    assignment = assign_splits(list(patients), rule, patients)
    assert assignment == assign_splits(list(reversed(list(patients))), rule, patients)  # order-free
    part_of_patient: dict[str, set] = {}
    for subject, part in assignment.items():
        part_of_patient.setdefault(patients[subject], set()).add(part)
    assert all(len(parts) == 1 for parts in part_of_patient.values())
    test_patients = [p for p, parts in part_of_patient.items() if parts == {("test", None)}]
    assert len(test_patients) == 10  # a quarter of the 40 patients, not of the subjects
    fold_sizes = [sum(part == ("train", f) for part in assignment.values()) for f in range(4)]
    assert max(fold_sizes) - min(fold_sizes) <= 1, fold_sizes  # balanced in subjects
    # without grouping, the same subjects would put some patient's scans on both sides
    ungrouped = assign_splits(list(patients), rule)
    assert any(len({ungrouped[s] for s in patients if patients[s] == p}) > 1 for p in part_of_patient)


def test_kfold_manifest_on_repeat_scans_splits_by_patient(repeat_scans, tmp_path):
    rule = {"name": "kfold", "n_folds": 3, "test_size": 0.25}
    manifest = make_manifest("bml", repeat_scans, tmp_path / "k.csv", rule, seed=3, progress=False)
    rows = manifest.rows.set_index("subject")
    assert rows.loc["BML-0005_recurrence", "patient"] == rows.loc["BML-0005-scan2", "patient"] == "BML-0005"
    assert rows.loc["BML-0004", "patient"] == "BML-0004"
    sidecar = json.loads((tmp_path / "k.json").read_text())
    assert sidecar["n_subjects"] == 16 and sidecar["n_patients"] == 12
    labelled = rows[rows["split"] != "unlabelled"]
    for case, repeats in REPEATS.items():
        if case in labelled.index:
            places = {(labelled.loc[s, "split"], labelled.loc[s, "fold"]) for s in [case, *repeats]}
            assert len(places) == 1, (case, places)
    assert manifest.straddling_patients() == {}
    report = check_manifest(manifest, verify_hashes=False, progress=False)
    assert report.ok and not any("different splits" in p.problem for p in report.problems)
    # every fold's train, val and test sets are patient-disjoint
    for fold in range(3):
        parts = manifest.split_subjects(fold)
        owners = {name: {manifest.patient_of(s) for s in members} for name, members in parts.items()}
        assert not owners["train"] & owners["val"] and not owners["train"] & owners["test"]
        assert not owners["val"] & owners["test"]


def test_seed_way_keeps_the_published_cut_and_check_names_straddling_patients(tmp_path, capsys):
    root = tmp_path / "data"
    for i, case in enumerate(["A01", "A02", "A03", "A04", "A05", "A06", "A07", "A08", "A08_tp2", "A09"]):
        make_bml_case(root, case, seed=i)
    make_bml_case(root, "U01", whole=False)  # unlabelled: takes no part in the cut
    out = tmp_path / "seed.csv"
    assert main(["data", "manifest", "--dataset", "bml", "--root", str(root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    # 10 labelled cases, sorted: int(0.7 * 10) = 7 train, int(0.1 * 10) = 1 val (A08), the rest test:
    # patient A08 has a scan on each side of the val/test cut
    assert Manifest.load(out).split_subjects() == {
        "train": ["A01", "A02", "A03", "A04", "A05", "A06", "A07"], "val": ["A08"], "test": ["A08_tp2", "A09"],
    }  # fmt: skip
    assert "patient A08 has subjects in different splits (A08 val, A08_tp2 test)" in printed
    assert "subject U01: unlabelled for task 'whole': no whole_seg file" in printed

    code = main(["data", "check", str(out), "--no-hash"])
    lines = capsys.readouterr().out.splitlines()
    (warning,) = [line for line in lines if "different splits" in line]
    assert warning.startswith("warning: subject A08: patient A08 ") and "the seed way cuts sorted case IDs" in warning
    assert code == 0  # a warning, not a fatal problem: the seed way is the published split
    kfold = make_manifest("bml", root, tmp_path / "k.csv", {"name": "kfold", "n_folds": 2, "test_size": 2}, seed=0,
                          progress=False)
    assert kfold.straddling_patients() == {}
    assert kfold.rows.set_index("subject").loc[["A08", "A08_tp2"], ["split", "fold"]].drop_duplicates().shape[0] == 1


def test_brats2023_timepoints_of_one_patient_share_a_split(tmp_path):
    root = tmp_path / "brats"
    for index in range(6):
        make_brats_case(root, "brats2023", index)
    for index in (1, 4):  # a second timepoint of patients 1 and 4
        first = f"BraTS-GLI-{index:05d}-000"
        _copy_case(root / first, first, f"BraTS-GLI-{index:05d}-001", root)
    manifest = make_manifest("brats2023", root, tmp_path / "b.csv", {"name": "kfold", "n_folds": 2, "test_size": 2},
                             seed=0, progress=False)
    rows = manifest.rows.set_index("subject")
    assert rows.loc["BraTS-GLI-00004-001", "patient"] == "BraTS-GLI-00004" and rows["patient"].nunique() == 6
    for index in (1, 4):
        pair = rows.loc[[f"BraTS-GLI-{index:05d}-000", f"BraTS-GLI-{index:05d}-001"], ["split", "fold"]]
        assert len(pair.drop_duplicates()) == 1
    assert rows.loc[rows["split"] == "test", "patient"].nunique() == 2  # test_size counts patients
    assert manifest.straddling_patients() == {}


def _groups_csv(path: Path, pairs: dict[str, str]) -> Path:
    pd.DataFrame({"subject": list(pairs), "patient": list(pairs.values())}).to_csv(path, index=False)
    return path


def test_groups_file_overrides_the_naming_rule(tmp_path, capsys):
    root = tmp_path / "data"
    cases = [f"X{i}" for i in range(8)]
    for i, case in enumerate(cases):
        make_bml_case(root, case, seed=i)
    # X0..X2 are one patient (the naming rule cannot know it), the others their own
    groups = _groups_csv(tmp_path / "groups.csv", {c: ("P-a" if c in ("X0", "X1", "X2") else f"P-{c}") for c in cases})
    rule = {"name": "kfold", "n_folds": 2, "test_size": 2}
    for seed in range(4):  # whatever the shuffle, the three scans stay together
        manifest = make_manifest("bml", root, tmp_path / "g.csv", rule, seed=seed, groups=groups, progress=False)
        places = manifest.rows.set_index("subject").loc[["X0", "X1", "X2"], ["split", "fold"]]
        assert len(places.drop_duplicates()) == 1 and manifest.straddling_patients() == {}
    assert json.loads((tmp_path / "g.json").read_text())["patients_from"] == "groups file groups.csv"
    assert set(manifest.rows["patient"]) == {"P-a"} | {f"P-{c}" for c in cases[3:]}

    # the file must name exactly the subjects found: both mismatches in one message, one line
    wrong = _groups_csv(tmp_path / "wrong.csv", {**{c: c for c in cases[:7]}, "X99": "P"})
    with pytest.raises(ConfigError) as info:
        read_groups(wrong, cases)
    message = str(info.value)
    assert "1 subject(s) in the file are not in the data folder: X99" in message
    assert "1 subject(s) of the data folder are not in the file: X7" in message
    assert read_groups(wrong, cases[:7] + ["X99"]) == {**{c: c for c in cases[:7]}, "X99": "P"}
    assert read_groups(wrong, cases[:7], excluded=["X99"])["X99"] == "P"  # an excluded subject may be named
    bad_columns = tmp_path / "cols.csv"
    bad_columns.write_text("case,group\nX0,P\n")
    with pytest.raises(ConfigError, match="needs columns subject,patient; has case,group"):
        read_groups(bad_columns, cases)

    code = main(["data", "manifest", "--dataset", "bml", "--root", str(root), "--out", str(tmp_path / "c.csv"),
                 "--groups", str(wrong)])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "X99" in err and "X7" in err
    assert not (tmp_path / "c.csv").exists()


def test_manifest_made_before_the_patient_column_still_loads(tmp_path, caplog):
    root = tmp_path / "data"
    for i in range(4):
        make_bml_case(root, f"C{i}", whole=i != 3, seed=i)
    rule = {"name": "kfold", "n_folds": 2, "test_size": 1}
    manifest = make_manifest("bml", root, tmp_path / "old.csv", rule, seed=0, progress=False)
    # rewrite it as version 1 wrote it: no patient, status or issues column
    manifest.rows.drop(columns=["patient", "status", "issues"]).to_csv(tmp_path / "old.csv", index=False)
    sidecar = json.loads((tmp_path / "old.json").read_text())
    (tmp_path / "old.json").write_text(json.dumps({**sidecar, "version": 1}))

    with caplog.at_level(logging.WARNING):
        old = Manifest.load(tmp_path / "old.csv")
    assert "has no patient column" in caplog.text and "each subject counts as its own patient" in caplog.text
    assert list(old.rows["patient"]) == list(old.rows["subject"])
    assert list(old.rows["status"]) == ["ok", "ok", "ok", "unlabelled"] and old.incomplete_subjects == []
    assert old.split_subjects() == manifest.split_subjects()
    report = check_manifest(old, progress=False)
    assert report.ok and [p.subject for p in report.problems] == ["C3"]  # the unlabelled case, named
