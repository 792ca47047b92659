"""Speed measurements: ``sgnet bench`` (models, end to end, inference) and ``sgnet bench loader``.

``sgnet bench`` measures, in one run on whatever device is present, every architecture under two
sets of settings and writes one JSON file (``--out``) plus a table on stdout:

- **seed way**: the published notebook's settings: batch 4, fp16 autocast + GradScaler (fp32 on
  a CPU), default memory format, cudnn.benchmark off, one crop per loaded volume,
  sliding windows of 4 with constant blending;
- **suite**: this suite's GPU defaults (``experiments/base/gpu.yaml`` + ``datasets/bml.yaml``):
  batch 32, bf16 autocast, channels-last 3D, cudnn.benchmark on, queue with 16 samples per volume,
  512 patches and 8 workers, sliding windows of 32 (and 64) with Gaussian blending; ``--compile``
  adds a ``torch.compile`` run. On a CPU the suite keeps fp32 and the seed's batch (CPUs without
  native bf16 gain nothing from it) and changes only the memory format and the queue.

What is measured (each section records its settings and sizes):

- ``model_only``: training steps (network, the suite's ``DiceBCELoss`` + attention loss where the
  model has one, Adam) on random tensors already on the device; warm-up, then the median of
  ``repeats`` timings of ``steps`` synchronised steps. Patches per second, peak device memory.
- ``end_to_end``: ``Trainer.fit`` through the real :class:`SegmentationDataModule` over a
  preprocessed phantom set: loader, transfer, on-device augmentation and step together, timed from
  the first step after the queue's first fill (a queue timed right after filling reads its buffer,
  not its workers) over at least two more fills.
- ``loader``: patches per second through the DataModule alone (``train_dataloader`` +
  ``on_after_batch_transfer``) next to a *naive* TorchIO queue that reads the raw NIfTI files and
  resamples, rescales, flips and rotates whole uncropped volumes on the CPU for every load, as the
  seed did; both with the same queue settings, alternated in rounds on the same phantom set.
- ``inference``: MONAI sliding window over one volume (2 x 240 x 240 x 155 on a GPU; smaller on a
  CPU, stated in the output), median of three after warm-up.
- ``numerics``: how far the suite's precision and memory format move predictions from fp32.
- memory: peak device memory per measurement, peak host RSS of this process (Linux: reset per
  measurement through ``/proc/self/clear_refs``) and the largest RSS of a finished child process.

No figure is estimated: a part that was not run is absent (or null) in the JSON.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torchio as tio
from torchio.transforms import SpatialTransform
from torchio.transforms.augmentation import RandomTransform

from sgnet_lightning.files import atomic_write_json
from sgnet_lightning.errors import ConfigError

IN_CHANNELS = 2  # T1ce + FLAIR (the BML set, the seed's input)
OUT_CHANNELS = 1  # whole tumour
# What each architecture trains with in the suite's BML experiments (experiments/bml/*.yaml):
# SegGuidedNet supervises 2 sub-region maps (core, edema) with weight 0.5.
MODEL_OPTIONS: dict[str, dict[str, Any]] = {"segguidednet": {"network_options": {"n_subregions": 2}, "aux_loss_weight": 0.5}}
N_SUBREGIONS = 2
SEED_LR = 1e-4

# Data settings of the two ways (experiments/seed_way/base.yaml; experiments/base/gpu.yaml).
SEED_DATA = {"samples_per_volume": 1, "queue_length": 64, "num_workers": 2}
SUITE_GPU_DATA = {"samples_per_volume": 16, "queue_length": 512, "num_workers": 8}
PHANTOM_SPLIT = {"name": "kfold", "n_folds": 5, "test_size": 1}  # fold 0: 1 val, the rest train
# The full BML comparison (experiments/benchmarks/bml.yaml, data_manifests/splits/bml_kfold.yaml):
# 9 configurations over 6 architectures, 5 seeds, at most 100 epochs of 100 steps of 32 patches;
# 104 labelled subjects -> 21 test, fold 0 validates on 17 every epoch.
BML_BENCHMARK = {
    "configs_per_architecture": {"unet": 1, "attention_unet": 1, "resunet": 1, "segresnet": 1, "sgnet": 3,
                                 "segguidednet": 2},
    "seeds": 5, "epochs": 100, "steps_per_epoch": 100, "batch_size": 32, "n_val": 17, "n_test": 21,
}


# ================================================================================================
# Settings and sizes
# ================================================================================================
@dataclass(frozen=True)
class RunSetting:
    """One way of training and inferring.

    Attributes:
        name: ``seed_way``, ``suite`` or ``suite_compile``.
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
        return {"fp16": "16-mixed", "bf16": "bf16-mixed", "fp32": "32-true"}[self.precision]


@dataclass(frozen=True)
class Sizes:
    """How big and how long every measurement is (recorded in the JSON).

    Attributes:
        patch: training patch and sliding-window roi (x, y, z) voxels.
        inference_volume: (X, Y, Z) voxels of the volume inferred (2 channels).
        steps: timed training steps per repeat (model only).
        repeats: timed repeats; the median is reported.
        warmup: untimed steps first (cudnn autotuning, allocator, compile).
        batch_size: training batch on this device for the seed way and, on a CPU, the suite.
        suite_batch_size: the suite's training batch (32 on a GPU).
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
    """Full sizes on a GPU; reduced sizes on a CPU (a CPU step at 96 x 96 x 32 takes seconds to a
    minute); tiny sizes with ``quick`` (tests, smoke runs)."""
    if quick:
        caps = {"queue_length": 4, "samples_per_volume": 4, "num_workers": 1}
        sizes = Sizes((32, 32, 16), (48, 48, 32), 1, 2, 1, 2, 2, 6, 40, 1, caps, loader_patch=(32, 32, 16))
    elif device.type == "cuda":
        sizes = Sizes((96, 96, 32), (240, 240, 155), 20, 3, 8, 4, 32, 6, None, 1, None)
    else:
        sizes = Sizes((64, 64, 32), (128, 128, 64), 2, 3, 1, 2, 2, 6, None, 2, {"queue_length": 64}, loader_batch_size=4)
    if patch is not None:
        sizes = replace(sizes, patch=tuple(int(p) for p in patch), loader_patch=tuple(int(p) for p in patch))
    if steps is not None:
        sizes = replace(sizes, steps=int(steps))
    return sizes


def _cap(data: dict[str, int], sizes: Sizes) -> dict[str, int]:
    data = dict(data)
    data["num_workers"] = min(data["num_workers"], os.cpu_count() or 1)
    for key, cap in (sizes.queue_caps or {}).items():
        data[key] = min(data[key], cap)
    return data


def seed_way(device: torch.device, sizes: Sizes) -> RunSetting:
    """The published notebook's settings (fp16 needs CUDA: fp32 elsewhere)."""
    return RunSetting(
        "seed_way", sizes.batch_size, "fp16" if device.type == "cuda" else "fp32", channels_last=False,
        cudnn_benchmark=False, compile=False, sw_batch_size=4, sw_mode="constant", data=_cap(SEED_DATA, sizes),
    )


def suite_defaults(device: torch.device, sizes: Sizes, compile: bool = False, sw_batch_size: int | None = None) -> RunSetting:
    """The suite's defaults on this device (see the module docstring)."""
    if device.type == "cuda":
        return RunSetting(
            "suite_compile" if compile else "suite", sizes.suite_batch_size, "bf16", channels_last=True,
            cudnn_benchmark=True, compile=compile, sw_batch_size=sw_batch_size or 32, sw_mode="gaussian",
            data=_cap(SUITE_GPU_DATA, sizes),
        )
    from sgnet_lightning.data.datamodule import SegmentationDataModule

    import inspect

    defaults = inspect.signature(SegmentationDataModule).parameters  # the DataModule's own defaults
    data = {key: defaults[key].default for key in ("samples_per_volume", "queue_length", "num_workers")}
    return RunSetting(
        "suite", sizes.suite_batch_size, "fp32", channels_last=True, cudnn_benchmark=False, compile=False,
        sw_batch_size=sw_batch_size or 4, sw_mode="gaussian", data=_cap(data, sizes),
    )


# ================================================================================================
# Environment, synchronisation, memory
# ================================================================================================
def pick_device(name: str | None = None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def environment(device: torch.device) -> dict[str, Any]:
    """Device, library versions, date and machine load (other processes skew CPU timings)."""
    import lightning
    import monai
    import torchio

    info = {
        "type": device.type,
        "name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "lightning": lightning.__version__,
        "monai": monai.__version__,
        "torchio": torchio.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_start": list(os.getloadavg()),
    }
    if device.type == "cuda":
        info["device_memory_gib"] = torch.cuda.get_device_properties(device).total_memory / 2**30
    return info


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peaks(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with contextlib.suppress(OSError):  # Linux: "5" resets this process's peak RSS (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")


def _status_kib(key: str) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def memory_peaks(device: torch.device) -> dict[str, float | None]:
    """Peak memory since the last reset, in GiB: device (None on a CPU), this process's RSS, and
    the largest RSS any finished child process (e.g. a queue worker) reached in this run."""
    host = _status_kib("VmHWM")
    if host is None:  # not Linux: the lifetime peak is all there is
        host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "peak_device_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "peak_host_rss_gib": host / 2**20,
        "max_child_rss_gib": children / 2**20 if children else None,
    }


@contextlib.contextmanager
def _cudnn_benchmark(enabled: bool):
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


# ================================================================================================
# Model only
# ================================================================================================
def build_module(name: str, setting: RunSetting, device: torch.device):
    """The suite's :class:`SegmentationModule` for ``name`` as trained on BML, on ``device``."""
    from sgnet_lightning.module import SegmentationModule

    options = MODEL_OPTIONS.get(name, {})
    module = SegmentationModule(
        network=name, network_options=options.get("network_options"), in_channels=IN_CHANNELS,
        out_channels=OUT_CHANNELS, aux_loss_weight=options.get("aux_loss_weight", 0.0),
        optimizer={"name": "adam", "lr": SEED_LR}, scheduler={"name": "none"},
        sliding_window={"roi_size": (96, 96, 32), "sw_batch_size": setting.sw_batch_size, "mode": setting.sw_mode},
        channels_last=setting.channels_last,
    )
    return module.to(device)


def random_batch(batch_size: int, patch, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random training batch in the DataModule's form (image, target, subregions), on ``device``."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch_size, IN_CHANNELS, *patch, generator=g)
    label = (torch.rand(batch_size, *patch, generator=g) * 60).long().clamp(max=2)  # ~1/30 tumour
    label = torch.where(torch.rand(batch_size, *patch, generator=g) < 0.96, 0, label)
    subregions = torch.stack([label == 2, label == 1], dim=1).float()
    return {"image": image.to(device), "target": (label > 0)[:, None].float().to(device),
            "subregions": subregions.to(device)}


def _median_rate(seconds: list[float], patches_per_repeat: int) -> float:
    return patches_per_repeat / statistics.median(seconds)


def measure_model_only(name: str, setting: RunSetting, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """Training throughput of network + loss + Adam on random tensors already on ``device``."""
    with _cudnn_benchmark(setting.cudnn_benchmark):
        module = build_module(name, setting, device).train()
        if setting.compile:
            module.net = torch.compile(module.net)
        optimizer = torch.optim.Adam(module.parameters(), lr=SEED_LR)
        scaler = torch.amp.GradScaler(device.type) if setting.precision == "fp16" else None
        batch = random_batch(setting.batch_size, sizes.patch, device)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with setting.autocast(device):
                loss, _ = module._loss(module(batch["image"]), batch)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()

        _reset_peaks(device)
        for _ in range(sizes.warmup * (2 if setting.compile else 1)):
            step()
        synchronize(device)
        seconds = []
        for _ in range(sizes.repeats):
            start = time.perf_counter()
            for _ in range(sizes.steps):
                step()
            synchronize(device)
            seconds.append(time.perf_counter() - start)
    result = {
        "patches_per_s": _median_rate(seconds, setting.batch_size * sizes.steps),
        "step_ms": 1000 * statistics.median(seconds) / sizes.steps,
        "repeat_seconds": seconds,
        "batch_size": setting.batch_size,
        **memory_peaks(device),
    }
    del module, optimizer, batch
    _free(device)
    return result


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _release_workers(device: torch.device) -> None:
    # A queue's worker processes end when its loader iterator is collected. Collect now, in this
    # process: a worker forked later would otherwise inherit the iterator and try to stop workers
    # that are not its children ("can only test a child process"), and idle workers would linger.
    gc.collect()
    _free(device)


# ================================================================================================
# Inference and numerics
# ================================================================================================
def measure_inference(name: str, setting: RunSetting, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """Seconds per volume of sliding-window inference (roi = the training patch, overlap 0.25)."""
    from sgnet_lightning.inference import SlidingWindow, sliding_window_predict

    window = SlidingWindow(roi_size=sizes.patch, overlap=0.25, sw_batch_size=setting.sw_batch_size, mode=setting.sw_mode)
    with _cudnn_benchmark(setting.cudnn_benchmark):
        module = build_module(name, setting, device).eval()
        volume = torch.rand(1, IN_CHANNELS, *sizes.inference_volume, generator=torch.Generator().manual_seed(1)).to(device)
        _reset_peaks(device)
        seconds = []
        with torch.no_grad(), setting.autocast(device):
            for index in range(sizes.warmup + 3):
                synchronize(device)
                start = time.perf_counter()
                sliding_window_predict(module, volume, window)
                synchronize(device)
                if index >= sizes.warmup:
                    seconds.append(time.perf_counter() - start)
    result = {
        "ms_per_volume": 1000 * statistics.median(seconds),
        "volume": [IN_CHANNELS, *sizes.inference_volume],
        "roi": list(sizes.patch),
        "sw_batch_size": setting.sw_batch_size,
        "mode": setting.sw_mode,
        **memory_peaks(device),
    }
    del module, volume
    _free(device)
    return result


def prediction_agreement(
    name: str, precision: str, channels_last: bool, device: torch.device, shape=(32, 32, 16), threshold: float = 0.5,
) -> dict[str, float]:
    """How far ``precision`` / ``channels_last`` move one network's probabilities from fp32.

    The network is seeded, its BatchNorm statistics set by a few training-mode passes (so outputs
    are spread like a trained network's rather than stuck at 0.5), then evaluated on a random volume.

    Returns:
        ``mean_abs_diff`` and ``max_abs_diff`` of probabilities, and ``mask_agreement``: the
        fraction of voxels whose thresholded mask is the same.
    """
    torch.manual_seed(0)
    fp32 = RunSetting("fp32", 1, "fp32", False, False, False, 1, "constant")
    setting = replace(fp32, precision=precision, channels_last=channels_last)
    reference_module = build_module(name, fp32, device)
    image = torch.rand(2, IN_CHANNELS, *shape, generator=torch.Generator().manual_seed(2)).to(device)
    with torch.no_grad():
        reference_module.train()
        for _ in range(3):
            reference_module(image)
        other_module = build_module(name, setting, device)
        other_module.load_state_dict(reference_module.state_dict())
        reference = torch.sigmoid(reference_module.eval()(image).logits.float())
        with setting.autocast(device):
            other = torch.sigmoid(other_module.eval()(image).logits.float())
    diff = (other - reference).abs()
    return {
        "mean_abs_diff": float(diff.mean()),
        "max_abs_diff": float(diff.max()),
        "mask_agreement": float(((other > threshold) == (reference > threshold)).float().mean()),
    }


# ================================================================================================
# Phantom data, DataModule and the naive loader
# ================================================================================================
@dataclass
class BenchData:
    """A manifest with its cache, ready for the DataModule (see :func:`prepare_data`)."""

    manifest: Path
    cache_root: Path
    spacing_mm: float
    train_subjects: list[str]
    info: dict[str, Any]


def prepare_data(sizes: Sizes, workdir: Path, phantom_dir: str | None = None, manifest: str | None = None,
                 cache_root: str | None = None) -> BenchData:
    """A preprocessed data set for the DataModule: the given manifest, else a phantom set (reused
    when ``phantom_dir`` already holds one, generated there or under ``workdir`` otherwise)."""
    from sgnet_lightning.data.manifest import Manifest, make_manifest
    from sgnet_lightning.data.preprocess import PreprocessSettings, preprocess_manifest

    cache_root = Path(cache_root) if cache_root else workdir / "cache"
    spacing = 1.0
    info: dict[str, Any] = {}
    if manifest is None:
        phantom = Path(phantom_dir) if phantom_dir else workdir / "phantom_bml"
        info_path = phantom / "dataset_info.json"
        if info_path.is_file():
            info = json.loads(info_path.read_text())
        else:
            from sgnet_lightning.data.synth import synthesize_dataset

            start = time.perf_counter()
            synthesize_dataset("bml", sizes.phantom_n, phantom, seed=0, size=sizes.phantom_size, progress=False)
            info = {**json.loads(info_path.read_text()), "synth_seconds": time.perf_counter() - start}
        # keep the phantom's own voxel size: a coarse test phantom is not blown up to 1 mm
        spacing = float(info["spacing_mm"]) if info.get("size") else 1.0
        manifest_path = workdir / "phantom_bml.csv"
        make_manifest("bml", phantom, manifest_path, split_rule=PHANTOM_SPLIT, seed=0, task="whole", progress=False)
    else:
        manifest_path = Path(manifest)
    loaded = Manifest.load(manifest_path)
    start = time.perf_counter()
    cache_dir = preprocess_manifest(loaded, cache_root, PreprocessSettings(spacing_mm=(spacing,) * 3),
                                    workers=max(1, (os.cpu_count() or 2) - 1), progress=False)
    train = loaded.split_subjects(0 if loaded.n_folds else None)["train"]
    shapes = [list(np.load(cache_dir / s / "image.npy", mmap_mode="r").shape) for s in train]
    info = {**info, "manifest": str(manifest_path), "cache_dir": str(cache_dir), "spacing_mm": spacing,
            "train_subjects": len(train), "cached_image_shapes": shapes,
            "preprocess_seconds": time.perf_counter() - start}
    return BenchData(manifest_path, cache_root, spacing, train, info)


def make_datamodule(data: BenchData, setting: RunSetting, patch, steps_per_epoch: int):
    """The suite's DataModule on ``data`` with ``setting``'s queue settings."""
    from sgnet_lightning.data.datamodule import SegmentationDataModule

    module = SegmentationDataModule(
        str(data.manifest), cache_root=str(data.cache_root), task="whole", fold=0, spacing_mm=data.spacing_mm,
        patch_size=tuple(patch), batch_size=setting.batch_size, steps_per_epoch=steps_per_epoch, check=False,
        **setting.data,
    )
    module.prepare_data()
    module.setup("fit")
    return module


class RandomRot90(RandomTransform, SpatialTransform):
    """The seed's ``RandRotate90d`` as a TorchIO transform (TorchIO 1.x has none): with probability
    ``p``, every image of the subject turns by k x 90 degrees in the (x, y) plane, k uniform in 1..3.
    The affine is left as it is: only the voxels matter to a patch sampler."""

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        turns = int(torch.randint(1, 4, (1,)))
        for image in self.get_images(subject):
            image.set_data(torch.rot90(image.data, turns, dims=(1, 2)))
        return subject


def naive_loader(data: BenchData, setting: RunSetting, patch, batch_size: int):
    """The seed's data path in TorchIO: every load reads the raw NIfTI files, reorients to RAS,
    resamples FLAIR and label onto the T1ce grid and to 1 mm, rescales intensities (0.5-99.5
    percentiles to [0, 1]), flips and rotates the whole uncropped volume on the CPU; a queue with
    ``setting``'s settings then cuts label-balanced (1:1) patches. Yields the DataModule's batch form."""
    from sgnet_lightning.data.manifest import Manifest

    manifest = Manifest.load(data.manifest)
    subjects = []
    for name in data.train_subjects:
        record = manifest.record(name)
        subjects.append(tio.Subject(
            t1ce=tio.ScalarImage(record.images["t1ce"]), flair=tio.ScalarImage(record.images["flair"]),
            label=tio.LabelMap(record.labels["whole"]),
        ))
    transform = tio.Compose([
        tio.ToCanonical(),
        tio.Resample("t1ce"),
        tio.Resample(data.spacing_mm),
        tio.RescaleIntensity(out_min_max=(0, 1), percentiles=(0.5, 99.5)),
        tio.RandomFlip(axes=(0,), flip_probability=0.5),
        RandomRot90(p=0.5),
    ])
    queue = tio.Queue(
        tio.SubjectsDataset(subjects, transform=transform),
        max_length=max(setting.data["queue_length"], setting.data["samples_per_volume"]),
        samples_per_volume=setting.data["samples_per_volume"],
        sampler=tio.LabelSampler(tuple(patch), label_name="label", label_probabilities={0: 0.5, 1: 0.5}),
        num_workers=setting.data["num_workers"],
    )

    def collate(patches):
        return {
            "image": torch.stack([torch.cat([p["t1ce"][tio.DATA], p["flair"][tio.DATA]]) for p in patches]),
            "label_map": torch.stack([p["label"][tio.DATA][0].to(torch.uint8) for p in patches]),
        }

    return torch.utils.data.DataLoader(queue, batch_size=batch_size, num_workers=0, collate_fn=collate)


def _endless(loader) -> Iterator:
    """Batches of ``loader`` epoch after epoch (a queue's epoch is one pass over its subjects)."""
    while True:
        yield from loader


def _training_flag(datamodule) -> None:
    # ``on_after_batch_transfer`` augments only while a trainer trains; outside ``fit`` a stand-in
    # with the attributes the DataModule reads (training, world size, rank) takes its place.
    datamodule.trainer = SimpleNamespace(training=True, world_size=1, global_rank=0)


def time_loader(batches: Iterator, prepare: Callable[[dict], dict], batch_size: int, skip_patches: int,
                timed_patches: int, device: torch.device) -> dict[str, Any]:
    """Patches per second of ``batches`` (each passed through ``prepare`` on ``device``), timed after
    ``skip_patches`` (past a queue's first fill) over ``timed_patches``."""
    skip_batches = math.ceil(skip_patches / batch_size) + 1
    timed_batches = max(2, math.ceil(timed_patches / batch_size))
    _reset_peaks(device)
    start = time.perf_counter()
    for _ in range(skip_batches):
        prepare(next(batches))
    synchronize(device)
    first_fill = time.perf_counter() - start
    rss_start = _status_kib("VmRSS")
    start = time.perf_counter()
    for _ in range(timed_batches):
        batch = prepare(next(batches))
    synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "patches_per_s": timed_batches * batch_size / seconds,
        "timed_patches": timed_batches * batch_size,
        "seconds": seconds,
        "skipped_patches": skip_batches * batch_size,
        "skip_seconds": first_fill,
        "rss_growth_gib": ((_status_kib("VmRSS") or 0) - (rss_start or 0)) / 2**20,
        "batch_shape": list(batch["image"].shape),
        **memory_peaks(device),
    }


def queue_buffer(queue: dict[str, int]) -> int:
    """Patches a TorchIO queue can hand out without loading another subject: its buffer
    (``max_length``) plus the subjects its workers have already loaded ahead (PyTorch's default
    ``prefetch_factor`` of 2 per worker), ``samples_per_volume`` patches each. Timing starts after
    this many patches and lasts at least twice as long, so it measures the workers, not the buffer."""
    max_length = max(queue["queue_length"], queue["samples_per_volume"])
    return max_length + 2 * queue["num_workers"] * queue["samples_per_volume"]


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def measure_loaders(data: BenchData, settings: list[RunSetting], sizes: Sizes, device: torch.device,
                    naive: bool = True) -> dict[str, Any]:
    """Loader throughput for each setting's queue settings and batch size:

    - ``datamodule``: the DataModule's queue path (``train_dataloader`` + ``on_after_batch_transfer``);
    - ``naive``: the naive queue (:func:`naive_loader`) with the same queue settings;
    - ``device_sampler``: :class:`~sgnet_lightning.data.gpu_sampler.DevicePatchSampler` over the
      cached training volumes held on ``device`` (RAM on a CPU), augmented by the same hook.

    The ways alternate in ``sizes.loader_rounds`` rounds (medians reported); queues are timed once
    they have handed out their buffer (:func:`queue_buffer`), over twice that many patches.
    """
    from sgnet_lightning.data.datamodule import masks_from_label_map
    from sgnet_lightning.data.gpu_sampler import DevicePatchSampler, load_cached_volumes

    start = time.perf_counter()
    volumes = load_cached_volumes(Path(data.info["cache_dir"]), data.train_subjects)
    volumes_seconds = time.perf_counter() - start
    results: dict[str, Any] = {}
    for setting in settings:
        batch_size = sizes.loader_batch_size or setting.batch_size
        setting = replace(setting, batch_size=batch_size)
        buffered = queue_buffer(setting.data)
        timed = max(2 * buffered, 8 * batch_size)
        rounds: dict[str, list[dict]] = {"datamodule": [], "naive": [], "device_sampler": []}
        for _ in range(sizes.loader_rounds):
            datamodule = make_datamodule(data, setting, sizes.loader_patch, steps_per_epoch=10**6)
            _training_flag(datamodule)

            def prepare_datamodule(batch, datamodule=datamodule):
                return datamodule.on_after_batch_transfer(_to_device(batch, device), 0)

            _log(f"loader {setting.name}: DataModule queue")
            batches = iter(datamodule.train_dataloader())
            rounds["datamodule"].append(time_loader(batches, prepare_datamodule, batch_size, buffered, timed, device))
            del batches
            if naive:
                task_regions = datamodule.task.regions

                def prepare_naive(batch):
                    batch = _to_device(batch, device)
                    batch["target"] = masks_from_label_map(batch["label_map"], task_regions)
                    return batch

                _log(f"loader {setting.name}: naive queue")
                batches = _endless(naive_loader(data, setting, sizes.loader_patch, batch_size))
                rounds["naive"].append(time_loader(batches, prepare_naive, batch_size, buffered, timed, device))
                del batches
            _log(f"loader {setting.name}: device sampler")
            sampler = DevicePatchSampler(volumes, sizes.loader_patch, batch_size, datamodule.hparams.positive_fraction,
                                         steps_per_epoch=10**6, device=device, seed=0)
            # no queue to fill; timed over more batches because each takes milliseconds
            rounds["device_sampler"].append(time_loader(iter(sampler), prepare_datamodule, batch_size, 0,
                                                        max(timed, 100 * batch_size), device))
            del sampler, datamodule, prepare_datamodule
            _release_workers(device)
        entry: dict[str, Any] = {"queue": setting.data, "batch_size": batch_size, "patch": list(sizes.loader_patch),
                                 "volumes_load_seconds": volumes_seconds}
        for way, runs in rounds.items():
            if runs:
                entry[way] = {**runs[0], "patches_per_s": statistics.median(r["patches_per_s"] for r in runs),
                              "rounds_patches_per_s": [r["patches_per_s"] for r in runs]}
        if naive:
            entry["datamodule_over_naive"] = entry["datamodule"]["patches_per_s"] / entry["naive"]["patches_per_s"]
            entry["device_sampler_over_naive"] = entry["device_sampler"]["patches_per_s"] / entry["naive"]["patches_per_s"]
        results[setting.name] = entry
    if naive and {"seed_way", "suite"} <= set(results):
        # the suite's loader against the seed's data path (one crop per raw-volume load)
        seed_naive = results["seed_way"]["naive"]["patches_per_s"]
        results["suite_over_seed_naive"] = {
            "datamodule": results["suite"]["datamodule"]["patches_per_s"] / seed_naive,
            "device_sampler": results["suite"]["device_sampler"]["patches_per_s"] / seed_naive,
        }
    return results


# ================================================================================================
# End to end through Lightning
# ================================================================================================
def measure_end_to_end(name: str, setting: RunSetting, data: BenchData, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """Training throughput of ``Trainer.fit`` on the DataModule: steps timed once the queue has
    handed out its buffer (:func:`queue_buffer`), over twice that many patches (>= 4 steps)."""
    import lightning.pytorch as pl

    if setting.data.get("loader") == "device":  # nothing buffered: warm up like the model-only run
        warmup, timed = sizes.warmup + 1, max(4, sizes.steps)
    else:
        buffered = queue_buffer(setting.data)
        warmup = max(sizes.warmup, math.ceil(buffered / setting.batch_size) + 1)
        timed = max(4, math.ceil(2 * buffered / setting.batch_size))
    stamps: list[float] = []

    class StepClock(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            synchronize(device)
            stamps.append(time.perf_counter())

    module = build_module(name, setting, device)
    if setting.compile:
        module.net = torch.compile(module.net)
    datamodule = make_datamodule(data, setting, sizes.patch, steps_per_epoch=warmup + timed)
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_steps=warmup + timed,
        precision=setting.lightning_precision, benchmark=setting.cudnn_benchmark, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0, use_distributed_sampler=False, callbacks=[StepClock()],
        default_root_dir=str(data.cache_root.parent),
    )
    _reset_peaks(device)
    with _cudnn_benchmark(setting.cudnn_benchmark):
        trainer.fit(module, datamodule=datamodule)
    seconds = stamps[warmup + timed - 1] - stamps[warmup - 1]
    result = {
        "patches_per_s": timed * setting.batch_size / seconds,
        "timed_steps": timed,
        "warmup_steps": warmup,
        "seconds": seconds,
        "batch_size": setting.batch_size,
        "queue": setting.data,
        **memory_peaks(device),
    }
    del module, trainer, datamodule
    _release_workers(device)
    return result


# ================================================================================================
# The whole run
# ================================================================================================
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
    train_settings = [seed, suite] + ([suite_defaults(dev, sizes, compile=True)] if compile and dev.type == "cuda" else [])
    infer_settings = [seed, suite] + ([suite_defaults(dev, sizes, sw_batch_size=64)] if dev.type == "cuda" else [])
    report: dict[str, Any] = {
        "schema": 1,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "quick": quick,
        "parts": list(parts),
        "device": environment(dev),
        "sizes": asdict(sizes),
        "settings": {s.name: asdict(s) for s in [*train_settings, suite_device]},
        "inference_settings": [asdict(s) for s in infer_settings],
        "notes": _notes(dev, sizes, quick),
        "models": {},
    }
    workdir_context = tempfile.TemporaryDirectory(prefix="sgnet-bench-")
    with workdir_context as workdir:
        data = None
        if {"end_to_end", "loader"} & set(parts):
            data = prepare_data(sizes, Path(workdir), phantom_dir, manifest, cache_root)
            report["data"] = data.info
        for name in models:
            entry: dict[str, Any] = {"parameters": sum(p.numel() for p in create_model(
                name, IN_CHANNELS, OUT_CHANNELS, **MODEL_OPTIONS.get(name, {}).get("network_options", {})).parameters())}
            _log(f"{name}: {entry['parameters']:,} parameters")
            if "model" in parts:
                entry["model_only"] = {s.name: _timed(f"{name} model-only {s.name}", measure_model_only, name, s, sizes, dev)
                                       for s in train_settings}
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
            entry["ratios"] = _ratios(entry)
            report["models"][name] = entry
            _log(json.dumps({name: entry["ratios"]}))
        if "loader" in parts:
            report["loader"] = measure_loaders(data, [seed, suite], sizes, dev)
    if dev.type == "cuda" and not quick and tuple(sizes.patch) == (96, 96, 32):
        report["projection_bml"] = _project_bml(report["models"])
    report["device"]["load_average_end"] = list(os.getloadavg())
    atomic_write_json(out, report)
    return report


def _project_bml(models: dict[str, Any]) -> dict[str, Any] | None:
    """Hours of the full BML benchmark at the suite's measured end-to-end and inference rates
    (:func:`project_benchmark_hours`); None unless every architecture it runs was measured."""
    counts = BML_BENCHMARK["configs_per_architecture"]
    try:
        rates = {n: models[n]["end_to_end"]["suite"]["patches_per_s"] for n in counts}
        infer = {n: next(v["ms_per_volume"] for k, v in models[n]["inference"].items() if k.startswith("suite_sw")) / 1000
                 for n in counts}
    except KeyError:
        return None
    settings = {k: v for k, v in BML_BENCHMARK.items() if k != "configs_per_architecture"}
    per_config = project_benchmark_hours(rates, infer, **settings)
    hours = {n: per_config[n] * counts[n] for n in counts}
    return {"hours_per_architecture": hours, "total_hours": sum(hours.values()), "assumptions": BML_BENCHMARK,
            "note": "upper bound: every run goes to 100 epochs; metric computation not included"}


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
    report: dict[str, Any] = {"schema": 1, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "command": " ".join(sys.argv), "quick": quick, "device": environment(dev),
                              "sizes": asdict(sizes), "settings": {s.name: asdict(s) for s in settings},
                              "notes": _notes(dev, sizes, quick)}
    with tempfile.TemporaryDirectory(prefix="sgnet-bench-") as workdir:
        data = prepare_data(sizes, Path(workdir), phantom_dir, manifest, cache_root)
        report["data"] = data.info
        report["loader"] = measure_loaders(data, settings, sizes, dev)
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


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _rate(entry: dict, section: str, setting: str) -> float | None:
    return entry.get(section, {}).get(setting, {}).get("patches_per_s")


def _ratios(entry: dict) -> dict[str, float | None]:
    """suite / seed way and end-to-end / model-only ratios of one model's entry."""
    inference = entry.get("inference", {})
    seed_ms = next((v["ms_per_volume"] for k, v in inference.items() if k.startswith("seed_way")), None)
    suite_ms = next((v["ms_per_volume"] for k, v in inference.items() if k.startswith("suite_sw")), None)
    return {
        "model_only_suite_over_seed": _ratio(_rate(entry, "model_only", "suite"), _rate(entry, "model_only", "seed_way")),
        "end_to_end_suite_over_seed": _ratio(_rate(entry, "end_to_end", "suite"), _rate(entry, "end_to_end", "seed_way")),
        "end_to_end_over_model_only_seed": _ratio(_rate(entry, "end_to_end", "seed_way"), _rate(entry, "model_only", "seed_way")),
        "end_to_end_over_model_only_suite": _ratio(_rate(entry, "end_to_end", "suite"), _rate(entry, "model_only", "suite")),
        "end_to_end_device_over_model_only_suite": _ratio(_rate(entry, "end_to_end", "suite_device"),
                                                          _rate(entry, "model_only", "suite")),
        "inference_speedup_suite_over_seed": _ratio(seed_ms, suite_ms),
    }


# ================================================================================================
# Projection and tables
# ================================================================================================
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
    for name, rate in train_rates.items():
        per_epoch = steps_per_epoch * batch_size / rate + n_val * infer_seconds[name]
        hours[name] = seeds * folds * (epochs * per_epoch + n_test * infer_seconds[name]) / 3600
    hours["total"] = sum(hours.values())
    return hours


def _fmt(value, digits=1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if value < 10_000 else f"{value:,.0f}"
    return str(value)


def format_table(report: dict[str, Any]) -> str:
    """A Markdown table of the report: rates in patches/s, inference in ms per volume."""
    rows = ["| model | model-only seed | model-only suite | suite/seed | end-to-end seed | end-to-end suite "
            "| end-to-end suite, device loader | e2e/model seed | e2e/model suite | e2e device/model suite "
            "| infer seed ms | infer suite ms | infer speed-up | peak dev GiB | peak RSS GiB |",
            "|" + " --- |" * 15]
    for name, entry in report["models"].items():
        r = entry["ratios"]
        inference = entry.get("inference", {})
        seed_ms = next((v["ms_per_volume"] for k, v in inference.items() if k.startswith("seed_way")), None)
        suite_ms = next((v["ms_per_volume"] for k, v in inference.items() if k.startswith("suite_sw")), None)
        suite_model = entry.get("model_only", {}).get("suite", {})
        rss = max((m.get("peak_host_rss_gib") or 0 for section in ("model_only", "end_to_end")
                   for m in entry.get(section, {}).values()), default=None)
        rows.append("| " + " | ".join([
            name, _fmt(_rate(entry, "model_only", "seed_way")), _fmt(_rate(entry, "model_only", "suite")),
            _fmt(r["model_only_suite_over_seed"], 2), _fmt(_rate(entry, "end_to_end", "seed_way")),
            _fmt(_rate(entry, "end_to_end", "suite")), _fmt(_rate(entry, "end_to_end", "suite_device")),
            _fmt(r["end_to_end_over_model_only_seed"], 2), _fmt(r["end_to_end_over_model_only_suite"], 2),
            _fmt(r["end_to_end_device_over_model_only_suite"], 2), _fmt(seed_ms, 0), _fmt(suite_ms, 0),
            _fmt(r["inference_speedup_suite_over_seed"], 2), _fmt(suite_model.get("peak_device_gib"), 2),
            _fmt(rss or None, 2),
        ]) + " |")
    return "\n".join(rows)


def format_loader_table(loader: dict[str, Any]) -> str:
    """A Markdown table of the loader comparison (patches/s)."""
    rows = ["| queue settings | batch | DataModule queue | naive TorchIO queue | DataModule / naive "
            "| device sampler | device sampler / naive |", "|" + " --- |" * 7]
    for name, entry in loader.items():
        if name == "suite_over_seed_naive":
            continue
        q = entry["queue"]
        rows.append("| " + " | ".join([
            f"{name}: {q['samples_per_volume']} per volume, queue {q['queue_length']}, {q['num_workers']} workers",
            str(entry["batch_size"]), _fmt(entry["datamodule"]["patches_per_s"]),
            _fmt(entry.get("naive", {}).get("patches_per_s")), _fmt(entry.get("datamodule_over_naive"), 1),
            _fmt(entry["device_sampler"]["patches_per_s"]), _fmt(entry.get("device_sampler_over_naive"), 1),
        ]) + " |")
    if "suite_over_seed_naive" in loader:
        ratios = loader["suite_over_seed_naive"]
        rows.append(f"\nsuite against the seed's data path (naive, one crop per load): DataModule "
                    f"{ratios['datamodule']:.1f}x, device sampler {ratios['device_sampler']:.1f}x")
    return "\n".join(rows)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _timed(label: str, measure: Callable[..., dict], *args) -> dict:
    """Run one measurement and log its headline figure and how long it took."""
    start = time.perf_counter()
    result = measure(*args)
    figure = result.get("patches_per_s")
    shown = f"{figure:,.1f} patches/s" if figure is not None else f"{result['ms_per_volume']:,.0f} ms/volume"
    _log(f"{label}: {shown} ({time.perf_counter() - start:.1f} s)")
    return result
