"""A patch sampler that keeps a whole training set in device memory and cuts batches there.

Why: a TorchIO ``Queue`` loads volumes and cuts patches on the CPU; on a 2-core machine it delivers
a few hundred patches per second at best while a GPU trains on 300 to 4,000
(``docs/performance.md``). When the preprocessed training volumes fit in device memory, cutting
patches there removes the CPU from the training loop. Volumes are stored as cached (float16, no
padding): about 25 MB per full-size BML phantom subject, so BML's 66 training subjects take under 2 GB.

What it reproduces of the queue path (``SegmentationDataModule.train_dataloader`` with
:class:`~sgnet_lightning.data.patch_sampler.LabelBalancedSampler`):

- every voxel of a volume, border included, can be a patch centre, and what a patch covers outside
  the volume is zero, exactly as after a half-patch ``tio.Pad`` (the padding is never stored:
  out-of-volume voxels are masked when cutting);
- label-balanced centres as ``tio.LabelSampler(label_probabilities={0: 1 - p, 1: p})`` on the
  tumour-anywhere map: with probability ``positive_fraction`` a voxel with label > 0, otherwise a
  background voxel (label 0), each uniform within its class; a volume without tumour gives only
  background centres; the centre voxel sits at index ``patch_size // 2`` of the patch;
- batches ``{"image": (B, C, x, y, z), "label_map": (B, x, y, z) uint8, "volume_index": (B,)
  int64}`` as the queue's collate makes them (``volume_index``: the patch's volume in ``volumes``) (float32 here, float16 from the queue; the hook makes both float32), so the
  DataModule's ``on_after_batch_transfer`` (``augment_on_device``, ``masks_from_label_map``) runs
  unchanged.

What differs: volumes are drawn uniformly and independently for every patch (the queue cuts
``samples_per_volume`` patches from each loaded subject and shuffles them in a buffer; both give
every subject the same expected share), and the random stream is a ``torch.Generator`` on the
device. Under DDP give every rank its own ``seed`` (e.g. ``seed + global_rank``).

Usage from a DataModule::

    volumes = load_cached_volumes(cache_dir, subjects)               # CPU tensors
    sampler = DevicePatchSampler(volumes, (96, 96, 32), batch_size=32, positive_fraction=0.5,
                                 steps_per_epoch=100, device="cuda", seed=42)
    loader = device_patch_loader(sampler)                             # DataLoader(batch_size=None)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from sgnet_lightning.data import cache
from sgnet_lightning.data.patch_sampler import NEGATIVE_ROUNDS  # the queue's sampler's, so both draw alike
from sgnet_lightning.errors import DataError

Volume = tuple[torch.Tensor, torch.Tensor]  # (C, X, Y, Z) image, (X, Y, Z) uint8 label map


def load_cached_volumes(cache_dir: str | Path, subjects: Sequence[str]) -> list[Volume]:
    """Read cached training subjects into CPU tensors: ``[(image (C, X, Y, Z) float16, label (X, Y, Z) uint8)]``.

    Raises:
        DataError: a subject without a cached label (it cannot be trained on).
    """
    volumes = []
    for subject in subjects:
        subject_dir = Path(cache_dir) / subject
        label = cache.load_label(subject_dir, mmap=False)
        if label is None:
            raise DataError(subject, subject_dir / cache.LABEL_FILE, "no label in the cache, cannot train on this subject")
        image = np.ascontiguousarray(cache.load_image(subject_dir, mmap=False))
        volumes.append((torch.from_numpy(image), torch.from_numpy(label)))
    return volumes


def device_bytes_needed(volumes: Sequence[Volume], storage_dtype=torch.float16) -> int:
    """Bytes :class:`DevicePatchSampler` allocates for ``volumes`` (images in ``storage_dtype``, uint8
    labels, an int64 index of tumour voxels), to decide before allocating whether a data set fits."""
    element = torch.empty((), dtype=storage_dtype).element_size()
    return sum(image.numel() * element + label.numel() + int((label > 0).sum()) * 8 for image, label in volumes)


class DevicePatchSampler(IterableDataset):
    """Label-balanced training patches cut by tensor indexing from volumes held on ``device``.

    Args:
        volumes: ``[(image (C, X, Y, Z), label_map (X, Y, Z) integer)]``; shapes may differ between
            volumes, channels may not. Copied to ``device`` (images as ``storage_dtype``).
        patch_size: (x, y, z) voxels of a patch.
        batch_size: patches per batch.
        positive_fraction: probability that a patch is centred on a voxel with label > 0.
        steps_per_epoch: batches one iteration yields (an epoch is defined by steps, as in the
            queue path).
        device: where volumes are stored and batches are made (``"cuda"``, ``"cpu"``).
        seed: seed of the sampler's own ``torch.Generator``; the same seed gives the same batches.
        storage_dtype: dtype of the stored images (float16, the cache's precision, halves memory).
        out_dtype: dtype of the yielded images (float32 like the queue path).
        gather: cut a batch with one gather (``take``), which never waits for the device, rather
            than a loop of box copies, which reads the centres on the host; None: gather on CUDA,
            box copies on a CPU (where they are much faster).

    Memory: ``C x bytes(storage_dtype) + 1`` bytes per voxel of every volume, plus 8 bytes per tumour
    voxel for the index of positive centres (:func:`device_bytes_needed`).
    """

    def __init__(
        self,
        volumes: Sequence[Volume],
        patch_size: Sequence[int],
        batch_size: int,
        positive_fraction: float = 0.5,
        steps_per_epoch: int = 100,
        device: str | torch.device = "cpu",
        seed: int = 0,
        storage_dtype: torch.dtype = torch.float16,
        out_dtype: torch.dtype = torch.float32,
        gather: bool | None = None,
    ):
        super().__init__()
        if not volumes:
            raise ValueError("volumes is empty: nothing to sample from")
        if not 0 <= positive_fraction <= 1:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
        if batch_size < 1 or steps_per_epoch < 1:
            raise ValueError(f"batch_size and steps_per_epoch must be >= 1, got {batch_size}, {steps_per_epoch}")
        self.patch_size = tuple(int(p) for p in patch_size)
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be 3 positive voxel counts, got {patch_size}")
        self.batch_size, self.steps_per_epoch = int(batch_size), int(steps_per_epoch)
        self.positive_fraction = float(positive_fraction)
        self.device = torch.device(device)
        self.out_dtype = out_dtype
        self.gather = self.device.type == "cuda" if gather is None else bool(gather)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        self._store(volumes, storage_dtype)

    def _store(self, volumes: Sequence[Volume], storage_dtype: torch.dtype) -> None:
        channels = volumes[0][0].shape[0]
        for index, (image, label) in enumerate(volumes):
            if image.ndim != 4 or label.shape != image.shape[1:] or image.shape[0] != channels:
                raise ValueError(
                    f"volume {index}: expected image (C={channels}, X, Y, Z) and label (X, Y, Z), "
                    f"got {tuple(image.shape)} and {tuple(label.shape)}"
                )
        # All volumes back to back in one flat image buffer and one flat label buffer, so a whole
        # batch is one gather whatever the shapes; self.images / self.labels are views per volume.
        voxels = [label.numel() for _, label in volumes]
        image_buffer = torch.empty(channels * sum(voxels), dtype=storage_dtype, device=self.device)
        label_buffer = torch.empty(sum(voxels), dtype=torch.uint8, device=self.device)
        self.images, self.labels = [], []
        positive_indices, positive_counts, start = [], [], 0
        for (image, label), n in zip(volumes, voxels):
            image_view = image_buffer[channels * start:channels * (start + n)].view(image.shape)
            label_view = label_buffer[start:start + n].view(label.shape)
            image_view.copy_(image)
            label_view.copy_(label)
            self.images.append(image_view)
            self.labels.append(label_view)
            flat = torch.nonzero(label_view.reshape(-1) > 0).flatten()  # linear index in (X, Y, Z)
            positive_indices.append(flat)
            positive_counts.append(flat.numel())
            start += n
        self._image_buffer, self._label_buffer = image_buffer, label_buffer
        self.shapes = torch.tensor([list(label.shape) for _, label in volumes], dtype=torch.long, device=self.device)
        self.label_offset = torch.tensor([0, *voxels[:-1]], dtype=torch.long, device=self.device).cumsum(0)
        self.positive_index = torch.cat(positive_indices)  # all volumes' tumour voxels, volume after volume
        self.positive_count = torch.tensor(positive_counts, dtype=torch.long, device=self.device)
        self.positive_offset = torch.cumsum(self.positive_count, 0) - self.positive_count
        # each patch voxel's (dx, dy, dz) from the patch corner, flattened in C order, for the gather
        grid = torch.meshgrid(*(torch.arange(p, device=self.device) for p in self.patch_size), indexing="ij")
        self._patch_grid = torch.stack([g.reshape(-1) for g in grid])  # (3, P)
        self._channels = torch.arange(channels, device=self.device)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for _ in range(self.steps_per_epoch):
            yield self.sample()

    # -- one batch ----------------------------------------------------------------------------------
    def sample_centres(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` patch centres: (volume index (n,), centre (n, 3) voxel coordinates in the volume)."""
        g, device = self.generator, self.device
        volume = torch.randint(0, len(self.shapes), (n,), generator=g, device=device)
        shape = self.shapes[volume]  # (n, 3)
        count = self.positive_count[volume]
        positive = (torch.rand(n, generator=g, device=device) < self.positive_fraction) & (count > 0)

        # positives: a uniform pick among the volume's tumour voxels (ignored where count is 0)
        centre_positive = torch.zeros((n, 3), dtype=torch.long, device=device)
        if self.positive_index.numel():
            pick = (torch.rand(n, generator=g, device=device) * count).long()
            slot = (self.positive_offset[volume] + pick).clamp(max=self.positive_index.numel() - 1)
            centre_positive = _unravel(self.positive_index[slot], shape)

        # negatives: uniform voxels, redrawn where they hit tumour (rejection sampling, vectorised).
        # A fixed number of rounds and no test of whether all are done, so nothing waits for the
        # device: with tumour in a fraction f of a volume a draw stays on tumour with probability
        # f ** (NEGATIVE_ROUNDS + 1), below 1e-20 for f = 0.05.
        centre_negative = self._uniform_voxels(shape)
        for _ in range(NEGATIVE_ROUNDS):
            on_tumour = self._label_at(volume, centre_negative) > 0
            centre_negative = torch.where(on_tumour[:, None], self._uniform_voxels(shape), centre_negative)
        centre = torch.where(positive[:, None], centre_positive, centre_negative)
        return volume, centre

    def sample(self) -> dict[str, torch.Tensor]:
        """One batch: ``{"image": (B, C, x, y, z) out_dtype, "label_map": (B, x, y, z) uint8,
        "volume_index": (B,) int64 index into the volumes}`` on the device."""
        volume, centre = self.sample_centres(self.batch_size)
        corner = centre - torch.tensor([p // 2 for p in self.patch_size], device=self.device)  # may be < 0
        cut = self._cut_by_gather if self.gather else self._cut_by_slicing
        image, label = cut(volume, corner)
        return {"image": image.to(self.out_dtype), "label_map": label, "volume_index": volume}

    def _cut_by_gather(self, volume: torch.Tensor, corner: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # One ``take`` per buffer and no host synchronisation, so on a GPU the next batch is queued
        # while the previous training step still runs. Voxels outside the volume read its first
        # voxel and are then zeroed (the queue's zero padding).
        shape = self.shapes[volume]  # (B, 3)
        coords = corner[:, :, None] + self._patch_grid[None]  # (B, 3, P)
        inside = ((coords >= 0) & (coords < shape[:, :, None])).all(dim=1)  # (B, P)
        coords = torch.where(inside[:, None], coords, 0)
        spatial = (coords[:, 0] * shape[:, 1:2] + coords[:, 1]) * shape[:, 2:3] + coords[:, 2]  # (B, P)
        label_index = self.label_offset[volume][:, None] + spatial
        n_voxels = shape.prod(dim=1)  # (B,)
        channels = len(self._channels)
        image_index = ((channels * self.label_offset[volume])[:, None, None]
                       + self._channels[None, :, None] * n_voxels[:, None, None] + spatial[:, None, :])  # (B, C, P)
        batch = len(volume)
        image = self._image_buffer.take(image_index) * inside[:, None].to(self._image_buffer.dtype)
        label = self._label_buffer.take(label_index) * inside.to(torch.uint8)
        return image.view(batch, channels, *self.patch_size), label.view(batch, *self.patch_size)

    def _cut_by_slicing(self, volume: torch.Tensor, corner: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # On a CPU a loop of B box copies is a plain memory copy, ~30x faster than a gather.
        batch, channels = len(volume), len(self._channels)
        image = torch.zeros((batch, channels, *self.patch_size), dtype=self._image_buffer.dtype, device=self.device)
        label = torch.zeros((batch, *self.patch_size), dtype=torch.uint8, device=self.device)
        for b, (v, start) in enumerate(zip(volume.tolist(), corner.tolist())):
            shape = self.labels[v].shape
            source, target = [], []
            for a, (s, p, n) in enumerate(zip(start, self.patch_size, shape)):
                lo, hi = max(s, 0), min(s + p, n)  # the part of the patch inside the volume
                source.append(slice(lo, hi))
                target.append(slice(lo - s, hi - s))
            image[(b, slice(None), *target)] = self.images[v][(slice(None), *source)]
            label[(b, *target)] = self.labels[v][tuple(source)]
        return image, label

    def _uniform_voxels(self, shape: torch.Tensor) -> torch.Tensor:
        u = torch.rand(shape.shape, generator=self.generator, device=self.device)
        return (u * shape).long().minimum(shape - 1)

    def _label_at(self, volume: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        shape = self.shapes[volume]
        spatial = (centre[:, 0] * shape[:, 1] + centre[:, 1]) * shape[:, 2] + centre[:, 2]
        return self._label_buffer[self.label_offset[volume] + spatial]


def _unravel(linear: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """Linear C-order indices into (X, Y, Z) volumes of per-row ``shape`` (n, 3) -> (n, 3) coordinates."""
    yz = shape[:, 1] * shape[:, 2]
    x = linear // yz
    rest = linear - x * yz
    y = rest // shape[:, 2]
    z = rest - y * shape[:, 2]
    return torch.stack([x, y, z], dim=1)


def device_patch_loader(sampler: DevicePatchSampler) -> DataLoader:
    """A DataLoader over a :class:`DevicePatchSampler` for ``train_dataloader``: the sampler already
    makes whole batches on the device, so no batching, workers or pinned memory."""
    return DataLoader(sampler, batch_size=None, num_workers=0, pin_memory=False)
