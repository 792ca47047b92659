"""Tiny labelled volumes and the patch streams that sampler tests compare (CPU).

Tolerances: each stream has N_PATCHES = 2000 patches. The binomial standard error of a centre
fraction near 0.4 is about 0.011 per stream (0.016 for a difference), so CENTRE_TOLERANCE = 0.05 is
about 3 standard errors; the voxel fraction is averaged over the same patches and varies less.
Every random stream is seeded, so the tests are deterministic.
"""

from __future__ import annotations

import numpy as np
import torch
import torchio as tio

from sgnet_lightning.data.patch_sampler import LabelBalancedSampler

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


def labelsampler_patches(volumes, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """TorchIO's own label balancing, the reference: half-patch Pad, LabelSampler on the
    tumour-anywhere map, a Queue."""
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


def suite_queue_patches(volumes, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The DataModule's path: a Queue with :class:`LabelBalancedSampler` on unpadded volumes."""
    torch.manual_seed(seed)
    subjects = [tio.Subject(image=tio.ScalarImage(tensor=image), label=tio.LabelMap(tensor=label[None]))
                for image, label in volumes]
    sampler = LabelBalancedSampler(PATCH, positive_fraction=POSITIVE_FRACTION,
                                   generator=torch.Generator().manual_seed(seed))
    queue = tio.Queue(tio.SubjectsDataset(subjects * 50), max_length=64, samples_per_volume=10,
                      sampler=sampler, num_workers=0)
    patches = [queue[index] for index in range(n)]
    return (torch.stack([p["image"][tio.DATA].float() for p in patches]),
            torch.stack([p["label"][tio.DATA][0] for p in patches]))


def centre_label(labels: torch.Tensor) -> torch.Tensor:
    cx, cy, cz = (p // 2 for p in PATCH)
    return labels[:, cx, cy, cz]


def assert_same_balance(labels: torch.Tensor, reference: torch.Tensor) -> None:
    """Patch label stacks (N, x, y, z) from two streams over :func:`make_volumes`: the share of
    centres on tumour is the expected one and the reference's, and so is the share of tumour voxels."""
    centre, reference_centre = ((centre_label(x) > 0).float().mean().item() for x in (labels, reference))
    # three of four volumes have tumour: about 0.5 * 3 / 4 of centres lie on it
    assert abs(centre - 0.375) < CENTRE_TOLERANCE
    assert abs(centre - reference_centre) < CENTRE_TOLERANCE, (centre, reference_centre)
    voxels, reference_voxels = ((x > 0).float().mean().item() for x in (labels, reference))
    assert abs(voxels - reference_voxels) < VOXEL_TOLERANCE, (voxels, reference_voxels)
