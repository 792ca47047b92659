"""``sgnet benchmark``: every model x seed [x fold] as fit + test, resumable, into one tidy table.

A benchmark config (``experiments/benchmarks/*.yaml``)::

    name: bml                       # folder under root
    root: runs
    experiment: ../bml/base.yaml    # dataset base every run starts from (relative to this file)
    models:                         # label -> config overrides merged on top (may use `defaults`)
      sgnet: {defaults: [../models/sgnet.yaml]}
      sgnet_nogate: {defaults: [../models/sgnet.yaml], model: {network_options: {gate_mode: none}}}
    seeds: [0, 1, 2, 3, 4]
    folds: null                     # or [0, 1, 2, 3, 4] for cross-validation manifests
    budget: {trainer: {max_epochs: 100}}   # merged into every run

Each run writes ``<root>/<name>/<label>/seed<k>[/fold<f>]/`` (see :mod:`sgnet_lightning.experiment`);
``COMPLETE`` is written last, after ``results.csv`` and ``run.json``, so a killed benchmark rerun with
the same command redoes only runs without it (resuming their training from ``last.ckpt``).
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from sgnet_lightning import tracking
from sgnet_lightning.config import deep_merge, load_config
from sgnet_lightning.data.cache import atomic_write_json, atomic_write_text
from sgnet_lightning.errors import ConfigError

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"


def load_benchmark(path: str | Path, overrides: dict | None = None) -> dict[str, Any]:
    """Load a benchmark config and resolve every run's experiment config.

    Returns the benchmark dict with ``runs``: a list of ``{"label", "seed", "fold", "config"}``.
    """
    path = Path(path).resolve()
    bench = deep_merge(load_config(path), overrides or {})
    for key in ("name", "experiment", "models"):
        if key not in bench:
            raise ConfigError(f"{path}: benchmark config needs '{key}'")
    base = load_config(path.parent / bench["experiment"])
    seeds = bench.get("seeds", [0, 1, 2, 3, 4])
    folds = bench.get("folds") or [None]
    runs = []
    for label, model_cfg in bench["models"].items():
        model_cfg = dict(model_cfg or {})
        merged = copy.deepcopy(base)
        for parent in model_cfg.pop("defaults", []) or []:
            merged = deep_merge(merged, load_config(path.parent / parent))
        merged = deep_merge(deep_merge(merged, model_cfg), bench.get("budget", {}) or {})
        for seed in seeds:
            for fold in folds:
                config = copy.deepcopy(merged)
                config["seed_everything"] = int(seed)
                if fold is not None:
                    config.setdefault("data", {})["fold"] = int(fold)
                wandb_cfg = config.setdefault("run", {}).setdefault("wandb", {})
                wandb_cfg.setdefault("group", bench["name"])
                wandb_cfg.setdefault("name", f"{label}-seed{seed}" + (f"-fold{fold}" if fold is not None else ""))
                runs.append({"label": label, "seed": int(seed), "fold": fold, "config": config})
    bench["runs"] = runs
    bench["dir"] = Path(bench.get("root", "runs")) / bench["name"]
    return bench


def run_dir_of(bench: dict, run: dict) -> Path:
    path = Path(bench["dir"]) / run["label"] / f"seed{run['seed']}"
    return path / f"fold{run['fold']}" if run["fold"] is not None else path


def is_complete(run_dir: Path) -> bool:
    return (run_dir / COMPLETE).is_file()


def run_benchmark(path: str | Path, overrides: dict | None = None, only: list[str] | None = None) -> Path:
    """Run every missing fit + test of a benchmark; gather all per-subject results; return its folder."""
    from sgnet_lightning.analysis.results import gather_results, write_results
    from sgnet_lightning.experiment import check_writable, run_test, train

    bench = load_benchmark(path, overrides)
    bench_dir = Path(bench["dir"])
    check_writable(bench_dir)
    runs = [r for r in bench["runs"] if not only or r["label"] in only]
    _write_benchmark_json(bench, runs)
    todo = [r for r in runs if not is_complete(run_dir_of(bench, r))]
    log.info("benchmark %s: %d runs, %d done, %d to run", bench["name"], len(runs), len(runs) - len(todo), len(todo))
    progress = tqdm(total=len(runs), initial=len(runs) - len(todo), desc=f"benchmark {bench['name']}", unit="run")
    for run in todo:
        run_dir = run_dir_of(bench, run)
        progress.set_postfix_str(f"{run['label']} seed {run['seed']}" + (f" fold {run['fold']}" if run["fold"] is not None else ""))
        start = time.perf_counter()
        train(run["config"], run_dir=run_dir)
        run_test(run["config"], run_dir=run_dir, ckpt="best")
        _finish_run(run_dir, run, time.perf_counter() - start)
        progress.update(1)
    progress.close()
    results = gather_results(bench_dir)
    write_results(results, bench_dir / "results.csv")
    log.info("gathered %d result rows into %s", len(results), bench_dir / "results.csv")
    return bench_dir


def _finish_run(run_dir: Path, run: dict, wall_time_s: float) -> None:
    import json

    info = json.loads((run_dir / "run.json").read_text())
    info.update(model=run["label"], options=run["config"].get("model", {}).get("network_options") or {},
                seed=run["seed"], fold=run["fold"], wall_time_s=wall_time_s, complete=True)
    atomic_write_json(run_dir / "run.json", info)
    atomic_write_text(run_dir / COMPLETE, time.strftime("%Y-%m-%dT%H:%M:%S\n"))  # last: marks the run done


def cache_dir_for(config: dict) -> Path:
    """The cache folder a run of ``config`` reads (the DataModule's settings key)."""
    from sgnet_lightning.config import get_dotted
    from sgnet_lightning.data.datamodule import preprocess_settings

    settings = preprocess_settings(get_dotted(config, "data.spacing_mm", 1.0))
    return Path(get_dotted(config, "data.cache_root", "cache")) / settings.key()


def _write_benchmark_json(bench: dict, runs: list[dict]) -> None:
    from sgnet_lightning.config import get_dotted
    from sgnet_lightning.data.manifest import Manifest

    first = runs[0]["config"] if runs else {}
    manifest = Manifest.load(get_dotted(first, "data.manifest"), root=get_dotted(first, "data.data_root"))
    models = {}
    for run in runs:
        model = run["config"].get("model", {})
        models[run["label"]] = {"network": model.get("network"), "options": model.get("network_options") or {},
                                "aux_loss_weight": model.get("aux_loss_weight", 0.0)}
    info = {
        "name": bench["name"],
        "dataset": manifest.dataset,
        "task": get_dotted(first, "data.task"),
        "manifest": str(get_dotted(first, "data.manifest")),
        "cache_dir": str(cache_dir_for(first)),
        "models": models,
        "seeds": sorted({r["seed"] for r in runs}),
        "folds": sorted({r["fold"] for r in runs if r["fold"] is not None}) or None,
        "split": manifest.split_rule,
        "budget": bench.get("budget", {}),
        **tracking.provenance(),
    }
    path = Path(bench["dir"]) / "benchmark.json"
    Path(bench["dir"]).mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, info)
    atomic_write_text(Path(bench["dir"]) / "benchmark.yaml", yaml.safe_dump(
        {k: v for k, v in bench.items() if k not in ("runs", "dir")}, sort_keys=False))
