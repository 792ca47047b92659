"""The one form every registered network returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class NetworkOutput:
    """What a network's ``forward`` returns, whatever the architecture.

    Attributes:
        logits: (B, out_channels, X, Y, Z) raw scores, one sigmoid channel per region.
        attention_maps: SegGuidedNet's per-sub-region attention maps, one tensor per decoder stage,
            each (B, n_subregions, x, y, z) with values in [0, 1], coarsest stage first; for
            visualisation (``sgnet predict --maps``, the report). Empty for networks without them.
        attention_logits: the same maps before the sigmoid, what the auxiliary loss
            (:class:`~sgnet_lightning.losses.AttentionSupervisionLoss`) takes.
        gate_maps: SG-Net's spatial gates, one tensor per gate, each (B, 1, x, y, z), coarsest
            first: exactly 0/1 for ``gate_mode="hard"``, in [0, 1] for ``"soft"``. Empty for
            networks without gates. Logged as open fractions; written as NIfTI by
            ``sgnet predict`` on request.
        gate_logits: each gate's probability before the sigmoid, (B, 1, x, y, z), what the gate
            supervision loss (:class:`~sgnet_lightning.losses.GateSupervisionLoss`) takes.
    """

    logits: torch.Tensor
    attention_maps: tuple[torch.Tensor, ...] = field(default_factory=tuple)
    gate_maps: tuple[torch.Tensor, ...] = field(default_factory=tuple)
    attention_logits: tuple[torch.Tensor, ...] = field(default_factory=tuple)
    gate_logits: tuple[torch.Tensor, ...] = field(default_factory=tuple)

    def open_fractions(self) -> list[float]:
        """Fraction of voxels where each gate is open (value > 0.5), in gate order."""
        return [float((g > 0.5).float().mean()) for g in self.gate_maps]
