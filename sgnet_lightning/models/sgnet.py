r"""SG-Net: the published three-level 3D U-Net body with hard spatial gates on its skip connections.

The body
--------
The network published as "SG-Net (0.67M parameters)" is a plain U-Net (seed notebook):
encoder blocks ``Conv3d(3x3x3, pad 1) -> BatchNorm3d -> ReLU`` with 16, 32, 64 channels, each followed
by ``MaxPool3d(2)``; a 128-channel bottleneck block; a decoder that upsamples with
``ConvTranspose3d(kernel 2, stride 2)`` halving the channels, concatenates the skip and applies the
same block (128->64, 64->32, 32->16); a 1x1x1 head. With 2 input and 1 output channel it has exactly
668,673 parameters; ``gate_mode="none"`` builds exactly this network.

The hard spatial gate (this project's design)
---------------------------------------------
The paper describes, in prose only, a module that "partitions input features and applies
threshold-based gating" for "strict binary-like feature selection" that suppresses background. Its
published code has no gate. :class:`SpatialGate` realises that prose on every skip connection,
where it matters most: skips carry full-resolution encoder features, including bright background
structures (vessels, choroid plexus, post-contrast dura) that a decoder readily turns into false
positives, and this is where a soft-attention U-Net over-segments.

For the skip tensor :math:`s` of one level (:math:`C` channels, the encoder block's output before
pooling) and the encoder's next deeper features :math:`c` (the next level's block output, or the
bottleneck for the deepest skip; half the resolution):

1. **Partition** the channels: :math:`s = [s_g, s_v]`, with :math:`C_g = \max(1,
   \mathrm{round}(\rho C))` *gating* channels :math:`s_g` (``gate_channel_fraction`` :math:`\rho`,
   default 0.25) and :math:`C - C_g` *value* channels :math:`s_v`.
2. **Gate probability** per voxel, from the gating channels (*where*, at full resolution) and the
   deeper encoder features (*what*, with twice the receptive field), in an additive form as in
   Attention U-Net:

   .. math:: p = \sigma\big(\psi^\top \mathrm{ReLU}(W_g s_g + \mathrm{Up}(W_c c) + b) + b_\psi\big)
      \in (0, 1)

   with 1x1x1 convolutions :math:`W_g` (:math:`C_g \to C_g`), :math:`W_c` (:math:`C_c \to C_g`,
   applied at the coarse resolution, then trilinearly upsampled x2) and :math:`\psi`
   (:math:`C_g \to 1`). The gate reads encoder features only, not the decoder's as Attention U-Net
   does: decoder features depend on the coarser gates' decisions, so each gate's map would depend on
   the threshold through the other gates. Reading the encoder only, every gate's :math:`p` is
   independent of :math:`\tau`, and raising ``gate_threshold`` closes every gate monotonically: a
   clean precision knob for tuning and for threshold sweeps with fixed weights.
3. **Gate** (``gate_mode``):

   - ``"hard"``: :math:`g = \mathbb{1}[p > \tau]` in the forward pass, an exact 0/1 map, with
     ``gate_threshold`` :math:`\tau \in (0, 1)`. The step function has zero gradient almost
     everywhere, so the backward pass uses the straight-through estimator
     :math:`\partial g / \partial p := 1`, i.e. ``g = hard + (p - p.detach())``: the gate's own
     weights learn from how the loss would change if the gate were a little more or less open.
   - ``"soft"``: :math:`g = p` (sigmoid attention), for the hard-versus-soft ablation.
   - ``"none"``: no gate modules at all; the published body.
4. **Output** to the decoder: :math:`s' = [s_g,\ g \odot s_v]`. The value channels pass only where the
   gate is open (exactly zero where it is closed, in hard mode); the gating channels pass unchanged,
   so the decoder still sees the evidence the gate decided on and can place a boundary that the gate
   (one decision per voxel) draws too tight, and the gating channels keep receiving the decoder's
   gradient where the gate is closed. The channel count is unchanged, so the decoder blocks are
   those of the body and the gated network has the body's 668,673 parameters plus the gates'
   (3,083 for the default body: 0.46 %).

**Initialisation: open, at a fixed reference.** :math:`\psi` starts near zero and
:math:`b_\psi = \mathrm{logit}(0.95)` (``INITIAL_OPEN_PROBABILITY``) whatever :math:`\tau`, so
:math:`p \approx 0.95` everywhere: every hard gate with :math:`\tau < 0.95` starts open and the network
computes exactly the function of the published body (a soft gate starts by scaling the value channels
by 0.95). Training therefore starts from a network known to train. A gate starting half closed at
random positions would delete half of the fine-scale evidence at random, so the decoder and the gate
would both learn from noise; a gate starting fully closed would cut the value channels off altogether.

**Where the threshold acts.** Neither the initial weights nor the backward pass (:math:`\partial
g / \partial p = 1`) depends on :math:`\tau`; it acts only in the forward decision
:math:`\mathbb{1}[p > \tau]`, which the optimiser cannot re-centre. Two trainings that differ only in
:math:`\tau` see different gated features as soon as some gate's :math:`p` falls between the two
thresholds, and end up different networks. On a trained network :attr:`SGNet.gate_threshold` can be
set to any value: with the weights fixed, :math:`p` does not depend on :math:`\tau`, so raising it
only ever closes gates.

The previous design set :math:`b_\psi = \mathrm{logit}(\tau) + 2`. Then
:math:`\mathbb{1}[\sigma(\psi^\top h + \mathrm{logit}(\tau) + 2) > \tau] = \mathbb{1}[\psi^\top h + 2 > 0]`:
every decision was the same for every :math:`\tau` at initialisation, and in training :math:`\tau`
only rescaled the straight-through gradient by :math:`\sigma'(\mathrm{logit}(\tau) + 2)`, which Adam
normalises for the gate's own weights. In the design probe the little effect it kept (through the
encoder weights the gate shares with the body) had the wrong sign: with seed 0 the finest gate stayed
open on 20 % of distractor cells at :math:`\tau = 0.3` and on 51 % at 0.7.

**Gates close only where a loss profits.** A gate that starts open stays open unless closing lowers
some loss. With the segmentation loss alone, the probe's coarser gates never closed (open fraction
1.0 at every threshold, with either initialisation); the finest closed on part of the distractors
only. :class:`~sgnet_lightning.losses.GateSupervisionLoss` (``gate_loss_weight`` of the training
module, 0 = off as in the paper) gives each gate's logit a target: the tumour dilated by
``gate_target_dilation`` voxels and max-pooled to the gate's grid, with class-balanced BCE. Its
gates close on background and distractors and stay open on tumour, and the threshold then changes the
trained open fractions.

``docs/gating.md`` gives the measurements (``experiments/gating/design_probe.py``) and the rejected
alternatives: an L1 sparsity term on :math:`p` (in the probe it closed the gates on tumour as well)
and per-sample normalised or quantile gates (a decision that depends on what else lies in the
window, so sliding-window inference would depend on window placement).

After each forward, ``NetworkOutput.gate_maps`` holds the gates (B, 1, x, y, z), coarsest level
first (like SegGuidedNet's attention maps), ``NetworkOutput.gate_logits`` their logits
:math:`\psi^\top h + b_\psi` (what the gate loss takes), and :attr:`SGNet.last_open_fractions` the
fraction of open voxels of each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sgnet_lightning.models.output import NetworkOutput
from sgnet_lightning.models.registry import check_spatial_size, register_model

GATE_MODES = ("hard", "soft", "none")
SEED_CHANNELS = (16, 32, 64, 128)
# gate probability every new gate starts at, whatever its threshold (see "Initialisation" above)
INITIAL_OPEN_PROBABILITY = 0.95


def _check_fraction(value: float, name: str) -> float:
    """Return ``value`` as float if it lies strictly between 0 and 1, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


class ConvBlock(nn.Sequential):
    """The seed's block: ``Conv3d(3x3x3, padding 1) -> BatchNorm3d -> ReLU``; keeps the spatial size."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
        )


class SpatialGate(nn.Module):
    """Hard (or soft) spatial gate on one skip connection; see the module docstring for the equations.

    Args:
        skip_channels: channels :math:`C` of the skip tensor.
        context_channels: channels :math:`C_c` of the next deeper encoder features.
        mode: ``"hard"`` (exact 0/1 forward, straight-through backward) or ``"soft"`` (sigmoid).
        threshold: :math:`\\tau`, the probability above which a hard gate is open. It acts on the
            forward decision only: the initialisation and the gradient do not depend on it.
        gate_channel_fraction: share :math:`\\rho` of the skip channels that form the gating part.

    Shapes: ``skip`` (B, C, x, y, z) and ``context`` (B, C_c, x/2, y/2, z/2) ->
    (gated skip (B, C, x, y, z), gate (B, 1, x, y, z) float32, gate logit (B, 1, x, y, z)).
    """

    def __init__(self, skip_channels: int, context_channels: int, mode: str, threshold: float,
                 gate_channel_fraction: float):
        super().__init__()
        if mode not in ("hard", "soft"):
            raise ValueError(f"SpatialGate mode must be 'hard' or 'soft', got {mode!r}")
        self.mode = mode
        self.threshold = _check_fraction(threshold, "gate_threshold")
        self.gating_channels = max(1, round(gate_channel_fraction * skip_channels))
        if self.gating_channels >= skip_channels:
            raise ValueError(
                f"gate_channel_fraction={gate_channel_fraction} leaves no value channels on a "
                f"{skip_channels}-channel skip"
            )
        hidden = self.gating_channels
        self.gating_proj = nn.Conv3d(self.gating_channels, hidden, kernel_size=1)
        self.context_proj = nn.Conv3d(context_channels, hidden, kernel_size=1, bias=False)
        self.psi = nn.Conv3d(hidden, 1, kernel_size=1)
        # start open at a fixed probability, the same for every threshold (module docstring):
        # p = sigmoid(logit(INITIAL_OPEN_PROBABILITY) + small noise)
        nn.init.normal_(self.psi.weight, std=1e-2)
        nn.init.constant_(self.psi.bias, math.log(INITIAL_OPEN_PROBABILITY / (1 - INITIAL_OPEN_PROBABILITY)))

    def forward(self, skip: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        gating, value = skip[:, : self.gating_channels], skip[:, self.gating_channels :]
        # project at the coarse resolution, then upsample: the same as the reverse order (both are
        # linear), for a quarter of the work
        context = F.interpolate(self.context_proj(context), size=skip.shape[2:], mode="trilinear",
                                align_corners=False)
        logit = self.psi(torch.relu(self.gating_proj(gating) + context))
        # probability and threshold in float32: under bf16 autocast sigmoid would round near 0 and 1
        prob = torch.sigmoid(logit.float())
        if self.mode == "hard":
            hard = (prob > self.threshold).to(prob.dtype)
            # straight-through: the forward value is exactly `hard` (the bracket is exactly 0; written
            # as `hard + prob - prob.detach()` rounding would leave values like 0.99999994), the
            # gradient that of `prob`, whatever the threshold
            gate = hard + (prob - prob.detach())
        else:
            gate = prob
        # 0 and 1 are exact in every float type: a hard gate stays exact in the value's dtype
        return torch.cat([gating, gate.to(value.dtype) * value], dim=1), gate, logit


class SGNet(nn.Module):
    """SG-Net: the seed's 3D U-Net body with optional hard spatial gates on the skip connections.

    Args:
        in_channels: input channels (2 for the seed's T1ce + FLAIR).
        out_channels: output channels, one sigmoid region each.
        channels: encoder widths then bottleneck width; the seed's ``(16, 32, 64, 128)`` gives three
            pooling levels.
        gate_mode: ``"hard"`` (default), ``"soft"`` or ``"none"`` (the published ungated body).
        gate_threshold: :math:`\\tau` in (0, 1) of the hard gates (default 0.5); a hyperparameter
            of training, and changeable on a trained network (:attr:`gate_threshold` is settable)
            for threshold sweeps at fixed weights. Unused in soft mode. Hard gates start open for
            every :math:`\\tau` below ``INITIAL_OPEN_PROBABILITY`` (0.95).
        gate_channel_fraction: share of each skip's channels that feed the gate (default 0.25).

    Constraint: every spatial size divisible by ``2 ** (len(channels) - 1)`` (8 for the seed).

    Parameters (2 in, 1 out, seed channels): 668,673 with ``gate_mode="none"``; 671,756 with gates.

    Example::

        net = SGNet(2, 1)                       # hard gates, tau = 0.5
        out = net(torch.zeros(4, 2, 96, 96, 32))
        out.logits.shape                        # (4, 1, 96, 96, 32)
        [g.shape for g in out.gate_maps]        # (4,1,24,24,8), (4,1,48,48,16), (4,1,96,96,32)
        [z.shape for z in out.gate_logits]      # the same shapes: the gates' pre-sigmoid logits
        net.last_open_fractions                 # [1.0, 1.0, 1.0] at initialisation
        net.gate_threshold = 0.7                # every gate now opens where p > 0.7
    """

    def __init__(self, in_channels: int, out_channels: int, channels: Sequence[int] = SEED_CHANNELS,
                 gate_mode: str = "hard", gate_threshold: float = 0.5, gate_channel_fraction: float = 0.25):
        super().__init__()
        if gate_mode not in GATE_MODES:
            raise ValueError(f"gate_mode must be one of {', '.join(GATE_MODES)}, got {gate_mode!r}")
        _check_fraction(gate_threshold, "gate_threshold")
        _check_fraction(gate_channel_fraction, "gate_channel_fraction")
        channels = list(channels)
        if len(channels) < 2 or not all(isinstance(c, int) and c > 0 for c in channels):
            raise ValueError(f"channels must list at least two positive integers, got {channels}")
        *widths, bottleneck = channels
        self.gate_mode = gate_mode
        self._gate_threshold = float(gate_threshold)
        self.spatial_divisor = 2 ** len(widths)

        self.encoders = nn.ModuleList(
            ConvBlock(c_in, c_out) for c_in, c_out in zip([in_channels, *widths[:-1]], widths)
        )
        self.pool = nn.MaxPool3d(2)
        self.bottleneck = ConvBlock(widths[-1], bottleneck)
        # decoder modules are listed coarsest level first, the order they run in
        coarse_to_fine = widths[::-1]
        self.upsamplers = nn.ModuleList(
            nn.ConvTranspose3d(c_deep, c, kernel_size=2, stride=2)
            for c_deep, c in zip([bottleneck, *coarse_to_fine[:-1]], coarse_to_fine)
        )
        self.decoders = nn.ModuleList(ConvBlock(2 * c, c) for c in coarse_to_fine)
        # the gate of a skip reads the encoder's next deeper output (the bottleneck for the deepest)
        deeper = [*widths[1:], bottleneck][::-1]
        self.gates = nn.ModuleList(
            SpatialGate(c, c_deep, gate_mode, gate_threshold, gate_channel_fraction)
            for c, c_deep in zip(coarse_to_fine, deeper)
        ) if gate_mode != "none" else None
        self.head = nn.Conv3d(widths[0], out_channels, kernel_size=1)
        self._last_gate_maps: tuple[torch.Tensor, ...] = ()

    @property
    def gate_threshold(self) -> float:
        """:math:`\\tau` of every hard gate; setting it changes the decisions of a trained network
        (its weights, and so every gate's probability, stay as they are)."""
        return self._gate_threshold

    @gate_threshold.setter
    def gate_threshold(self, value: float) -> None:
        self._gate_threshold = _check_fraction(value, "gate_threshold")
        for gate in self.gates or ():
            gate.threshold = self._gate_threshold

    @property
    def last_open_fractions(self) -> list[float]:
        """Fraction of voxels (over the whole batch) where each gate was open (> 0.5) in the last
        forward, coarsest level first; empty for ``gate_mode="none"`` or before the first forward.

        Computed on access, not in ``forward``, so training does not wait on the GPU every step.
        """
        return [float((g > 0.5).float().mean()) for g in self._last_gate_maps]

    def forward(self, x: torch.Tensor) -> NetworkOutput:
        """(B, in_channels, X, Y, Z) -> logits (B, out_channels, X, Y, Z), the gate maps and their logits."""
        check_spatial_size(x, self.spatial_divisor, "SGNet")
        encoded = []  # every encoder block's output, finest first, the bottleneck last
        for encoder in self.encoders:
            x = encoder(x)
            encoded.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        encoded.append(x)
        gate_maps, gate_logits = [], []
        for level, (upsample, decoder) in enumerate(zip(self.upsamplers, self.decoders)):
            skip = encoded[-2 - level]
            if self.gates is not None:
                skip, gate, logit = self.gates[level](skip, encoded[-1 - level])
                gate_maps.append(gate)
                gate_logits.append(logit)
            x = decoder(torch.cat([upsample(x), skip], dim=1))
        self._last_gate_maps = tuple(g.detach() for g in gate_maps)
        return NetworkOutput(logits=self.head(x), gate_maps=tuple(gate_maps), gate_logits=tuple(gate_logits))


@register_model
def sgnet(in_channels: int, out_channels: int, *, channels: Sequence[int] = SEED_CHANNELS,
          gate_mode: str = "hard", gate_threshold: float = 0.5, gate_channel_fraction: float = 0.25) -> SGNet:
    """SG-Net with hard spatial gates (``gate_mode="none"``: the published 668,673-parameter body)."""
    return SGNet(in_channels, out_channels, channels, gate_mode, gate_threshold, gate_channel_fraction)
