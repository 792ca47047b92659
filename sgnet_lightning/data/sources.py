"""Where the subjects of each data set are on disk, and how their labels become one label map.

A :class:`DatasetSource` reads one data set as its registry record (:mod:`sgnet_lightning.datasets`)
describes it: modalities, file naming, patient rule, label values. The conventions it follows:

- ``bml`` (Brain-Mets-Lung-MRI-Path-Segs): ``<case>_t1ce_img``, ``<case>_flair_img``,
  ``<case>_core_seg``, ``<case>_whole_seg``, ``.nii`` or ``.nii.gz``. Copies circulate with other
  folder layouts and extra name parts, so files are found at any depth by the name part alone; the
  subject ID is the file-name prefix before it (the folder name when there is no prefix). Either
  label may be missing. FLAIR and ``whole_seg`` may lie on another grid than T1CE.
- ``brats2021``: ``BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}.nii.gz``.
- ``brats2023``: ``BraTS-GLI-XXXXX-YYY-{t1n,t1c,t2w,t2f,seg}.nii.gz`` and the same scheme with
  ``MET`` (and the other 2023 cohorts' codes) in place of ``GLI``.

Patients (what splits are made of, so that no patient sits in two splits):

- ``brats2021``: one subject is one patient.
- ``brats2023``: the ID without its timepoint suffix (``BraTS-GLI-00000-001`` -> ``BraTS-GLI-00000``).
- ``bml``: the case ID without a repeat-scan suffix: a separator (``_ - .`` or space) followed by
  ``tp``, ``timepoint``, ``scan``, ``visit``, ``fu``, ``followup``, ``rec``, ``recurrence`` or
  ``repeat`` and optional digits ends the ID (``BML-0012_tp2``, ``BML-0012-scan2``,
  ``BML-0012_recurrence`` -> ``BML-0012``); any other case is its own patient. Copies that name
  repeat scans otherwise, or not at all, need the patient of each case from the collection's
  clinical table: ``sgnet data manifest --groups FILE.csv`` (columns ``subject,patient``).

Discovery never reads voxel data; :mod:`sgnet_lightning.data.validate` does.
"""

from __future__ import annotations

import functools
import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sgnet_lightning.data.io import load_nifti, resample_to_grid
from sgnet_lightning.datasets import Dataset, Task, get_dataset
from sgnet_lightning.errors import DataError

_NIFTI_SUFFIX = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)


@dataclass(frozen=True)
class SubjectRecord:
    """The files of one subject.

    Attributes:
        subject: subject ID.
        images: modality -> file, in the data set's channel order.
        labels: label name -> file (``bml``: ``"whole"``, ``"core"``; BraTS: ``"seg"``), only those
            present.
        issues: why the subject cannot be used as found (a modality missing, two files for one
            part), one sentence each; empty for a complete subject. Only
            ``discover(..., keep_incomplete=True)`` returns subjects with issues; their ``images``
            then hold the modalities that were found (the first file of a duplicated part).
    """

    subject: str
    images: dict[str, Path]
    labels: dict[str, Path] = field(default_factory=dict)
    issues: tuple[str, ...] = ()

    def files(self) -> dict[str, Path]:
        """Every file of the subject by role (modality, or ``label_<name>``)."""
        return {**self.images, **{f"label_{name}": path for name, path in self.labels.items()}}


class DatasetSource(ABC):
    """Reads one data set: finds its subjects' files and turns their labels into one label map.

    Args:
        dataset: the data set's registry record; its naming and label facts are copied onto the
            reader as the attributes below.

    Attributes:
        dataset: the registry record.
        name: data set name (registered in :mod:`sgnet_lightning.datasets`).
        modalities: channel order of the network input.
        reference_modality: the modality whose grid every other file is resampled onto.
        label_parts: label name -> the file-name part that marks that label file.
        naming_hint: an example file name, for "nothing found" messages.
        shared_grid: the release puts every file of a subject on one voxel grid (BraTS), so a file
            whose shape or affine differs from the reference modality's is a fault (a wrong or
            damaged file), not a grid to resample from.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.name = dataset.name
        self.modalities = dataset.modalities
        self.reference_modality = dataset.reference_modality
        self.label_parts = dataset.label_parts
        self.naming_hint = dataset.naming_hint
        self.shared_grid = dataset.shared_grid
        self._patient_pattern = re.compile(dataset.patient_pattern) if dataset.patient_pattern else None

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(self.label_parts)

    def required_labels(self, task: Task) -> tuple[str, ...]:
        """Label files a subject needs to be trained and scored on for ``task``."""
        return task.required_labels or self.label_names

    # -- discovery ------------------------------------------------------------------------------

    @abstractmethod
    def match(self, file_name: str, folder: Path) -> tuple[str, str] | None:
        """``(subject, part)`` for a file of this data set (part: a modality or a label part), or
        None for any other file."""

    def patient_of(self, subject: str) -> str:
        """The patient a subject (one scan session) belongs to, by the data set's naming (see the
        module docstring); splits never separate the subjects of one patient."""
        found = self._patient_pattern.match(subject) if self._patient_pattern else None
        return found.group("patient") if found else subject

    def discover(self, root: str | os.PathLike, exclude=(), *, keep_incomplete: bool = False) -> list[SubjectRecord]:
        """Find every subject under ``root`` (any folder depth), sorted by subject ID.

        Args:
            root: data folder.
            exclude: subject IDs to leave out (e.g. known-incomplete cases).
            keep_incomplete: return subjects that lack a modality or have two files for one part
                too, each with its :attr:`SubjectRecord.issues` (``sgnet data manifest`` does, so
                that one ``sgnet data check`` names every problem); False raises instead.

        Raises:
            DataError: the folder is missing or holds no subject of this data set; without
                ``keep_incomplete`` also: two files claim the same subject and part; subjects lack
                a modality (all of them are named).
        """
        root = Path(root)
        if not root.is_dir():
            problem = "data folder does not exist" if not root.exists() else "is not a folder"
            raise DataError("?", root, problem)
        excluded = set(exclude)
        found: dict[str, dict[str, Path]] = {}
        duplicates: dict[str, dict[str, list[Path]]] = {}
        n_other_nifti = 0
        for path in _walk_nifti_files(root):
            matched = self.match(path.name, path.parent)
            if matched is None:
                n_other_nifti += 1
                continue
            subject, part = matched
            if subject in excluded:
                continue
            parts = found.setdefault(subject, {})
            if part in parts:
                if not keep_incomplete:
                    raise DataError(
                        subject, path, f"duplicate {part} file for one subject: {parts[part]} and {path}"
                    )
                duplicates.setdefault(subject, {}).setdefault(part, [parts[part]]).append(path)
                continue
            parts[part] = path
        if not found:
            raise DataError(
                "?",
                root,
                f"no {self.name} subjects found (expected files named like {self.naming_hint}; "
                f"{n_other_nifti} other NIfTI files seen)",
            )

        records, incomplete = [], []
        for subject in sorted(found):
            parts = found[subject]
            missing = [m for m in self.modalities if m not in parts]
            labels = {n: parts[p] for n, p in self.label_parts.items() if p in parts}
            if missing and not keep_incomplete:
                incomplete.append((subject, missing, parts))
                continue
            issues = [f"missing modality {m} (found {', '.join(sorted(parts))})" for m in missing]
            issues += [
                f"{len(paths)} {part} files, expected one: "
                + ", ".join(Path(os.path.relpath(p, root)).as_posix() for p in paths)
                for part, paths in sorted(duplicates.get(subject, {}).items())
            ]
            images = {m: parts[m] for m in self.modalities if m in parts}
            records.append(SubjectRecord(subject, images, labels, tuple(issues)))
        if incomplete:
            subject, missing, parts = incomplete[0]
            others = [s for s, _, _ in incomplete[1:]]
            more = ""
            if others:
                listed = ", ".join(others[:10]) + (", ..." if len(others) > 10 else "")
                more = f"; {len(others)} more subjects lack a modality: {listed}"
            folder = Path(os.path.commonpath([str(p.parent) for p in parts.values()]))
            raise DataError(
                subject,
                folder,
                f"missing modality {', '.join(missing)} (found {', '.join(sorted(parts))}){more}; "
                "fix the files or exclude these subjects",
            )
        return records

    # -- labels ---------------------------------------------------------------------------------

    @abstractmethod
    def label_value_problems(self, name: str, values: np.ndarray) -> list[tuple[str, bool]]:
        """What is wrong with the distinct values ``values`` of label file ``name``, as
        ``(problem, fatal)`` pairs; empty when nothing is."""

    @abstractmethod
    def load_label_map(self, record: SubjectRecord, reference_img) -> np.ndarray | None:
        """The canonical label map (uint8, (X, Y, Z)) on the grid of ``reference_img``.

        Args:
            record: the subject's files.
            reference_img: a nibabel image or a ``(shape, affine)`` pair giving the target grid;
                label files on another grid are resampled onto it by world position (nearest
                neighbour).

        Returns:
            The map, or None when the subject has no label file.

        Raises:
            DataError: unreadable label file, or values outside the data set's convention.
        """

    def _read_label(self, record: SubjectRecord, name: str, grid) -> np.ndarray:
        """One label file's values checked and put on ``grid`` = (shape, affine) (nearest)."""
        path = record.labels[name]
        img = load_nifti(path, record.subject, self.label_parts[name], label=True)
        data = np.asanyarray(img.dataobj)
        for problem, fatal in self.label_value_problems(name, np.unique(data)):
            if fatal:
                raise DataError(record.subject, path, f"{self.label_parts[name]} {problem}")
        data = self._label_values_to_canonical(name, data)
        return resample_to_grid(data, img.affine, grid[0], grid[1], order=0)

    def _label_values_to_canonical(self, name: str, data: np.ndarray) -> np.ndarray:
        return data.astype(np.uint8)


def _walk_nifti_files(root: Path):
    """Every ``.nii``/``.nii.gz`` file under ``root`` in a stable order, skipping hidden files and
    folders (e.g. macOS ``._`` copies) and following folder links without looping."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and _NIFTI_SUFFIX.search(name):
                yield Path(dirpath) / name


def _stem(file_name: str) -> str:
    return _NIFTI_SUFFIX.sub("", file_name)


def _non_integer_problem(values: np.ndarray) -> tuple[str, bool] | None:
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.floating):
        fractional = values[np.isfinite(values) & (np.mod(values, 1) != 0)]
        if fractional.size:
            return (
                f"holds non-integer values (e.g. {fractional[0]:g}); expected integer labels",
                True,
            )
    return None


class BmlSource(DatasetSource):
    """Brain-Mets-Lung-MRI-Path-Segs: T1CE + FLAIR, binary whole-tumour and core masks, found at
    any depth by the name part alone."""

    def __init__(self, dataset: Dataset):
        super().__init__(dataset)
        parts = "|".join(map(re.escape, (*self.modalities, *self.label_parts.values())))
        # a name part is delimited by _ - . or space (or the ends of the name)
        self._part = re.compile(rf"(?:^|(?<=[_\-. ]))({parts})(?=[_\-. ]|$)", re.I)

    def match(self, file_name: str, folder: Path) -> tuple[str, str] | None:
        stem = _stem(file_name)
        found = self._part.search(stem)
        if found is None:
            return None
        subject = stem[: found.start(1)].rstrip("_-. ") or folder.name
        return subject, found.group(1).lower()

    def label_value_problems(self, name: str, values: np.ndarray) -> list[tuple[str, bool]]:
        if (non_integer := _non_integer_problem(values)) is not None:
            return [non_integer]
        nonzero = [v for v in np.asarray(values).tolist() if v != 0]
        if len(nonzero) <= 1 and all(v > 0 for v in nonzero):
            if nonzero and nonzero[0] != 1:
                # a 0/255 mask is common and unambiguous: read it as 0/1, but say so
                return [(f"is a 0/{nonzero[0]:g} mask, read as 0/1", False)]
            return []
        shown = ", ".join(f"{v:g}" for v in nonzero[:10])
        return [(f"holds values {shown}; expected a binary 0/1 mask", True)]

    def _label_values_to_canonical(self, name: str, data: np.ndarray) -> np.ndarray:
        return (data > 0).astype(np.uint8)

    def load_label_map(self, record: SubjectRecord, reference_img) -> np.ndarray | None:
        """0 background, 1 whole tumour outside the core (edema), 2 core (see ``labels.py``).

        Without ``core_seg`` the whole tumour is 1; without ``whole_seg`` the core is 2 (the
        manifest's ``labels_present`` keeps such subjects away from tasks that need the other).
        """
        if not record.labels:
            return None
        grid = _grid_of(reference_img)
        label_map = np.zeros(grid[0], dtype=np.uint8)
        if "whole" in record.labels:
            label_map[self._read_label(record, "whole", grid) > 0] = 1
        if "core" in record.labels:
            label_map[self._read_label(record, "core", grid) > 0] = 2
        return label_map


class BratsSource(DatasetSource):
    """BraTS 2021 or 2023: four co-registered modalities and one multi-class ``seg`` file, named
    by the record's :attr:`~sgnet_lightning.datasets.Dataset.file_pattern`."""

    def __init__(self, dataset: Dataset):
        super().__init__(dataset)
        self._pattern = re.compile(dataset.file_pattern, re.IGNORECASE)

    def match(self, file_name: str, folder: Path) -> tuple[str, str] | None:
        found = self._pattern.match(file_name)
        return (found.group("subject"), found.group("part").lower()) if found else None

    def label_value_problems(self, name: str, values: np.ndarray) -> list[tuple[str, bool]]:
        if (non_integer := _non_integer_problem(values)) is not None:
            return [non_integer]
        allowed = self.dataset.label_values
        outside = [v for v in np.asarray(values).tolist() if v not in allowed]
        if not outside:
            return []
        hints = [hint for value, hint in self.dataset.label_value_hints.items() if value in outside]
        hint = f" ({hints[0]})" if hints else ""
        shown = ", ".join(f"{v:g}" for v in outside[:10])
        expected = ", ".join(str(v) for v in allowed)
        return [(f"holds values {shown} outside {self.name}'s labels ({expected}){hint}", True)]

    def load_label_map(self, record: SubjectRecord, reference_img) -> np.ndarray | None:
        """The ``seg`` file's values (already the canonical map) on the reference grid."""
        if "seg" not in record.labels:
            return None
        return self._read_label(record, "seg", _grid_of(reference_img))


def _grid_of(reference_img) -> tuple[tuple[int, int, int], np.ndarray]:
    if isinstance(reference_img, tuple):
        shape, affine = reference_img
    else:
        shape, affine = reference_img.shape, reference_img.affine
    return tuple(int(s) for s in shape[:3]), np.asarray(affine, dtype=np.float64)


# reader name of a registry record -> the class that reads such data sets
_READERS: dict[str, type[DatasetSource]] = {"bml": BmlSource, "brats": BratsSource}


@functools.cache
def get_source(name: str) -> DatasetSource:
    """The reader of data set ``name`` (one per data set, built from its registry record).

    Raises:
        UnknownDatasetError: ``name`` is not a registered data set (a ConfigError).
    """
    dataset = get_dataset(name)
    return _READERS[dataset.reader](dataset)
