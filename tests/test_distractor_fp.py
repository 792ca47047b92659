"""Where false-positive lesions lie (experiments/gating/distractor_fp.py): the helper that names the
components ``lesion_fp`` counts, and the analysis of a benchmark folder's NIfTI predictions against
the phantoms' distractor truth maps."""

from __future__ import annotations

import importlib.util
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from scipy import ndimage

from sgnet_lightning.data.manifest import Manifest
from sgnet_lightning.evaluation.lesions import LESION_SETTINGS, false_positive_components, lesion_metrics
from sgnet_lightning.evaluation.references import read_reference

_spec = importlib.util.spec_from_file_location("distractor_fp", REPO / "experiments" / "gating" / "distractor_fp.py")
distractor_fp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(distractor_fp)


@pytest.mark.parametrize("seed", range(6))
def test_false_positive_components_are_what_lesion_fp_counts(seed):
    rng = np.random.default_rng(seed)
    ref = ndimage.binary_dilation(rng.random((24, 24, 24)) > 0.995, iterations=2)
    spurious = ndimage.binary_dilation(rng.random((24, 24, 24)) > 0.993, iterations=1)
    pred = spurious | (ref & (rng.random(ref.shape) > 0.3))
    for settings in LESION_SETTINGS.values():
        components, false_ids = false_positive_components(pred, ref, settings)
        assert len(false_ids) == lesion_metrics(pred, ref, (1.0, 1.0, 1.0), settings, distances=False)["lesion_fp"]
        assert components.max() == ndimage.label(pred, np.ones((3, 3, 3)))[1]
    assert false_positive_components(pred, np.zeros_like(ref), LESION_SETTINGS["MET"])[1].size == components.max()


def test_false_positives_on_distractors_are_counted_by_kind(phantom_bml, tmp_path):
    """Predictions = the reference + every dura voxel + one blob in an empty corner: each dura component
    is a false positive on dura, the blob one elsewhere, the tumour none."""
    manifest = Manifest.load(phantom_bml["manifest"])
    subjects = sorted(manifest.rows.loc[manifest.rows["split"] == "test", "subject"])[:2]
    bench = tmp_path / "bench"
    run_dir = bench / "fake" / "seed0"
    (run_dir / "predictions_nifti").mkdir(parents=True)
    (bench / "benchmark.json").write_text(json.dumps({"dataset": "bml", "task": "whole", "manifest": str(
        phantom_bml["manifest"]), "runs": [{"model": "fake", "seed": 0, "fold": None}]}))
    (run_dir / "COMPLETE").write_text("")
    pd.DataFrame({"subject": subjects, "region": "WT", "metric": "dice", "value": 1.0}).to_csv(
        run_dir / "results.csv", index=False)
    expected_dura = {}
    for subject in subjects:
        reference = read_reference("bml", manifest.record(subject))
        truth = np.asarray(nib.load(phantom_bml["root"] / "phantom_truth" / f"{subject}_distractors.nii.gz").dataobj)
        assert (truth == 2).any(), "the phantom has dura"
        pred = reference.label_map.copy()
        pred[truth == 2] = 2
        pred[:2, :2, :2] = 2  # a corner of the field of view: outside the head
        assert not truth[:2, :2, :2].any() and not reference.label_map[:4, :4, :4].any()
        expected_dura[subject] = ndimage.label(truth == 2, np.ones((3, 3, 3)))[1]
        nib.save(nib.Nifti1Image(pred, reference.affine), run_dir / "predictions_nifti" / f"{subject}.nii.gz")

    table = distractor_fp.analyse(bench).set_index("subject")
    for subject in subjects:
        row = table.loc[subject]
        assert row["fp_on_dura"] == expected_dura[subject]
        assert row["fp_elsewhere"] == 1 and row["fp_on_vessel"] == row["fp_on_choroid_plexus"] == 0
        assert row["fp_lesions"] == expected_dura[subject] + 1
    summary = distractor_fp.summarise(table.reset_index())["fake"]["WT"]
    assert summary["fp_on_dura_mean"] == sum(expected_dura.values())
    on_dura = sum(expected_dura.values())
    assert summary["share_on_distractors"] == pytest.approx(on_dura / (on_dura + len(subjects)))
