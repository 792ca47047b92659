"""Shared fixtures: a tiny phantom Brain-Mets-Lung set with its manifest, and tiny run configs."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_ERROR_REPORTING", "false")


@pytest.fixture(scope="session")
def phantom_bml(tmp_path_factory) -> dict[str, Path]:
    """12 phantom BML subjects at 4.9 mm (size 40; 11 labelled: 7 train, 1 val, 3 test by the seed way)."""
    from sgnet_lightning.data.manifest import make_manifest
    from sgnet_lightning.data.synth import synthesize_dataset

    root = tmp_path_factory.mktemp("phantom") / "bml data ü"  # spaces and non-ASCII must just work
    synthesize_dataset("bml", 12, root, seed=0, size=40, progress=False)
    manifest = root.parent / "bml.csv"
    make_manifest("bml", root, manifest, split_rule={"name": "seed_way"}, seed=42, progress=False)
    return {"root": root, "manifest": manifest, "cache": root.parent / "cache"}


def tiny_config(phantom: dict[str, Path], run_root: Path, network: str = "sgnet", **sections) -> dict:
    """The phantom experiment config for ``network``, shrunk to seconds on a CPU."""
    from sgnet_lightning.config import deep_merge, load_config

    config = load_config(REPO / "experiments" / "phantom_bml" / f"{network}.yaml")
    small = {
        "data": {"manifest": str(phantom["manifest"]), "cache_root": str(phantom["cache"]), "spacing_mm": 5.0,
                 "patch_size": [16, 16, 16], "batch_size": 2, "steps_per_epoch": 2, "samples_per_volume": 2,
                 "queue_length": 8, "num_workers": 0},
        "model": {"sliding_window": {"roi_size": [16, 16, 16], "sw_batch_size": 2}},
        "trainer": {"max_epochs": 2, "log_every_n_steps": 1, "enable_progress_bar": False,
                    "enable_model_summary": False},
        "run": {"root": str(run_root), "wandb": {"enabled": False}},
    }
    return deep_merge(deep_merge(copy.deepcopy(config), small), sections)


@pytest.fixture
def make_config(phantom_bml, tmp_path):
    def factory(network: str = "sgnet", **sections) -> dict:
        return tiny_config(phantom_bml, tmp_path / "runs", network, **sections)

    return factory
