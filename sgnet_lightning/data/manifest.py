"""Manifests: the committed, reviewable list of a data set's subjects, files and splits.

A manifest is a CSV (one row per subject) plus a JSON sidecar of the same name. File paths are
relative to the data root, so a manifest committed to the repository works on any machine:
``Manifest.load(path, root=...)`` points it at wherever the data lie there.

CSV columns, in order:
    subject, split (``train``/``val``/``test``/``unlabelled``), fold (int; empty for test and
    unlabelled rows and for rules without folds), labels_present (``;``-joined label names),
    then per modality ``image_<m>``, ``shape_<m>`` (``240x240x155``), ``spacing_<m>`` (mm,
    ``1x1x1``), ``sha256_<m>``; per label name ``label_<n>``, ``sha256_label_<n>`` (empty when the
    file is absent); and ``size_bytes`` (all files of the subject together).

Split rules (recorded in the sidecar):
    ``{"name": "seed_way"}``: the published SG-Net notebook's split. Labelled subject IDs, sorted,
        are cut into ``int(0.7 n)`` train, ``int(0.1 n)`` val and the rest test (92 -> 64/9/19).
    ``{"name": "kfold", "n_folds": 5, "test_size": 0.2 | 251, "seed": 0}``: a fixed held-out test
        set (a fraction, rounded up as scikit-learn does, or a count), then the remaining labelled
        subjects dealt into ``n_folds`` folds after a seeded shuffle. Their rows say ``train``;
        fold ``f``'s val set is the rows with ``fold == f``, its train set the other folds.
Subjects lacking a label the task needs are kept as ``unlabelled`` (prediction only).
"""

from __future__ import annotations

import json
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

from sgnet_lightning.data.cache import atomic_write_json, atomic_write_text
from sgnet_lightning.data.io import sha256_file
from sgnet_lightning.data.labels import get_task
from sgnet_lightning.data.sources import DatasetSource, SubjectRecord, get_source
from sgnet_lightning.errors import ConfigError, DataError

MANIFEST_VERSION = 1
SPLITS = ("train", "val", "test", "unlabelled")
SPLIT_RULES = ("seed_way", "kfold")


def load_split_rule(path: str | os.PathLike) -> dict:
    """Read a split rule from YAML (e.g. ``data_manifests/splits/bml_kfold.yaml``) and check it."""
    path = Path(path)
    try:
        rule = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"split rule {path}: cannot be read ({exc})") from exc
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


def assign_splits(labelled: list[str], rule: dict) -> dict[str, tuple[str, int | None]]:
    """Subject -> (split, fold) for the labelled subjects under a checked ``rule`` (with seed)."""
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

    test_size = rule["test_size"]
    n_test = math.ceil(test_size * n) if isinstance(test_size, float) else test_size
    if n_test >= n or n - n_test < rule["n_folds"]:
        raise DataError(
            "?",
            None,
            f"{n} labelled subjects are too few for a test set of {n_test} and "
            f"{rule['n_folds']} folds of at least one subject each",
        )
    order = np.random.default_rng(rule["seed"]).permutation(n)
    assignment = {subjects[i]: ("test", None) for i in order[:n_test]}
    for position, i in enumerate(order[n_test:]):
        assignment[subjects[i]] = ("train", position % rule["n_folds"])
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
    progress: bool = True,
) -> "Manifest":
    """Discover ``root``, assign splits, hash every file and write ``out_path`` (CSV) + sidecar.

    Args:
        dataset: ``bml``, ``brats2021`` or ``brats2023``.
        root: data folder (any layout the data set's source understands).
        out_path: CSV path; the sidecar is the same path with ``.json``.
        split_rule: see the module docstring; a kfold rule without ``seed`` takes ``seed``.
        seed: seed of the split (recorded even when the rule does not use it).
        task: task name (see ``labels.py``); decides which labels make a subject ``labelled``.
        exclude: subject IDs left out entirely.
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
    records = source.discover(root, exclude=exclude)

    needed = source.required_labels(task_obj)
    labelled = [r.subject for r in records if all(n in r.labels for n in needed)]
    if not labelled:
        raise DataError(
            "?", root, f"no subject has the labels task {task_obj.name!r} needs ({', '.join(needed)})"
        )
    assignment = assign_splits(labelled, rule)

    rows = []
    for record in tqdm(records, desc=f"manifest {dataset}", unit="subject", disable=not progress):
        split, fold = assignment.get(record.subject, ("unlabelled", None))
        row = {
            "subject": record.subject,
            "split": split,
            "fold": "" if fold is None else fold,
            "labels_present": ";".join(n for n in source.label_names if n in record.labels),
        }
        size = 0
        for modality, path in record.images.items():
            shape, spacing = _geometry(path)
            row.update(
                {
                    f"image_{modality}": _relative(path, root),
                    f"shape_{modality}": shape,
                    f"spacing_{modality}": spacing,
                    f"sha256_{modality}": sha256_file(path),
                }
            )
            size += path.stat().st_size
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
        "n_per_split": {s: int((frame["split"] == s).sum()) for s in SPLITS},
        "excluded": sorted(exclude),
        "modalities": list(source.modalities),
        "label_names": list(source.label_names),
    }
    out_path = Path(out_path)
    atomic_write_text(out_path, frame.to_csv(index=False))
    atomic_write_json(_sidecar_path(out_path), sidecar)
    return Manifest.load(out_path)


def _columns(source: DatasetSource) -> list[str]:
    columns = ["subject", "split", "fold", "labels_present"]
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
        if sidecar.get("version", 0) > MANIFEST_VERSION:
            raise DataError(
                "?", path, f"manifest version {sidecar['version']} is newer than this code reads "
                f"({MANIFEST_VERSION}): update sgnet-lightning"
            )
        missing = [c for c in _columns(get_source(sidecar["dataset"])) if c not in rows.columns]
        if missing:
            raise DataError("?", path, f"manifest lacks columns {', '.join(missing)}")
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

    def record(self, subject: str) -> SubjectRecord:
        """The subject's files as absolute paths under :attr:`root`."""
        row, source = self._row(subject), self.source
        images = {m: self.root / row[f"image_{m}"] for m in source.modalities}
        labels = {n: self.root / row[f"label_{n}"] for n in source.label_names if row[f"label_{n}"]}
        return SubjectRecord(subject, images, labels)

    def hashes(self, subject: str) -> dict[str, str]:
        """Absolute file path -> SHA-256 recorded when the manifest was made."""
        row, record = self._row(subject), self.record(subject)
        out = {str(p): row[f"sha256_{m}"] for m, p in record.images.items()}
        out.update({str(p): row[f"sha256_label_{n}"] for n, p in record.labels.items()})
        return out

    def labels_present(self, subject: str) -> list[str]:
        value = self._row(subject)["labels_present"]
        return value.split(";") if value else []

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
