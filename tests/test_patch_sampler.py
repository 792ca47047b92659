"""LabelBalancedSampler: the DataModule's queue sampler against TorchIO's LabelSampler it replaces.

Volumes, streams and tolerances: ``tests/_patch_volumes.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchio as tio

from _patch_volumes import (
    N_PATCHES,
    PATCH,
    assert_same_balance,
    labelsampler_patches,
    make_volumes,
    suite_queue_patches,
)
from sgnet_lightning.data.patch_sampler import LabelBalancedSampler


@pytest.fixture(scope="module")
def volumes():
    return make_volumes()


def subject_of(image: torch.Tensor, label: torch.Tensor, affine=None) -> tio.Subject:
    affine = np.eye(4) if affine is None else affine
    return tio.Subject(image=tio.ScalarImage(tensor=image, affine=affine),
                       label=tio.LabelMap(tensor=label[None], affine=affine), subject_id="case 1")


def sampler(positive_fraction=0.5, seed=0, patch=PATCH) -> LabelBalancedSampler:
    return LabelBalancedSampler(patch, positive_fraction=positive_fraction,
                                generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("tiny", [False, True], ids=["volume", "smaller-than-patch"])
def test_patches_are_exact_crops_of_the_half_patch_padded_volume(volumes, tiny):
    """Each patch equals the window of the volume zero-padded by half a patch, at its LOCATION
    (shifted by the padding), for image and label, borders and volumes smaller than the patch included."""
    image, label = volumes[0]
    if tiny:
        image, label = image[:, 2:10, 3:9, :5], label[2:10, 3:9, :5]
    affine = np.diag([0.9, 1.1, 2.0, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 3.0]
    half = [p // 2 for p in PATCH]
    pad = (half[2],) * 2 + (half[1],) * 2 + (half[0],) * 2
    padded_image = torch.nn.functional.pad(image, pad)
    padded_label = torch.nn.functional.pad(label, pad)
    crossing = 0
    for patch in sampler(seed=3)(subject_of(image, label, affine), 200):
        start, stop = patch[tio.LOCATION][:3], patch[tio.LOCATION][3:]
        assert (stop - start).tolist() == list(PATCH)
        window = tuple(slice(int(a) + h, int(a) + h + p) for a, h, p in zip(start, half, PATCH))
        assert torch.equal(patch["image"].data, padded_image[(slice(None), *window)])
        assert torch.equal(patch["label"].data[0], padded_label[window])
        assert patch["subject_id"] == "case 1"
        # the patch's affine puts its first voxel where that voxel lies in the volume's space
        assert np.allclose(patch["image"].affine[:3, 3], affine[:3, :3] @ start.numpy() + affine[:3, 3])
        crossing += bool((start < 0).any() or (stop > torch.tensor(image.shape[1:])).any())
    assert crossing > 0, "no patch crossed the border: the zero fill went untested"


def test_patches_own_their_memory(volumes):
    """A patch must not be a view of its volume, or the queue would keep every volume alive."""
    image, label = volumes[0]
    for patch in sampler(seed=1)(subject_of(image, label), 20):
        assert patch["image"].data.untyped_storage().data_ptr() != image.untyped_storage().data_ptr()
        assert patch["image"].data.untyped_storage().nbytes() == patch["image"].data.nbytes


def test_centre_and_voxel_fractions_match_torchio_label_sampler(volumes):
    assert_same_balance(suite_queue_patches(volumes, N_PATCHES)[1], labelsampler_patches(volumes, N_PATCHES)[1])


def test_border_lesion_and_background_centres(volumes):
    image, label = volumes[0]
    centre = tuple(p // 2 for p in PATCH)
    patches = list(sampler(positive_fraction=1.0, seed=0)(subject_of(image, label), 3000))
    starts = torch.stack([p[tio.LOCATION][:3] for p in patches])
    assert all(p["label"].data[0][centre] > 0 for p in patches)
    assert ((starts + torch.tensor(centre)) < torch.tensor([4, 4, 3])).all(dim=1).any(), "corner lesion never a centre"
    background = list(sampler(positive_fraction=0.0, seed=0)(subject_of(image, label), 300))
    assert all(p["label"].data[0][centre] == 0 for p in background)


def test_volume_without_tumour_gives_background_centres(volumes):
    image, label = volumes[3]
    assert not label.any()
    patches = list(sampler(positive_fraction=1.0)(subject_of(image, label), 50))
    assert len(patches) == 50


def test_same_generator_seed_same_patches(volumes):
    image, label = volumes[1]

    def locations(seed):
        return [p[tio.LOCATION].tolist() for p in sampler(seed=seed)(subject_of(image, label), 30)]

    assert locations(7) == locations(7)
    assert locations(7) != locations(8)


def test_rejects_a_bad_positive_fraction():
    with pytest.raises(ValueError, match="positive_fraction"):
        LabelBalancedSampler(PATCH, positive_fraction=-0.1)
