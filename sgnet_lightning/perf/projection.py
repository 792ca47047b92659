"""How long the full BML benchmark would take at measured rates (``projection_bml`` in the JSON).

What the benchmark runs is read from its own configs, so the projection follows them: the
configurations and their architectures, seeds, folds, epochs, steps and batch from
``experiments/benchmarks/bml.yaml`` (through :func:`sgnet_lightning.benchmark.load_benchmark`); the
test and fold-0 validation sizes from its split rule ``data_manifests/splits/bml_kfold.yaml``
applied to the release's labelled subjects.

Units: rates in patches/s, inference in s per volume, projections in hours.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from sgnet_lightning.errors import ConfigError
from sgnet_lightning.perf.settings import EXPERIMENTS, REPO
from sgnet_lightning.perf.tables import inference_ms, rate

BML_BENCHMARK = EXPERIMENTS / "benchmarks" / "bml.yaml"
BML_SPLIT_RULE = REPO / "data_manifests" / "splits" / "bml_kfold.yaml"
BML_LABELLED_SUBJECTS = 104  # Brain-Mets-Lung-MRI-Path-Segs subjects with a whole-tumour label


def project_benchmark_hours(train_rates: dict[str, float], infer_seconds: dict[str, float], *, seeds: int,
                            epochs: int, steps_per_epoch: int, batch_size: int, n_val: int, n_test: int,
                            folds: int = 1) -> dict[str, float]:
    """Hours of a multi-seed benchmark from measured rates, per model and in total.

    hours(model) = seeds x folds x [epochs x (steps_per_epoch x batch_size / train_rate
                   + n_val x infer_seconds) + n_test x infer_seconds] / 3600

    ``train_rates``: end-to-end patches/s; ``infer_seconds``: seconds per validation or test volume.
    Early stopping only shortens this (an upper bound at ``epochs``); metric computation (HD95 at
    test) is not included.
    """
    hours = {}
    for name, patches_per_s in train_rates.items():
        per_epoch = steps_per_epoch * batch_size / patches_per_s + n_val * infer_seconds[name]
        hours[name] = seeds * folds * (epochs * per_epoch + n_test * infer_seconds[name]) / 3600
    hours["total"] = sum(hours.values())
    return hours


def bml_benchmark(path: Path = BML_BENCHMARK, split_rule: Path = BML_SPLIT_RULE,
                  n_subjects: int = BML_LABELLED_SUBJECTS) -> dict[str, Any]:
    """What the benchmark config ``path`` runs, as :func:`project_benchmark_hours` needs it.

    Returns ``configs_per_architecture`` (configurations per network), ``seeds``, ``folds``,
    ``epochs``, ``steps_per_epoch``, ``batch_size`` (every configuration's budget: they must agree),
    ``n_test`` and ``n_val`` (fold 0's validation subjects) of ``split_rule`` over ``n_subjects``.
    """
    from sgnet_lightning.benchmark import load_benchmark
    from sgnet_lightning.data.manifest import assign_splits, load_split_rule

    bench = load_benchmark(path)
    configs = {run["label"]: run["config"] for run in bench["runs"]}  # one per configuration
    budgets = {(c["trainer"]["max_epochs"], c["data"]["steps_per_epoch"], c["data"]["batch_size"])
               for c in configs.values()}
    if len(budgets) != 1:
        raise ConfigError(f"{path}: the projection needs one budget (epochs, steps, batch) for every "
                          f"configuration; got {sorted(budgets)}")
    (epochs, steps_per_epoch, batch_size), = budgets
    splits = assign_splits([f"subject{i:03d}" for i in range(n_subjects)], load_split_rule(split_rule))
    return {
        "configs_per_architecture": dict(Counter(c["model"]["network"] for c in configs.values())),
        "seeds": len({run["seed"] for run in bench["runs"]}),
        "folds": len({run["fold"] for run in bench["runs"]}),
        "epochs": epochs, "steps_per_epoch": steps_per_epoch, "batch_size": batch_size,
        "n_val": sum(fold == 0 for split, fold in splits.values() if split == "train"),
        "n_test": sum(split == "test" for split, _ in splits.values()),
    }


def project_bml(models: dict[str, Any], benchmark: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Hours of the full BML benchmark (``benchmark``: :func:`bml_benchmark` by default) at the
    suite's measured end-to-end and inference rates of ``models`` (a report's ``models``); None
    unless every architecture it runs was measured."""
    benchmark = benchmark or bml_benchmark()
    counts = benchmark["configs_per_architecture"]
    rates = {n: rate(models.get(n, {}), "end_to_end", "suite") for n in counts}
    infer_ms = {n: inference_ms(models.get(n, {}), "suite_sw") for n in counts}
    if None in rates.values() or None in infer_ms.values():
        return None
    settings = {k: v for k, v in benchmark.items() if k != "configs_per_architecture"}
    per_config = project_benchmark_hours(rates, {n: ms / 1000 for n, ms in infer_ms.items()}, **settings)
    hours = {n: per_config[n] * counts[n] for n in counts}
    return {"hours_per_architecture": hours, "total_hours": sum(hours.values()), "assumptions": benchmark,
            "note": f"upper bound: every run goes to {benchmark['epochs']} epochs; metric computation not included"}
