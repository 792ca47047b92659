"""Manifests: the committed, reviewable list of a data set's subjects, files and splits.

A manifest is a CSV (one row per subject) plus a JSON sidecar of the same name. File paths are
relative to the data root, so a manifest committed to the repository works on any machine:
``Manifest.load(path, root=...)`` points it at wherever the data lie there.

CSV columns, in order:
    subject, patient (the patient the subject's scans belong to: see "Patients" below), split
    (``train``/``val``/``test``/``unlabelled``), fold (int; empty for test and unlabelled rows and
    for rules without folds), status (``ok``; ``unlabelled``: lacks a label the task needs, kept for
    prediction; ``incomplete``: a modality is missing or two files claim one part), issues
    (``;``-joined sentences saying why a subject is incomplete), labels_present (``;``-joined label
    names), then per modality ``image_<m>``, ``shape_<m>`` (``240x240x155``), ``spacing_<m>`` (mm,
    ``1x1x1``), ``sha256_<m>`` (all empty for a missing modality); per label name ``label_<n>``,
    ``sha256_label_<n>`` (empty when the file is absent); and ``size_bytes`` (all files of the
    subject together).

Incomplete subjects stay in the manifest, so that ``sgnet data check`` reports the problems of every
subject in one run. They keep the split their labels give them (fixing the files later moves no
other subject), but nothing trains, tests or caches them: :meth:`Manifest.record` refuses them with
one line naming every incomplete subject, and training refuses a manifest whose check fails until
they are fixed or listed in ``data.exclude`` (``--exclude``).

Patients: every subject has a patient (the data set's naming rule, see
:mod:`sgnet_lightning.data.sources`, or a ``subject,patient`` CSV passed as ``groups``). Manifests
made before this column existed load with each subject as its own patient (a logged note).

Split rules (recorded in the sidecar):
    ``{"name": "seed_way"}``: the published SG-Net notebook's split. Labelled subject IDs, sorted,
        are cut into ``int(0.7 n)`` train, ``int(0.1 n)`` val and the rest test (92 -> 64/9/19).
        It cuts case IDs, not patients, as published; ``sgnet data check`` warns, naming each
        patient whose cases it puts in different splits.
    ``{"name": "kfold", "n_folds": 5, "test_size": 0.2 | 251, "seed": 0}``: split by patient. A
        fixed held-out test set of patients (a fraction of the patients, rounded up as
        scikit-learn does, or a count of patients; with one subject per patient, exactly that
        many subjects), then the remaining patients dealt into ``n_folds`` folds after a seeded
        shuffle (patients with more subjects first, each to the fold holding the fewest subjects,
        which with one subject per patient is plain round-robin). All subjects of a patient share
        one split and fold. Their rows say ``train``; fold ``f``'s val set is the rows with
        ``fold == f``, its train set the other folds.
Subjects lacking a label the task needs are kept as ``unlabelled`` (prediction only).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import yaml
from tqdm.auto import tqdm

from sgnet_lightning.files import atomic_write_json, atomic_write_text
from sgnet_lightning.data.io import sha256_file
from sgnet_lightning.data.labels import get_task
from sgnet_lightning.data.sources import DatasetSource, SubjectRecord, get_source
from sgnet_lightning.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

# 2: patient, status and issues columns (version 1 manifests still load)
MANIFEST_VERSION = 2
SPLITS = ("train", "val", "test", "unlabelled")
STATUSES = ("ok", "unlabelled", "incomplete")
SPLIT_RULES = ("seed_way", "kfold")
# columns added in version 2, filled in when an older manifest is loaded
_V2_COLUMNS = ("patient", "status", "issues")
ISSUE_SEPARATOR = "; "


def load_split_rule(path: str | os.PathLike) -> dict:
    """Read a split rule from YAML (e.g. ``data_manifests/splits/bml_kfold.yaml``; the rule itself or
    under a ``split_rule`` key) and check it."""
    path = Path(path)
    try:
        rule = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"split rule {path}: cannot be read ({exc})".replace("\n", " ")) from None
    if isinstance(rule, dict) and "split_rule" in rule:
        rule = rule["split_rule"]
    return check_split_rule(rule)


def check_split_rule(rule: dict) -> dict:
    """The rule with defaults filled in; :class:`ConfigError` naming the key when it cannot work."""
    if not isinstance(rule, dict) or rule.get("name") not in SPLIT_RULES:
        raise ConfigError(f"split_rule.name must be one of {', '.join(SPLIT_RULES)}; got {rule!r}")
    if rule["name"] == "seed_way":
        unknown = set(rule) - {"name"}
        if unknown:
            raise ConfigError(f"split_rule: seed_way takes no options; got {', '.join(sorted(unknown))}")
        return {"name": "seed_way"}
    unknown = set(rule) - {"name", "n_folds", "test_size", "seed"}
    if unknown:
        raise ConfigError(f"split_rule: unknown kfold keys {', '.join(sorted(unknown))}")
    rule = {"name": "kfold", "n_folds": 5, "test_size": 0.2, **rule}
    n_folds, test_size = rule["n_folds"], rule["test_size"]
    if not isinstance(n_folds, int) or isinstance(n_folds, bool) or n_folds < 2:
        raise ConfigError(f"split_rule.n_folds must be an integer >= 2; got {n_folds!r}")
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)):
        raise ConfigError(f"split_rule.test_size must be a fraction or a count; got {test_size!r}")
    if isinstance(test_size, float) and not 0 < test_size < 1:
        raise ConfigError(f"split_rule.test_size as a fraction must lie in (0, 1); got {test_size}")
    if isinstance(test_size, int) and test_size < 1:
        raise ConfigError(f"split_rule.test_size as a count must be >= 1; got {test_size}")
    if "seed" in rule and (not isinstance(rule["seed"], int) or isinstance(rule["seed"], bool)):
        raise ConfigError(f"split_rule.seed must be an integer; got {rule['seed']!r}")
    return rule


def _listing(items, limit: int = 10) -> str:
    items = list(items)
    return ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def read_groups(path: str | os.PathLike, subjects, excluded=()) -> dict[str, str]:
    """Subject -> patient from a CSV with columns ``subject,patient`` (one row per subject).

    Args:
        path: the CSV (e.g. made from the collection's clinical table).
        subjects: the subject IDs found in the data folder; the file must name each exactly once.
        excluded: subject IDs left out of the manifest; the file may name them.

    Raises:
        ConfigError: unreadable file, missing columns, an empty patient, a subject named twice, or
            a file that does not match the data (subjects it names that were not found, subjects
            found that it does not name: both listed in one message).
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"groups file {path}: cannot be read ({exc})".replace("\n", " ")) from None
    table.columns = [str(c).strip() for c in table.columns]
    if not {"subject", "patient"} <= set(table.columns):
        raise ConfigError(
            f"groups file {path}: needs columns subject,patient; has {','.join(table.columns) or 'none'}"
        )
    table = table[["subject", "patient"]].apply(lambda column: column.str.strip())
    if (table["patient"] == "").any():
        blank = table.loc[table["patient"] == "", "subject"]
        raise ConfigError(f"groups file {path}: no patient for subject(s) {_listing(blank)}")
    repeated = table.loc[table["subject"].duplicated(), "subject"]
    if not repeated.empty:
        raise ConfigError(f"groups file {path}: subject(s) named more than once: {_listing(sorted(set(repeated)))}")
    named, found = set(table["subject"]), set(subjects)
    unknown = sorted(named - found - set(excluded))
    absent = sorted(found - named)
    if unknown or absent:
        parts = []
        if unknown:
            parts.append(f"{len(unknown)} subject(s) in the file are not in the data folder: {_listing(unknown)}")
        if absent:
            parts.append(f"{len(absent)} subject(s) of the data folder are not in the file: {_listing(absent)}")
        raise ConfigError(f"groups file {path} does not match the data: {'; '.join(parts)}")
    return dict(zip(table["subject"], table["patient"]))


def assign_splits(
    labelled: list[str], rule: dict, patients: dict[str, str] | None = None
) -> dict[str, tuple[str, int | None]]:
    """Subject -> (split, fold) for the labelled subjects under a checked ``rule`` (with seed).

    Args:
        labelled: subject IDs to split.
        rule: a checked split rule (see the module docstring).
        patients: subject -> patient; kfold keeps each patient's subjects in one split and fold
            (subjects not in it are their own patient). The seed way ignores it: it is the
            published cut of sorted case IDs.
    """
    subjects = sorted(labelled)
    n = len(subjects)
    if rule["name"] == "seed_way":
        n_train, n_val = int(0.7 * n), int(0.1 * n)
        parts = {
            "train": subjects[:n_train],
            "val": subjects[n_train : n_train + n_val],
            "test": subjects[n_train + n_val :],
        }
        _require_nonempty(parts, n, rule)
        return {s: (split, None) for split, members in parts.items() for s in members}

    members: dict[str, list[str]] = {}
    for subject in subjects:
        members.setdefault((patients or {}).get(subject, subject), []).append(subject)
    names = sorted(members)
    n_patients, n_folds, test_size = len(names), rule["n_folds"], rule["test_size"]
    n_test = math.ceil(test_size * n_patients) if isinstance(test_size, float) else test_size
    if n_test >= n_patients or n_patients - n_test < n_folds:
        raise DataError(
            "?",
            None,
            f"{n} labelled subjects ({n_patients} patients) are too few for a test set of {n_test} and "
            f"{n_folds} folds of at least one patient each",
        )
    order = np.random.default_rng(rule["seed"]).permutation(n_patients)
    assignment = {s: ("test", None) for i in order[:n_test] for s in members[names[i]]}
    # larger patients first (a stable sort keeps the shuffled order among equals), each to the
    # fold with the fewest subjects so far: folds stay balanced in subjects, not just patients
    remaining = sorted((names[i] for i in order[n_test:]), key=lambda name: -len(members[name]))
    fold_sizes = [0] * n_folds
    for name in remaining:
        fold = int(np.argmin(fold_sizes))
        fold_sizes[fold] += len(members[name])
        assignment.update({s: ("train", fold) for s in members[name]})
    return assignment


def _require_nonempty(parts: dict[str, list[str]], n: int, rule: dict) -> None:
    empty = [name for name, members in parts.items() if not members]
    if empty:
        raise DataError(
            "?", None, f"split {', '.join(empty)} would be empty: {n} labelled subjects are too few "
            f"for split rule {rule['name']}"
        )


def _geometry(path: Path) -> tuple[str, str]:
    """``("240x240x155", "1x1x1")`` from the header alone; empty strings when it cannot be read
    (``sgnet data check`` then reports why)."""
    try:
        header = nib.load(path).header
        shape = header.get_data_shape()[:3]
        zooms = header.get_zooms()[:3]
    except Exception:  # any unreadable header: recorded empty, diagnosed by validation
        return "", ""
    return "x".join(str(int(s)) for s in shape), "x".join(f"{float(z):g}" for z in zooms)


def _portable_root(root: Path, manifest_path: Path) -> str:
    """The data folder as the sidecar records it: relative to the manifest's folder when the data lie
    in the same tree (the phantom sets inside a clone: the committed manifest works in any clone),
    absolute otherwise (real data sets kept elsewhere; override with ``root=`` / ``--root``)."""
    relative = Path(os.path.relpath(root, manifest_path.absolute().parent))
    climbs = sum(part == ".." for part in relative.parts)
    return relative.as_posix() if climbs <= 1 else str(root)


def _resolve_root(recorded: str, manifest_path) -> Path:
    recorded_path = Path(recorded)
    return recorded_path if recorded_path.is_absolute() else (Path(manifest_path).absolute().parent / recorded_path)


def _relative(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def make_manifest(
    dataset: str,
    root: str | os.PathLike,
    out_path: str | os.PathLike,
    split_rule: dict,
    seed: int,
    task: str | None = None,
    *,
    exclude=(),
    groups: str | os.PathLike | None = None,
    progress: bool = True,
) -> "Manifest":
    """Discover ``root``, assign splits, hash every file and write ``out_path`` (CSV) + sidecar.

    Every subject found is kept, incomplete ones too (status ``incomplete``, see the module
    docstring), so that one ``sgnet data check`` reports everything.

    Args:
        dataset: ``bml``, ``brats2021`` or ``brats2023``.
        root: data folder (any layout the data set's source understands).
        out_path: CSV path; the sidecar is the same path with ``.json``.
        split_rule: see the module docstring; a kfold rule without ``seed`` takes ``seed``.
        seed: seed of the split (recorded even when the rule does not use it).
        task: task name (see ``labels.py``); decides which labels make a subject ``labelled``.
        exclude: subject IDs left out entirely.
        groups: CSV with columns ``subject,patient`` giving every subject's patient, instead of the
            data set's naming rule (see :func:`read_groups`).
        progress: show a progress bar while hashing.
    """
    source = get_source(dataset)
    try:
        task_obj = get_task(dataset, task)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if isinstance(split_rule, dict) and split_rule.get("name") == "kfold":
        split_rule = {"seed": seed, **split_rule}
    rule = check_split_rule(split_rule)
    root = Path(root).absolute()
    records = source.discover(root, exclude=exclude, keep_incomplete=True)
    subjects = [r.subject for r in records]
    if groups is not None:
        patients = read_groups(groups, subjects, excluded=exclude)
        grouping = f"groups file {Path(groups).name}"
    else:
        patients = {s: source.patient_of(s) for s in subjects}
        grouping = f"{dataset} naming rule (sgnet_lightning.data.sources)"

    needed = source.required_labels(task_obj)
    labelled = [r.subject for r in records if all(n in r.labels for n in needed)]
    if not labelled:
        raise DataError(
            "?", root, f"no subject has the labels task {task_obj.name!r} needs ({', '.join(needed)})"
        )
    assignment = assign_splits(labelled, rule, patients)

    rows = []
    for record in tqdm(records, desc=f"manifest {dataset}", unit="subject", disable=not progress):
        split, fold = assignment.get(record.subject, ("unlabelled", None))
        status = "incomplete" if record.issues else "ok" if split != "unlabelled" else "unlabelled"
        row = {
            "subject": record.subject,
            "patient": patients[record.subject],
            "split": split,
            "fold": "" if fold is None else fold,
            "status": status,
            "issues": ISSUE_SEPARATOR.join(record.issues),
            "labels_present": ";".join(n for n in source.label_names if n in record.labels),
        }
        size = 0
        for modality in source.modalities:
            path = record.images.get(modality)
            shape, spacing = _geometry(path) if path else ("", "")
            row.update(
                {
                    f"image_{modality}": _relative(path, root) if path else "",
                    f"shape_{modality}": shape,
                    f"spacing_{modality}": spacing,
                    f"sha256_{modality}": sha256_file(path) if path else "",
                }
            )
            size += path.stat().st_size if path else 0
        for name in source.label_names:
            path = record.labels.get(name)
            row[f"label_{name}"] = _relative(path, root) if path else ""
            row[f"sha256_label_{name}"] = sha256_file(path) if path else ""
            size += path.stat().st_size if path else 0
        row["size_bytes"] = size
        rows.append(row)

    frame = pd.DataFrame(rows, columns=_columns(source))
    sidecar = {
        "version": MANIFEST_VERSION,
        "dataset": dataset,
        "task": task_obj.name,
        "root": _portable_root(root, Path(out_path)),
        "split_rule": rule,
        "seed": seed,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n_subjects": len(rows),
        "n_patients": int(frame["patient"].nunique()),
        "patients_from": grouping,
        "n_per_split": {s: int((frame["split"] == s).sum()) for s in SPLITS},
        "n_per_status": {s: int((frame["status"] == s).sum()) for s in STATUSES},
        "excluded": sorted(exclude),
        "modalities": list(source.modalities),
        "label_names": list(source.label_names),
    }
    out_path = Path(out_path)
    atomic_write_text(out_path, frame.to_csv(index=False))
    atomic_write_json(_sidecar_path(out_path), sidecar)
    return Manifest.load(out_path)


def _columns(source: DatasetSource) -> list[str]:
    columns = ["subject", "patient", "split", "fold", "status", "issues", "labels_present"]
    for m in source.modalities:
        columns += [f"image_{m}", f"shape_{m}", f"spacing_{m}", f"sha256_{m}"]
    for n in source.label_names:
        columns += [f"label_{n}", f"sha256_label_{n}"]
    return columns + ["size_bytes"]


def _sidecar_path(csv_path: Path) -> Path:
    return csv_path.with_suffix(".json")


@dataclass
class Manifest:
    """A loaded manifest.

    Attributes:
        path: the CSV file.
        dataset: data set name.
        root: data folder the relative paths start from (the sidecar's, unless overridden).
        rows: one row per subject (all columns as strings except ``fold``, a nullable int).
        split_rule: the checked rule the splits were made with.
        sidecar: the whole JSON sidecar.
    """

    path: Path
    dataset: str
    root: Path
    rows: pd.DataFrame
    split_rule: dict
    sidecar: dict = field(repr=False)

    @classmethod
    def load(cls, path: str | os.PathLike, root: str | os.PathLike | None = None) -> "Manifest":
        """Read a manifest; ``root`` overrides the data folder recorded when it was made."""
        path = Path(path)
        sidecar_path = _sidecar_path(path)
        for p in (path, sidecar_path):
            if not p.is_file():
                raise DataError("?", p, "manifest file does not exist")
        try:
            sidecar = json.loads(sidecar_path.read_text())
            # dtype=str: subject IDs such as "00012" must stay strings
            rows = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (ValueError, OSError) as exc:
            raise DataError("?", path, f"manifest cannot be read ({exc})") from exc
        absent = [k for k in ("dataset", "root", "split_rule") if not isinstance(sidecar, dict) or k not in sidecar]
        if absent:
            raise DataError("?", sidecar_path, f"manifest sidecar lacks {', '.join(absent)} (not made by "
                            "`sgnet data manifest`?)")
        if sidecar.get("version", 0) > MANIFEST_VERSION:
            raise DataError(
                "?", path, f"manifest version {sidecar['version']} is newer than this code reads "
                f"({MANIFEST_VERSION}): update sgnet-lightning"
            )
        required = [c for c in _columns(get_source(sidecar["dataset"])) if c not in _V2_COLUMNS]
        missing = [c for c in required if c not in rows.columns]
        if missing:
            raise DataError("?", path, f"manifest lacks columns {', '.join(missing)}")
        if "patient" not in rows.columns:
            logger.warning(
                "manifest %s has no patient column (made before patient grouping): each subject counts as "
                "its own patient; remake it with `sgnet data manifest` to split by patient", path
            )
            rows.insert(1, "patient", rows["subject"])
        if "status" not in rows.columns:  # version 1 stopped at incomplete subjects: all are complete
            rows["status"] = rows["split"].where(rows["split"] == "unlabelled", "ok")
        if "issues" not in rows.columns:
            rows["issues"] = ""
        rows["fold"] = pd.to_numeric(rows["fold"].replace("", None)).astype("Int64")
        rows["size_bytes"] = pd.to_numeric(rows["size_bytes"]).astype("int64")
        return cls(
            path=path,
            dataset=sidecar["dataset"],
            root=Path(root) if root is not None else _resolve_root(sidecar["root"], path),
            rows=rows,
            split_rule=sidecar["split_rule"],
            sidecar=sidecar,
        )

    def require_root(self) -> None:
        """Raise a clear :class:`DataError` when :attr:`root` is not a folder (instead of one
        "file does not exist" per file)."""
        if not self.root.is_dir():
            raise DataError(
                "?", self.root, "data folder of the manifest does not exist; pass the folder where the "
                "data are on this machine as root (--root)"
            )

    @property
    def source(self) -> DatasetSource:
        return get_source(self.dataset)

    @property
    def subjects(self) -> list[str]:
        return self.rows["subject"].tolist()

    @property
    def n_folds(self) -> int | None:
        return self.split_rule.get("n_folds")

    def _row(self, subject: str) -> pd.Series:
        match = self.rows[self.rows["subject"] == subject]
        if match.empty:
            raise DataError(subject, self.path, "subject is not in the manifest")
        return match.iloc[0]

    @property
    def incomplete_subjects(self) -> list[str]:
        """Subjects with status ``incomplete`` (sorted); nothing may train, test or cache them."""
        return sorted(self.rows.loc[self.rows["status"] == "incomplete", "subject"])

    def issues(self, subject: str) -> list[str]:
        """Why ``subject`` is incomplete, one sentence each (empty for other subjects)."""
        value = self._row(subject)["issues"]
        return value.split(ISSUE_SEPARATOR) if value else []

    def patient_of(self, subject: str) -> str:
        return self._row(subject)["patient"]

    def record(self, subject: str, *, partial: bool = False) -> SubjectRecord:
        """The subject's files as absolute paths under :attr:`root`.

        Args:
            subject: subject ID.
            partial: give an incomplete subject's record too, with the files that exist (for
                ``sgnet data check``); otherwise an incomplete subject raises.

        Raises:
            DataError: the subject is incomplete (and ``partial`` is False): the message names its
                issues and every other incomplete subject, and says how to go on.
        """
        row, source = self._row(subject), self.source
        if row["status"] == "incomplete" and not partial:
            others = [s for s in self.incomplete_subjects if s != subject]
            more = f"; {len(others)} more incomplete subject(s): {_listing(others)}" if others else ""
            raise DataError(
                subject, self.path, f"incomplete subject ({row['issues']}){more}; fix the files and remake the "
                "manifest, or exclude them (--exclude / data.exclude); `sgnet data check` lists every problem"
            )
        images = {m: self.root / row[f"image_{m}"] for m in source.modalities if row[f"image_{m}"]}
        labels = {n: self.root / row[f"label_{n}"] for n in source.label_names if row[f"label_{n}"]}
        return SubjectRecord(subject, images, labels, tuple(self.issues(subject)))

    def hashes(self, subject: str, *, partial: bool = False) -> dict[str, str]:
        """Absolute file path -> SHA-256 recorded when the manifest was made (``partial``: as in
        :meth:`record`)."""
        row, record = self._row(subject), self.record(subject, partial=partial)
        out = {str(p): row[f"sha256_{m}"] for m, p in record.images.items()}
        out.update({str(p): row[f"sha256_label_{n}"] for n, p in record.labels.items()})
        return out

    def labels_present(self, subject: str) -> list[str]:
        value = self._row(subject)["labels_present"]
        return value.split(";") if value else []

    def missing_labels(self, subject: str) -> list[str]:
        """Label files (by file-name part, e.g. ``whole_seg``) the manifest's task needs and
        ``subject`` lacks; empty for a labelled subject."""
        source = self.source
        needed = source.required_labels(get_task(self.dataset, self.sidecar.get("task")))
        present = set(self.labels_present(subject))
        return [source.label_parts[n] for n in needed if n not in present]

    def straddling_patients(self, exclude=()) -> dict[str, list[tuple[str, str]]]:
        """Patients whose labelled subjects sit in more than one split (or, for kfold, in more than
        one fold or in a fold and the test set): patient -> [(subject, "train" / "test" /
        "fold 2" ...)], sorted; subjects in ``exclude`` do not count. A kfold manifest made by
        patient has none; the seed way may."""
        labelled = self.rows[(self.rows["split"] != "unlabelled") & ~self.rows["subject"].isin(set(exclude))]
        if self.split_rule["name"] == "seed_way":
            part = labelled["split"]
        else:
            part = labelled["split"].where(labelled["split"] == "test", "fold " + labelled["fold"].astype(str))
        out = {}
        for patient, group in labelled.assign(part=part).groupby("patient", sort=True):
            if group["part"].nunique() > 1:
                out[patient] = sorted(zip(group["subject"], group["part"]))
        return out

    def split_subjects(self, fold: int | None = None, *, exclude=()) -> dict[str, list[str]]:
        """``{"train": [...], "val": [...], "test": [...]}`` (sorted IDs) for one fold.

        Args:
            fold: for kfold manifests the fold whose val set is held out (None: fold 0); for
                seed_way manifests only None or 0.
            exclude: subject IDs to drop (e.g. the fatal subjects of ``sgnet data check``).
        """
        rows = self.rows[~self.rows["subject"].isin(set(exclude))]
        if self.split_rule["name"] == "seed_way":
            if fold not in (None, 0):
                raise ConfigError(f"fold {fold}: manifest {self.path} has no folds (seed_way split)")
            parts = {s: sorted(rows.loc[rows["split"] == s, "subject"]) for s in ("train", "val", "test")}
        else:
            fold = 0 if fold is None else fold
            if not 0 <= fold < self.n_folds:
                raise ConfigError(f"fold {fold}: manifest {self.path} has folds 0..{self.n_folds - 1}")
            pool = rows[rows["split"] == "train"]
            parts = {
                "train": sorted(pool.loc[pool["fold"] != fold, "subject"]),
                "val": sorted(pool.loc[pool["fold"] == fold, "subject"]),
                "test": sorted(rows.loc[rows["split"] == "test", "subject"]),
            }
        empty = [name for name, members in parts.items() if not members]
        if empty:
            raise DataError(
                "?", self.path, f"split {', '.join(empty)} is empty (fold {fold}, "
                f"{len(exclude)} subjects excluded)"
            )
        return parts
