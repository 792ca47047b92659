"""A tiny in-memory distractor phantom for gate experiments (design probe and tests/test_gating.py).

Why not ``sgnet data synth``: the gate's design questions (does a gate close? does its threshold
change a trained network?) need hundreds of short trainings on the CPU; this phantom is built in
memory in about a millisecond per volume, with no NIfTI files, cache or queue in between.

Each volume is (2, N, N, N) voxels (N = 32 by default), channel 0 a T1ce-like and channel 1 a
FLAIR-like image on smooth tissue with noise:

- **tumour** (labelled): 1 to 3 balls of radius 3-5 voxels, bright in *both* channels;
- **distractors** (unlabelled, never touching a tumour): a tube (vessel) and a plane slab (dura),
  bright in channel 0 only, and a ball bright in channel 1 only (a non-tumour FLAIR lesion).

A voxel is tumour exactly where both channels are bright, so a network must combine the channels;
a decoder fed with unfiltered skip features sees the distractors as tumour-like evidence. That is
the over-segmentation a hard gate is meant to suppress.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

BRIGHT, TISSUE, NOISE = 0.9, 0.3, 0.08  # intensities in [0, 1], as in the preprocessed cache


def distractor_phantom(seed: int, size: int = 32) -> dict[str, torch.Tensor]:
    """One phantom volume, fixed by ``seed``.

    Returns:
        ``{"image": (2, N, N, N) float32, "target": (1, N, N, N) float32 {0, 1} (tumour),
        "subregions": (2, N, N, N) float32 {0, 1} (inner half of each ball, the rest),
        "distractor": (1, N, N, N) bool}``.
    """
    g = torch.Generator().manual_seed(seed)
    axis = torch.arange(size, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"))  # (3, N, N, N)

    def uniform(low: float, high: float, n: int = 1) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=g)

    def ball(centre: torch.Tensor, radius: float) -> torch.Tensor:
        return (grid - centre.view(3, 1, 1, 1)).pow(2).sum(0).sqrt() <= radius

    tumour, core = torch.zeros(size, size, size, dtype=torch.bool), torch.zeros(size, size, size, dtype=torch.bool)
    for _ in range(int(torch.randint(1, 4, (), generator=g))):
        radius = float(uniform(3.0, 5.0))
        centre = uniform(radius + 2, size - radius - 3, 3)
        tumour |= ball(centre, radius)
        core |= ball(centre, radius / 2)

    # distractors, kept 2 voxels away from any tumour
    keep_out = torch.nn.functional.max_pool3d(tumour[None, None].float(), 5, stride=1, padding=2)[0, 0] > 0
    direction = torch.nn.functional.normalize(torch.randn(3, generator=g), dim=0).view(3, 1, 1, 1)
    through = uniform(8, size - 8, 3).view(3, 1, 1, 1)
    offset = grid - through
    along = (offset * direction).sum(0, keepdim=True)
    tube = (offset - along * direction).pow(2).sum(0).sqrt() <= float(uniform(1.0, 2.0))
    normal = torch.nn.functional.normalize(torch.randn(3, generator=g), dim=0).view(3, 1, 1, 1)
    sheet = ((grid - uniform(6, size - 6, 3).view(3, 1, 1, 1)) * normal).sum(0).abs() <= 0.8
    flair_lesion = ball(uniform(6, size - 6, 3), float(uniform(2.5, 4.0)))
    t1ce_only = (tube | sheet) & ~keep_out
    flair_only = flair_lesion & ~keep_out & ~t1ce_only

    image = TISSUE + NOISE * torch.randn(2, size, size, size, generator=g)
    image[0][tumour | t1ce_only] += BRIGHT - TISSUE
    image[1][tumour | flair_only] += BRIGHT - TISSUE
    target = tumour.float()[None]
    return {
        "image": image.clamp(0, 1),
        "target": target,
        "subregions": torch.stack([core.float(), (tumour & ~core).float()]),
        "distractor": (t1ce_only | flair_only)[None],
    }


class PhantomVolumes(Dataset):
    """``length`` phantoms with seeds ``first_seed, first_seed + 1, ...``; training batches for
    :class:`~sgnet_lightning.module.SegmentationModule` (keys ``image``, ``target``, ``subregions``)."""

    def __init__(self, length: int, first_seed: int = 0, size: int = 32):
        self.length, self.first_seed, self.size = length, first_seed, size

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        volume = distractor_phantom(self.first_seed + index, self.size)
        return {key: volume[key] for key in ("image", "target", "subregions")}
