"""Phantom -> manifest -> check -> preprocess -> DataModule batches, for every data source."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import write_phantom_set

from sgnet_lightning.data import cache
from sgnet_lightning.data.datamodule import SegmentationDataModule, augment_on_device, masks_from_label_map
from sgnet_lightning.data.io import load_nifti, resample_to_grid
from sgnet_lightning.data.labels import get_task
from sgnet_lightning.data.manifest import Manifest
from sgnet_lightning.data.validate import check_manifest

PATCH = (16, 16, 16)
SPLITS = {"bml": {"name": "seed_way"}, "brats2021": {"name": "kfold", "n_folds": 2, "test_size": 2},
          "brats2023": {"name": "kfold", "n_folds": 2, "test_size": 2}}


@pytest.fixture(scope="module", params=["bml", "brats2021", "brats2023"])
def datamodule(request, tmp_path_factory):
    kind = request.param
    phantom = write_phantom_set(tmp_path_factory.mktemp(kind), 12 if kind == "bml" else 6, dataset=kind, seed=1,
                                split=SPLITS[kind])
    assert check_manifest(Manifest.load(phantom["manifest"]), progress=False).ok
    dm = SegmentationDataModule(str(phantom["manifest"]), cache_root=str(phantom["cache"]), spacing_mm=5.0,
                                patch_size=PATCH, batch_size=4, samples_per_volume=4, queue_length=16,
                                num_workers=0, steps_per_epoch=50, positive_fraction=0.5)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_batches_have_the_documented_shapes_and_targets(datamodule):
    task = datamodule.task
    batch = next(iter(datamodule.train_dataloader()))
    channels = 2 if task.dataset == "bml" else 4
    # batches travel as the cache's float16 and become float32 after the transfer to the device
    assert batch["image"].shape == (4, channels, *PATCH) and batch["image"].dtype == torch.float16
    assert batch["label_map"].shape == (4, *PATCH)
    batch = datamodule.on_after_batch_transfer(batch, 0)
    assert batch["image"].dtype == torch.float32
    assert batch["target"].shape == (4, len(task.regions), *PATCH)
    assert batch["subregions"].shape == (4, len(task.subregions), *PATCH)
    for r, values in enumerate(task.regions.values()):
        assert torch.equal(batch["target"][:, r].bool(), torch.isin(batch["label_map"], torch.tensor(values)))
    # sub-regions are disjoint and together make the whole tumour
    assert batch["subregions"].sum(1).max() <= 1
    whole = torch.isin(batch["label_map"], torch.tensor([v for vs in task.subregions.values() for v in vs]))
    assert torch.equal(batch["subregions"].sum(1).bool(), whole)
    if task.dataset != "bml":  # nested BraTS regions: ET inside TC inside WT
        et, tc, wt = (batch["target"][:, task.region_names.index(n)] for n in ("ET", "TC", "WT"))
        assert bool((et <= tc).all() and (tc <= wt).all())


def test_channels_follow_the_source_modality_order(datamodule):
    manifest = datamodule.manifest
    subject = datamodule.splits["train"][0]
    subject_dir = datamodule.cache_dir / subject
    meta = cache.read_meta(subject_dir)
    image = np.asarray(cache.load_image(subject_dir), dtype=np.float32)
    record = manifest.record(subject)
    brain = image[0] > 0
    for channel, modality in enumerate(meta["modalities"]):
        raw = load_nifti(record.images[modality], subject, modality)
        on_cache = resample_to_grid(np.asarray(raw.dataobj, dtype=np.float32), raw.affine, image.shape[1:],
                                    np.array(meta["affine"]), order=1)
        correlations = [np.corrcoef(on_cache[brain], image[c][brain])[0, 1] for c in range(image.shape[0])]
        assert int(np.argmax(correlations)) == channel, (modality, correlations)


def test_label_sampler_centres_match_the_positive_fraction(datamodule):
    centre = tuple(p // 2 for p in PATCH)  # TorchIO centres the patch on the sampled voxel
    hits = []
    for i, batch in enumerate(datamodule.train_dataloader()):  # raw batches: not augmented
        hits.extend((batch["label_map"][(slice(None), *centre)] > 0).tolist())
        if i == 40:
            break
    fraction = float(np.mean(hits))
    # 164 centres; a binomial at p = 0.5 stays inside 0.5 +- 0.15 with probability > 0.9999
    assert abs(fraction - 0.5) < 0.15, fraction


def test_validation_and_test_yield_whole_cached_volumes(datamodule):
    batch = next(iter(datamodule.val_dataloader()))
    subject = batch["subject"][0]
    meta = cache.read_meta(datamodule.cache_dir / subject)
    assert batch["image"].shape[2:] == tuple(meta["shape"])
    assert batch["label_map"].shape[1:] == tuple(meta["shape"])
    assert torch.allclose(batch["spacing_mm"][0], torch.tensor(meta["spacing_mm"], dtype=torch.float64))
    assert subject not in datamodule.splits["train"]
    test_subjects = {b["subject"][0] for b in datamodule.test_dataloader()}
    assert test_subjects == set(datamodule.splits["test"]) and not test_subjects & set(datamodule.splits["train"])


def test_augmentation_flips_and_rotations_keep_image_and_label_aligned():
    torch.manual_seed(0)
    label = torch.zeros(8, 16, 16, 16, dtype=torch.uint8)
    label[:, 2:5, 3:9, 1:4] = 1
    image = label[:, None].float().repeat(1, 2, 1, 1, 1)
    image_aug, label_aug = augment_on_device(image, label, {"flip_axes": [0, 1, 2], "flip_p": 0.5, "rot90_p": 0.5})
    assert torch.equal(image_aug[:, 0] > 0.5, label_aug.bool())
    assert not torch.equal(label_aug, label)  # something moved
    assert torch.equal(label_aug.flatten(1).sum(1), label.flatten(1).sum(1))


def test_a_manifest_failing_its_check_is_refused_unless_the_subject_is_excluded(tmp_path):
    import nibabel as nib

    phantom = write_phantom_set(tmp_path, 12, generator="tiny")
    bad = Manifest.load(phantom["manifest"]).record("BML-0003").images["flair"]
    img = nib.load(bad)
    data = np.asarray(img.dataobj).astype(np.float32)
    data[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), bad)
    from sgnet_lightning.errors import SgnetError

    kwargs = dict(cache_root=str(phantom["cache"]), spacing_mm=6.0, patch_size=PATCH, num_workers=0)
    with pytest.raises(SgnetError, match="BML-0003"):
        SegmentationDataModule(str(phantom["manifest"]), **kwargs).prepare_data()
    dm = SegmentationDataModule(str(phantom["manifest"]), exclude=["BML-0003"], **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    assert "BML-0003" not in sum(dm.splits.values(), [])


def test_masks_from_label_map_for_brats2021_labels():
    task = get_task("brats2021")
    label = torch.tensor([[[[0, 1, 2, 4]]]], dtype=torch.uint8)
    masks = masks_from_label_map(label, task.regions)  # ET, TC, WT
    assert masks[0, :, 0, 0].tolist() == [[0, 0, 0, 1], [0, 1, 0, 1], [0, 1, 1, 1]]


def test_device_loader_option_yields_the_same_batch_format(datamodule):
    dm = datamodule
    dm.hparams.loader = "device"
    try:
        batch = next(iter(dm.train_dataloader()))
    finally:
        dm.hparams.loader = "queue"
    assert batch["image"].shape[1:] == (len(dm.manifest.record(dm.splits["train"][0]).images), *PATCH)
    assert batch["label_map"].shape[1:] == PATCH
    batch = dm.on_after_batch_transfer(batch, 0)
    assert batch["target"].shape[1] == len(dm.task.regions)


def test_queue_with_workers_delivers_two_epochs_without_hanging(datamodule):
    """Queues with workers have hung on some machines (torchio #1173, #725): run two short epochs
    with two workers, and float16 volumes crossing the process boundary, in a child with a timeout."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        from sgnet_lightning.data.datamodule import SegmentationDataModule
        dm = SegmentationDataModule({datamodule.hparams.manifest!r}, cache_root={datamodule.hparams.cache_root!r},
                                    spacing_mm=5.0, patch_size={PATCH}, batch_size=4, samples_per_volume=4,
                                    queue_length=8, num_workers=2, steps_per_epoch=6, check=False)
        dm.prepare_data()
        dm.setup("fit")
        loader = dm.train_dataloader()
        shapes = set()
        for epoch in range(2):
            dm.start_epoch(epoch)
            shapes |= {{tuple(batch["image"].shape) for batch in loader}}
        print(sorted(shapes))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    channels = len(datamodule.manifest.record(datamodule.splits["train"][0]).images)
    assert done.stdout.strip() == str([(4, channels, *PATCH)])


def test_torchio_cpu_transforms_get_float32_volumes(datamodule):
    """TorchIO's own transforms run in the queue workers on float32 volumes (the cache is float16)."""
    kwargs = dict(cache_root=datamodule.hparams.cache_root, spacing_mm=5.0, patch_size=PATCH, batch_size=4,
                  samples_per_volume=4, queue_length=8, num_workers=0, steps_per_epoch=2, check=False)
    noisy = SegmentationDataModule(datamodule.hparams.manifest,
                                   torchio_transforms=[{"name": "RandomNoise", "std": 0.01}], **kwargs)
    noisy.prepare_data()
    noisy.setup("fit")
    batch = next(iter(noisy.train_dataloader()))
    assert batch["image"].dtype == torch.float32
    assert not torch.equal(batch["image"], batch["image"].half().float()), "no noise below float16 precision"
    unknown = SegmentationDataModule(datamodule.hparams.manifest,
                                     torchio_transforms=[{"name": "RandomMagic"}], **kwargs)
    unknown.prepare_data()
    unknown.setup("fit")
    with pytest.raises(ValueError, match="RandomMagic"):
        unknown.train_dataloader()
