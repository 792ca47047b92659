"""EvaluationWriter writes exactly what the test step returned, and only where it was told to."""

from __future__ import annotations

from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from sgnet_lightning.writers import EvaluationWriter


def _outputs(subject: str) -> dict:
    pred = np.zeros((1, 4, 5, 6), dtype=bool)
    pred[0, 1:3, 2:4, 3] = True
    native = nib.Nifti1Image(pred[0].astype(np.uint8), np.diag([2.0, 2.0, 3.0, 1.0]))
    maps = {"gate": torch.full((1, 2, 4, 5, 6), 0.25), "attention": torch.ones((1, 3, 4, 5, 6))}
    rows = [{"subject": subject, "region": "WT", "metric": "dice", "value": 0.5, "convention": "both_present"}]
    return {"subject": subject, "prediction": pred, "maps": maps, "native": native, "rows": rows}


def test_writer_writes_predictions_nifti_and_rows(tmp_path):
    writer = EvaluationWriter(tmp_path / "results.csv", tmp_path / "predictions", tmp_path / "predictions_nifti")
    module = SimpleNamespace(test_rows=[])
    for i, subject in enumerate(("A", "B")):
        outputs = _outputs(subject)
        module.test_rows.extend(outputs["rows"])
        writer.on_test_batch_end(None, module, outputs, batch=None, batch_idx=i)
    assert not (tmp_path / "results.csv").exists()  # rows are written once the test has ended
    writer.on_test_end(None, module)

    stored = np.load(tmp_path / "predictions" / "A.npz")
    assert stored["pred"].dtype == np.uint8 and stored["pred"].sum() == 4
    assert stored["gate"].shape == (2, 4, 5, 6) and stored["gate"].dtype == np.float16
    assert stored["attention"].shape == (3, 4, 5, 6)
    written = nib.load(tmp_path / "predictions_nifti" / "B.nii.gz")
    np.testing.assert_array_equal(written.affine, np.diag([2.0, 2.0, 3.0, 1.0]))
    assert np.asarray(written.dataobj).sum() == 4
    table = pd.read_csv(tmp_path / "results.csv")
    assert list(table.columns) == ["subject", "region", "metric", "value", "convention"]
    assert list(table["subject"]) == ["A", "B"]


def test_writer_without_destinations_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    writer = EvaluationWriter()
    module = SimpleNamespace(test_rows=_outputs("A")["rows"])
    writer.on_test_batch_end(None, module, _outputs("A"), batch=None, batch_idx=0)
    writer.on_test_end(None, module)
    assert list(tmp_path.iterdir()) == []
