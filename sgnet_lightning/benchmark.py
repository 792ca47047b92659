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
    primary_endpoint: {metric: dice, region: WT}   # optional; default Dice of the main region (WT)

Each run writes ``<root>/<name>/<label>/seed<k>[/fold<f>]/`` (see :mod:`sgnet_lightning.runs`);
``COMPLETE`` is written last, after ``results.csv`` and ``run.json``, so a killed benchmark rerun with
the same command redoes only runs without it (resuming their training from ``last.ckpt``).

Every run records its locked config (``config.lock``, :mod:`sgnet_lightning.config_lock`). A rerun
first compares each existing run folder with the config the YAML now gives it and refuses, listing
the changed keys per model and seed, if any differs; ``--redo-changed`` moves those folders aside
(``<run>.replaced-<time>``) and runs them anew. ``benchmark.json`` lists the runs of the current
config with their config hashes, and gathering (results, statistics, report) reads only those: a
model or seed dropped from the YAML is left out, with a line saying so.

``--launcher local|slurm`` runs the missing runs side by side on this machine's GPUs (or CPUs) or as
one SLURM array (:mod:`sgnet_lightning.launch`); every launcher does a run through :func:`run_one`,
so results do not depend on the launcher. ``sgnet benchmark status`` lists every run as done,
running, queued, failed or missing, with its job and log.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from sgnet_lightning import tracking
from sgnet_lightning.config import deep_merge, load_config
from sgnet_lightning.config_lock import (ConfigChangedError, config_hash, lock_differences, locked_config, read_lock,
                                           write_lock)
from sgnet_lightning.files import atomic_write_json, atomic_write_text
from sgnet_lightning.errors import ConfigError, SgnetError
from sgnet_lightning.runs import (BENCHMARK_FILE, BEST, LAST, RESULTS_FILE, RUN_FILE, benchmark_run_dir, can_resume,
                                  checkpoint_file, is_complete, mark_complete, update_run_json)

log = logging.getLogger(__name__)


# The keys a benchmark YAML may hold; any other (a typo such as `seed:`) is refused rather than ignored.
BENCHMARK_KEYS = ("name", "root", "experiment", "models", "seeds", "folds", "budget", "primary_endpoint")


def load_benchmark(path: str | Path, overrides: dict | None = None) -> dict[str, Any]:
    """Load a benchmark config and resolve every run's experiment config.

    Returns the benchmark dict with ``runs``: a list of ``{"label", "seed", "fold", "config"}``.
    """
    path = Path(path).resolve()
    bench = deep_merge(load_config(path), overrides or {})
    for key in ("name", "experiment", "models"):
        if key not in bench:
            raise ConfigError(f"{path}: benchmark config needs '{key}'")
    unknown = sorted(set(bench) - set(BENCHMARK_KEYS) - {"defaults"})
    if unknown:
        raise ConfigError(f"{path}: unknown benchmark key(s) {', '.join(unknown)}; known: {', '.join(BENCHMARK_KEYS)}")
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
    """The folder of ``run`` (an entry of ``bench["runs"]``): ``<bench dir>/<label>/seed<k>[/fold<f>]``."""
    return benchmark_run_dir(bench["dir"], run["label"], run["seed"], run.get("fold"))


def run_benchmark(path: str | Path, overrides: dict | None = None, only: list[str] | None = None,
                  redo_changed: bool = False, launcher=None, wait: bool = False) -> Path | None:
    """Run every missing fit + test of a benchmark, gather its per-subject results; return its folder.

    Before anything runs, every existing run folder of the benchmark (complete, or partial with a
    ``last.ckpt``) is compared with the config the benchmark now gives it
    (:mod:`sgnet_lightning.config_lock`). Any difference stops the benchmark with one message listing
    the changed keys per model and seed, unless ``redo_changed``: then those folders are moved aside
    to ``<run>.replaced-<time>`` (kept, never gathered) and their runs start anew.

    Runs that a job is doing or will do (queued or running, see :mod:`sgnet_lightning.launch.status`)
    are left to it; the others still missing, or failed, are run by ``launcher``: one after another in
    this process (inline, the default), side by side on this machine (local), or as one SLURM array.

    Args:
        path: benchmark YAML.
        overrides: merged into the benchmark config (``--set``, ``--data``).
        only: model labels to run now (the others' finished runs are still gathered).
        redo_changed: move aside and redo runs made with another config.
        launcher: a :class:`sgnet_lightning.launch.Launcher` (default: inline).
        wait: SLURM: wait for the array to finish, then gather (default: submit and return None).

    Raises:
        ConfigChangedError: runs made with another config, without ``redo_changed``.
        SgnetError: runs that failed (named, with their last error line).
    """
    from sgnet_lightning.analysis.results import gather_results, write_results
    from sgnet_lightning.experiment import check_writable
    from sgnet_lightning.launch import load_launcher
    from sgnet_lightning.launch.jobs import benchmark_states, launch_benchmark_runs, wait_for_benchmark

    launcher = launcher or load_launcher()
    bench = load_benchmark(path, overrides)
    bench_dir = Path(bench["dir"])
    unknown = sorted(set(only or []) - set(bench["models"]))
    if unknown:
        raise ConfigError(f"--only {', '.join(unknown)}: no such model in {path}; models: {', '.join(bench['models'])}")
    check_writable(bench_dir)
    for run in bench["runs"]:
        run["locked"] = locked_config(run["config"])
    _unlock_loader_workers(bench)
    states = {_run_name(run): state.state for run, state in zip(bench["runs"], benchmark_states(bench))}
    changed = _changed_runs(bench)
    if changed and not redo_changed:
        raise ConfigChangedError(_changed_message(bench, path, changed))
    busy = [_run_name(run) for run, _ in changed if states[_run_name(run)] in ("queued", "running")]
    if busy:
        raise SgnetError(f"cannot move aside {', '.join(busy)}: a job is using the folder (see `sgnet benchmark "
                         "status`); cancel it or wait for it")
    for run, _ in changed:
        _move_aside(run_dir_of(bench, run))
        states[_run_name(run)] = "missing"
    _write_benchmark_json(bench)
    runs = [r for r in bench["runs"] if not only or r["label"] in only]
    elsewhere = [r for r in runs if states[_run_name(r)] in ("queued", "running")]
    todo = [r for r in runs if states[_run_name(r)] not in ("done", "queued", "running")]
    log.info("benchmark %s: %d runs, %d done, %d queued or running in jobs, %d to run (%s launcher)", bench["name"],
             len(runs), sum(states[_run_name(r)] == "done" for r in runs), len(elsewhere), len(todo), launcher.kind)
    failed: dict[str, str] = {}
    waited = todo + elsewhere if launcher.kind == "slurm" else todo
    if launcher.inline:
        progress = tqdm(total=len(runs), initial=len(runs) - len(todo), desc=f"benchmark {bench['name']}", unit="run")
        for run in todo:
            progress.set_postfix_str(_run_name(run))
            run_one(bench, run)
            progress.update(1)
        progress.close()
    elif todo:
        failed = launch_benchmark_runs(bench, todo, launcher)
    if launcher.kind == "slurm" and (todo or elsewhere):
        if not wait:
            return None
        failed = wait_for_benchmark(bench, waited)
    elif elsewhere:
        log.warning("%d run(s) still queued or running in other jobs: gathering without them", len(elsewhere))
    if failed:
        raise SgnetError(f"{len(failed)} of {len(waited)} run(s) failed: "
                         + "; ".join(f"{name}: {error}" for name, error in failed.items())
                         + f"; `sgnet benchmark status --config {path}` lists them with their logs, and "
                         "rerunning this command runs them again (from their last.ckpt)")
    results = gather_results(bench_dir)  # the runs benchmark.json lists, no others
    write_results(results, bench_dir / RESULTS_FILE)
    log.info("gathered %d result rows into %s", len(results), bench_dir / RESULTS_FILE)
    return bench_dir


def run_one(bench: dict, run: dict, resources=None) -> Path:
    """Fit + test one run of a benchmark into its folder, then mark it ``COMPLETE``; return the folder.

    The one path every launcher takes (the inline loop, a local job, a SLURM task): training resumes
    from ``last.ckpt`` when the folder has one, the best checkpoint is tested, ``run.json`` gets the
    run's identity and times, and ``COMPLETE`` is written last. A complete run is left as it is, so a
    task that runs again (requeued, or rerun) does only what is missing. ``task.json`` records the
    process doing it (:mod:`sgnet_lightning.launch.tasks`).

    Args:
        bench: the benchmark (only ``bench["dir"]`` is read).
        run: ``{"label", "seed", "fold", "config"}``, an entry of ``load_benchmark(...)["runs"]``.
        resources: this process's share of the machine (:class:`~sgnet_lightning.launch.tasks.Resources`:
            torch threads, at most so many loader workers); None: as configured.
    """
    from sgnet_lightning.experiment import run_test, train
    from sgnet_lightning.launch.status import TASK_FILE
    from sgnet_lightning.launch.tasks import Resources, TaskRecord, checkpoint_epoch, launched_run_callbacks

    run_dir = run_dir_of(bench, run)
    if is_complete(run_dir):
        return run_dir
    resources = resources or Resources()
    resources.set_threads()
    config = resources.cap(run["config"])
    last = checkpoint_file(run_dir, LAST)
    with TaskRecord(run_dir / TASK_FILE, resources, resumed=last.is_file(),
                    resumed_from_epoch=checkpoint_epoch(last) if last.is_file() else None):
        start = time.perf_counter()
        train(config, run_dir=run_dir, callbacks=launched_run_callbacks())
        tested = time.perf_counter()
        run_test(config, run_dir=run_dir, ckpt=BEST, callbacks=launched_run_callbacks())
        end = time.perf_counter()
        _finish_run(run_dir, run, wall_time_s=end - start, test_time_s=end - tested)
    return run_dir


def _run_name(run: dict) -> str:
    return f"{run['label']} seed {run['seed']}" + (f" fold {run['fold']}" if run["fold"] is not None else "")


def _changed_runs(bench: dict) -> list[tuple[dict, list[str]]]:
    """Runs whose folder holds a finished or resumable run of another config, with the differences."""
    changed = []
    for run in bench["runs"]:
        run_dir = run_dir_of(bench, run)
        if is_complete(run_dir) or can_resume(run_dir):
            differences = lock_differences(run_dir, run["locked"])
            if differences:
                changed.append((run, differences))
    return changed


def _unlock_loader_workers(bench: dict) -> None:
    """Bring run folders locked before ``data.num_workers`` left the lock up to date.

    The queue's workers do not change a run unless TorchIO transforms draw in them
    (:mod:`sgnet_lightning.config_lock`), so a folder whose recorded lock differs from its run's lock
    by that key alone gets the new lock and hash (``config.lock``, ``run.json``) instead of being
    refused as changed.
    """
    for run in bench["runs"]:
        run_dir = run_dir_of(bench, run)
        recorded = read_lock(run_dir)
        data = (recorded or {}).get("data") or {}
        if "num_workers" not in data or data.get("torchio_transforms"):
            continue
        without = copy.deepcopy(recorded)
        del without["data"]["num_workers"]
        if not without["data"]:
            del without["data"]
        if without != run["locked"]:
            continue
        digest = write_lock(run_dir, without)
        if (run_dir / RUN_FILE).is_file():
            update_run_json(run_dir, config_hash=digest)
        log.info("%s: config lock updated (data.num_workers is no longer part of it)", run_dir)


def _changed_message(bench: dict, path: str | Path, changed: list[tuple[dict, list[str]]]) -> str:
    """One message: per model and set of changes, the seeds (and folds) it concerns."""
    groups: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for run, differences in changed:
        where = f"{run['seed']}" + (f"/fold {run['fold']}" if run["fold"] is not None else "")
        groups.setdefault((run["label"], tuple(differences)), []).append(where)
    lines = [f"  {label} seed {', '.join(seeds)}: {'; '.join(differences)}"
             for (label, differences), seeds in groups.items()]
    return (f"benchmark {bench['name']}: {len(changed)} run(s) in {bench['dir']} were made with another config "
            f"than {path} gives them now:\n" + "\n".join(lines) + "\nrestore the config, or rerun with "
            "--redo-changed to move those runs aside (<run>.replaced-<time>) and run them anew")


def _move_aside(run_dir: Path) -> Path:
    """Rename a run folder to ``<name>.replaced-<time>`` (one atomic rename; nothing is deleted)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = run_dir.with_name(f"{run_dir.name}.replaced-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = run_dir.with_name(f"{run_dir.name}.replaced-{stamp}-{n}")
    os.rename(run_dir, target)
    log.warning("moved %s (made with another config) aside to %s", run_dir, target.name)
    return target


def _finish_run(run_dir: Path, run: dict, wall_time_s: float, test_time_s: float) -> None:
    """Complete ``run.json`` (identity, ``wall_time_s`` of this attempt's fit + test, ``test_time_s``;
    ``train_time_s`` sums every attempt) and write ``COMPLETE``."""
    update_run_json(run_dir, model=run["label"], options=run["config"].get("model", {}).get("network_options") or {},
                    seed=run["seed"], fold=run["fold"], wall_time_s=wall_time_s, test_time_s=test_time_s, complete=True)
    mark_complete(run_dir)  # last: marks the run done


def cache_dir_for(config: dict) -> Path:
    """The cache folder a run of ``config`` reads (the DataModule's settings key)."""
    from sgnet_lightning.config import get_dotted
    from sgnet_lightning.data.datamodule import preprocess_settings

    settings = preprocess_settings(get_dotted(config, "data.spacing_mm", 1.0))
    return Path(get_dotted(config, "data.cache_root", "cache")) / settings.key()


def primary_endpoint(bench: dict, task) -> dict[str, str]:
    """The benchmark's ``primary_endpoint: {metric, region}``, checked; default: Dice of the task's
    main region (``Task.main_region``, WT), as ``sgnet stats`` assumes without one."""
    from sgnet_lightning.analysis.stats import metric_direction
    from sgnet_lightning.evaluation import METRICS

    endpoint = {"metric": "dice", "region": task.main_region, **(bench.get("primary_endpoint") or {})}
    if set(endpoint) != {"metric", "region"}:
        raise ConfigError(f"primary_endpoint takes metric and region; got {', '.join(sorted(endpoint))}")
    if endpoint["metric"] not in METRICS:
        raise ConfigError(f"primary_endpoint.metric {endpoint['metric']!r} unknown; known: {', '.join(METRICS)}")
    if metric_direction(endpoint["metric"]) is None:
        raise ConfigError(f"primary_endpoint.metric {endpoint['metric']}: a volume has no better or worse")
    if endpoint["region"] not in task.regions:
        raise ConfigError(f"primary_endpoint.region {endpoint['region']!r} is not a region of task {task.name} "
                          f"({', '.join(task.regions)})")
    return endpoint


def _write_benchmark_json(bench: dict) -> None:
    """``benchmark.json``: what the benchmark is (data, models, seeds, folds, budget, primary endpoint,
    provenance) and ``runs``, every model x seed x fold of the config with its config hash: what
    gathering, statistics and the report read."""
    from sgnet_lightning.config import get_dotted
    from sgnet_lightning.data.labels import get_task
    from sgnet_lightning.data.manifest import Manifest

    runs = bench["runs"]
    first = runs[0]["config"]
    manifest = Manifest.load(get_dotted(first, "data.manifest"), root=get_dotted(first, "data.data_root"))
    task = get_task(manifest.dataset, get_dotted(first, "data.task"))
    models = {}
    for run in runs:
        model = run["config"].get("model", {})
        models[run["label"]] = {"network": model.get("network"), "options": model.get("network_options") or {},
                                "aux_loss_weight": model.get("aux_loss_weight", 0.0)}
    info = {
        "name": bench["name"],
        "dataset": manifest.dataset,
        "task": task.name,
        "manifest": str(get_dotted(first, "data.manifest")),
        "cache_dir": str(cache_dir_for(first)),
        "models": models,
        "seeds": sorted({r["seed"] for r in runs}),
        "folds": sorted({r["fold"] for r in runs if r["fold"] is not None}) or None,
        "runs": [{"model": r["label"], "seed": r["seed"], "fold": r["fold"], "config_hash": config_hash(r["locked"])}
                 for r in runs],
        "primary_endpoint": primary_endpoint(bench, task),
        "split": manifest.split_rule,
        "budget": bench.get("budget", {}),
        **tracking.provenance(),
    }
    path = Path(bench["dir"]) / BENCHMARK_FILE
    Path(bench["dir"]).mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, info)
    atomic_write_text(Path(bench["dir"]) / "benchmark.yaml", yaml.safe_dump(
        {k: v for k, v in bench.items() if k not in ("runs", "dir")}, sort_keys=False))
