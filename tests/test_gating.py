"""SG-Net's hard gate in training: supervised gates close on background and stay open on tumour, the
training threshold changes the trained network, and at fixed weights a higher threshold never opens a
gate. Real training (SegmentationModule + Lightning Trainer) on the in-memory distractor phantom of
``experiments/gating/phantom.py`` (the design probe's)."""

from __future__ import annotations

import importlib.util

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from torch.utils.data import DataLoader

from sgnet_lightning.module import SegmentationModule

_spec = importlib.util.spec_from_file_location("gating_phantom", REPO / "experiments" / "gating" / "phantom.py")
phantom = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(phantom)

SIZE = 24
STEPS = 40  # "a few dozen" steps, at a learning rate of 1e-2: at the design probe's 3e-3 the finest
LR = 1e-2  # gate needs about 100 steps to close (docs/gating/design_probe.json)
DILATION = 2
CHANNELS = (8, 16, 32, 64)  # a half-width SG-Net, as in the design probe


def train(gate_threshold: float, gate_loss_weight: float, seed: int = 0) -> SegmentationModule:
    # One thread: these 24^3 volumes gain nothing from more, and on a loaded 2-core machine two
    # OpenMP threads made a 40-step training 20 times slower (60 s instead of 3 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(gate_threshold, gate_loss_weight, seed)
    finally:
        torch.set_num_threads(threads)


def _train(gate_threshold: float, gate_loss_weight: float, seed: int) -> SegmentationModule:
    pl.seed_everything(seed, verbose=False)
    module = SegmentationModule(
        network="sgnet", network_options={"gate_threshold": gate_threshold, "channels": CHANNELS},
        in_channels=2, out_channels=1, optimizer={"name": "adam", "lr": LR}, scheduler={"name": "none"},
        gate_loss_weight=gate_loss_weight, gate_target_dilation=DILATION, sliding_window={"roi_size": [SIZE] * 3},
    )
    trainer = pl.Trainer(max_steps=STEPS, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    data = phantom.PhantomVolumes(STEPS * 2, first_seed=1000, size=SIZE)
    trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=2))
    return module.eval()


@pytest.fixture(scope="module")
def supervised():
    """Two supervised trainings that differ only in the training threshold."""
    return {tau: train(tau, gate_loss_weight=1.0) for tau in (0.3, 0.7)}


@pytest.fixture(scope="module")
def held_out():
    volumes = [phantom.distractor_phantom(10**6 + i, SIZE) for i in range(4)]
    return torch.stack([v["image"] for v in volumes]), torch.stack([v["target"] for v in volumes])


def open_fractions(module: SegmentationModule, image, target) -> tuple[list[float], list[float]]:
    """Open fraction per level (coarsest first) on tumour cells and on cells away from any tumour
    (outside the gate loss's dilated target)."""
    with torch.no_grad():
        gates = module(image).gate_maps
    on_tumour, on_background = [], []
    for gate in gates:
        tumour = F.adaptive_max_pool3d(target, gate.shape[2:]) > 0
        background = module.gate_loss.vicinity(target, gate.shape[2:]) == 0
        on_tumour.append(float((gate[tumour] > 0.5).float().mean()))
        on_background.append(float((gate[background] > 0.5).float().mean()))
    return on_tumour, on_background


@pytest.mark.slow
def test_supervised_hard_gates_close_on_background_and_stay_open_on_tumour(supervised, held_out):
    module = supervised[0.7]
    on_tumour, on_background = open_fractions(module, *held_out)
    assert min(on_tumour) > 0.9, on_tumour
    assert max(on_background) < 0.5, on_background  # every level, after 40 steps
    # the gates are exactly 0/1 and the loss was logged
    with torch.no_grad():
        gates = module(held_out[0]).gate_maps
    assert all(set(g.unique().tolist()) <= {0.0, 1.0} for g in gates)


@pytest.mark.slow
def test_two_training_thresholds_give_different_trained_open_fractions(supervised, held_out):
    low, high = (open_fractions(supervised[tau], *held_out)[1] for tau in (0.3, 0.7))
    # same seed, same data, same initial weights: only the threshold differs
    assert sum(high) < sum(low) - 0.2, (low, high)


@pytest.mark.slow
def test_raising_the_threshold_of_a_trained_network_never_opens_a_gate(supervised, held_out):
    net = supervised[0.3].net
    previous, totals = None, []
    try:
        for threshold in (0.1, 0.3, 0.5, 0.7, 0.9):
            net.gate_threshold = threshold
            with torch.no_grad():
                gates = net(held_out[0]).gate_maps
            if previous is not None:
                assert not any((high > low).any() for low, high in zip(previous, gates)), threshold
            previous = gates
            totals.append(sum(int(g.sum()) for g in gates))
    finally:
        net.gate_threshold = 0.3
    assert totals[0] > totals[-1]  # on the trained network the threshold does close voxels


def test_gate_loss_is_added_with_its_weight_and_logged(held_out):
    image, target = held_out
    batch = {"image": image[:2], "target": target[:2], "subregions": torch.cat([target[:2], 1 - target[:2]], 1)}
    module = SegmentationModule(network="sgnet", network_options={"channels": CHANNELS}, gate_loss_weight=0.5,
                                gate_target_dilation=DILATION)
    out = module(batch["image"])
    total, parts = module._loss(out, batch)
    torch.testing.assert_close(total, parts["loss_seg"] + 0.5 * module.gate_loss(out.gate_logits, batch["target"]))
    assert parts["loss_gate"] > 0
    module.hparams.gate_loss_weight = 0.0
    assert "loss_gate" not in module._loss(out, batch)[1]
    with pytest.raises(ValueError, match="gate_loss_weight must be >= 0"):
        SegmentationModule(network="sgnet", gate_loss_weight=-1.0)
    body = SegmentationModule(network="sgnet", network_options={"gate_mode": "none"}, gate_loss_weight=1.0)
    with pytest.raises(ValueError, match="no gates"):
        body._loss(body(batch["image"]), batch)


def test_whole_volume_open_fractions_count_every_sliding_window(held_out):
    torch.manual_seed(0)
    module = SegmentationModule(network="sgnet", network_options={"channels": CHANNELS},
                                sliding_window={"roi_size": [8, 8, 8], "overlap": 0.0, "sw_batch_size": 32}).eval()
    for gate in module.net.gates:  # spread the gates' probabilities so some voxels close
        torch.nn.init.normal_(gate.psi.weight, std=1.0)
        torch.nn.init.zeros_(gate.psi.bias)
    image = held_out[0][:1]
    module.start_gate_tally()
    module.predict_volume(image)
    tallied = [float(f) for f in module.stop_gate_tally()]
    # without overlap the 3 x 3 x 3 windows tile the 24^3 volume: the same as one forward per window
    windows = image.unfold(2, 8, 8).unfold(3, 8, 8).unfold(4, 8, 8)  # (1, C, 3, 3, 3, 8, 8, 8)
    windows = windows.permute(0, 2, 3, 4, 1, 5, 6, 7).reshape(27, 2, 8, 8, 8)
    with torch.no_grad():
        direct = [float((g > 0.5).float().mean()) for g in module.net(windows).gate_maps]
    assert tallied == pytest.approx(direct, abs=1e-6)
    assert any(0 < f < 1 for f in tallied)
    assert module.stop_gate_tally() == []  # stopped: later forwards are not counted


def test_gates_and_gate_loss_under_bf16_autocast(held_out):
    # the probability and the threshold stay float32; the 0/1 decision is exact in bf16 too
    torch.manual_seed(0)
    module = SegmentationModule(network="sgnet", network_options={"channels": CHANNELS}, gate_loss_weight=1.0,
                                gate_target_dilation=DILATION)
    image, target = held_out
    batch = {"image": image[:2], "target": target[:2], "subregions": torch.cat([target[:2], 1 - target[:2]], 1)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(batch["image"])
        loss, parts = module._loss(out, batch)
    assert out.logits.dtype == torch.bfloat16 and all(g.dtype == torch.float32 for g in out.gate_maps)
    assert all(set(g.unique().tolist()) <= {0.0, 1.0} for g in out.gate_maps)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in module.net.gates.parameters())
