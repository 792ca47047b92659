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


@pytest.fixture(scope="session")
def micro_reference(tmp_path_factory) -> dict[str, Path]:
    """The 2-model x 2-seed micro-benchmark (``tests/_micro_benchmark.py``) run by the sequential
    command on one torch thread: what every launcher must reproduce. Returns ``data`` (its data
    set), ``bench_dir`` (the reference's folder)."""
    import torch
    from _micro_benchmark import write_micro_benchmark, write_tiny_data

    from sgnet_lightning.benchmark import run_benchmark

    root = tmp_path_factory.mktemp("micro")
    data = write_tiny_data(root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched run gets on 2 cores: CPU sums depend on the thread count
    try:
        bench_dir = run_benchmark(write_micro_benchmark(root / "configs", data, root / "runs"))
    finally:
        torch.set_num_threads(threads)
    return {"data": data, "bench_dir": bench_dir}
