"""References for ``sgnet evaluate`` read straight from a data set folder in its real layout.

The Brain-Mets-Lung release ships two binary masks per case (``whole_seg``, ``core_seg``), often on
another grid than T1ce; the data set's own reader merges them into the canonical label map on the
T1ce grid, which is the grid ``sgnet predict`` writes on.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

from sgnet_lightning.data.io import load_nifti
from sgnet_lightning.data.sources import SubjectRecord, get_source
from sgnet_lightning.errors import DataError
from sgnet_lightning.evaluation.evaluate import Reference, nifti_references


def read_reference(dataset: str, record: SubjectRecord) -> Reference:
    """One subject's canonical reference label map on its reference modality's own grid, read with
    the data set's reader (``bml``: ``whole_seg`` and ``core_seg`` merged, each resampled onto the
    T1ce grid by world position); ``sgnet evaluate`` and ``sgnet test`` score against it."""
    source = get_source(dataset)
    reference_file = record.images[source.reference_modality]
    reference = load_nifti(reference_file, record.subject, source.reference_modality)
    label_map = source.load_label_map(record, reference)
    spacing = tuple(float(z) for z in reference.header.get_zooms()[:3])
    return Reference(label_map, spacing, reference.affine, file=next(iter(record.labels.values())))


def dataset_references(dataset: str, ref_dir: Path) -> dict[str, Callable[[], Reference]]:
    """Subject -> reader of its canonical label map, for a folder in the data set's layout; a folder
    of plain label maps (``<subject>_seg.nii.gz`` ...) falls back to reading those directly."""
    try:
        records = get_source(dataset).discover(ref_dir)
    except DataError:
        return nifti_references(Path(ref_dir))
    return {r.subject: partial(read_reference, dataset, r) for r in records if r.labels}
