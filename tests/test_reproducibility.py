"""The same config and seed, run twice on the CPU, give identical per-subject results."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from sgnet_lightning.experiment import run_test, train


@pytest.mark.slow
def test_same_config_and_seed_give_identical_per_subject_results(make_config, tmp_path):
    config = make_config("sgnet", seed_everything=7, trainer={"deterministic": True})
    tables = []
    for name in ("first", "second"):
        train(config, run_dir=tmp_path / name)
        run_test(config, run_dir=tmp_path / name, save_predictions=False)
        tables.append(pd.read_csv(tmp_path / name / "results.csv"))
    pd.testing.assert_frame_equal(tables[0], tables[1], check_exact=True)
    # and a different seed is a different experiment: other initial weights and patches, so other
    # trained weights (a tiny run's thresholded results may coincide, its weights do not)
    other = make_config("sgnet", seed_everything=8, trainer={"deterministic": True})
    train(other, run_dir=tmp_path / "other")
    weights = [_weights(tmp_path / name) for name in ("first", "second", "other")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert any(not torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def _weights(run_dir) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
