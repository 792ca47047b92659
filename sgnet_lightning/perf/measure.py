"""Measurements on a network: training steps, sliding-window inference, numerics, and ``Trainer.fit``.

- :func:`measure_model_only`: network + the suite's loss + Adam on random tensors already on the
  device; median of ``sizes.repeats`` timings of ``sizes.steps`` synchronised steps after warm-up;
- :func:`measure_end_to_end`: ``Trainer.fit`` through the real DataModule, timed past the queue's
  buffer (:func:`~sgnet_lightning.perf.loaders.queue_buffer`);
- :func:`measure_inference`: MONAI sliding window over one volume, median of three after warm-up;
- :func:`prediction_agreement`: how far a precision / memory format moves probabilities from fp32.

Units: throughput in patches/s, step time in ms, inference in ms per volume, repeat and timed
durations in s, memory peaks in GiB.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import replace
from typing import Any

import torch

from sgnet_lightning.perf.device import cudnn_benchmark, free, memory_peaks, release_workers, reset_peaks, synchronize
from sgnet_lightning.perf.loaders import BenchData, make_datamodule, queue_buffer
from sgnet_lightning.perf.settings import (IN_CHANNELS, OUT_CHANNELS, RunSetting, Sizes, model_options,
                                          seed_learning_rate)


def build_module(name: str, setting: RunSetting, device: torch.device):
    """The suite's :class:`SegmentationModule` for ``name`` as trained on BML, on ``device``."""
    from sgnet_lightning.module import SegmentationModule

    options = model_options(name)
    module = SegmentationModule(
        network=name, network_options=options["network_options"], in_channels=IN_CHANNELS,
        out_channels=OUT_CHANNELS, aux_loss_weight=options["aux_loss_weight"],
        optimizer={"name": "adam", "lr": seed_learning_rate()}, scheduler={"name": "none"},
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
    with cudnn_benchmark(setting.cudnn_benchmark):
        module = build_module(name, setting, device).train()
        if setting.compile:
            module.net = torch.compile(module.net)
        optimizer = torch.optim.Adam(module.parameters(), lr=seed_learning_rate())
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

        reset_peaks(device)
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
    free(device)
    return result


def measure_inference(name: str, setting: RunSetting, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """Seconds per volume of sliding-window inference (roi = the training patch, overlap 0.25)."""
    from sgnet_lightning.inference import SlidingWindow, sliding_window_predict

    window = SlidingWindow(roi_size=sizes.patch, overlap=0.25, sw_batch_size=setting.sw_batch_size, mode=setting.sw_mode)
    with cudnn_benchmark(setting.cudnn_benchmark):
        module = build_module(name, setting, device).eval()
        volume = torch.rand(1, IN_CHANNELS, *sizes.inference_volume, generator=torch.Generator().manual_seed(1)).to(device)
        reset_peaks(device)
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
    free(device)
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
    fp32 = RunSetting("fp32", batch_size=1, precision="fp32", channels_last=False, cudnn_benchmark=False, compile=False,
                      sw_batch_size=1, sw_mode="constant")
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
    reset_peaks(device)
    with cudnn_benchmark(setting.cudnn_benchmark):
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
    release_workers(device)
    return result
