"""The device under measurement: which one, what it is, synchronising it, and its memory peaks.

Timings are wall-clock seconds taken after :func:`synchronize` (CUDA work is asynchronous); memory
figures are GiB (2**30 bytes): peak device memory, this process's peak RSS and the largest RSS of a
finished child process (a queue worker).
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import resource
from pathlib import Path
from typing import Any

import torch


def pick_device(name: str | None = None) -> torch.device:
    """``name`` (``cpu``, ``cuda``, ``cuda:1`` ...), else CUDA where there is one, else the CPU."""
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
    """Wait for the device's queued work, so that a clock read after it times that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peaks(device: torch.device) -> None:
    """Start the peaks of :func:`memory_peaks` afresh."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with contextlib.suppress(OSError):  # Linux: "5" resets this process's peak RSS (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")


def status_kib(key: str) -> int | None:
    """A KiB figure of ``/proc/self/status`` (``VmRSS``, ``VmHWM``); None off Linux."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def memory_peaks(device: torch.device) -> dict[str, float | None]:
    """Peak memory since the last reset, in GiB: device (None on a CPU), this process's RSS, and
    the largest RSS any finished child process (e.g. a queue worker) reached in this run."""
    host = status_kib("VmHWM")
    if host is None:  # not Linux: the lifetime peak is all there is
        host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "peak_device_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "peak_host_rss_gib": host / 2**20,
        "max_child_rss_gib": children / 2**20 if children else None,
    }


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool):
    """``torch.backends.cudnn.benchmark = enabled`` inside the block, the previous value after it."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def free(device: torch.device) -> None:
    """Hand cached device memory back, so the next measurement's peak is its own."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def release_workers(device: torch.device) -> None:
    """End the worker processes of loaders no longer referenced, and free device memory."""
    # A queue's worker processes end when its loader iterator is collected. Collect now, in this
    # process: a worker forked later would otherwise inherit the iterator and try to stop workers
    # that are not its children ("can only test a child process"), and idle workers would linger.
    gc.collect()
    free(device)


def to_device(batch: dict, device: torch.device) -> dict:
    """Every tensor of ``batch`` on ``device`` (non-blocking); other values as they are."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
