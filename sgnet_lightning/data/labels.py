"""Label maps: the canonical map of a subject, the masks a task reads from it, and back.

Every cached subject stores one *canonical label map*: an integer volume (uint8) whose values follow
the data set's own convention (:attr:`sgnet_lightning.datasets.Dataset.label_values`). Regions
(what the network predicts, one sigmoid channel each, possibly overlapping) and sub-regions (what
SegGuidedNet's attention maps are supervised with, mutually exclusive) are both defined as sets of
label values of that map, per task (:class:`sgnet_lightning.datasets.Task`). The conventions
themselves live in the data-set registry, :mod:`sgnet_lightning.datasets`:

- ``bml``: 0 background, 1 edema (whole tumour but not core), 2 core, merged from the release's two
  binary masks; a case without ``core_seg`` stores its whole tumour as 1.
- ``brats2021``: 1 NCR, 2 ED, 4 ET. Regions ET={4}, TC={1,4}, WT={1,2,4}.
- ``brats2023`` (GLI and MET naming): 1 NCR/NETC, 2 ED/SNFH, 3 ET. Regions ET={3}, TC={1,3}, WT={1,2,3}.
"""

from __future__ import annotations

import numpy as np

from sgnet_lightning.datasets import Task, get_dataset


def get_task(dataset: str, name: str | None = None) -> Task:
    """Return the :class:`~sgnet_lightning.datasets.Task` ``name`` of ``dataset`` (its default
    task when ``name`` is None).

    Raises:
        ValueError: unknown data set or task (the message lists the known ones).
    """
    spec = get_dataset(dataset)
    name = name or spec.default_task
    if name not in spec.tasks:
        raise ValueError(f"unknown task {name!r} for dataset {dataset!r}; known: {', '.join(spec.tasks)}")
    return spec.tasks[name]


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
    (WT > TC > ET) end with the most specific label. A voxel in a region but in no smaller one gets
    the smallest of the region's own values (those no smaller region holds): for BraTS WT-only
    voxels become ED, TC-only NCR, ET the edition's ET label; for ``bml`` ``whole`` (WT = {1, 2})
    the map holds 1 for tumour, for ``core_whole`` 1 edema and 2 core.
    """
    order = sorted(range(len(task.regions)), key=lambda i: -len(list(task.regions.values())[i]))
    out = np.zeros(region_masks.shape[1:], dtype=np.uint8)
    values = list(task.regions.values())
    for i in order:
        smaller = set().union(*(set(values[j]) for j in order if len(values[j]) < len(values[i])))
        own = [v for v in values[i] if v not in smaller]
        out[region_masks[i].astype(bool)] = min(own)
    return out
