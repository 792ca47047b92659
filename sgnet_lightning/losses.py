"""Losses: the seed's hybrid Dice + BCE, SegGuidedNet's attention supervision and SG-Net's gate supervision.

Every loss here takes logits and computes in float32 with ops that CUDA autocast accepts
(``binary_cross_entropy_with_logits``, never ``binary_cross_entropy``, which autocast refuses as
"unsafe" in fp16 and bf16 alike). ``tests/test_losses.py`` records every op the losses call, forward
and backward, and runs each through the CUDA autocast kernel, so a refused op fails a CPU test.
"""

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
        logits, target = logits.float(), target.float()  # sigmoid and sums in float32 under autocast
        bce = F.binary_cross_entropy_with_logits(logits, target)
        return self.lambda_dice * self.dice(logits, target) + self.lambda_bce * bce


class AttentionSupervisionLoss(nn.Module):
    """Auxiliary loss on SegGuidedNet's attention maps: each map against its sub-region mask.

    Masks (B, S, X, Y, Z) are resized to each map's size by area interpolation (a coarse map cell is
    "target" in proportion to how much of it the sub-region fills), then each (subject, sub-region)
    map is scored with soft Dice on its sigmoid plus BCE on its logits, in float32. Maps whose
    sub-region is unknown for that subject (``present`` False: a Brain-Mets-Lung case without
    ``core_seg`` has no core and no edema mask, only a whole tumour) are left out: they add nothing
    to the loss and get exactly zero gradient. The loss is the mean over the known maps, then over
    decoder stages; 0 when no map is known.

    Args of ``forward``:
        attention_logits: one (B, S, x, y, z) tensor per decoder stage (``NetworkOutput.attention_logits``).
        subregions: (B, S, X, Y, Z) {0, 1} sub-region masks at the input resolution.
        present: (B, S) bool, whether each subject's sub-region is known; None = all known.
    """

    def __init__(self):
        super().__init__()
        # per (subject, sub-region) Dice, so unknown ones can be left out of the mean
        self.dice = DiceLoss(sigmoid=True, squared_pred=True, reduction="none")

    def forward(self, attention_logits: tuple[torch.Tensor, ...], subregions: torch.Tensor,
                present: torch.Tensor | None = None) -> torch.Tensor:
        if not attention_logits:
            raise ValueError("aux_loss_weight > 0 but the network returns no attention maps")
        weight = (torch.ones(subregions.shape[:2], device=subregions.device) if present is None
                  else present.to(device=subregions.device, dtype=torch.float32))  # (B, S)
        n_known = weight.sum().clamp_min(1.0)
        losses = []
        for logits in attention_logits:
            if logits.shape[1] != subregions.shape[1]:
                raise ValueError(
                    f"network returns {logits.shape[1]} attention maps per stage, the task has "
                    f"{subregions.shape[1]} sub-regions: set network_options.n_subregions"
                )
            logits, target = logits.float(), subregions.float()
            if target.shape[2:] != logits.shape[2:]:
                target = F.interpolate(target, size=logits.shape[2:], mode="area")
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(2, 3, 4))
            dice = self.dice(logits, target).reshape(weight.shape)  # (B, S)
            # multiplying by a zero weight gives an exactly zero gradient (both terms are finite)
            losses.append(((dice + bce) * weight).sum() / n_known)
        return torch.stack(losses).mean()


class GateSupervisionLoss(nn.Module):
    """SG-Net's gate supervision: each gate's logit against the tumour's vicinity at the gate's resolution.

    The target of every gate is the union of the task's output regions (the tumour), dilated by
    ``dilation`` voxels (a cube of side ``2 * dilation + 1``, i.e. every voxel within a chessboard
    distance of ``dilation`` voxels; at the 1 mm cache, millimetres), then brought to the gate's
    grid by max pooling: a coarse cell is "tumour vicinity" if any voxel it covers is. A gate thus
    learns to stay open wherever there is tumour (with a margin, so the decoder can still draw its
    boundary) and to close elsewhere, bright non-tumour structures included.

    Tumour is rare (under 2 % of a Brain-Mets-Lung brain), so plain BCE would mostly teach "close
    everywhere". The BCE is class-balanced per gate level over the batch: the mean over vicinity
    cells and the mean over other cells weigh one half each (a batch holding only one class uses
    that class's mean). The loss is the mean over levels. BCE on logits in float32.

    The target depends on the task's regions only, whose label files every training subject has
    (the DataModule refuses a training subject that lacks one), so it needs no per-subject mask.

    Args:
        dilation: margin in voxels around the tumour where gates should be open (>= 0).

    Args of ``forward``:
        gate_logits: one (B, 1, x, y, z) tensor per gate (``NetworkOutput.gate_logits``).
        target: (B, R, X, Y, Z) {0, 1} region masks at the input resolution (``batch["target"]``).
    """

    def __init__(self, dilation: int = 3):
        super().__init__()
        if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 0:
            raise ValueError(f"gate_target_dilation must be an integer >= 0 (voxels), got {dilation!r}")
        self.dilation = dilation

    def vicinity(self, target: torch.Tensor, size: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """(B, R, X, Y, Z) region masks -> (B, 1, *size) float32 {0, 1}: the dilated tumour on a
        ``size`` grid (each axis of ``size`` dividing the input's)."""
        tumour = target.float().amax(dim=1, keepdim=True)
        if self.dilation:
            # max pooling with stride 1 is a binary dilation by a cube, on any device, under autocast
            tumour = F.max_pool3d(tumour, kernel_size=2 * self.dilation + 1, stride=1, padding=self.dilation)
        if tuple(tumour.shape[2:]) != tuple(size):
            tumour = F.adaptive_max_pool3d(tumour, tuple(size))
        return tumour

    def forward(self, gate_logits: tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
        if not gate_logits:
            raise ValueError("gate_loss_weight > 0 but the network returns no gates (gate_mode: none?)")
        losses = []
        for logits in gate_logits:
            logits = logits.float()
            vicinity = self.vicinity(target, logits.shape[2:])
            bce = F.binary_cross_entropy_with_logits(logits, vicinity, reduction="none")
            n_in, n_out = vicinity.sum(), (1 - vicinity).sum()
            mean_in = (bce * vicinity).sum() / n_in.clamp_min(1.0)
            mean_out = (bce * (1 - vicinity)).sum() / n_out.clamp_min(1.0)
            # tensors, not Python branches: no wait on the device to learn which classes occur
            n_classes = (n_in > 0).float() + (n_out > 0).float()
            losses.append((mean_in + mean_out) / n_classes)
        return torch.stack(losses).mean()
