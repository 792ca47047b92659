"""Losses: the seed's hybrid Dice + BCE on sigmoid outputs, and the attention-map auxiliary loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn


class DiceBCELoss(nn.Module):
    """Soft Dice (squared denominator, as the seed's ``DiceCELoss(sigmoid=True, squared_pred=True)``)
    plus binary cross-entropy, both on independent sigmoid channels.

    MONAI's ``DiceCELoss`` switches to softmax cross-entropy as soon as there is more than one
    channel, which is wrong for overlapping BraTS regions (ET inside TC inside WT); composing
    MONAI's ``DiceLoss`` with ``BCEWithLogitsLoss`` keeps one binary problem per channel and is
    identical to ``DiceCELoss`` for the single binary channel of the seed.

    Shapes: logits and target (B, R, X, Y, Z); target in {0, 1}.
    """

    def __init__(self, lambda_dice: float = 1.0, lambda_bce: float = 1.0):
        super().__init__()
        self.dice = DiceLoss(sigmoid=True, squared_pred=True)
        self.lambda_dice, self.lambda_bce = lambda_dice, lambda_bce

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, target)
        return self.lambda_dice * self.dice(logits, target) + self.lambda_bce * bce


class AttentionSupervisionLoss(nn.Module):
    """Auxiliary loss on SegGuidedNet's attention maps: each map against its sub-region mask.

    Masks (B, S, X, Y, Z) are resized to each map's size by average pooling-style area interpolation
    (a coarse map cell is "target" in proportion to how much of it the sub-region fills), then scored
    with soft Dice + BCE on probabilities. The loss is the mean over decoder stages.
    """

    def __init__(self):
        super().__init__()
        self.dice = DiceLoss(sigmoid=False, squared_pred=True)

    def forward(self, attention_maps: tuple[torch.Tensor, ...], subregions: torch.Tensor) -> torch.Tensor:
        if not attention_maps:
            raise ValueError("aux_loss_weight > 0 but the network returns no attention maps")
        losses = []
        for amap in attention_maps:
            if amap.shape[1] != subregions.shape[1]:
                raise ValueError(
                    f"network returns {amap.shape[1]} attention maps per stage, the task has "
                    f"{subregions.shape[1]} sub-regions: set network_options.n_subregions"
                )
            target = subregions.to(amap.dtype)
            if target.shape[2:] != amap.shape[2:]:
                target = F.interpolate(target, size=amap.shape[2:], mode="area")
            amap = amap.float().clamp(1e-6, 1 - 1e-6)
            target = target.float()
            losses.append(self.dice(amap, target) + F.binary_cross_entropy(amap, target))
        return torch.stack(losses).mean()
