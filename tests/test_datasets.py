"""The data-set registry: every registered data set works end to end through the stages that read
its record (phantom writer -> reader, label maps -> task masks -> label maps, evaluator preset,
subject names in ``sgnet predict``), and unknown names fail with one clear message."""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import sgnet_lightning.datasets as registry
from sgnet_lightning.data.labels import get_task, label_map_to_masks, regions_to_label_map
from sgnet_lightning.data.sources import get_source
from sgnet_lightning.data.synth import synthesize_dataset
from sgnet_lightning.datasets import (
    Dataset,
    UnknownDatasetError,
    get_dataset,
    list_datasets,
    register_dataset,
)
from sgnet_lightning.errors import ConfigError
from sgnet_lightning.evaluation.evaluate import evaluate_case
from sgnet_lightning.evaluation.lesions import LESION_SETTINGS
from sgnet_lightning.predict import _subject_id

TASKS = [(name, task) for name in list_datasets() for task in get_dataset(name).tasks]


# ------------------------------------------------------------------------------------ the registry


def test_unknown_name_fails_the_same_way_in_every_stage(tmp_path):
    known = ", ".join(list_datasets())
    message = f"unknown dataset 'brats2019'; known: {known}"
    for look_up in (get_dataset, get_source, get_task,
                    lambda name: synthesize_dataset(name, 1, tmp_path, size=32, progress=False)):
        with pytest.raises(UnknownDatasetError) as info:
            look_up("brats2019")
        # one line on the command line (ConfigError), and the ValueError library callers catch
        assert str(info.value) == message
        assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)


def test_registering_refuses_a_taken_name_and_a_foreign_default_task():
    bml = get_dataset("bml")
    with pytest.raises(ValueError, match="'bml' is already registered"):
        register_dataset(bml)
    with pytest.raises(ValueError, match="default task 'regions' is not one of its tasks"):
        register_dataset(dataclasses.replace(bml, name="bml_copy", default_task="regions"))
    with pytest.raises(ValueError, match="filed under another data set"):
        register_dataset(dataclasses.replace(bml, name="bml_copy"))  # its tasks still say "bml"
    assert "bml_copy" not in list_datasets()


@pytest.mark.parametrize("name", list_datasets())
def test_record_is_consistent(name):
    dataset = get_dataset(name)
    assert isinstance(dataset, Dataset) and dataset.name == name
    assert dataset.lesion_preset in LESION_SETTINGS
    assert 0 in dataset.label_values
    # a hint explains a value the data set does not allow
    assert not set(dataset.label_value_hints) & set(dataset.label_values)
    assert get_source(name).dataset is dataset
    assert get_task(name).name == dataset.default_task


# -------------------------------------------------------------------- phantom writer -> reader


@pytest.mark.parametrize("name", list_datasets(with_phantom=True))
def test_phantom_is_read_back_by_the_data_sets_reader(name, tmp_path):
    dataset, source = get_dataset(name), get_source(name)
    synthesize_dataset(name, 1, tmp_path, seed=0, size=32, progress=False)
    (record,) = source.discover(tmp_path)
    assert record.subject == dataset.phantom.case_ids(1)[0]
    assert list(record.images) == list(dataset.modalities)
    assert set(record.labels) == set(dataset.label_parts)  # the first case has every label file
    assert record.issues == ()
    # a lone image file is named after its case, as `sgnet predict --input FILES` does
    assert {_subject_id(path) for path in record.images.values()} == {record.subject}
    label_map = source.load_label_map(record, nib.load(record.images[dataset.reference_modality]))
    present = set(np.unique(label_map).tolist())
    assert present <= set(dataset.label_values)
    # the phantom's tumour marks every region of every task
    for task in dataset.tasks.values():
        assert label_map_to_masks(label_map, task.regions).any(axis=(1, 2, 3)).all(), task.name


# ------------------------------------------------------------------------ labels and tasks


@pytest.mark.parametrize("name, task_name", TASKS)
def test_label_values_round_trip_through_the_canonical_map(name, task_name):
    dataset, task = get_dataset(name), get_task(name, task_name)
    values = dataset.label_values
    label_map = np.array(values, dtype=np.uint8).reshape(-1, 1, 1)  # one voxel per label value
    masks = label_map_to_masks(label_map, task.regions)
    back = regions_to_label_map(masks, task)
    assert set(np.unique(back).tolist()) <= set(values)
    np.testing.assert_array_equal(label_map_to_masks(back, task.regions), masks)
    # where the regions tell every value apart, the map itself comes back
    if len({tuple(column) for column in masks.reshape(len(task.regions), -1).T}) == len(values):
        np.testing.assert_array_equal(back, label_map)


@pytest.mark.parametrize("name, task_name", TASKS)
def test_subregions_split_the_tumour_into_disjoint_label_values(name, task_name):
    dataset, task = get_dataset(name), get_task(name, task_name)
    tumour = set(dataset.label_values) - {0}
    subregion_values = [v for values in task.subregions.values() for v in values]
    assert sorted(subregion_values) == sorted(tumour)
    assert all(set(values) <= tumour for values in task.regions.values())
    assert task.main_region in task.regions


@pytest.mark.parametrize("name", [n for n in list_datasets() if get_dataset(n).label_value_hints])
def test_reader_explains_the_other_editions_values(name):
    dataset, source = get_dataset(name), get_source(name)
    value, hint = next(iter(dataset.label_value_hints.items()))
    ((problem, fatal),) = source.label_value_problems("seg", np.array([0, value]))
    assert fatal and hint in problem


# --------------------------------------------------------------------------------- evaluator


def _one_lesion(task) -> np.ndarray:
    label_map = np.zeros((12, 12, 12), np.uint8)
    label_map[3:8, 3:8, 3:8] = max(task.regions[task.main_region])
    return label_map


@pytest.mark.parametrize("name", list_datasets())
def test_evaluator_uses_the_registered_lesion_preset(name, monkeypatch):
    task = get_task(name)
    label_map = _one_lesion(task)

    def lesion_notes() -> pd.Series:
        rows = pd.DataFrame(evaluate_case(label_map, label_map, task, (1, 1, 1), distances=False))
        return rows.loc[rows["metric"] == "lesion_dice", "convention"]

    preset = get_dataset(name).lesion_preset
    assert lesion_notes().str.contains(f";{preset}(", regex=False).all()
    # change the record, and the evaluator follows it
    other = next(p for p in LESION_SETTINGS if p != preset)
    monkeypatch.setitem(registry._DATASETS, name, dataclasses.replace(get_dataset(name), lesion_preset=other))
    assert lesion_notes().str.contains(f";{other}(", regex=False).all()
