"""Shared test helpers: one builder of phantom data sets (with their manifests), the session-wide
sets built with it, tiny run configs, and one way to run the ``sgnet`` command."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_ERROR_REPORTING", "false")

SEED_WAY = {"name": "seed_way"}


# -- phantom data sets -------------------------------------------------------------------------------
def write_phantom_set(root: Path, n_subjects: int = 12, *, dataset: str = "bml", generator: str = "synth",
                      size: int = 40, seed: int = 0, oblique: bool = False, split: dict = SEED_WAY,
                      split_seed: int = 0, data_name: str = "data") -> dict[str, Path]:
    """Write ``n_subjects`` phantom cases under ``root/data_name`` and their manifest ``root/<dataset>.csv``.

    ``generator``: ``"synth"``, the package's own phantoms (:func:`synthesize_dataset`, ``size``
    voxels a side, any ``dataset``); ``"tiny"``, the world-millimetre Brain-Mets-Lung cases of
    ``tests/_tiny_bml.py`` (a few thousand voxels, ``oblique`` T1ce grids possible; ``seed`` and
    ``size`` unused). ``split`` is the manifest's split rule, drawn with ``split_seed``.

    Returns ``root`` (the data folder), ``manifest`` and ``cache`` (``root/cache``, not built).
    """
    from sgnet_lightning.data.manifest import make_manifest

    root = Path(root)
    data = root / data_name
    if generator == "synth":
        from sgnet_lightning.data.synth import synthesize_dataset

        synthesize_dataset(dataset, n_subjects, data, seed=seed, size=size, progress=False)
    elif generator == "tiny" and dataset == "bml":
        from _tiny_bml import write_tiny_bml

        write_tiny_bml(data, n_subjects, oblique=oblique)
    else:
        raise ValueError(f"no {generator!r} phantom generator for {dataset!r}")
    manifest = root / f"{dataset}.csv"
    make_manifest(dataset, data, manifest, split_rule=split, seed=split_seed, progress=False)
    return {"root": data, "manifest": manifest, "cache": root / "cache"}


@pytest.fixture(scope="session")
def phantom_bml(tmp_path_factory) -> dict[str, Path]:
    """12 phantom BML subjects at 4.9 mm (size 40; 11 labelled: 7 train, 1 val, 3 test by the seed way)."""
    # spaces and non-ASCII in the data folder's name must just work
    return write_phantom_set(tmp_path_factory.mktemp("phantom"), 12, split_seed=42, data_name="bml data ü")


@pytest.fixture(scope="session")
def tiny_bml(tmp_path_factory) -> dict[str, Path]:
    """10 tiny Brain-Mets-Lung cases (2 mm, a few thousand voxels) and their seed-way manifest
    (7 train, 1 val, 2 test), shared by the session: tests add caches (one folder per preprocessing
    setting), never change its files."""
    return write_phantom_set(tmp_path_factory.mktemp("tiny_bml"), 10, generator="tiny")


@dataclass(frozen=True)
class SweepPhantom:
    """A phantom data set with a built cache: 4 training, 2 validation and 2 test subjects."""

    manifest: Path
    cache_root: Path
    val_subjects: list[str]
    test_subjects: list[str]

    @property
    def sets(self) -> list[str]:
        """``--set`` arguments that point a tiny sweep space at this data set."""
        return ["--set", f"data.manifest={self.manifest}", "--set", f"data.cache_root={self.cache_root}"]


@pytest.fixture(scope="session")
def sweep_phantom(tmp_path_factory) -> SweepPhantom:
    """8 phantom subjects (40 voxels, ~6 mm) split 3-fold with 2 held-out test subjects, and their
    6 mm cache (and the data check's verdict) built once, so sweeps only read the cache."""
    from sgnet_lightning.data.datamodule import SegmentationDataModule
    from sgnet_lightning.data.manifest import Manifest

    phantom = write_phantom_set(tmp_path_factory.mktemp("sweep_phantom"), 8,
                                split={"name": "kfold", "n_folds": 3, "test_size": 2})
    SegmentationDataModule(str(phantom["manifest"]), cache_root=str(phantom["cache"]), task="whole",
                           spacing_mm=6.0).prepare_data()
    splits = Manifest.load(phantom["manifest"]).split_subjects(0)
    return SweepPhantom(phantom["manifest"], phantom["cache"], splits["val"], splits["test"])


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
def micro_reference(tiny_bml, tmp_path_factory) -> dict[str, Path]:
    """The 2-model x 2-seed micro-benchmark (``tests/_micro_benchmark.py``) on :func:`tiny_bml`, run
    by the sequential command on one torch thread: what every launcher must reproduce. Returns
    ``data`` (its data set), ``bench_dir`` (the reference's folder)."""
    import torch
    from _micro_benchmark import write_micro_benchmark

    from sgnet_lightning.benchmark import run_benchmark

    root = tmp_path_factory.mktemp("micro")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched run gets on 2 cores: CPU sums depend on the thread count
    try:
        bench_dir = run_benchmark(write_micro_benchmark(root / "configs", tiny_bml, root / "runs"))
    finally:
        torch.set_num_threads(threads)
    return {"data": tiny_bml, "bench_dir": bench_dir}


# -- files a test opens -------------------------------------------------------------------------------
_OPENED: list[str] | None = None  # files opened while recording; None: not recording


def _record_open(event: str, args: tuple) -> None:
    if event == "open" and _OPENED is not None and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


@pytest.fixture
def opened_files():
    """Every file the process opens during the test (a Python audit hook, installed once: audit
    hooks cannot be removed)."""
    global _OPENED
    if not getattr(sys, "_sgnet_test_audit", False):
        sys.addaudithook(_record_open)
        sys._sgnet_test_audit = True
    _OPENED = []
    yield _OPENED
    _OPENED = None


# -- the sgnet command -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ran:
    """What one ``sgnet`` command did: its exit code and what it printed."""

    code: int
    out: str
    err: str


def start_sgnet(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env: dict[str, str | None] | None = None) -> subprocess.Popen:
    """Start ``sgnet <args>`` in its own process (from the repository, unbuffered output) and return
    at once. ``env`` changes the inherited environment: a value None removes that variable."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name, value in (env or {}).items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    return subprocess.Popen([sys.executable, "-m", "sgnet_lightning.cli", *map(str, args)], cwd=REPO,
                            env=environment, stdout=stdout, stderr=stderr, text=True)


def sgnet(*args, capsys=None, process: bool = False, timeout: int = 600,
          env: dict[str, str | None] | None = None) -> Ran:
    """Run ``sgnet <args>`` to its end: in this process through the console entry ``main`` (its
    output read from ``capsys`` when given, else left to the test), or with ``process`` in a fresh
    one (:func:`start_sgnet`, with ``env``), killed after ``timeout`` seconds."""
    if env is not None and not process:
        raise ValueError("env changes a fresh process's environment: pass process=True")
    if process:
        proc = start_sgnet(*args, env=env)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        return Ran(proc.returncode, out, err)
    from sgnet_lightning.cli import main  # the console script's entry; tests call it only here

    if capsys is not None:
        capsys.readouterr()  # only this command's output
    try:
        code = main([str(arg) for arg in args])
    except SystemExit as exit_:  # argparse exits on a usage error
        code = exit_.code
    if capsys is None:
        return Ran(code, "", "")
    captured = capsys.readouterr()
    return Ran(code, captured.out, captured.err)
