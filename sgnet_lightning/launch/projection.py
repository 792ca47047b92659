"""How long a benchmark takes on N parallel slots (GPUs x runs per GPU, or SLURM tasks at once).

Per-run times come from one of two sources, and every projection says which:

- **measured**: ``train_time_s + test_time_s`` in the ``run.json`` of a benchmark folder's complete
  runs (median per model); models not measured take the median of the measured ones (marked
  ``assumed``);
- **anchors**: model-only training throughput in patches per second, as measured by
  ``shared/anchors/gpu_anchor_bench.py`` (JSON like ``docs/cluster/h100_anchors.json``):
  ``max_epochs x steps_per_epoch x batch_size`` patches at that rate, scaled by the patch volume
  relative to the anchors' 96 x 96 x 32. No data loading, validation or test: a lower bound.
  Networks the anchors lack take the slowest anchored network's time (marked ``assumed``).

The wall time is that of the launchers here: runs start in the benchmark's order, each on the first
slot that frees (:func:`list_schedule`).
"""

from __future__ import annotations

import heapq
import json
import math
import statistics
from pathlib import Path
from typing import Any, Sequence

from sgnet_lightning.config import get_dotted
from sgnet_lightning.errors import ConfigError

ANCHOR_PATCH_VOXELS = 96 * 96 * 32  # the anchors' training patch
# suite network name -> the anchors' model key (SG-Net's gates add 0.46 % parameters to its body)
ANCHOR_MODELS = {"unet": "unet", "attention_unet": "attunet", "resunet": "resunet", "sgnet": "sgnet"}


def list_schedule(durations: Sequence[float], slots: int) -> float:
    """Wall time of jobs started in the given order, each on the slot that frees first."""
    free_at = [0.0] * max(1, slots)
    for duration in durations:
        start = heapq.heappop(free_at)
        heapq.heappush(free_at, start + duration)
    return max(free_at)


def measured_seconds(bench_dir: str | Path) -> dict[str, list[float]]:
    """Model label -> per-run seconds (fit + test) of the complete runs of a benchmark folder."""
    from sgnet_lightning.analysis.results import find_runs
    from sgnet_lightning.runs import read_run_json

    measured: dict[str, list[float]] = {}
    for run in find_runs(bench_dir)[0]:
        info = read_run_json(run.path)
        if "train_time_s" in info and "test_time_s" in info:
            measured.setdefault(run.model, []).append(float(info["train_time_s"]) + float(info["test_time_s"]))
    return measured


def anchor_seconds(config: dict[str, Any], anchors: dict[str, Any]) -> tuple[float, str] | None:
    """Training seconds of one run of ``config`` at the anchors' throughput, and what was used;
    None when the anchors lack its network."""
    model = ANCHOR_MODELS.get(get_dotted(config, "model.network"))
    rates = anchors["train"].get(model) if model else None
    if not rates:
        return None
    batch = int(get_dotted(config, "data.batch_size"))
    setting = "bf16_cl_b32" if batch >= 32 else "bf16_cl_b4"
    patch_voxels = math.prod(get_dotted(config, "data.patch_size"))
    patches_per_s = rates[setting][0] * ANCHOR_PATCH_VOXELS / patch_voxels
    patches = int(get_dotted(config, "trainer.max_epochs")) * int(get_dotted(config, "data.steps_per_epoch")) * batch
    return patches / patches_per_s, f"anchor {model} {setting}: {patches_per_s:.0f} patches/s at this patch size"


def project(bench: dict, slots: Sequence[int], measured_from: str | Path | None = None,
            anchors_file: str | Path | None = None) -> dict[str, Any]:
    """Per-model seconds per run and the benchmark's wall time on each number of ``slots``.

    Args:
        bench: a loaded benchmark (``load_benchmark``).
        slots: numbers of parallel slots to project for (1 = the sequential command).
        measured_from: benchmark folder whose complete runs give the times (default: ``bench``'s own).
        anchors_file: use the anchors' throughput instead of measured times.
    """
    per_model: dict[str, dict[str, Any]] = {}
    if anchors_file is not None:
        anchors = json.loads(Path(anchors_file).read_text())
        for run in bench["runs"]:
            if run["label"] not in per_model:
                found = anchor_seconds(run["config"], anchors)
                per_model[run["label"]] = ({"seconds": found[0], "source": found[1]} if found else
                                           {"seconds": None, "network": get_dotted(run["config"], "model.network")})
        slowest = max(m["seconds"] for m in per_model.values() if m["seconds"] is not None)
        for model in per_model.values():
            if model["seconds"] is None:
                model.update(seconds=slowest, source=f"assumed: no anchor for {model.pop('network')}, taken as "
                                                     "the slowest anchored network")
        source = f"anchors {anchors_file} ({anchors.get('device', '?')}): model-only training, a lower bound"
    else:
        folder = Path(measured_from or bench["dir"])
        measured = measured_seconds(folder)
        if not measured:
            raise ConfigError(f"{folder}: no complete run with train_time_s and test_time_s in its run.json to "
                              "project from")
        typical = statistics.median(statistics.median(v) for v in measured.values())
        for label in dict.fromkeys(run["label"] for run in bench["runs"]):
            if label in measured:
                per_model[label] = {"seconds": statistics.median(measured[label]),
                                    "source": f"measured, median of {len(measured[label])} run(s)"}
            else:
                per_model[label] = {"seconds": typical, "source": "assumed: median of the measured models"}
        source = f"measured in {folder} (run.json train_time_s + test_time_s)"
    durations = [per_model[run["label"]]["seconds"] for run in bench["runs"]]
    return {
        "benchmark": bench["name"],
        "source": source,
        "runs": len(durations),
        "per_model": per_model,
        "sequential_s": sum(durations),
        "wall_s": {int(n): list_schedule(durations, int(n)) for n in slots},
    }


def format_projection(projection: dict[str, Any]) -> str:
    from sgnet_lightning.launch.status import duration_text, format_table

    rows = [{"model": label, "per run": duration_text(m["seconds"]) if m["seconds"] is not None else "-",
             "source": m["source"]} for label, m in projection["per_model"].items()]
    walls = ", ".join(f"{n} slots {duration_text(s)}" for n, s in projection["wall_s"].items() if n > 1)
    return (f"projection for {projection['benchmark']} from {projection['source']}\n"
            + format_table(rows, ["model", "per run", "source"])
            + f"\n{projection['runs']} runs: one after another {duration_text(projection['sequential_s'])}"
            + (f"; {walls}" if walls else ""))
