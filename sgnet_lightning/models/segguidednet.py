r"""SegGuidedNet: a 3D residual encoder-decoder with a supervised SegAttentionGate after every decoder stage.

Architecture
------------
- Encoder: ``depth`` levels of MONAI's :class:`~monai.networks.blocks.UnetResBlock` (two 3x3x3
  convolutions with InstanceNorm3d and LeakyReLU(0.01), and a residual connection, 1x1x1-projected
  where the width or the stride changes). Level ``i`` has ``base_channels * 2**i`` channels; every
  level after the first halves the resolution with a stride-2 first convolution.
- Decoder: per level, a ``ConvTranspose3d(kernel 2, stride 2)`` to the skip's width, concatenation
  with the skip, a residual block, then a :class:`SegAttentionGate`.
- Head: 1x1x1 convolution to ``out_channels`` logits (one sigmoid region each).
- He (Kaiming) initialisation for LeakyReLU(0.01) on every convolution, zero biases.

SegAttentionGate
----------------
For decoder features :math:`f` (B, C, x, y, z) and :math:`S` sub-regions (``n_subregions``; BraTS:
NCR, ED, ET; Brain-Mets-Lung: core, edema):

.. math::

    a = \sigma(W f + b) \in [0, 1]^{S},\qquad f' = f \odot \big(1 + \max_s a_s\big)

with :math:`W` a 1x1x1 convolution (:math:`C \to S`). The auxiliary loss supervises each
:math:`a_s` (through its logit :math:`W f + b`, so the loss is safe under mixed precision) with its
sub-region's mask (resized to the stage's size), so the maps become sub-region
detectors that can be read at inference without post-hoc explanation. The modulation is residual:
:math:`|f| \le |f'| \le 2|f|` element-wise, so a gate can only
emphasise features where some sub-region is likely, never erase them; at initialisation, and with the
auxiliary loss switched off, the network stays a working residual U-Net. The maximum over
sub-regions emphasises any tumour tissue whatever its class, which the overlapping output regions
(WT contains TC contains ET) all need. The gates cost :math:`S(C+1)` parameters per stage: 681 for the
default network with 3 sub-regions (about 0.01 %, well within the 0.2 % claimed).

The maps are returned in ``NetworkOutput.attention_maps`` (their logits in ``attention_logits``),
coarsest stage first: for ``depth`` 4 and a
128^3 input, (B, S, 32, 32, 32), (B, S, 64, 64, 64) and (B, S, 128, 128, 128).
"""

from __future__ import annotations

import torch
from monai.networks.blocks import UnetResBlock
from torch import nn

from sgnet_lightning.models.output import NetworkOutput
from sgnet_lightning.models.registry import check_spatial_size, register_model

NORM = ("instance", {"affine": True})
ACT = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})


class SegAttentionGate(nn.Module):
    """Per-sub-region attention maps from decoder features, and the features they modulate.

    Args:
        channels: channels :math:`C` of the decoder stage.
        n_subregions: :math:`S`, one attention map each.

    Shapes: (B, C, x, y, z) -> (modulated features (B, C, x, y, z), maps (B, S, x, y, z) in [0, 1],
    their logits (B, S, x, y, z)). Formula: ``f * (1 + max_s a_s)``, see the module docstring.
    """

    def __init__(self, channels: int, n_subregions: int):
        super().__init__()
        self.proj = nn.Conv3d(channels, n_subregions, kernel_size=1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.proj(features)
        maps = torch.sigmoid(logits)
        return features * (1 + maps.amax(dim=1, keepdim=True)), maps, logits


class DecoderStage(nn.Module):
    """Upsample x2, concatenate the skip, residual block, SegAttentionGate.

    Shapes: deep (B, 2C, x, y, z) and skip (B, C, 2x, 2y, 2z) -> (B, C, 2x, 2y, 2z), maps and their
    logits (B, S, 2x, 2y, 2z).
    """

    def __init__(self, deep_channels: int, channels: int, n_subregions: int):
        super().__init__()
        self.upsample = nn.ConvTranspose3d(deep_channels, channels, kernel_size=2, stride=2, bias=False)
        self.block = UnetResBlock(3, 2 * channels, channels, kernel_size=3, stride=1, norm_name=NORM, act_name=ACT)
        self.gate = SegAttentionGate(channels, n_subregions)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.block(torch.cat([self.upsample(deep), skip], dim=1))
        return self.gate(x)


class SegGuidedNet(nn.Module):
    """SegGuidedNet: residual 3D U-Net whose decoder stages emit supervised sub-region attention maps.

    Args:
        in_channels: input channels (4 for BraTS T1, T1ce, T2, FLAIR; 2 for Brain-Mets-Lung).
        out_channels: output regions (3 for BraTS ET, TC, WT; 1 or 2 for Brain-Mets-Lung).
        n_subregions: attention maps per stage (3: NCR, ED, ET; 2 for Brain-Mets-Lung: core, edema).
        base_channels: width of the first level; level ``i`` has ``base_channels * 2**i``.
        depth: resolution levels (``depth - 1`` downsamplings and ``depth - 1`` gated decoder stages).
            The defaults, 32 and 4, take 128^3 crops to a 16^3 x 256-channel bottleneck.

    Constraint: every spatial size divisible by ``2 ** (depth - 1)`` (8 by default).

    Parameters (defaults): 5,691,788 with 4 in / 3 out / 3 sub-regions, of which the gates 681
    (0.012 %); 5,689,703 with 2 in / 1 out / 2 sub-regions, of which the gates 454.

    Example::

        net = SegGuidedNet(4, 3)
        out = net(torch.zeros(1, 4, 128, 128, 128))
        out.logits.shape                          # (1, 3, 128, 128, 128)
        [a.shape for a in out.attention_maps]     # (1,3,32,32,32), (1,3,64,64,64), (1,3,128,128,128)
    """

    def __init__(self, in_channels: int, out_channels: int, n_subregions: int = 3, base_channels: int = 32,
                 depth: int = 4):
        super().__init__()
        for name, value, minimum in (("n_subregions", n_subregions, 1), ("base_channels", base_channels, 1),
                                     ("depth", depth, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        widths = [base_channels * 2**level for level in range(depth)]
        self.spatial_divisor = 2 ** (depth - 1)
        self.encoders = nn.ModuleList(
            UnetResBlock(3, c_in, c_out, kernel_size=3, stride=1 if level == 0 else 2, norm_name=NORM, act_name=ACT)
            for level, (c_in, c_out) in enumerate(zip([in_channels, *widths[:-1]], widths))
        )
        # coarsest stage first, the order they run in
        self.decoders = nn.ModuleList(
            DecoderStage(widths[level + 1], widths[level], n_subregions) for level in reversed(range(depth - 1))
        )
        self.head = nn.Conv3d(widths[0], out_channels, kernel_size=1)
        self.apply(_he_init)

    def forward(self, x: torch.Tensor) -> NetworkOutput:
        """(B, in_channels, X, Y, Z) -> logits (B, out_channels, X, Y, Z) and attention maps."""
        check_spatial_size(x, self.spatial_divisor, "SegGuidedNet")
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        maps, map_logits = [], []
        for stage, skip in zip(self.decoders, reversed(skips[:-1])):
            x, stage_maps, stage_logits = stage(x, skip)
            maps.append(stage_maps)
            map_logits.append(stage_logits)
        return NetworkOutput(logits=self.head(x), attention_maps=tuple(maps), attention_logits=tuple(map_logits))


def _he_init(module: nn.Module) -> None:
    """He (Kaiming) normal initialisation for LeakyReLU(0.01) on convolutions; zero biases."""
    if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=0.01, nonlinearity="leaky_relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)


@register_model
def segguidednet(in_channels: int, out_channels: int, *, n_subregions: int = 3, base_channels: int = 32,
                 depth: int = 4) -> SegGuidedNet:
    """SegGuidedNet with a SegAttentionGate after every decoder stage (defaults for 128^3 BraTS crops)."""
    return SegGuidedNet(in_channels, out_channels, n_subregions, base_channels, depth)
