"""Label conventions of every supported data set, in one place.

Every cached subject stores one *canonical label map*: an integer volume (uint8) whose values follow
the data set's own convention. Regions (what the network predicts, one sigmoid channel each,
possibly overlapping) and sub-regions (what SegGuidedNet's attention maps are supervised with,
mutually exclusive) are both defined as sets of label values of that map.

- ``bml`` (Brain-Mets-Lung-MRI-Path-Segs): the release ships two binary masks per case,
  ``*_whole_seg`` (tumour with edema) and ``*_core_seg`` (tumour core). The canonical map merges them:
  0 background, 1 edema (whole but not core), 2 core. A case without ``core_seg`` stores its whole
  tumour as 1 and is flagged (``labels_present``) so it is never used for a task that needs the core.
- ``brats2021``: 1 NCR, 2 ED, 4 ET. Regions ET={4}, TC={1,4}, WT={1,2,4}.
- ``brats2023`` (GLI and MET naming): 1 NCR/NETC, 2 ED/SNFH, 3 ET. Regions ET={3}, TC={1,3}, WT={1,2,3}.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DATASETS = ("bml", "brats2021", "brats2023")


@dataclass(frozen=True)
class Task:
    """What a network is trained to predict on one data set.

    Attributes:
        dataset: one of :data:`DATASETS`.
        name: task name, e.g. ``"whole"`` (the SG-Net seed's binary whole tumour) or ``"regions"``.
        regions: ordered mapping region name -> label values; one output channel per region.
        subregions: ordered mapping sub-region name -> label values; one attention map per sub-region.
        required_labels: label files a subject must have to be trained on for this task
            (``bml`` only: ``"whole"`` and/or ``"core"``).
        main_region: the region whose Dice is a benchmark's primary endpoint unless the benchmark
            declares another (see :mod:`sgnet_lightning.analysis.stats`).
        subregion_labels: sub-region name -> label files its mask is made from (``bml``: the core
            needs ``core_seg``; edema, whole minus core, needs both). A sub-region not listed needs
            no more than a label map. Where a subject lacks one of them, the mask read from its
            canonical map is not that sub-region (all zero, or the whole tumour): the auxiliary
            loss skips it (:func:`subregions_present`).
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


# Allowed values of the canonical label map of each data set (background included).
LABEL_VALUES: dict[str, tuple[int, ...]] = {
    "bml": (0, 1, 2),
    "brats2021": (0, 1, 2, 4),
    "brats2023": (0, 1, 2, 3),
}

_BML_SUBREGION_LABELS = {"core": ("core",), "edema": ("whole", "core")}
_BRATS_REGIONS = {
    "brats2021": {"ET": (4,), "TC": (1, 4), "WT": (1, 2, 4)},
    "brats2023": {"ET": (3,), "TC": (1, 3), "WT": (1, 2, 3)},
}
_BRATS_SUBREGIONS = {
    "brats2021": {"NCR": (1,), "ED": (2,), "ET": (4,)},
    "brats2023": {"NCR": (1,), "ED": (2,), "ET": (3,)},
}

TASKS: dict[tuple[str, str], Task] = {
    ("bml", "whole"): Task(
        "bml", "whole", {"WT": (1, 2)}, {"core": (2,), "edema": (1,)}, required_labels=("whole",),
        subregion_labels=_BML_SUBREGION_LABELS,
    ),
    ("bml", "core_whole"): Task(
        "bml",
        "core_whole",
        {"TC": (2,), "WT": (1, 2)},
        {"core": (2,), "edema": (1,)},
        required_labels=("whole", "core"),
        subregion_labels=_BML_SUBREGION_LABELS,
    ),
    **{
        (ds, "regions"): Task(ds, "regions", _BRATS_REGIONS[ds], _BRATS_SUBREGIONS[ds])
        for ds in ("brats2021", "brats2023")
    },
}
DEFAULT_TASK = {"bml": "whole", "brats2021": "regions", "brats2023": "regions"}


def get_task(dataset: str, name: str | None = None) -> Task:
    """Return the :class:`Task` ``name`` of ``dataset`` (its default task when ``name`` is None)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    name = name or DEFAULT_TASK[dataset]
    if (dataset, name) not in TASKS:
        known = [t for d, t in TASKS if d == dataset]
        raise ValueError(f"unknown task {name!r} for dataset {dataset!r}; known: {', '.join(known)}")
    return TASKS[(dataset, name)]


def subregions_present(task: Task, labels_present: list[str]) -> list[bool]:
    """Whether each of ``task``'s sub-regions (in order) is known for a subject whose label files
    are ``labels_present`` (the cache's ``meta.json`` entry)."""
    return [all(name in labels_present for name in task.subregion_labels.get(sub, ()))
            for sub in task.subregions]


def label_map_to_masks(label_map: np.ndarray, groups: dict[str, tuple[int, ...]]) -> np.ndarray:
    """Turn a canonical label map (X, Y, Z) into stacked boolean masks (len(groups), X, Y, Z)."""
    return np.stack([np.isin(label_map, values) for values in groups.values()])


def regions_to_label_map(region_masks: np.ndarray, task: Task) -> np.ndarray:
    """Inverse of :func:`label_map_to_masks` for a task's regions: (R, X, Y, Z) bool -> uint8 map.

    Regions are written from the largest label set to the smallest, so nested regions
    (WT > TC > ET) end with the most specific label. For ``bml`` ``whole`` the map holds 1 for tumour.
    For BraTS: WT-only voxels become ED, TC-only NCR, ET the edition's ET label.
    """
    order = sorted(range(len(task.regions)), key=lambda i: -len(list(task.regions.values())[i]))
    out = np.zeros(region_masks.shape[1:], dtype=np.uint8)
    values = list(task.regions.values())
    for i in order:
        # the label a voxel in this region but in no smaller region carries
        smaller = set().union(*(set(values[j]) for j in order if len(values[j]) < len(values[i])))
        own = [v for v in values[i] if v not in smaller]
        if task.dataset == "bml" and task.name == "whole":
            own = [1]
        out[region_masks[i].astype(bool)] = max(own) if task.dataset != "bml" else min(own)
    return out
