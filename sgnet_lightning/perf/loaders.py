"""Data for the measurements, and the loader comparison: patches per second of each way of loading.

- :func:`prepare_data`: a preprocessed data set (a phantom BML set unless a manifest is given);
- :func:`measure_loaders`: the DataModule's queue, a *naive* TorchIO queue that does the seed's
  work on whole raw volumes for every load, and the on-device sampler, alternated in rounds;
- :func:`time_loader` / :func:`queue_buffer`: how a queue is timed (past what it already holds).

Units: rates in patches/s, durations in s, RSS growth and peaks in GiB, patches as (x, y, z) voxels.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torchio as tio
from torchio.transforms import SpatialTransform
from torchio.transforms.augmentation import RandomTransform

from sgnet_lightning.perf.device import memory_peaks, release_workers, reset_peaks, status_kib, synchronize, to_device
from sgnet_lightning.perf.settings import RunSetting, Sizes
from sgnet_lightning.perf.tables import log

PHANTOM_SPLIT = {"name": "kfold", "n_folds": 5, "test_size": 1}  # fold 0: 1 val, the rest train


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
    reset_peaks(device)
    start = time.perf_counter()
    for _ in range(skip_batches):
        prepare(next(batches))
    synchronize(device)
    first_fill = time.perf_counter() - start
    rss_start = status_kib("VmRSS")
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
        "rss_growth_gib": ((status_kib("VmRSS") or 0) - (rss_start or 0)) / 2**20,
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
                return datamodule.on_after_batch_transfer(to_device(batch, device), 0)

            log(f"loader {setting.name}: DataModule queue")
            batches = iter(datamodule.train_dataloader())
            rounds["datamodule"].append(time_loader(batches, prepare_datamodule, batch_size, buffered, timed, device))
            del batches
            if naive:
                task_regions = datamodule.task.regions

                def prepare_naive(batch):
                    batch = to_device(batch, device)
                    batch["target"] = masks_from_label_map(batch["label_map"], task_regions)
                    return batch

                log(f"loader {setting.name}: naive queue")
                batches = _endless(naive_loader(data, setting, sizes.loader_patch, batch_size))
                rounds["naive"].append(time_loader(batches, prepare_naive, batch_size, buffered, timed, device))
                del batches
            log(f"loader {setting.name}: device sampler")
            sampler = DevicePatchSampler(volumes, sizes.loader_patch, batch_size, datamodule.hparams.positive_fraction,
                                         steps_per_epoch=10**6, device=device, seed=0)
            # no queue to fill; timed over more batches because each takes milliseconds
            rounds["device_sampler"].append(time_loader(iter(sampler), prepare_datamodule, batch_size, 0,
                                                        max(timed, 100 * batch_size), device))
            del sampler, datamodule, prepare_datamodule
            release_workers(device)
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
