"""What ``sgnet bench`` measures: the two ways of training, read from the experiment YAMLs, and the sizes.

The two ways are the configs the suite runs, loaded with :func:`sgnet_lightning.config.load_config`
(nothing is copied into code, so nothing can drift):

- **seed way** (``experiments/seed_way/base.yaml``): precision, ``cudnn.benchmark``, sliding window,
  batch and ``samples_per_volume`` of the published notebook; fp16 needs CUDA, so fp32 elsewhere;
- **suite** (``experiments/datasets/bml.yaml``, which composes ``experiments/base/gpu.yaml``): bf16,
  channels-last 3D, cudnn autotuning, the GPU queue and sliding-window batch, batch 32. On a CPU the
  suite keeps fp32, the seed's sliding-window batch and the DataModule's own queue defaults (CPUs
  without native bf16 gain nothing from it) and changes only the memory format and the queue.

A way's queue settings are the DataModule's defaults overlaid with its config's ``data`` section.
Each architecture is built with the ``model`` options of its BML experiment (``experiments/bml/<name>.yaml``).

Units: sizes in voxels (x, y, z), batches in patches, steps and repeats as counts.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from sgnet_lightning.config import get_dotted, load_config

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = REPO / "experiments"
SEED_CONFIG = EXPERIMENTS / "seed_way" / "base.yaml"
SUITE_CONFIG = EXPERIMENTS / "datasets" / "bml.yaml"  # composes base/gpu.yaml
BML_EXPERIMENTS = EXPERIMENTS / "bml"  # <architecture>.yaml: what each trains with on BML

IN_CHANNELS = 2  # T1ce + FLAIR (the BML set, the seed's input)
OUT_CHANNELS = 1  # whole tumour
QUEUE_KEYS = ("samples_per_volume", "queue_length", "num_workers")
# RunSetting.precision <-> Lightning's ``trainer.precision``
LIGHTNING_PRECISION = {"fp16": "16-mixed", "bf16": "bf16-mixed", "fp32": "32-true"}


@dataclass(frozen=True)
class RunSetting:
    """One way of training and inferring.

    Attributes:
        name: ``seed_way``, ``suite``, ``suite_compile`` or ``suite_device``.
        batch_size: training patches per step.
        precision: ``fp16`` (autocast + GradScaler), ``bf16`` (autocast) or ``fp32``.
        channels_last: channels-last 3D memory format for network and input.
        cudnn_benchmark: ``torch.backends.cudnn.benchmark``.
        compile: wrap the network in ``torch.compile`` (model-only measurement).
        sw_batch_size: sliding-window batch for inference.
        sw_mode: sliding-window blending, ``constant`` or ``gaussian``.
        data: DataModule queue settings (``samples_per_volume``, ``queue_length``, ``num_workers``).
    """

    name: str
    batch_size: int
    precision: str
    channels_last: bool
    cudnn_benchmark: bool
    compile: bool
    sw_batch_size: int
    sw_mode: str
    data: dict[str, int] = field(default_factory=dict)

    def autocast(self, device: torch.device):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(device.type, dtype=dtype)

    @property
    def lightning_precision(self) -> str:
        return LIGHTNING_PRECISION[self.precision]


@dataclass(frozen=True, kw_only=True)
class Sizes:
    """How big and how long every measurement is (recorded in the JSON).

    Attributes:
        patch: training patch and sliding-window roi (x, y, z) voxels.
        inference_volume: (X, Y, Z) voxels of the volume inferred (2 channels).
        steps: timed training steps per repeat (model only).
        repeats: timed repeats; the median is reported.
        warmup: untimed steps first (cudnn autotuning, allocator, compile).
        batch_size: training batch on this device for the seed way and, on a CPU, the suite.
        suite_batch_size: the suite's training batch (its config's, 32, on a GPU).
        phantom_n, phantom_size: phantom set generated when none is given (size None: 1 mm grid).
        loader_rounds: alternating DataModule / naive rounds of the loader comparison.
        queue_caps: upper bounds on queue settings (``queue_length``, ``samples_per_volume``,
            ``num_workers``) for short CPU runs; None: the settings as configured.
        loader_patch: patch of the loader comparison (no network runs there, so the seed's
            96 x 96 x 32 on every device but with ``quick``).
        loader_batch_size: batch of the loader comparison; None: each setting's own.
    """

    patch: tuple[int, int, int]
    inference_volume: tuple[int, int, int]
    steps: int
    repeats: int
    warmup: int
    batch_size: int
    suite_batch_size: int
    phantom_n: int
    phantom_size: int | None
    loader_rounds: int
    queue_caps: dict[str, int] | None
    loader_patch: tuple[int, int, int] = (96, 96, 32)
    loader_batch_size: int | None = None


def sizes_for(device: torch.device, quick: bool, patch=None, steps=None) -> Sizes:
    """Full sizes on a GPU (the configs' batches); reduced sizes on a CPU (a CPU step at
    96 x 96 x 32 takes seconds to a minute); tiny sizes with ``quick`` (tests, smoke runs)."""
    if quick:
        sizes = Sizes(patch=(32, 32, 16), inference_volume=(48, 48, 32), steps=1, repeats=2, warmup=1, batch_size=2,
                      suite_batch_size=2, phantom_n=6, phantom_size=40, loader_rounds=1,
                      queue_caps={"queue_length": 4, "samples_per_volume": 4, "num_workers": 1},
                      loader_patch=(32, 32, 16))
    elif device.type == "cuda":
        sizes = Sizes(patch=(96, 96, 32), inference_volume=(240, 240, 155), steps=20, repeats=3, warmup=8,
                      batch_size=load_config(SEED_CONFIG)["data"]["batch_size"],
                      suite_batch_size=load_config(SUITE_CONFIG)["data"]["batch_size"], phantom_n=6,
                      phantom_size=None, loader_rounds=1, queue_caps=None)
    else:
        sizes = Sizes(patch=(64, 64, 32), inference_volume=(128, 128, 64), steps=2, repeats=3, warmup=1, batch_size=2,
                      suite_batch_size=2, phantom_n=6, phantom_size=None, loader_rounds=2,
                      queue_caps={"queue_length": 64}, loader_batch_size=4)
    if patch is not None:
        sizes = replace(sizes, patch=tuple(int(p) for p in patch), loader_patch=tuple(int(p) for p in patch))
    if steps is not None:
        sizes = replace(sizes, steps=int(steps))
    return sizes


def queue_settings(config: dict[str, Any], sizes: Sizes) -> dict[str, int]:
    """The queue a config trains with: the DataModule's defaults overlaid with the config's ``data``,
    workers capped at this machine's cores and every setting at ``sizes.queue_caps``."""
    from sgnet_lightning.data.datamodule import SegmentationDataModule

    defaults = inspect.signature(SegmentationDataModule).parameters
    data = {key: get_dotted(config, f"data.{key}", defaults[key].default) for key in QUEUE_KEYS}
    data["num_workers"] = min(data["num_workers"], os.cpu_count() or 1)
    for key, cap in (sizes.queue_caps or {}).items():
        data[key] = min(data[key], cap)
    return data


def seed_way(device: torch.device, sizes: Sizes, config_path: Path = SEED_CONFIG) -> RunSetting:
    """The seed way's config on this device (fp16 needs CUDA: fp32 elsewhere)."""
    config = load_config(config_path)
    window = config["model"]["sliding_window"]
    precision = _precision(config) if device.type == "cuda" else "fp32"
    return RunSetting(
        "seed_way", sizes.batch_size, precision, channels_last=get_dotted(config, "model.channels_last", False),
        cudnn_benchmark=get_dotted(config, "trainer.benchmark", False), compile=False,
        sw_batch_size=window["sw_batch_size"], sw_mode=window["mode"], data=queue_settings(config, sizes),
    )


def suite_defaults(device: torch.device, sizes: Sizes, compile: bool = False, sw_batch_size: int | None = None,
                   config_path: Path = SUITE_CONFIG, seed_config_path: Path = SEED_CONFIG) -> RunSetting:
    """The suite's config on this device (see the module docstring for what a CPU keeps)."""
    config = load_config(config_path)
    window = config["model"]["sliding_window"]
    channels_last = get_dotted(config, "model.channels_last", False)
    if device.type == "cuda":
        return RunSetting(
            "suite_compile" if compile else "suite", sizes.suite_batch_size, _precision(config),
            channels_last=channels_last, cudnn_benchmark=get_dotted(config, "trainer.benchmark", False),
            compile=compile, sw_batch_size=sw_batch_size or window["sw_batch_size"], sw_mode=window["mode"],
            data=queue_settings(config, sizes),
        )
    seed_window = load_config(seed_config_path)["model"]["sliding_window"]
    return RunSetting(
        "suite", sizes.suite_batch_size, "fp32", channels_last=channels_last, cudnn_benchmark=False, compile=False,
        sw_batch_size=sw_batch_size or seed_window["sw_batch_size"], sw_mode=window["mode"],
        data=queue_settings({}, sizes),
    )


def model_options(name: str) -> dict[str, Any]:
    """``network_options`` and ``aux_loss_weight`` of architecture ``name`` in its BML experiment
    (e.g. SegGuidedNet: 2 sub-region maps, weight 0.5); empty where it has none there."""
    path = BML_EXPERIMENTS / f"{name}.yaml"
    model = load_config(path)["model"] if path.is_file() else {}
    return {"network_options": model.get("network_options") or {}, "aux_loss_weight": model.get("aux_loss_weight", 0.0)}


def seed_learning_rate(config_path: Path = SEED_CONFIG) -> float:
    """The seed way's Adam learning rate: every measured training step uses it."""
    return float(load_config(config_path)["model"]["optimizer"]["lr"])


def _precision(config: dict[str, Any]) -> str:
    lightning = get_dotted(config, "trainer.precision", "32-true")
    return {value: key for key, value in LIGHTNING_PRECISION.items()}[lightning]
