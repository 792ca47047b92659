"""One score per prediction: ``sgnet test`` scores each subject on its original grid against its
original reference, exactly as ``sgnet evaluate`` rescores the written NIfTI; validation Dice goes
through the same region consolidation as test."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import tiny_config, write_phantom_set

from sgnet_lightning import cli
from sgnet_lightning.data import cache
from sgnet_lightning.data.labels import get_task, label_map_to_masks, regions_to_label_map
from sgnet_lightning.evaluation.evaluate import evaluate_case
from sgnet_lightning.evaluation.metrics import consolidate_regions, dice_per_channel
from sgnet_lightning.experiment import train

KEYS = ["subject", "region", "metric"]


def _sorted(table: pd.DataFrame) -> pd.DataFrame:
    table = table.astype({"subject": str}).sort_values(KEYS).reset_index(drop=True)
    return table[["subject", "region", "metric", "value", "convention"]]


@pytest.mark.slow
def test_sgnet_test_rows_equal_sgnet_evaluate_of_its_nifti_on_an_oblique_anisotropic_set(tmp_path):
    phantom = write_phantom_set(tmp_path, 10, generator="tiny", oblique=True)
    data = phantom["root"]
    config = tiny_config(phantom, tmp_path / "runs", "sgnet",
                         data={"spacing_mm": 3.0}, trainer={"max_epochs": 1},
                         model={"threshold": 0.3})  # an untrained net: a lower threshold predicts some tumour
    run_dir = tmp_path / "run"
    train(config, run_dir=run_dir)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))

    assert cli.main(["test", "--config", str(config_file), "--run-dir", str(run_dir), "--nifti"]) == 0
    assert cli.main(["evaluate", "--pred", str(run_dir / "predictions_nifti"), "--ref", str(data),
                     "--dataset", "bml", "--out", str(tmp_path / "evaluate.csv"), "--allow-missing"]) == 0
    tested = pd.read_csv(run_dir / "results.csv")
    gate_rows = tested["metric"].str.startswith("gate_open_fraction_")  # not a score of the label map
    assert gate_rows.sum() == 3 * tested["subject"].nunique()
    tested = _sorted(tested[~gate_rows])
    evaluated = _sorted(pd.read_csv(tmp_path / "evaluate.csv"))
    assert sorted(set(tested["subject"])) == ["BML-0009", "BML-0010"]  # the seed-way test split
    pd.testing.assert_frame_equal(tested, evaluated)  # exactly: one score per prediction

    # ... on the T1ce's own oblique, anisotropic grid, which the cached 3 mm grid is not
    for subject in tested["subject"].unique():
        t1ce = nib.load(data / subject / f"{subject}_t1ce_img.nii.gz")
        written = nib.load(run_dir / "predictions_nifti" / f"{subject}.nii.gz")
        assert written.shape == t1ce.shape
        np.testing.assert_allclose(written.affine, t1ce.affine, atol=1e-5)
    # scoring the same predictions on the cached grid gives other numbers: what the test used to report
    cache_dir = next(p for p in (tmp_path / "cache").iterdir() if (p / cache.SETTINGS_FILE).is_file())
    task = get_task("bml", "whole")
    cached_rows = []
    for subject in tested["subject"].unique():
        pred = np.load(run_dir / "predictions" / f"{subject}.npz")["pred"]
        meta = cache.read_meta(cache_dir / subject)
        rows = evaluate_case(regions_to_label_map(pred, task), cache.load_label(cache_dir / subject), task,
                             meta["spacing_mm"], lesions=False)
        cached_rows += [{"subject": subject, **row} for row in rows]
    on_cached_grid = pd.DataFrame(cached_rows).set_index(KEYS)["value"]
    native = tested.set_index(KEYS)["value"].loc[on_cached_grid.index]
    assert (native["volume_ref_ml" == native.index.get_level_values("metric")] !=
            on_cached_grid["volume_ref_ml" == on_cached_grid.index.get_level_values("metric")]).all()


def test_validation_dice_scores_the_regions_of_the_label_map_that_test_scores():
    """Three BraTS regions predicted independently can disagree (ET outside TC and WT); validation
    Dice must see the regions of the one label map test scores, not the raw channels."""
    task = get_task("brats2023", "regions")  # ET, TC, WT
    rng = np.random.default_rng(0)
    reference = rng.choice([0, 1, 2, 3], size=(12, 12, 12), p=[0.6, 0.1, 0.2, 0.1]).astype(np.uint8)
    raw = rng.random((1, 3, 12, 12, 12)) < 0.35  # channels drawn independently: they disagree
    consolidated = consolidate_regions(torch.from_numpy(raw), task)
    target = torch.from_numpy(label_map_to_masks(reference, task.regions))[None]
    validation = dice_per_channel(consolidated, target)[0]

    rows = evaluate_case(regions_to_label_map(raw[0], task), reference, task, (1.0, 1.0, 1.0),
                         distances=False, lesions=False)
    test = [next(r["value"] for r in rows if r["region"] == region and r["metric"] == "dice")
            for region in task.region_names]
    np.testing.assert_allclose(validation.numpy(), test, rtol=1e-6)
    assert not torch.allclose(dice_per_channel(torch.from_numpy(raw), target)[0], validation)  # raw differs
