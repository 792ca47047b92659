"""DevicePatchSampler against the TorchIO queue it replaces (CPU device, tiny volumes).

Tolerances: each path draws N_PATCHES = 2000 patches. The binomial standard error of a centre
fraction near 0.4 is about 0.011 per path (0.016 for a difference), so CENTRE_TOLERANCE = 0.05 is
about 3 standard errors; the voxel fraction is averaged over the same patches and varies less.
Both random streams are seeded, so the test is deterministic.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchio as tio

from sgnet_lightning.data.datamodule import augment_on_device
from sgnet_lightning.data.gpu_sampler import (
    DevicePatchSampler,
    device_bytes_needed,
    device_patch_loader,
    load_cached_volumes,
)

PATCH = (16, 16, 8)
POSITIVE_FRACTION = 0.5
N_PATCHES = 2000
CENTRE_TOLERANCE = 0.05
VOXEL_TOLERANCE = 0.03
AUGMENT = {"flip_axes": [0], "flip_p": 0.5, "rot90_p": 0.5}


def make_volumes() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Four (2, X, Y, Z) volumes of different shapes; label values 1 and 2; one lesion in a corner
    (only reachable as a centre with half-patch padding); one volume without tumour.
    Channel 0 equals the label map, so alignment after augmentation can be checked voxel by voxel."""
    rng = np.random.default_rng(0)
    shapes = [(40, 40, 24), (36, 44, 20), (40, 32, 24), (32, 32, 16)]
    volumes = []
    for index, shape in enumerate(shapes):
        label = np.zeros(shape, np.uint8)
        if index == 0:
            label[:4, :4, :3] = 2  # corner lesion
            label[20:26, 18:24, 10:14] = 1
        elif index in (1, 2):
            c = rng.integers(6, np.array(shape) - 6)
            label[c[0] - 3:c[0] + 3, c[1] - 4:c[1] + 4, c[2] - 2:c[2] + 2] = 1
            label[c[0] - 1:c[0] + 1, c[1] - 1:c[1] + 1, c[2] - 1:c[2] + 1] = 2
        image = rng.random((2, *shape), dtype=np.float32)
        image[0] = label
        volumes.append((torch.from_numpy(image).half(), torch.from_numpy(label)))
    return volumes


def queue_patches(volumes, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The DataModule's path: half-patch Pad, LabelSampler on the tumour-anywhere map, a Queue."""
    torch.manual_seed(0)
    np.random.seed(0)
    subjects = [
        tio.Subject(
            image=tio.ScalarImage(tensor=image.float()),
            label=tio.LabelMap(tensor=label[None]),
            foreground=tio.LabelMap(tensor=(label > 0)[None].to(torch.uint8)),
        )
        for image, label in volumes
    ]
    pad = tio.Pad(tuple(p // 2 for p in PATCH for _ in (0, 1)))
    dataset = tio.SubjectsDataset(subjects * 50, transform=pad)
    sampler = tio.LabelSampler(PATCH, label_name="foreground",
                               label_probabilities={0: 1 - POSITIVE_FRACTION, 1: POSITIVE_FRACTION})
    queue = tio.Queue(dataset, max_length=64, samples_per_volume=10, sampler=sampler, num_workers=0)
    images, labels = [], []
    for index in range(n):
        patch = queue[index]
        images.append(patch["image"][tio.DATA])
        labels.append(patch["label"][tio.DATA][0])
    return torch.stack(images), torch.stack(labels)


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
    return queue_patches(volumes, N_PATCHES), sampler_patches(volumes, N_PATCHES)


def centre_label(labels: torch.Tensor) -> torch.Tensor:
    cx, cy, cz = (p // 2 for p in PATCH)
    return labels[:, cx, cy, cz]


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
    """Every patch equals the window of the volume zero-padded by half a patch (the queue's tio.Pad)
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
    queue_centre = (centre_label(queue_labels) > 0).float().mean().item()
    sampler_centre = (centre_label(sampler_labels) > 0).float().mean().item()
    # three of four volumes have tumour: about 0.5 * 3 / 4 of centres lie on it
    assert abs(sampler_centre - 0.375) < CENTRE_TOLERANCE
    assert abs(sampler_centre - queue_centre) < CENTRE_TOLERANCE, (sampler_centre, queue_centre)
    queue_voxels = (queue_labels > 0).float().mean().item()
    sampler_voxels = (sampler_labels > 0).float().mean().item()
    assert abs(sampler_voxels - queue_voxels) < VOXEL_TOLERANCE, (sampler_voxels, queue_voxels)


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
