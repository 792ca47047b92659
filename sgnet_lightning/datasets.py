"""The data-set registry: everything the package knows about each supported data set, in one place.

Each data set is one frozen :class:`Dataset` record: its file naming (what a reader looks for), its
label convention and tasks (what the cache stores and a network predicts), the evaluator's
lesion-wise preset, and the phantom layout ``sgnet data synth`` writes. The stages read it:

- the readers (:mod:`sgnet_lightning.data.sources`) take modalities, file parts and patterns, the
  patient rule and the allowed label values; the manifest, the cache and ``sgnet predict`` reach it
  through them;
- the label code (:mod:`sgnet_lightning.data.labels`) takes the tasks and the default task;
- the phantom writer (:mod:`sgnet_lightning.data.synth`) takes :attr:`Dataset.phantom`;
- the evaluator (:mod:`sgnet_lightning.evaluation.evaluate`) takes the label values and the preset;
- the command line offers :func:`list_datasets` as the ``--dataset`` / ``--kind`` choices.

Why a top-level module and not ``data/datasets.py``: the record is read by every stage of the flow
(source -> manifest -> cache -> training -> per-subject rows -> report), not only by ``data/``, and
it is facts, not code that touches voxels. It imports neither NumPy nor nibabel, so building the
command-line parser or a config check does not load the data stack; it sits beside the model
registry (:mod:`sgnet_lightning.models.registry`) as the package's other registry.

Example::

    >>> from sgnet_lightning.datasets import get_dataset, list_datasets
    >>> list_datasets()
    ['bml', 'brats2021', 'brats2023']
    >>> get_dataset("brats2023").modalities
    ('t1n', 't1c', 't2w', 't2f')
    >>> get_dataset("bml").tasks["core_whole"].regions
    {'TC': (2,), 'WT': (1, 2)}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sgnet_lightning.errors import ConfigError


class UnknownDatasetError(ConfigError, ValueError):
    """A name that is no registered data set.

    A :class:`~sgnet_lightning.errors.ConfigError`, so a config or manifest naming one reaches the
    user as one line; also a ``ValueError``, like the model registry's unknown names, which is what
    library callers of :func:`~sgnet_lightning.data.labels.get_task` catch.
    """


@dataclass(frozen=True)
class Task:
    """What a network is trained to predict on one data set.

    Attributes:
        dataset: the data set's registered name.
        name: task name, e.g. ``"whole"`` (the SG-Net seed's binary whole tumour) or ``"regions"``.
        regions: ordered mapping region name -> label values; one output channel per region.
        subregions: ordered mapping sub-region name -> label values; one attention map per sub-region.
        required_labels: label files a subject must have to be trained on for this task
            (``bml`` only: ``"whole"`` and/or ``"core"``); empty: every label file of the data set.
        main_region: the region whose Dice is a benchmark's primary endpoint unless the benchmark
            declares another (see :mod:`sgnet_lightning.analysis.stats`).
        subregion_labels: sub-region name -> label files its mask is made from (``bml``: the core
            needs ``core_seg``; edema, whole minus core, needs both). A sub-region not listed needs
            no more than a label map. Where a subject lacks one of them, the mask read from its
            canonical map is not that sub-region (all zero, or the whole tumour): the auxiliary
            loss skips it (:func:`~sgnet_lightning.data.labels.subregions_present`).
    """

    dataset: str
    name: str
    regions: dict[str, tuple[int, ...]]
    subregions: dict[str, tuple[int, ...]]
    required_labels: tuple[str, ...] = ()
    subregion_labels: dict[str, tuple[str, ...]] = field(default_factory=dict)
    main_region: str = "WT"

    @property
    def region_names(self) -> list[str]:
        return list(self.regions)

    @property
    def subregion_names(self) -> list[str]:
        return list(self.subregions)


@dataclass(frozen=True)
class PhantomLayout:
    """How ``sgnet data synth`` writes a phantom of the data set (:mod:`sgnet_lightning.data.synth`).

    Attributes:
        seed_stream: the number that, with the seed and the case index, seeds each case's random
            generator. Never renumber: every phantom ever written of this data set would change.
        writer: ``"bml"`` (per-file grids: FLAIR and ``whole_seg`` on a thick-sliced grid, two
            binary masks, some cases without one) or ``"brats"`` (one grid, one ``seg`` map).
        tumour: ``"metastases"`` or ``"glioma"``.
        case_id: case name, a format of the case number, e.g. ``"BML-{:04d}"``.
        first_number: number of the first case (the releases count from 1 or from 0).
        separator: between case ID and file part: ``<case><separator><part>.nii.gz``.
        contrasts: data-set modality -> the phantom contrast it is rendered with (a key of
            :data:`sgnet_lightning.data.synth.CONTRAST`), in writing order.
        lesion_labels: phantom lesion class (``"NCR"``, ``"ED"``, ``"ET"``) -> its value in the
            written ``seg`` file (``brats`` writer); empty for the ``bml`` writer, whose label files
            are binary masks.
    """

    seed_stream: int
    writer: str
    tumour: str
    case_id: str
    first_number: int
    separator: str
    contrasts: dict[str, str]
    lesion_labels: dict[str, int] = field(default_factory=dict)

    def case_ids(self, n: int) -> list[str]:
        """IDs of the first ``n`` cases, in writing order."""
        return [self.case_id.format(self.first_number + i) for i in range(n)]

    def file_name(self, case: str, part: str) -> str:
        """File name of one part (a modality with its image suffix, or a label part) of ``case``."""
        return f"{case}{self.separator}{part}.nii.gz"


@dataclass(frozen=True)
class Dataset:
    """One supported data set.

    Attributes:
        name: registered name (``--dataset``, ``data.dataset`` in configs, manifest sidecars).
        title: the release's own name, for messages and documents.
        reader: which :class:`~sgnet_lightning.data.sources.DatasetSource` reads it: ``"bml"``
            (files found at any depth by a name part; binary whole/core masks merged into one map)
            or ``"brats"`` (:attr:`file_pattern` names; one multi-class ``seg`` file).
        modalities: network input channels in order; each is also the file-name part that marks
            that image.
        reference_modality: the modality whose grid every other file is resampled onto.
        image_suffix: what follows the modality part in the release's image file names
            (``"_img"`` for ``bml``: ``<case>_t1ce_img.nii.gz``); readers do not need it.
        label_parts: label name -> the file-name part that marks that label file.
        naming_hint: an example file name, for "nothing found" messages.
        file_pattern: (``brats`` reader) regex matching a whole file name, with groups ``subject``
            and ``part`` (a modality or label part); None for the ``bml`` reader.
        patient_pattern: regex matching a subject ID, with group ``patient``: the patient a subject
            (one scan session) belongs to; splits never separate one patient's subjects. A subject
            it does not match, or every subject when None, is its own patient.
        shared_grid: the release puts every file of a subject on one voxel grid (BraTS), so a file
            on another grid is a fault, not a grid to resample from.
        label_values: allowed values of the canonical label map, background (0) included.
        label_value_hints: a label value outside :attr:`label_values` -> what it probably means
            (the other edition's convention), added to the reader's error.
        tasks: task name -> :class:`Task`.
        default_task: the task used when none is named.
        lesion_preset: the lesion-wise evaluation preset (a key of
            :data:`sgnet_lightning.evaluation.lesions.LESION_SETTINGS`).
        phantom: how ``sgnet data synth`` writes this data set; None: no phantom.
    """

    name: str
    title: str
    reader: str
    modalities: tuple[str, ...]
    reference_modality: str
    label_parts: dict[str, str]
    naming_hint: str
    label_values: tuple[int, ...]
    tasks: dict[str, Task]
    default_task: str
    lesion_preset: str
    image_suffix: str = ""
    file_pattern: str | None = None
    patient_pattern: str | None = None
    shared_grid: bool = False
    label_value_hints: dict[int, str] = field(default_factory=dict)
    phantom: PhantomLayout | None = None


_DATASETS: dict[str, Dataset] = {}


def register_dataset(dataset: Dataset) -> Dataset:
    """Add ``dataset`` to the registry; returns it.

    Raises:
        ValueError: the name is taken, the default task or reference modality is not the data
            set's own, or a task belongs to another data set.
    """
    if dataset.name in _DATASETS:
        raise ValueError(f"dataset {dataset.name!r} is already registered")
    if dataset.default_task not in dataset.tasks:
        raise ValueError(
            f"dataset {dataset.name!r}: default task {dataset.default_task!r} is not one of its tasks"
        )
    if dataset.reference_modality not in dataset.modalities:
        raise ValueError(f"dataset {dataset.name!r}: reference modality {dataset.reference_modality!r} "
                         f"is not one of {dataset.modalities}")
    wrong = [name for name, task in dataset.tasks.items()
             if (task.dataset, task.name) != (dataset.name, name)]
    if wrong:
        raise ValueError(f"dataset {dataset.name!r}: tasks {wrong} are filed under another data set or name")
    _DATASETS[dataset.name] = dataset
    return dataset


def list_datasets(*, with_phantom: bool = False) -> list[str]:
    """Names of the registered data sets, sorted; ``with_phantom``: only those ``sgnet data synth``
    can write."""
    return sorted(name for name, d in _DATASETS.items() if d.phantom is not None or not with_phantom)


def get_dataset(name: str) -> Dataset:
    """The registered data set ``name``.

    Raises:
        UnknownDatasetError: no data set of that name (the message lists the known ones).
    """
    try:
        return _DATASETS[name]
    except (KeyError, TypeError):
        raise UnknownDatasetError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}") from None


def image_name_ending() -> re.Pattern:
    """Matches the modality part (and image suffix) that ends an image file's stem in any
    registered data set's naming: ``_t1ce_img``, ``-t2f``, ``_flair``; case-insensitive.

    Used to name a subject after a lone image file (``sgnet predict`` on files, not a folder).
    """
    modalities = sorted({m for d in _DATASETS.values() for m in d.modalities}, key=lambda m: (-len(m), m))
    suffixes = sorted({d.image_suffix for d in _DATASETS.values() if d.image_suffix})
    optional_suffix = f"(?:{'|'.join(map(re.escape, suffixes))})?" if suffixes else ""
    return re.compile(rf"[_-](?:{'|'.join(map(re.escape, modalities))}){optional_suffix}$", re.IGNORECASE)


# ================================================================================================
# The registered data sets
# ================================================================================================

# bml sub-regions: the core needs core_seg; edema (whole minus core) needs both masks.
_BML_SUBREGIONS = {"core": (2,), "edema": (1,)}
_BML_SUBREGION_LABELS = {"core": ("core",), "edema": ("whole", "core")}

# Brain-Mets-Lung-MRI-Path-Segs. The release ships two binary masks per case, ``*_whole_seg``
# (tumour with edema) and ``*_core_seg`` (tumour core); the canonical map merges them: 0 background,
# 1 edema (whole but not core), 2 core. A case without core_seg stores its whole tumour as 1 and is
# flagged (``labels_present``) so it is never used for a task that needs the core. Copies circulate
# with other folder layouts and extra name parts, so files are found at any depth by the name part
# alone; FLAIR and whole_seg may lie on another grid than T1CE.
register_dataset(Dataset(
    name="bml",
    title="Brain-Mets-Lung-MRI-Path-Segs",
    reader="bml",
    modalities=("t1ce", "flair"),
    reference_modality="t1ce",
    image_suffix="_img",
    label_parts={"whole": "whole_seg", "core": "core_seg"},
    naming_hint="<case>_t1ce_img.nii.gz, <case>_flair_img.nii.gz, <case>_whole_seg.nii.gz",
    # a repeat-scan suffix ends a case ID: "BML-0012_tp2", "BML-0012-scan2" -> "BML-0012"
    patient_pattern=(r"(?i)^(?P<patient>.+?)[_\-. ]"
                     r"(?:tp|timepoint|scan|visit|fu|followup|rec|recurrence|repeat)[_\-]?\d*$"),
    label_values=(0, 1, 2),
    tasks={
        "whole": Task("bml", "whole", {"WT": (1, 2)}, _BML_SUBREGIONS, required_labels=("whole",),
                      subregion_labels=_BML_SUBREGION_LABELS),
        "core_whole": Task("bml", "core_whole", {"TC": (2,), "WT": (1, 2)}, _BML_SUBREGIONS,
                           required_labels=("whole", "core"), subregion_labels=_BML_SUBREGION_LABELS),
    },
    default_task="whole",
    # brain metastases: the BraTS MET lesion-wise rules
    lesion_preset="MET",
    phantom=PhantomLayout(
        seed_stream=0, writer="bml", tumour="metastases", case_id="BML-{:04d}", first_number=1,
        separator="_", contrasts={"t1ce": "t1ce", "flair": "flair"},
    ),
))

# BraTS 2021: 1 NCR, 2 ED, 4 ET; one subject is one patient.
register_dataset(Dataset(
    name="brats2021",
    title="BraTS 2021",
    reader="brats",
    modalities=("t1", "t1ce", "t2", "flair"),
    reference_modality="t1ce",
    label_parts={"seg": "seg"},
    naming_hint="BraTS2021_00000_t1ce.nii.gz",
    file_pattern=r"^(?P<subject>BraTS2021_\d+)_(?P<part>t1|t1ce|t2|flair|seg)\.nii(\.gz)?$",
    shared_grid=True,
    label_values=(0, 1, 2, 4),
    label_value_hints={3: "BraTS 2023 writes ET as 3: wrong data set?"},
    tasks={"regions": Task("brats2021", "regions", {"ET": (4,), "TC": (1, 4), "WT": (1, 2, 4)},
                           {"NCR": (1,), "ED": (2,), "ET": (4,)})},
    default_task="regions",
    # gliomas; pass LESION_SETTINGS["MET"] to score metastases
    lesion_preset="GLI",
    phantom=PhantomLayout(
        seed_stream=1, writer="brats", tumour="glioma", case_id="BraTS2021_{:05d}", first_number=0,
        separator="_", contrasts={"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"},
        lesion_labels={"NCR": 1, "ED": 2, "ET": 4},
    ),
))

# BraTS 2023, GLI and MET naming (and the other 2023 cohorts' codes): 1 NCR/NETC, 2 ED/SNFH, 3 ET.
# The last number of an ID is the timepoint: BraTS-GLI-00000-001 is patient BraTS-GLI-00000.
register_dataset(Dataset(
    name="brats2023",
    title="BraTS 2023",
    reader="brats",
    modalities=("t1n", "t1c", "t2w", "t2f"),
    reference_modality="t1c",
    label_parts={"seg": "seg"},
    naming_hint="BraTS-GLI-00000-000-t1c.nii.gz or BraTS-MET-00000-000-t1c.nii.gz",
    file_pattern=r"^(?P<subject>BraTS-[A-Za-z]+-\d+-\d+)-(?P<part>t1n|t1c|t2w|t2f|seg)\.nii(\.gz)?$",
    patient_pattern=r"^(?P<patient>BraTS-[A-Za-z]+-\d+)-\d+$",
    shared_grid=True,
    label_values=(0, 1, 2, 3),
    label_value_hints={4: "BraTS 2021 writes ET as 4: wrong data set, or remap 4 -> 3"},
    tasks={"regions": Task("brats2023", "regions", {"ET": (3,), "TC": (1, 3), "WT": (1, 2, 3)},
                           {"NCR": (1,), "ED": (2,), "ET": (3,)})},
    default_task="regions",
    # gliomas; pass LESION_SETTINGS["MET"] to score BraTS-MET
    lesion_preset="GLI",
    phantom=PhantomLayout(
        seed_stream=2, writer="brats", tumour="glioma", case_id="BraTS-GLI-{:05d}-000", first_number=0,
        separator="-", contrasts={"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair"},
        lesion_labels={"NCR": 1, "ED": 2, "ET": 3},
    ),
))
