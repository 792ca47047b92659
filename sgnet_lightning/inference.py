"""Sliding-window inference over whole volumes (MONAI), shared by validation, test and predict."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference


@dataclass
class SlidingWindow:
    """Settings of MONAI's ``sliding_window_inference``.

    Attributes:
        roi_size: window size in voxels (x, y, z); the seed used (96, 96, 32).
        overlap: fraction of overlap between neighbouring windows (seed: 0.25).
        sw_batch_size: windows per forward pass; raise it on a GPU with memory to spare.
        mode: ``"constant"`` (the seed) or ``"gaussian"`` blending of overlapping windows.
        stitch_on_cpu: accumulate the stitched output on the CPU (``device="cpu"``) while the
            windows run on the GPU: for large volumes when device memory is short.
    """

    roi_size: tuple[int, int, int] = (96, 96, 32)
    overlap: float = 0.25
    sw_batch_size: int = 4
    mode: str = "constant"
    stitch_on_cpu: bool = False

    def __post_init__(self):
        self.roi_size = tuple(int(v) for v in self.roi_size)
        if len(self.roi_size) != 3 or min(self.roi_size) < 1:
            raise ValueError(f"sliding_window.roi_size must be 3 positive voxel counts, got {self.roi_size}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"sliding_window.overlap must be in [0, 1), got {self.overlap}")
        if self.mode not in ("constant", "gaussian"):
            raise ValueError(f"sliding_window.mode must be 'constant' or 'gaussian', got {self.mode!r}")


@torch.no_grad()
def sliding_window_predict(model, image: torch.Tensor, window: SlidingWindow, with_maps: bool = False):
    """Predict whole volumes with overlapping windows.

    Args:
        model: callable returning a :class:`~sgnet_lightning.models.NetworkOutput`.
        image: (B, C, X, Y, Z) on the model's device; any size (MONAI pads windows at borders).
        window: sliding-window settings.
        with_maps: also return the finest attention map (``"attention"``, (B, S, X, Y, Z)) and every
            gate level (``"gate"``, (B, L, X, Y, Z), coarsest first, as ``NetworkOutput.gate_maps``)
            where the network has them, resized to the input grid. Overlapping windows are blended,
            so a hard gate's stitched value is the (weighted) share of windows that opened the voxel.

    Returns:
        dict with ``"probabilities"`` (B, R, X, Y, Z) float32 sigmoid outputs, plus maps on request.
    """

    def predictor(patch: torch.Tensor) -> dict[str, torch.Tensor]:
        out = model(patch)
        result = {"probabilities": torch.sigmoid(out.logits.float())}
        if with_maps:
            # MONAI stitches dict outputs of other sizes by their zoom factor; resizing the finest
            # map here keeps every output on the window grid, so stitching is exact and simple.
            if out.attention_maps:
                finest = out.attention_maps[-1].float()
                if finest.shape[2:] != patch.shape[2:]:
                    finest = F.interpolate(finest, size=patch.shape[2:], mode="trilinear")
                result["attention"] = finest
            if out.gate_maps:
                # nearest: a coarse gate cell covers exactly the voxels it gates (window sizes are
                # multiples of the gate's stride), and a hard gate stays 0/1 within a window
                result["gate"] = torch.cat([F.interpolate(g.float(), size=patch.shape[2:], mode="nearest-exact")
                                            for g in out.gate_maps], dim=1)
        return result

    return sliding_window_inference(
        image,
        roi_size=window.roi_size,
        sw_batch_size=window.sw_batch_size,
        predictor=predictor,
        overlap=window.overlap,
        mode=window.mode,
        device=torch.device("cpu") if window.stitch_on_cpu else None,
    )
