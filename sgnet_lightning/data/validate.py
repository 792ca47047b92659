"""``sgnet data check``: read every file of a manifest and report every problem, not just the first.

Checked per subject: the manifest found every modality, and one file for each part (else the
subject is ``incomplete``); each file exists and reads as one 3D NIfTI volume (not truncated,
corrupt, 4D or 2D), has a usable (non-singular, finite) affine, holds no NaN/Inf voxels; images are
not all zero; label files hold only the data set's label values (integers); every file overlaps the
reference modality in world space (bounding boxes of the voxel grids, mm), and for data sets whose
release puts all files of a subject on one grid (BraTS) lies on exactly that grid (shape and
affine); and, with ``verify_hashes``, every file still has the SHA-256 the manifest recorded.
Checked per manifest: subjects unlabelled for the manifest's task (named, with the label file they
lack) and patients whose subjects sit in different splits (the seed way's cut of case IDs).

Fatal problems make a subject unusable (train on it and the run fails or learns garbage); the
others are warnings (e.g. a 0/255 mask, an empty label, an unlabelled subject).
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from sgnet_lightning.files import atomic_write_json
from sgnet_lightning.data.io import inspect_nifti, sha256_file, world_overlap_fraction
from sgnet_lightning.data.manifest import Manifest
from sgnet_lightning.data.sources import SubjectRecord, get_source


@dataclass(frozen=True)
class Problem:
    """One problem with one file of one subject."""

    subject: str
    file: str
    problem: str
    fatal: bool

    def format(self) -> str:
        where = f" [{self.file}]" if self.file else ""
        return f"{'FATAL' if self.fatal else 'warning'}: subject {self.subject}{where}: {self.problem}"


@dataclass
class CheckReport:
    """Everything :func:`check_manifest` found.

    Attributes:
        manifest: path of the checked manifest.
        n_subjects: subjects checked (excluded ones are not).
        n_files: files checked.
        excluded: subject IDs skipped on request.
        problems: every problem, ordered by subject.
    """

    manifest: str
    n_subjects: int
    n_files: int
    excluded: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem is fatal."""
        return not any(p.fatal for p in self.problems)

    @property
    def fatal_subjects(self) -> list[str]:
        """Sorted IDs of subjects with at least one fatal problem (candidates for ``exclude``)."""
        return sorted({p.subject for p in self.problems if p.fatal})

    def format(self) -> str:
        """One line per problem (empty string when there is none)."""
        return "\n".join(p.format() for p in self.problems)

    def to_json(self, path: str | os.PathLike) -> None:
        """Write the report (with ``ok`` and ``fatal_subjects``) atomically."""
        atomic_write_json(
            path,
            {
                "manifest": self.manifest,
                "ok": self.ok,
                "n_subjects": self.n_subjects,
                "n_files": self.n_files,
                "excluded": self.excluded,
                "fatal_subjects": self.fatal_subjects,
                "problems": [asdict(p) for p in self.problems],
            },
        )


def check_subject(
    record: SubjectRecord, dataset: str, hashes: dict[str, str] | None = None, reference: str | None = None
) -> list[Problem]:
    """Every problem of one subject's files.

    Args:
        record: the subject's files (absolute paths).
        dataset: data set name (decides the allowed label values).
        hashes: file path -> expected SHA-256; None skips the hash check.
        reference: modality the others must overlap in space (None: the data set's default).
    """
    source = get_source(dataset)
    reference = reference or source.reference_modality
    subject = record.subject
    problems: list[Problem] = []
    grids: dict[str, tuple[tuple, np.ndarray, Path]] = {}

    def add(errors) -> None:
        problems.extend(Problem(e.subject, e.file, e.problem, e.fatal) for e in errors)

    for modality, path in record.images.items():
        img, errors = inspect_nifti(path, subject, modality)
        add(errors)
        if img is not None:
            grids[modality] = (img.shape, img.affine, Path(path))
    for name, path in record.labels.items():
        role = source.label_parts[name]
        img, errors = inspect_nifti(path, subject, role, label=True)
        add(errors)
        if img is None:
            continue
        grids[role] = (img.shape, img.affine, Path(path))
        data = np.asanyarray(img.dataobj)
        for text, fatal in source.label_value_problems(name, np.unique(data)):
            problems.append(Problem(subject, str(path), f"{role} {text}", fatal))
        if not np.any(data):
            problems.append(Problem(subject, str(path), f"{role} is all zero (no tumour labelled)", False))

    if reference in grids:
        ref_shape, ref_affine, _ = grids[reference]
        if source.shared_grid:
            for role, (shape, affine, path) in grids.items():
                mismatch = _grid_mismatch((shape, affine), (ref_shape, ref_affine), reference)
                if role != reference and mismatch:
                    problems.append(
                        Problem(
                            subject,
                            str(path),
                            f"{role} is not on the {reference} grid: {mismatch}; {dataset} puts every file of a "
                            "subject on one grid (wrong file or header?)",
                            True,
                        )
                    )
        for role, (shape, affine, path) in grids.items():
            if role != reference and world_overlap_fraction((shape, affine), (ref_shape, ref_affine)) == 0:
                problems.append(
                    Problem(
                        subject,
                        str(path),
                        f"{role} does not overlap the {reference} image in world space "
                        "(disjoint bounding boxes: wrong header origin or affine?)",
                        True,
                    )
                )

    for path, expected in (hashes or {}).items():
        if expected and Path(path).is_file() and sha256_file(path) != expected:
            problems.append(
                Problem(subject, str(path), "file changed since the manifest was made (SHA-256 differs)", True)
            )
    return problems


# Affines of one grid written by different tools differ by float32 rounding, far below this (mm).
_SAME_GRID_TOLERANCE_MM = 1e-3


def _grid_mismatch(grid, reference_grid, reference: str) -> str:
    """How ``grid`` = (shape, affine) differs from the ``reference`` modality's grid, e.g.
    "shape 24x24x20 (t1c 24x24x24), orientation LPS (t1c RAS)"; empty when it is the same grid."""
    (shape, affine), (ref_shape, ref_affine) = grid, reference_grid
    differences = []
    if tuple(shape[:3]) != tuple(ref_shape[:3]):
        differences.append(f"shape {'x'.join(map(str, shape[:3]))} ({reference} {'x'.join(map(str, ref_shape[:3]))})")
    if not np.allclose(affine, ref_affine, atol=_SAME_GRID_TOLERANCE_MM):
        codes, ref_codes = "".join(nib.aff2axcodes(affine)), "".join(nib.aff2axcodes(ref_affine))
        zooms, ref_zooms = np.linalg.norm(affine[:3, :3], axis=0), np.linalg.norm(ref_affine[:3, :3], axis=0)
        if codes != ref_codes:
            differences.append(f"orientation {codes} ({reference} {ref_codes})")
        elif not np.allclose(zooms, ref_zooms, atol=_SAME_GRID_TOLERANCE_MM):
            sizes = ["x".join(f"{z:g}" for z in voxel) for voxel in (zooms, ref_zooms)]
            differences.append(f"voxel size {sizes[0]} mm ({reference} {sizes[1]})")
        else:
            shift = float(np.linalg.norm(affine[:3, 3] - ref_affine[:3, 3]))
            differences.append(f"origin {shift:.3g} mm away" if shift else "rotated axes")
    return ", ".join(differences)


def recorded_problems(manifest: Manifest, subject: str) -> list[Problem]:
    """What the manifest records about ``subject``, without reading a file: one fatal problem per
    issue of an incomplete subject (missing modality, two files for one part), and a warning when
    the subject is unlabelled for the manifest's task, naming the label file it lacks."""
    record = manifest.record(subject, partial=True)
    problems = []
    if record.issues:
        files = list(record.files().values())
        folder = os.path.commonpath([str(p.parent) for p in files]) if files else str(manifest.root)
        problems += [Problem(subject, folder, issue, True) for issue in record.issues]
    missing = manifest.missing_labels(subject)
    if missing:
        found = [manifest.source.label_parts[n] for n in manifest.labels_present(subject)]
        problems.append(Problem(
            subject, "", f"unlabelled for task {manifest.sidecar.get('task')!r}: no {' or '.join(missing)} "
            f"file (label files found: {', '.join(found) or 'none'}); kept for prediction only, never "
            "trained or scored", False,
        ))  # fmt: skip
    return problems


def patient_problems(manifest: Manifest, exclude=()) -> list[Problem]:
    """One warning per patient whose (non-excluded) subjects sit in different splits, filed under
    the patient's first subject."""
    why = ("the seed way cuts sorted case IDs, not patients" if manifest.split_rule["name"] == "seed_way"
           else "the manifest was not split by patient: remake it")  # fmt: skip
    problems = []
    for patient, members in manifest.straddling_patients(exclude=exclude).items():
        where = ", ".join(f"{subject} {part}" for subject, part in members)
        problems.append(Problem(
            members[0][0], "", f"patient {patient} has subjects in different splits ({where}): {why}, so "
            "scores on this patient's held-out scans are not independent of training", False,
        ))  # fmt: skip
    return problems


def manifest_problems(manifest: Manifest, exclude=()) -> list[Problem]:
    """:func:`recorded_problems` of every (non-excluded) subject, then :func:`patient_problems`:
    everything ``sgnet data manifest`` can say without reading voxel data."""
    excluded = set(exclude)
    subjects = [s for s in manifest.subjects if s not in excluded]
    return [p for s in subjects for p in recorded_problems(manifest, s)] + patient_problems(manifest, excluded)


def check_manifest(
    manifest: Manifest, exclude=(), verify_hashes: bool = True, progress: bool = True, *, workers: int = 1
) -> CheckReport:
    """Read every file of every (non-excluded) subject of ``manifest`` and collect every problem.

    Args:
        manifest: the manifest to check (its root must hold the files).
        exclude: subject IDs to skip.
        verify_hashes: compare every file's SHA-256 with the manifest's.
        progress: show a progress bar.
        workers: processes reading subjects in parallel (1: in this process).
    """
    manifest.require_root()
    excluded = sorted(set(exclude))
    subjects = [s for s in manifest.subjects if s not in set(excluded)]
    jobs = [
        (manifest.record(s, partial=True), manifest.dataset,
         manifest.hashes(s, partial=True) if verify_hashes else None)
        for s in subjects
    ]  # fmt: skip
    bar = tqdm(total=len(jobs), desc="check", unit="subject", disable=not progress)
    per_subject: list[list[Problem]] = []
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            per_subject.append(check_subject(*job))
            bar.update(1)
    else:
        # spawn, not fork: a forked child of a process that has run torch/OpenMP threads can hang
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
            for found in pool.map(check_subject, *zip(*jobs)):
                per_subject.append(found)
                bar.update(1)
    bar.close()
    # each subject's recorded problems, then its files' problems; patient warnings come last
    problems = [p for subject, found in zip(subjects, per_subject)
                for p in recorded_problems(manifest, subject) + found]  # fmt: skip
    problems += patient_problems(manifest, exclude=excluded)
    n_files = sum(len(record.files()) for record, _, _ in jobs)
    return CheckReport(str(manifest.path), len(jobs), n_files, excluded, problems)
