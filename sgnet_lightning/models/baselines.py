"""MONAI baselines: the SG-Net paper's U-Net, Attention U-Net and ResU-Net, and MONAI's BraTS SegResNet.

Each class subclasses the MONAI network and only wraps its ``forward`` so it returns
:class:`NetworkOutput`; the modules, and therefore the ``state_dict`` keys, stay MONAI's own, so
checkpoints load into plain MONAI networks and back.

With 2 input and 1 output channel the paper's three baselines have exactly the parameter counts of
its table: ``unet`` 1,979,177, ``attention_unet`` 5,909,545, ``resunet`` 4,806,398.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.nets import AttentionUnet, SegResNet, UNet

from sgnet_lightning.models.output import NetworkOutput
from sgnet_lightning.models.registry import check_spatial_size, register_model

# the SG-Net paper's baseline configuration (seed notebook)
PAPER_CHANNELS = (16, 32, 64, 128, 256)
PAPER_STRIDES = (2, 2, 2, 2)


def _divisor(strides: Sequence[int]) -> int:
    """Product of integer strides: the size every input axis must be divisible by."""
    if not all(isinstance(s, int) and s >= 1 for s in strides):
        raise ValueError(f"strides must be positive integers (one per level), got {list(strides)}")
    return math.prod(strides)


class MonaiUNet(UNet):
    """MONAI's :class:`~monai.networks.nets.UNet` (3D) returning :class:`NetworkOutput`.

    Used as the paper's "Standard U-Net" (``num_res_units=0``) and "ResU-Net" (``num_res_units=2``).
    MONAI's U-Net downsamples with strided convolutions from its first layer on.

    Constraint: every spatial size divisible by ``prod(strides)`` (16 for the paper's four strides
    of 2).

    Example (paper configuration)::

        net = MonaiUNet(2, 1, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2))
        net(torch.zeros(4, 2, 96, 96, 32)).logits.shape  # (4, 1, 96, 96, 32)
    """

    def __init__(self, in_channels: int, out_channels: int, channels: Sequence[int], strides: Sequence[int],
                 num_res_units: int = 0, dropout: float = 0.0):
        divisor = _divisor(strides)
        super().__init__(3, in_channels, out_channels, channels=channels, strides=strides,
                         num_res_units=num_res_units, dropout=dropout)
        self.spatial_divisor = divisor

    def forward(self, x: torch.Tensor) -> NetworkOutput:
        check_spatial_size(x, self.spatial_divisor, type(self).__name__)
        return NetworkOutput(logits=super().forward(x))


class MonaiAttentionUnet(AttentionUnet):
    """MONAI's :class:`~monai.networks.nets.AttentionUnet` (3D, soft additive attention gates on the
    skips) returning :class:`NetworkOutput`; the paper's "Attention U-Net".

    Its soft attention coefficients are internal to MONAI's blocks and not returned.

    Constraint: every spatial size divisible by ``prod(strides)`` (16 for the paper's configuration).

    Example::

        net = MonaiAttentionUnet(2, 1, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2))
        net(torch.zeros(4, 2, 96, 96, 32)).logits.shape  # (4, 1, 96, 96, 32)
    """

    def __init__(self, in_channels: int, out_channels: int, channels: Sequence[int], strides: Sequence[int],
                 dropout: float = 0.0):
        divisor = _divisor(strides)
        super().__init__(3, in_channels, out_channels, channels=channels, strides=strides, dropout=dropout)
        self.spatial_divisor = divisor

    def forward(self, x: torch.Tensor) -> NetworkOutput:
        check_spatial_size(x, self.spatial_divisor, type(self).__name__)
        return NetworkOutput(logits=super().forward(x))


class MonaiSegResNet(SegResNet):
    """MONAI's :class:`~monai.networks.nets.SegResNet` (3D, Myronenko 2018 without the VAE branch)
    returning :class:`NetworkOutput`.

    Constraint: every spatial size divisible by ``2 ** (len(blocks_down) - 1)`` (8 for the BraTS
    tutorial's four levels).

    Example (MONAI's BraTS tutorial)::

        net = MonaiSegResNet(4, 3, init_filters=16, blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1),
                             dropout_prob=0.2)
        net(torch.zeros(1, 4, 128, 128, 128)).logits.shape  # (1, 3, 128, 128, 128)
    """

    def __init__(self, in_channels: int, out_channels: int, init_filters: int, blocks_down: Sequence[int],
                 blocks_up: Sequence[int], dropout_prob: float | None, upsample_mode: str):
        if len(blocks_up) != len(blocks_down) - 1:
            raise ValueError(
                f"blocks_up needs one entry per upsampling (len(blocks_down) - 1 = {len(blocks_down) - 1}), "
                f"got {list(blocks_up)}"
            )
        super().__init__(3, init_filters, in_channels, out_channels, dropout_prob=dropout_prob,
                         blocks_down=tuple(blocks_down), blocks_up=tuple(blocks_up), upsample_mode=upsample_mode)
        self.spatial_divisor = 2 ** (len(blocks_down) - 1)

    def forward(self, x: torch.Tensor) -> NetworkOutput:
        check_spatial_size(x, self.spatial_divisor, type(self).__name__)
        return NetworkOutput(logits=super().forward(x))


@register_model
def unet(in_channels: int, out_channels: int, *, channels: Sequence[int] = PAPER_CHANNELS,
         strides: Sequence[int] = PAPER_STRIDES, dropout: float = 0.0) -> MonaiUNet:
    """The SG-Net paper's "Standard U-Net": MONAI U-Net without residual units (1,979,177 params, 2->1)."""
    return MonaiUNet(in_channels, out_channels, channels, strides, num_res_units=0, dropout=dropout)


@register_model
def resunet(in_channels: int, out_channels: int, *, channels: Sequence[int] = PAPER_CHANNELS,
            strides: Sequence[int] = PAPER_STRIDES, num_res_units: int = 2, dropout: float = 0.0) -> MonaiUNet:
    """The SG-Net paper's "ResU-Net": MONAI U-Net with 2 residual units per block (4,806,398 params, 2->1)."""
    return MonaiUNet(in_channels, out_channels, channels, strides, num_res_units=num_res_units, dropout=dropout)


@register_model
def attention_unet(in_channels: int, out_channels: int, *, channels: Sequence[int] = PAPER_CHANNELS,
                   strides: Sequence[int] = PAPER_STRIDES, dropout: float = 0.0) -> MonaiAttentionUnet:
    """The SG-Net paper's "Attention U-Net": MONAI AttentionUnet (5,909,545 params, 2->1)."""
    return MonaiAttentionUnet(in_channels, out_channels, channels, strides, dropout=dropout)


@register_model
def segresnet(in_channels: int, out_channels: int, *, init_filters: int = 16,
              blocks_down: Sequence[int] = (1, 2, 2, 4), blocks_up: Sequence[int] = (1, 1, 1),
              dropout_prob: float | None = 0.2, upsample_mode: str = "nontrainable") -> MonaiSegResNet:
    """MONAI SegResNet as in MONAI's BraTS tutorial (init_filters 16, blocks (1,2,2,4)/(1,1,1), dropout 0.2).

    ``dropout_prob=0.0`` switches dropout off (None, like any None option, keeps the default 0.2).
    """
    return MonaiSegResNet(in_channels, out_channels, init_filters, blocks_down, blocks_up, dropout_prob,
                          upsample_mode)
