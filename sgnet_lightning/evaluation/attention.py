"""Attention-map overlap: does a network attend where the reference sub-region is?

Networks with attention (SG-Net's guidance maps) save one map per reference sub-region
(``predictions/<subject>.npz``, key ``attention``: (S, X, Y, Z) in [0, 1], upsampled to the cached
grid). The overlap of a map with its sub-region is the Dice between the map thresholded at
:data:`ATTENTION_THRESHOLD` and the sub-region's mask, over the whole volume. A map and a
sub-region that are both empty have nothing to overlap: NaN, which the report counts instead of
averaging (unlike the segmentation metrics, no empty-mask convention scores it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ATTENTION_THRESHOLD = 0.5


def overlap_dice(attention: np.ndarray, mask: np.ndarray, threshold: float = ATTENTION_THRESHOLD) -> float:
    """Dice between ``attention > threshold`` and a boolean sub-region mask (both (X, Y, Z));
    NaN when both are empty."""
    hot = attention > threshold
    total = int(hot.sum()) + int(mask.sum())
    return float("nan") if total == 0 else 2.0 * float(np.logical_and(hot, mask).sum()) / total


def attention_overlap(
    attention: np.ndarray, reference: np.ndarray, subregions: Sequence[str], threshold: float = ATTENTION_THRESHOLD
) -> dict[str, float]:
    """Overlap Dice of every sub-region's attention map with its reference mask.

    Args:
        attention: (S, X, Y, Z) maps, one per sub-region, in [0, 1].
        reference: (S, X, Y, Z) boolean masks of the same sub-regions.
        subregions: the S sub-region names, in the order of the first axis.

    Returns:
        ``{sub-region: Dice}`` (NaN where map and sub-region are both empty).

    Raises:
        ValueError: the shapes differ, or do not hold one map per sub-region.
    """
    if attention.shape != reference.shape or attention.shape[0] != len(subregions):
        raise ValueError(f"attention has shape {attention.shape}; the reference sub-regions "
                         f"({', '.join(subregions)}) {reference.shape}")  # fmt: skip
    return {name: overlap_dice(attention[s], reference[s], threshold) for s, name in enumerate(subregions)}
