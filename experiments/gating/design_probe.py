"""Design probe of SG-Net's hard gate: does the threshold matter, and do gates close?

Trains the tiny distractor phantom (``phantom.py``) through the suite's own
:class:`~sgnet_lightning.module.SegmentationModule` and a Lightning ``Trainer`` under four gate
designs, each at two training thresholds and two seeds, and writes what the trained gates do on
held-out phantoms to ``docs/gating/design_probe.json``:

- ``old_init``: the previous design, every gate's bias at ``logit(tau) + 2`` (reproduced here by
  overwriting the new bias), no gate loss;
- ``fixed_init``: the bias at ``logit(0.95)`` whatever tau (the current design), no gate loss;
- ``fixed_init_sparsity``: the current design plus an L1 sparsity term, the mean gate probability
  (the alternative to a target-based loss);
- ``fixed_init_gatesup``: the current design plus the gate supervision loss (``gate_loss_weight``).

Per run: the open fraction of each gate level (coarsest first) on tumour cells, on distractor
cells and on other background cells; Dice; the share of distractor voxels predicted as tumour.

    python experiments/gating/design_probe.py            # about 5 minutes on one CPU core
    python experiments/gating/design_probe.py --steps 20 --out /tmp/probe.json   # a smoke run
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from phantom import PhantomVolumes, distractor_phantom  # this folder (the script's own)
from sgnet_lightning.files import atomic_write_json
from sgnet_lightning.losses import GateSupervisionLoss
from sgnet_lightning.module import SegmentationModule

REPO = Path(__file__).resolve().parents[2]
DESIGNS = ("old_init", "fixed_init", "fixed_init_sparsity", "fixed_init_gatesup")
THRESHOLDS = (0.3, 0.7)
SEEDS = (0, 1)
# A half-width SG-Net (8, 16, 32, 64 channels; the seed's is 16, 32, 64, 128) on 32^3 volumes: the
# same three gated skips at a quarter of the CPU time.
CHANNELS = (8, 16, 32, 64)
SIZE, BATCH, LR = 32, 2, 3e-3
GATE_LOSS_WEIGHT, GATE_TARGET_DILATION = 1.0, 2
SPARSITY_WEIGHT = 1.0
HELD_OUT = 8  # evaluation phantoms, seeds 10**6 + i, never trained on


class SparsityModule(SegmentationModule):
    """The rejected alternative: an L1 penalty on the mean gate probability of every level."""

    def _loss(self, out, batch):
        total, parts = super()._loss(out, batch)
        sparsity = torch.stack([torch.sigmoid(z.float()).mean() for z in out.gate_logits]).mean()
        parts["loss_sparsity"] = sparsity.detach()
        return total + SPARSITY_WEIGHT * sparsity, parts


class OpenFractionCurve(pl.Callback):
    """Training-batch open fraction per level every ``every`` steps."""

    def __init__(self, every: int):
        self.every, self.points = every, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step % self.every == 0 or step == trainer.max_steps:
            self.points.append({"step": step, "open_fraction": [round(f, 4) for f in pl_module.net.last_open_fractions]})


def train(design: str, threshold: float, seed: int, steps: int) -> tuple[SegmentationModule, list]:
    pl.seed_everything(seed, verbose=False)
    kind = SparsityModule if design == "fixed_init_sparsity" else SegmentationModule
    module = kind(
        network="sgnet", network_options={"gate_mode": "hard", "gate_threshold": threshold, "channels": CHANNELS},
        in_channels=2, out_channels=1, optimizer={"name": "adam", "lr": LR}, scheduler={"name": "none"},
        gate_loss_weight=GATE_LOSS_WEIGHT if design == "fixed_init_gatesup" else 0.0,
        gate_target_dilation=GATE_TARGET_DILATION, sliding_window={"roi_size": [SIZE] * 3},
    )
    if design == "old_init":
        with torch.no_grad():
            for gate in module.net.gates:
                gate.psi.bias.fill_(math.log(threshold / (1 - threshold)) + 2.0)
    curve = OpenFractionCurve(every=max(steps // 6, 1))
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[curve])
    # fresh phantoms every step, a disjoint seed range per training seed
    data = PhantomVolumes(steps * BATCH, first_seed=100_000 * (seed + 1), size=SIZE)
    trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=BATCH))
    return module, curve.points


@torch.no_grad()
def evaluate(module: SegmentationModule) -> dict:
    """Open fractions per level on tumour / distractor / other background cells, Dice, distractor FP."""
    volumes = [distractor_phantom(10**6 + i, SIZE) for i in range(HELD_OUT)]
    image = torch.stack([v["image"] for v in volumes])
    target = torch.stack([v["target"] for v in volumes])
    distractor = torch.stack([v["distractor"] for v in volumes]).float()
    out = module.eval()(image)
    near = GateSupervisionLoss(GATE_TARGET_DILATION)
    fractions = {"tumour": [], "distractor": [], "background": []}
    for gate in out.gate_maps:
        size = gate.shape[2:]
        tumour_cell = F.adaptive_max_pool3d(target, size) > 0
        vicinity = near.vicinity(target, size) > 0
        distractor_cell = (F.adaptive_max_pool3d(distractor, size) > 0) & ~vicinity
        background = ~vicinity & ~distractor_cell
        open_ = gate > 0.5
        for name, cells in (("tumour", tumour_cell), ("distractor", distractor_cell), ("background", background)):
            fractions[name].append(round(float(open_[cells].float().mean()), 4))
    pred = torch.sigmoid(out.logits) > 0.5
    truth = target > 0.5
    dice = [float(2 * (p & t).sum() / (p.sum() + t.sum()).clamp_min(1)) for p, t in zip(pred, truth)]
    return {
        "open_fraction": fractions,
        "dice": round(sum(dice) / len(dice), 4),
        "distractor_fp_fraction": round(float(pred[distractor > 0].float().mean()), 4),
    }


def _mean(rows: list[dict], *path) -> float | list[float]:
    values = []
    for row in rows:
        value = row
        for key in path:
            value = value[key]
        values.append(value)
    if isinstance(values[0], list):
        return [round(sum(v) / len(v), 4) for v in zip(*values)]
    return round(sum(values) / len(values), 4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="training steps per run")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "gating" / "design_probe.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    runs = []
    for design in DESIGNS:
        for threshold in THRESHOLDS:
            for seed in SEEDS:
                module, curve = train(design, threshold, seed, args.steps)
                row = {"design": design, "gate_threshold": threshold, "seed": seed, **evaluate(module),
                       "training_open_fraction": curve}
                print(f"{design:20s} tau={threshold} seed={seed} open tumour={row['open_fraction']['tumour']} "
                      f"distractor={row['open_fraction']['distractor']} background={row['open_fraction']['background']} "
                      f"dice={row['dice']} distractor_fp={row['distractor_fp_fraction']}", flush=True)
                runs.append(row)
    summary = []
    for design in DESIGNS:
        for threshold in THRESHOLDS:
            rows = [r for r in runs if r["design"] == design and r["gate_threshold"] == threshold]
            summary.append({
                "design": design, "gate_threshold": threshold, "seeds": len(rows),
                **{f"open_{cells}": _mean(rows, "open_fraction", cells) for cells in ("tumour", "distractor", "background")},
                "dice": _mean(rows, "dice"), "distractor_fp_fraction": _mean(rows, "distractor_fp_fraction"),
            })
    atomic_write_json(args.out, {
        "command": " ".join(["python experiments/gating/design_probe.py", *(argv if argv is not None else sys.argv[1:])]),
        "settings": {"channels": CHANNELS, "size_voxels": SIZE, "batch_size": BATCH, "lr": LR, "steps": args.steps,
                     "gate_loss_weight": GATE_LOSS_WEIGHT, "gate_target_dilation_voxels": GATE_TARGET_DILATION,
                     "sparsity_weight": SPARSITY_WEIGHT, "held_out_phantoms": HELD_OUT, "threads": args.threads,
                     "levels": "coarsest first (1/4, 1/2, full resolution)"},
        "torch": torch.__version__,
        "seconds": round(time.perf_counter() - start, 1),
        "summary": summary,
        "runs": runs,
    })
    print(f"wrote {args.out} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
