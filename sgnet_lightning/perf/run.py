"""The whole run of ``sgnet bench`` and ``sgnet bench loader``: settings, data, every measurement,
one JSON file (written atomically) with the device, sizes, settings, figures and ratios.

Units as in the measuring modules: throughput in patches/s, inference in ms per volume, durations
in s, memory in GiB; no figure is estimated: a part that was not run is absent (or null).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from sgnet_lightning.errors import ConfigError
from sgnet_lightning.files import atomic_write_json
from sgnet_lightning.perf.device import environment, pick_device
from sgnet_lightning.perf.loaders import measure_loaders, prepare_data
from sgnet_lightning.perf.measure import (measure_end_to_end, measure_inference, measure_model_only,
                                          prediction_agreement)
from sgnet_lightning.perf.projection import project_bml
from sgnet_lightning.perf.settings import (IN_CHANNELS, OUT_CHANNELS, RunSetting, Sizes, model_options, seed_way,
                                          sizes_for, suite_defaults)
from sgnet_lightning.perf.tables import log, ratios

PARTS = ("model", "end_to_end", "loader", "inference", "numerics")


def run_bench(
    out: str | os.PathLike,
    models: list[str] | None = None,
    quick: bool = False,
    steps: int | None = None,
    patch=None,
    phantom_dir: str | None = None,
    manifest: str | None = None,
    cache_root: str | None = None,
    compile: bool = False,
    device: str | None = None,
    parts: tuple[str, ...] = PARTS,
    threads: int | None = None,
) -> dict[str, Any]:
    """Measure everything in ``parts`` and write the JSON to ``out`` (see the module docstring).

    ``threads`` sets ``torch.set_num_threads`` for this process (recorded): on a CPU shared with
    other work, OpenMP threads waiting for a busy core can make steps many times slower.
    """
    from sgnet_lightning.models import create_model, list_models

    if threads:
        torch.set_num_threads(int(threads))
    dev = pick_device(device)
    sizes = sizes_for(dev, quick, patch, steps)
    models = models or list_models()
    unknown = sorted(set(models) - set(list_models()))
    if unknown:
        raise ConfigError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(list_models())}")
    seed, suite = seed_way(dev, sizes), suite_defaults(dev, sizes)
    # the suite with ``data.loader: device``: the training set on the device, no queue
    suite_device = replace(suite, name="suite_device", data={"loader": "device"})
    compiled = [suite_defaults(dev, sizes, compile=True)] if compile and dev.type == "cuda" else []
    train_settings = [seed, suite, *compiled]
    infer_settings = [seed, suite] + ([suite_defaults(dev, sizes, sw_batch_size=64)] if dev.type == "cuda" else [])
    report = _report_head(dev, sizes, quick, [*train_settings, suite_device], parts=list(parts),
                          inference_settings=[asdict(s) for s in infer_settings], models={})
    with tempfile.TemporaryDirectory(prefix="sgnet-bench-") as workdir:
        data = None
        if {"end_to_end", "loader"} & set(parts):
            data = prepare_data(sizes, Path(workdir), phantom_dir, manifest, cache_root)
            report["data"] = data.info
        for name in models:
            entry: dict[str, Any] = {"parameters": sum(p.numel() for p in create_model(
                name, IN_CHANNELS, OUT_CHANNELS, **model_options(name)["network_options"]).parameters())}
            log(f"{name}: {entry['parameters']:,} parameters")
            if "model" in parts:
                entry["model_only"] = {s.name: _timed(f"{name} model-only {s.name}", measure_model_only, name, s, sizes,
                                                      dev) for s in train_settings}
            if "end_to_end" in parts:
                entry["end_to_end"] = {s.name: _timed(f"{name} end-to-end {s.name}", measure_end_to_end, name, s, data,
                                                      sizes, dev) for s in (seed, suite, suite_device)}
            if "inference" in parts:
                entry["inference"] = {f"{s.name}_sw{s.sw_batch_size}": _timed(f"{name} inference {s.name}",
                                                                              measure_inference, name, s, sizes, dev)
                                      for s in infer_settings}
            if "numerics" in parts:
                entry["numerics"] = {
                    "suite_vs_fp32": prediction_agreement(name, suite.precision, suite.channels_last, dev),
                    "seed_vs_fp32": prediction_agreement(name, seed.precision, seed.channels_last, dev),
                }
            entry["ratios"] = ratios(entry)
            report["models"][name] = entry
            log(json.dumps({name: entry["ratios"]}))
        if "loader" in parts:
            report["loader"] = measure_loaders(data, [seed, suite], sizes, dev)
    if dev.type == "cuda" and not quick and tuple(sizes.patch) == (96, 96, 32):
        report["projection_bml"] = project_bml(report["models"])
    return _write(out, report)


def run_loader_bench(out, quick=False, patch=None, phantom_dir=None, manifest=None, cache_root=None,
                     device=None, rounds: int | None = None, threads: int | None = None,
                     queues: list[tuple[int, int, int]] | None = None) -> dict[str, Any]:
    """``sgnet bench loader``: the loader comparison alone (DataModule against the naive queue).

    ``queues``: extra ``(samples_per_volume, queue_length, num_workers)`` settings to compare (named
    ``spv<s>_q<l>_w<w>``), measured as given, without the CPU caps.
    """
    if threads:
        torch.set_num_threads(int(threads))
    dev = pick_device(device)
    sizes = sizes_for(dev, quick, patch)
    if rounds:
        sizes = replace(sizes, loader_rounds=int(rounds))
    settings = [seed_way(dev, sizes), suite_defaults(dev, sizes)]
    for spv, length, workers in queues or []:
        data = {"samples_per_volume": int(spv), "queue_length": int(length), "num_workers": int(workers)}
        settings.append(replace(settings[1], name=f"spv{spv}_q{length}_w{workers}", data=data))
    report = _report_head(dev, sizes, quick, settings)
    with tempfile.TemporaryDirectory(prefix="sgnet-bench-") as workdir:
        data = prepare_data(sizes, Path(workdir), phantom_dir, manifest, cache_root)
        report["data"] = data.info
        report["loader"] = measure_loaders(data, settings, sizes, dev)
    return _write(out, report)


def _report_head(device: torch.device, sizes: Sizes, quick: bool, settings: list[RunSetting], **more) -> dict[str, Any]:
    """What every report starts with: when, how it was called, the machine, sizes and settings."""
    return {"schema": 1, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv), "quick": quick, "device": environment(device), "sizes": asdict(sizes),
            "settings": {s.name: asdict(s) for s in settings}, "notes": _notes(device, sizes, quick), **more}


def _write(out: str | os.PathLike, report: dict[str, Any]) -> dict[str, Any]:
    """``report`` with the machine's load at the end, written to ``out`` as JSON."""
    report["device"]["load_average_end"] = list(os.getloadavg())
    atomic_write_json(out, report)
    return report


def _notes(device: torch.device, sizes: Sizes, quick: bool) -> list[str]:
    notes = []
    if device.type != "cuda":
        notes.append(
            f"CPU run: patch {sizes.patch}, inference volume {sizes.inference_volume} (not 240x240x155), "
            "fp32 in both settings; model figures are not GPU figures"
        )
    if quick:
        notes.append("--quick: tiny sizes for tests and smoke runs; not for reporting")
    return notes


def _timed(label: str, measure: Callable[..., dict], *args) -> dict:
    """Run one measurement and log its headline figure and how long it took."""
    start = time.perf_counter()
    result = measure(*args)
    figure = result.get("patches_per_s")
    shown = f"{figure:,.1f} patches/s" if figure is not None else f"{result['ms_per_volume']:,.0f} ms/volume"
    log(f"{label}: {shown} ({time.perf_counter() - start:.1f} s)")
    return result
