"""The LightningDataModule: manifest + preprocessed cache + fold -> patches and whole volumes.

Training draws label-balanced patches through a TorchIO ``Queue`` whose workers read memory-mapped
cached volumes (nothing is decoded or resampled while training) and whose sampler
(:class:`~sgnet_lightning.data.patch_sampler.LabelBalancedSampler`) needs no per-volume probability
map; cheap augmentation (flips, in-plane 90 degree rotations) runs per batch on the device after
transfer, so the CPU only loads volumes and cuts patches.
Validation and test yield whole cached volumes, one per batch, for sliding-window inference.

Requirements taken from TorchIO users' experience (``shared/pitfalls.md``):
- the DataLoader around the Queue has ``num_workers=0``; the Queue owns the workers;
- under DDP the Queue gets a ``DistributedSampler`` as ``subject_sampler`` (set the trainer's
  ``use_distributed_sampler: false``, as the base configs do);
- every voxel, border included, can be a patch centre (what a patch covers outside the volume is
  zero, as after padding by half a patch);
- an epoch is a fixed number of steps, not the Queue's length.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import random
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torchio as tio
from torch.utils.data import DataLoader, Dataset

from sgnet_lightning import files
from sgnet_lightning.data import cache
from sgnet_lightning.data.labels import get_task, subregions_present
from sgnet_lightning.data.patch_sampler import LabelBalancedSampler
from sgnet_lightning.datasets import Task
from sgnet_lightning.errors import DataError, SgnetError

log = logging.getLogger(__name__)

# -- readers for TorchIO: module level so Queue workers can pickle them -------------------------
def _affine_of(path: Path) -> np.ndarray:
    return np.array(cache.read_meta(path.parent)["affine"], dtype=np.float64)


def read_cached_image(path, dtype=None) -> tuple[torch.Tensor, np.ndarray]:
    """TorchIO reader: cached ``image.npy`` -> ((C, X, Y, Z) tensor, affine), as stored (float16) or
    as ``dtype``.

    float16 halves what a Queue worker copies and hands to the main process (a volume read in 3 ms
    instead of 17 ms as float32) and what a batch moves to the GPU; batches become float32 on the
    device (``on_after_batch_transfer``). TorchIO's CPU transforms expect float32: with them, the
    DataModule reads with ``dtype=np.float32``."""
    path = Path(path)
    return torch.from_numpy(np.array(np.load(path, mmap_mode="r"), dtype=dtype)), _affine_of(path)


def read_cached_label(path) -> tuple[torch.Tensor, np.ndarray]:
    """TorchIO reader: cached ``label.npy`` -> ((1, X, Y, Z) uint8 tensor, affine)."""
    path = Path(path)
    return torch.from_numpy(np.array(np.load(path, mmap_mode="r"))[None]), _affine_of(path)


class CachedVolumes(Dataset):
    """Whole cached volumes for validation, test and prediction.

    Items: ``{"image": (C, X, Y, Z) float32, "label_map": (X, Y, Z) uint8 or None,
    "subject": str, "spacing_mm": (3,) float}``.
    """

    def __init__(self, cache_dir: Path, subjects: list[str]):
        self.cache_dir, self.subjects = Path(cache_dir), list(subjects)

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, index: int) -> dict[str, Any]:
        subject_dir = self.cache_dir / self.subjects[index]
        label = cache.load_label(subject_dir, mmap=False)
        return {
            "image": torch.from_numpy(np.asarray(cache.load_image(subject_dir), dtype=np.float32)),
            "label_map": None if label is None else torch.from_numpy(label),
            "subject": self.subjects[index],
            "spacing_mm": torch.tensor(cache.read_meta(subject_dir)["spacing_mm"], dtype=torch.float64),
        }


def _collate_volumes(items: list[dict]) -> dict[str, Any]:
    labels = [item["label_map"] for item in items]
    return {
        "image": torch.stack([item["image"] for item in items]),
        "label_map": None if any(lab is None for lab in labels) else torch.stack(labels),
        "subject": [item["subject"] for item in items],
        "spacing_mm": torch.stack([item["spacing_mm"] for item in items]),
    }


class _StepsPerEpoch(Dataset):
    """Presents a TorchIO Queue as ``steps * batch_size`` items: an epoch is defined by steps.

    Each epoch starts a fresh Queue after reseeding every generator from (run seed, epoch), so an
    epoch's patches depend only on the seed and the epoch number: a run resumed from a checkpoint
    at an epoch boundary draws exactly the patches the uninterrupted run drew. (The Queue ignores
    the index it is given: it pops its own shuffled patch list.)

    The reseed waits for the epoch's first item, not for ``start_epoch``: Lightning creates the
    DataLoader iterator, which draws a seed from the global generator, after ``on_train_epoch_start``
    in an ordinary epoch but before it in the first epoch of a (resumed) fit. Reseeding any earlier
    than the first fetch would let that one draw shift every random number of a resumed run's
    first epoch.
    """

    def __init__(self, make_queue, length: int):
        self.make_queue, self.length = make_queue, length
        self.epoch = 0
        self.queue: tio.Queue | None = None

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.queue = epoch, None

    def _reseed_and_fill(self) -> None:
        base_seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        seed = int(np.random.SeedSequence([base_seed, self.epoch]).generate_state(1)[0])
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        self.queue = self.make_queue(self.epoch, seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        if self.queue is None:
            self._reseed_and_fill()
        return self.queue[index]


def _collate_patches(patches: list[dict]) -> dict[str, torch.Tensor]:
    """Queue patches -> ``{"image": (B, C, x, y, z) float16 (float32 with TorchIO transforms),
    "label_map": (B, x, y, z) uint8, "volume_index": (B,) int64 (the patch's subject in the
    training split)}``."""
    return {
        "image": torch.stack([p["image"][tio.DATA] for p in patches]),
        "label_map": torch.stack([p["label"][tio.DATA][0] for p in patches]),
        "volume_index": torch.tensor([p["volume_index"] for p in patches], dtype=torch.long),
    }


class SegmentationDataModule(pl.LightningDataModule):
    """Patches for training, whole volumes for validation and test, from one manifest and fold.

    Args:
        manifest: path of a manifest CSV in ``data_manifests/`` (see ``sgnet data manifest``).
        data_root: folder of the raw data when it is not the manifest's recorded root.
        cache_root: folder of the preprocessed cache (``sgnet data preprocess``); created on demand.
        task: a task of the data set (its registry record's ``tasks``); None = the data set's default.
        fold: cross-validation fold for ``kfold`` manifests (None = fold 0 / the seed-way split).
        spacing_mm: isotropic target spacing of the cache.
        patch_size: training patch (x, y, z) in voxels (seed: 96, 96, 32).
        batch_size: patches per step.
        positive_fraction: share of patches centred on tumour (seed 1:1 -> 0.5).
        samples_per_volume: patches cut from a volume each time it is loaded; loading a volume costs
            far more than cutting a patch, so this sets how fast the queue is (docs/performance.md).
        queue_length: patches held in RAM by the Queue (``max_length``); RAM grows with this (256
            patches of 2 x 96 x 96 x 32 float16: 0.3 GiB) and so does the number of subjects mixed.
        num_workers: Queue workers loading and cropping volumes.
        steps_per_epoch: training steps that make one epoch.
        augment: device-side augmentation: ``{"flip_axes": [0], "flip_p": 0.5, "rot90_p": 0.5}``
            (the seed's); rot90 turns the first two axes and needs a square in-plane patch.
        torchio_transforms: optional CPU TorchIO transforms run in the Queue workers, as
            ``[{"name": "RandomBiasField", "p": 0.3}, ...]`` (any ``torchio`` transform class).
        exclude: subject IDs to leave out (e.g. those ``sgnet data check`` reported).
        preprocess_workers: processes for building the cache in ``prepare_data``.
        check: refuse to train on a manifest whose check reports fatal problems in subjects that are
            not excluded.
        loader: ``"queue"`` (TorchIO Queue, CPU workers; any data set size) or ``"device"``
            (:class:`~sgnet_lightning.data.gpu_sampler.DevicePatchSampler`: the training volumes
            sit in device memory and patches are cut there; for data sets that fit).
        test_split: the split ``trainer.test`` scores: ``"test"``, or ``"val"`` to score the
            validation split subject by subject (sweeps, ``sgnet gate-scan``) without ever opening a
            test subject.
    """

    def __init__(
        self,
        manifest: str,
        data_root: str | None = None,
        cache_root: str = "cache",
        task: str | None = None,
        fold: int | None = None,
        spacing_mm: float = 1.0,
        patch_size: tuple[int, int, int] = (96, 96, 32),
        batch_size: int = 4,
        positive_fraction: float = 0.5,
        samples_per_volume: int = 32,
        queue_length: int = 256,
        num_workers: int = 2,
        steps_per_epoch: int = 100,
        augment: dict[str, Any] | None = None,
        torchio_transforms: list[dict[str, Any]] | None = None,
        exclude: list[str] | None = None,
        preprocess_workers: int = 1,
        check: bool = True,
        loader: str = "queue",
        test_split: str = "test",
    ):
        super().__init__()
        self.save_hyperparameters()
        if not 0 <= positive_fraction <= 1:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
        if loader not in ("queue", "device"):
            raise ValueError(f"data.loader must be 'queue' or 'device', got {loader!r}")
        if test_split not in ("test", "val"):
            raise ValueError(f"data.test_split must be 'test' or 'val', got {test_split!r}")
        from sgnet_lightning.data.manifest import Manifest

        self.manifest = Manifest.load(manifest, root=data_root)
        self.task: Task = get_task(self.manifest.dataset, task)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.augment = {"flip_axes": [0], "flip_p": 0.5, "rot90_p": 0.5, **(augment or {})}
        self.exclude = set(exclude or [])
        self.splits = {
            name: [s for s in subjects if s not in self.exclude]
            for name, subjects in self.manifest.split_subjects(fold).items()
        }
        self.cache_dir: Path | None = None

    # -- shapes the model needs (linked into the model config by the CLI) --------------------------
    @property
    def num_channels(self) -> int:
        from sgnet_lightning.data.sources import get_source

        return len(get_source(self.manifest.dataset).modalities)

    @property
    def num_regions(self) -> int:
        return len(self.task.regions)

    @property
    def num_subregions(self) -> int:
        return len(self.task.subregions)

    # -- cache ------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Check the manifest once (result cached next to the data) and build missing cache entries."""
        self.cache_dir = self._ensure_cache()

    def _settings(self):
        return preprocess_settings(self.hparams.spacing_mm)

    def _ensure_cache(self) -> Path:
        from sgnet_lightning.data.preprocess import preprocess_manifest

        if self.hparams.check:
            self._refuse_failed_check()
        return preprocess_manifest(
            self.manifest,
            self.hparams.cache_root,
            self._settings(),
            workers=self.hparams.preprocess_workers,
            exclude=sorted(self.exclude),
            progress=True,
        )

    def _refuse_failed_check(self) -> None:
        from sgnet_lightning.data.validate import check_manifest

        # the check reads every file: run it once per manifest content and exclusion list, keep the verdict
        digest = hashlib.sha256(Path(self.hparams.manifest).read_bytes())
        digest.update("\n".join(sorted(self.exclude)).encode())
        key = digest.hexdigest()[:16]
        marker = Path(self.hparams.cache_root) / "checks" / f"{Path(self.hparams.manifest).stem}-{key}.json"
        if marker.is_file():
            fatal = set(json.loads(marker.read_text())["fatal_subjects"])
        else:
            report = check_manifest(self.manifest, exclude=sorted(self.exclude))
            fatal = set(report.fatal_subjects)
            files.atomic_write_json(marker, {"fatal_subjects": sorted(fatal)})
            if fatal - self.exclude:
                log.error(report.format())
        bad = sorted(fatal - self.exclude)
        if bad:
            raise SgnetError(
                f"manifest {self.hparams.manifest} fails `sgnet data check` for {len(bad)} subject(s): "
                f"{', '.join(bad)}; fix them or list them under data.exclude"
            )

    def setup(self, stage: str | None = None) -> None:
        if self.cache_dir is None:  # prepare_data ran in another process (DDP) or not at all
            self.cache_dir = Path(self.hparams.cache_root) / self._settings().key()
            if not (self.cache_dir / cache.SETTINGS_FILE).is_file():
                self.cache_dir = self._ensure_cache()
        for split, subjects in self.splits.items():
            missing = [s for s in subjects if not cache.is_complete(self.cache_dir / s)]
            if missing:
                raise DataError(missing[0], self.cache_dir / missing[0], f"not in the cache ({split} split; "
                                f"{len(missing)} missing); run `sgnet data preprocess`")

    # -- loaders ----------------------------------------------------------------------------------
    def _subregions_present(self, names: list[str], training: bool = False) -> torch.Tensor:
        """(len(names), S) bool: which of the task's sub-regions each subject's cached label map
        holds (from the ``labels_present`` its ``meta.json`` records; see ``labels.subregion_labels``).

        With ``training``, a subject lacking a label file of the task's regions is refused: its
        targets would be wrong, not just unknown.
        """
        rows = []
        for name in names:
            labels = cache.read_meta(self.cache_dir / name).get("labels_present", [])
            if training and (lacking := [n for n in self.task.required_labels if n not in labels]):
                raise DataError(name, self.cache_dir / name / cache.META_FILE,
                                f"lacks label {', '.join(lacking)}, which task {self.task.name!r} trains on")
            rows.append(subregions_present(self.task, labels))
        return torch.tensor(rows, dtype=torch.bool).reshape(len(names), len(self.task.subregions))

    def _subjects(self, names: list[str]) -> list[tio.Subject]:
        subjects, small = [], []
        image_reader = (functools.partial(read_cached_image, dtype=np.float32) if self.hparams.torchio_transforms
                        else read_cached_image)
        for index, name in enumerate(names):
            subject_dir = self.cache_dir / name
            if any(n < p for n, p in zip(cache.read_meta(subject_dir)["shape"], self.patch_size)):
                small.append(name)
            label_path = subject_dir / cache.LABEL_FILE
            if not label_path.is_file():
                raise DataError(name, label_path, "no label in the cache, cannot train on this subject")
            subjects.append(
                tio.Subject(
                    image=tio.ScalarImage(subject_dir / cache.IMAGE_FILE, reader=image_reader),
                    label=tio.LabelMap(label_path, reader=read_cached_label),
                    subject_id=name,
                    volume_index=index,  # row of the split's sub-region presence table
                )
            )
        if small:
            log.warning("%d cached volume(s) smaller than the patch %s are zero-padded to fit: %s",
                        len(small), self.patch_size, ", ".join(small))
        return subjects

    def _train_transform(self) -> tio.Compose | None:
        transforms: list[tio.Transform] = []
        for spec in self.hparams.torchio_transforms or []:
            spec = dict(spec)
            name = spec.pop("name")
            if not hasattr(tio, name):
                raise ValueError(f"data.torchio_transforms: torchio has no transform {name!r}")
            transforms.append(getattr(tio, name)(**spec))
        return tio.Compose(transforms) if transforms else None

    def train_dataloader(self) -> DataLoader:
        if not self.splits["train"]:
            raise SgnetError(f"the training split of {self.hparams.manifest} is empty")
        # both loaders tag each patch with its subject's row here ("volume_index")
        self._train_subregions_present = self._subregions_present(self.splits["train"], training=True)
        if self.hparams.loader == "device":
            return self._device_loader()
        dataset = tio.SubjectsDataset(self._subjects(self.splits["train"]), transform=self._train_transform())
        world_size = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        max_length = max(self.hparams.queue_length, self.hparams.samples_per_volume)
        # subjects one epoch loads: its patches plus a last full queue
        subjects_per_epoch = math.ceil(
            (self.hparams.steps_per_epoch * self.hparams.batch_size + max_length) / self.hparams.samples_per_volume
        )

        def make_queue(epoch: int, seed: int) -> tio.Queue:
            # the subject order is drawn from the epoch's seed alone
            if world_size > 1:
                subject_sampler = torch.utils.data.DistributedSampler(
                    dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed
                )
                subject_sampler.set_epoch(epoch)
            else:
                # As many shuffled passes over the subjects as the epoch needs: TorchIO starts a new
                # subject loader, forking fresh workers that prefetch nothing yet, after each pass.
                passes = math.ceil(subjects_per_epoch / len(dataset))
                subject_sampler = torch.utils.data.RandomSampler(
                    dataset, num_samples=passes * len(dataset), generator=torch.Generator().manual_seed(seed)
                )
            # patch centres from their own generator: independent of what augmentation draws
            sampler = LabelBalancedSampler(self.patch_size, label_name="label",
                                           positive_fraction=self.hparams.positive_fraction,
                                           generator=torch.Generator().manual_seed(seed + rank))
            return tio.Queue(
                dataset,
                max_length=max_length,
                samples_per_volume=self.hparams.samples_per_volume,
                sampler=sampler,
                subject_sampler=subject_sampler,
                num_workers=self.hparams.num_workers,
                shuffle_subjects=False,  # the sampler shuffles
            )

        self._patches = _StepsPerEpoch(make_queue, self.hparams.steps_per_epoch * self.hparams.batch_size)
        # num_workers=0: the Queue owns the workers (TorchIO's documented pattern).
        return DataLoader(self._patches, batch_size=self.hparams.batch_size, num_workers=0,
                          collate_fn=_collate_patches)

    def _device_loader(self) -> DataLoader:
        from sgnet_lightning.data.gpu_sampler import DevicePatchSampler, device_patch_loader, load_cached_volumes

        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        rank = trainer.global_rank if trainer is not None else 0
        sampler = DevicePatchSampler(
            load_cached_volumes(self.cache_dir, self.splits["train"]), self.patch_size, self.hparams.batch_size,
            positive_fraction=self.hparams.positive_fraction, steps_per_epoch=self.hparams.steps_per_epoch,
            device=device, seed=int(os.environ.get("PL_GLOBAL_SEED", 0)) + rank,
        )
        return device_patch_loader(sampler)

    def start_epoch(self, epoch: int) -> None:
        """Called by the training module at each epoch start: the epoch's first patch reseeds and refills the queue."""
        if getattr(self, "_patches", None) is not None:
            self._patches.start_epoch(epoch)

    def _volume_loader(self, split: str) -> DataLoader:
        if not self.splits[split]:
            raise SgnetError(f"the {split} split of {self.hparams.manifest} is empty")
        return DataLoader(CachedVolumes(self.cache_dir, self.splits[split]), batch_size=1,
                          num_workers=min(2, self.hparams.num_workers), collate_fn=_collate_volumes)

    def val_dataloader(self) -> DataLoader:
        return self._volume_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._volume_loader(self.hparams.test_split)

    # -- on the device: targets and augmentation --------------------------------------------------
    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        batch["image"] = batch["image"].float()  # training batches travel as the cache's float16
        if self.trainer is not None and self.trainer.training:
            batch["image"], batch["label_map"] = augment_on_device(batch["image"], batch["label_map"], self.augment)
        if batch.get("label_map") is not None:
            batch["target"] = masks_from_label_map(batch["label_map"], self.task.regions)
            batch["subregions"] = masks_from_label_map(batch["label_map"], self.task.subregions)
            # (B, S) bool: the auxiliary loss skips sub-regions a subject's labels do not define
            if "volume_index" in batch:  # training patches
                presence = self._train_subregions_present.to(batch["label_map"].device)
                batch["subregions_present"] = presence[batch["volume_index"]]
            elif "subject" in batch:  # whole volumes
                batch["subregions_present"] = self._subregions_present(batch["subject"]).to(batch["label_map"].device)
        return batch


def preprocess_settings(spacing_mm: float):
    """The cache settings of a DataModule with this spacing (everything else at its default)."""
    from sgnet_lightning.data.preprocess import PreprocessSettings

    return PreprocessSettings(spacing_mm=(float(spacing_mm),) * 3)


def masks_from_label_map(label_map: torch.Tensor, groups: dict[str, tuple[int, ...]]) -> torch.Tensor:
    """(B, X, Y, Z) integer label map -> (B, len(groups), X, Y, Z) float {0, 1} masks."""
    # equality tests, not torch.isin: isin took 6 ms of every 4-patch CPU batch, half the loader's time
    masks = label_map.new_empty((label_map.shape[0], len(groups), *label_map.shape[1:]), dtype=torch.float32)
    for index, values in enumerate(groups.values()):
        member = torch.zeros_like(label_map, dtype=torch.bool)
        for value in values:
            member |= label_map == value
        masks[:, index] = member
    return masks


def augment_on_device(image: torch.Tensor, label_map: torch.Tensor, augment: dict[str, Any]):
    """The seed's augmentation, per sample, on whatever device the batch is on.

    The coin flips come from the (seeded) CPU generator, so deciding never waits for the device;
    flips and turns run where the batch is. Returns new tensors and leaves the inputs as they are.

    Args:
        image: (B, C, X, Y, Z); label_map: (B, X, Y, Z).
        augment: ``flip_axes`` (spatial axes 0..2), ``flip_p``, ``rot90_p`` (rotation by k * 90
            degrees in the (x, y) plane, k uniform in 1..3; needs a square in-plane patch).
    """
    batch = image.shape[0]
    images, labels = list(image.unbind(0)), list(label_map.unbind(0))
    for axis in augment.get("flip_axes", []):
        flip = (torch.rand(batch) < augment.get("flip_p", 0.0)).tolist()
        for b in (b for b in range(batch) if flip[b]):
            images[b], labels[b] = images[b].flip(axis + 1), labels[b].flip(axis)
    if augment.get("rot90_p", 0.0) > 0 and image.shape[2] == image.shape[3]:
        rotate = (torch.rand(batch) < augment["rot90_p"]).tolist()
        turns = torch.randint(1, 4, (batch,)).tolist()
        for b in (b for b in range(batch) if rotate[b]):
            images[b] = torch.rot90(images[b], turns[b], dims=(1, 2))
            labels[b] = torch.rot90(labels[b], turns[b], dims=(0, 1))
    return torch.stack(images), torch.stack(labels)
