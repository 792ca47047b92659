"""DevicePatchSampler against the DataModule's TorchIO queue it replaces (CPU device, tiny volumes).

Volumes, streams and tolerances: ``tests/_patch_volumes.py``.
"""

from __future__ import annotations

import pytest
import torch

from _patch_volumes import (
    AUGMENT,
    CENTRE_TOLERANCE,
    N_PATCHES,
    PATCH,
    POSITIVE_FRACTION,
    assert_same_balance,
    centre_label,
    make_volumes,
    suite_queue_patches,
)
from sgnet_lightning.data.datamodule import augment_on_device
from sgnet_lightning.data.gpu_sampler import (
    DevicePatchSampler,
    device_bytes_needed,
    device_patch_loader,
    load_cached_volumes,
)


def sampler_patches(volumes, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    sampler = DevicePatchSampler(volumes, PATCH, batch_size=100, positive_fraction=POSITIVE_FRACTION,
                                 steps_per_epoch=n // 100, device="cpu", seed=seed)
    batches = list(device_patch_loader(sampler))
    return torch.cat([b["image"] for b in batches]), torch.cat([b["label_map"] for b in batches])


@pytest.fixture(scope="module")
def volumes():
    return make_volumes()


@pytest.fixture(scope="module")
def both(volumes):
    return suite_queue_patches(volumes, N_PATCHES), sampler_patches(volumes, N_PATCHES)




def test_shapes_and_dtypes(volumes):
    sampler = DevicePatchSampler(volumes, PATCH, batch_size=6, steps_per_epoch=3, seed=0)
    batches = list(device_patch_loader(sampler))
    assert len(batches) == len(sampler) == 3
    for batch in batches:
        assert batch["image"].shape == (6, 2, *PATCH) and batch["image"].dtype == torch.float32
        assert batch["label_map"].shape == (6, *PATCH) and batch["label_map"].dtype == torch.uint8
        assert batch["image"].device.type == "cpu"


@pytest.mark.parametrize("gather", [False, True], ids=["slicing", "gather"])
@pytest.mark.parametrize("tiny", [False, True], ids=["volumes", "smaller-than-patch"])
def test_patches_are_exact_crops_of_padded_volumes(volumes, gather, tiny):
    """Every patch equals the window of the volume zero-padded by half a patch (as the queue's sampler cuts it)
    around its centre, for both ways of cutting, also for a volume smaller than the patch."""
    if tiny:
        volumes = [(image[:, 2:10, 3:9, :5], label[2:10, 3:9, :5]) for image, label in volumes[:1]]
    sampler = DevicePatchSampler(volumes, PATCH, batch_size=50, steps_per_epoch=1, seed=3, gather=gather)
    state = sampler.generator.get_state()
    volume, centre = sampler.sample_centres(50)
    sampler.generator.set_state(state)
    batch = sampler.sample()
    half = [p // 2 for p in PATCH]
    for b in range(50):
        image, label = volumes[int(volume[b])]
        padded_image = torch.nn.functional.pad(image.float(), (half[2],) * 2 + (half[1],) * 2 + (half[0],) * 2)
        padded_label = torch.nn.functional.pad(label, (half[2],) * 2 + (half[1],) * 2 + (half[0],) * 2)
        x, y, z = centre[b].tolist()
        window = (slice(x, x + PATCH[0]), slice(y, y + PATCH[1]), slice(z, z + PATCH[2]))
        assert torch.equal(batch["image"][b], padded_image[(slice(None), *window)])
        assert torch.equal(batch["label_map"][b], padded_label[window])


def test_foreground_fraction_matches_torchio_queue(both):
    (_, queue_labels), (_, sampler_labels) = both
    assert_same_balance(sampler_labels, queue_labels)


def test_border_lesion_can_be_a_centre(volumes):
    sampler = DevicePatchSampler(volumes, PATCH, batch_size=1, positive_fraction=1.0, seed=0)
    volume, centre = sampler.sample_centres(4000)
    corner = (volume == 0) & (centre < torch.tensor([4, 4, 3])).all(dim=1)
    assert corner.any()
    assert (centre == 0).all(dim=1).any()  # the very corner voxel itself


def test_positive_fraction_extremes(volumes):
    never = DevicePatchSampler(volumes, PATCH, batch_size=500, positive_fraction=0.0, seed=0)
    assert (centre_label(never.sample()["label_map"]) == 0).all()
    always = DevicePatchSampler(volumes, PATCH, batch_size=500, positive_fraction=1.0, seed=0)
    volume, centre = always.sample_centres(500)
    on_tumour = always._label_at(volume, centre) > 0
    assert torch.equal(on_tumour, volume != 3)  # volume 3 has no tumour: background centres only


def test_augmentation_statistics_match_queue(both):
    """The same ``augment_on_device`` acts on both paths: image and label stay aligned and the
    share of patches it changes is the same (expected 1 - 0.5 * 0.5 = 0.75)."""
    changed = {}
    for name, (images, labels) in zip(("queue", "sampler"), both):
        torch.manual_seed(1)
        aug_images, aug_labels = augment_on_device(images, labels, AUGMENT)
        assert torch.equal(aug_images[:, 0], aug_labels.float())  # channel 0 is the label map
        changed[name] = (aug_images != images).flatten(1).any(1).float().mean().item()
    assert abs(changed["sampler"] - 0.75) < CENTRE_TOLERANCE
    assert abs(changed["sampler"] - changed["queue"]) < CENTRE_TOLERANCE, changed


def test_deterministic_with_seed(volumes):
    first, second = sampler_patches(volumes, 200, seed=5), sampler_patches(volumes, 200, seed=5)
    other = sampler_patches(volumes, 200, seed=6)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[1], other[1])


def test_rejects_bad_input(volumes):
    with pytest.raises(ValueError, match="positive_fraction"):
        DevicePatchSampler(volumes, PATCH, batch_size=2, positive_fraction=1.5)
    image, label = volumes[0]
    with pytest.raises(ValueError, match="volume 0"):
        DevicePatchSampler([(image, label[:-1])], PATCH, batch_size=2)


def test_loads_cache_and_sizes_memory(tmp_path, volumes):
    from sgnet_lightning.data.cache import write_cached_subject

    for index, (image, label) in enumerate(volumes):
        write_cached_subject(tmp_path / f"s{index}", image.numpy(), label.numpy(), {"subject": f"s{index}"})
    loaded = load_cached_volumes(tmp_path, [f"s{i}" for i in range(len(volumes))])
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(loaded, volumes))
    sampler = DevicePatchSampler(loaded, PATCH, batch_size=2)
    allocated = (sampler._image_buffer.numel() * sampler._image_buffer.element_size()
                 + sampler._label_buffer.numel() + sampler.positive_index.numel() * 8)
    assert device_bytes_needed(loaded) == allocated
    write_cached_subject(tmp_path / "unlabelled", volumes[0][0].numpy(), None, {"subject": "unlabelled"})
    from sgnet_lightning.errors import DataError

    with pytest.raises(DataError, match="no label"):
        load_cached_volumes(tmp_path, ["unlabelled"])
