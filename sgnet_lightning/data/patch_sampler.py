"""A label-balanced TorchIO patch sampler that costs milliseconds per loaded volume, not a second.

Why not ``tio.LabelSampler``: a TorchIO ``Queue`` runs its sampler in the main process, and
``LabelSampler`` builds a probability map and a float64 cumulative distribution over the whole
(padded) volume for every subject it loads: 0.5-0.8 s per full-size BML subject on this project's
2-core machine, which set the speed of the whole queue (``docs/performance.md``). It also needs the
volume padded by half a patch in the workers so that border lesions can be centres, which makes
every loaded volume 1.8x larger.

This sampler draws the same distribution directly:

- with probability ``positive_fraction`` the centre is a voxel with label > 0, uniform among them
  (their flat indices are found once per loaded subject, ~3 ms); otherwise a background voxel
  (label 0), uniform, by rejection from uniform voxels (tumour is a few percent of a volume); a
  volume without tumour gives background centres only. This is ``tio.LabelSampler`` with
  ``label_probabilities={0: 1 - p, 1: p}`` on the tumour-anywhere map;
- every voxel of the volume can be a centre, and what a patch covers outside the volume is zero,
  exactly as after a half-patch ``tio.Pad``; the centre sits at index ``patch_size // 2``;
- patches are ``tio.Subject`` objects with the subject's images cropped (copies, so the queue never
  keeps a whole volume alive through a view), the affine's origin moved as ``tio.Crop`` moves it,
  ``tio.LOCATION`` (index_ini + index_fin, which may reach outside the volume) and the subject's
  other attributes (``subject_id``).

Randomness comes from the sampler's own ``torch.Generator``, so patch locations do not depend on
how many numbers augmentation or the model drew from the global generator.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torchio as tio

NEGATIVE_ROUNDS = 16  # redraws of a background centre that fell on tumour before taking any voxel


class LabelBalancedSampler(tio.data.PatchSampler):
    """Label-balanced patches: ``P(centre on label > 0) = positive_fraction``.

    Args:
        patch_size: (x, y, z) voxels of a patch; may exceed the volume (the rest is zero).
        label_name: the subject's label map to balance on (integer, any number of classes; every
            value > 0 counts as tumour).
        positive_fraction: probability that a patch is centred on tumour.
        generator: source of randomness (a seeded ``torch.Generator`` makes the patch sequence of a
            subject reproducible); None: a fresh generator seeded from the global one.
    """

    def __init__(self, patch_size: Sequence[int], label_name: str = "label", positive_fraction: float = 0.5,
                 generator: torch.Generator | None = None):
        super().__init__(tuple(int(p) for p in patch_size))
        if not 0 <= positive_fraction <= 1:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
        self.label_name, self.positive_fraction = label_name, float(positive_fraction)
        if generator is None:
            generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
        self.generator = generator

    def __call__(self, subject: tio.Subject, num_patches: int | None = None) -> Iterator[tio.Subject]:
        # TorchIO's base class refuses a patch larger than the volume; here the patch is zero-filled
        subject.check_consistent_space()
        return self._generate_patches(subject, num_patches)

    def _generate_patches(self, subject: tio.Subject, num_patches: int | None = None) -> Iterator[tio.Subject]:
        label = subject[self.label_name].data[0]
        shape = label.shape
        flat = label.reshape(-1)
        positives = None
        produced = 0
        while num_patches is None or produced < num_patches:
            if float(torch.rand((), generator=self.generator)) < self.positive_fraction:
                if positives is None:
                    positives = torch.nonzero(flat).flatten()
                index = self._positive(positives, flat)
            else:
                index = self._negative(flat)
            centre = np.unravel_index(index, shape)
            yield self._cut(subject, np.asarray(centre, dtype=np.int64))
            produced += 1

    def _positive(self, positives: torch.Tensor, flat: torch.Tensor) -> int:
        if len(positives) == 0:  # no tumour in this volume: background only, as LabelSampler does
            return self._negative(flat)
        return int(positives[torch.randint(len(positives), (), generator=self.generator)])

    def _negative(self, flat: torch.Tensor) -> int:
        for _ in range(NEGATIVE_ROUNDS):
            index = int(torch.randint(len(flat), (), generator=self.generator))
            if flat[index] == 0:
                return index
        return index  # (almost) all tumour: any voxel

    def _cut(self, subject: tio.Subject, centre: np.ndarray) -> tio.Subject:
        patch = self.patch_size.astype(np.int64)
        shape = np.asarray(subject.spatial_shape, dtype=np.int64)
        start = centre - patch // 2
        stop = start + patch
        low, high = np.maximum(start, 0), np.minimum(stop, shape)
        source = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
        target = tuple(slice(int(a), int(b)) for a, b in zip(low - start, high - start))
        inside = bool(np.all(start >= 0) and np.all(stop <= shape))
        images = {}
        for name, image in subject.get_images_dict(intensity_only=False).items():
            data = image.data
            if inside:
                cropped = data[(slice(None), *source)].clone()
            else:
                cropped = data.new_zeros((data.shape[0], *patch.tolist()))
                cropped[(slice(None), *target)] = data[(slice(None), *source)]
            affine = image.affine.copy()
            affine[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]  # origin of voxel `start`, as tio.Crop
            images[name] = type(image)(tensor=cropped, affine=affine)
        others = {key: value for key, value in subject.items() if not isinstance(value, tio.Image)}
        return tio.Subject(**others, **images, **{tio.LOCATION: torch.as_tensor([*start.tolist(), *stop.tolist()])})
