"""Networks and their registry: parameter counts, shapes, gradients, the hard gate, attention maps."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import REPO
from torch import nn

from sgnet_lightning.config import load_config
from sgnet_lightning.models import NetworkOutput, create_model, list_models
from sgnet_lightning.models.registry import model_options, register_model
from sgnet_lightning.models.sgnet import INITIAL_OPEN_PROBABILITY, SpatialGate

# small enough for a 2-core CPU, divisible by 16 (MONAI U-Nets) and 8 (the others)
SIZE = (32, 32, 16)
# SG-Net's own tests: divisible by 8, bottleneck 2x2x1
SMALL = (16, 16, 8)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def setup_options(name: str, in_channels: int) -> dict:
    """n_subregions for the networks that take it: 2 (core, edema) with 2 inputs, 3 (BraTS) with 4."""
    return {"n_subregions": 2 if in_channels == 2 else 3} if "n_subregions" in model_options(name) else {}


def randomise_gates(gates: nn.Module, seed: int = 0) -> None:
    """Spread the gates' probabilities over (0, 1) so that some voxels are open and some closed
    (new gates start open everywhere)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in gates.parameters():
            param.copy_(torch.randn(param.shape, generator=generator))


@pytest.mark.parametrize(
    "name, options, expected",
    [
        ("unet", {}, 1_979_177),
        ("attention_unet", {}, 5_909_545),
        ("resunet", {}, 4_806_398),
        ("sgnet", {"gate_mode": "none"}, 668_673),
    ],
)
def test_paper_parameter_counts(name, options, expected):
    assert n_params(create_model(name, 2, 1, **options)) == expected


def test_segresnet_is_monais_brats_tutorial_network():
    from monai.networks.nets import SegResNet

    ours = create_model("segresnet", 4, 3)
    monai_net = SegResNet(blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1], init_filters=16, in_channels=4,
                          out_channels=3, dropout_prob=0.2)
    # same modules, same state-dict keys: checkpoints move between the two
    assert ours.state_dict().keys() == monai_net.state_dict().keys()
    assert n_params(ours) == n_params(monai_net) == 4_702_227


@pytest.mark.parametrize("gate_mode", ["hard", "soft"])
def test_sgnet_gates_add_under_one_percent(gate_mode):
    body = create_model("sgnet", 2, 1, gate_mode="none")
    gated = create_model("sgnet", 2, 1, gate_mode=gate_mode)
    overhead = n_params(gated) - n_params(body)
    assert overhead == n_params(gated.gates) > 0
    assert overhead / n_params(body) < 0.01
    # the gates sit beside the body: the body's weights load into the gated network unchanged
    missing, unexpected = gated.load_state_dict(body.state_dict(), strict=False)
    assert not unexpected and all(key.startswith("gates.") for key in missing)


@pytest.mark.parametrize("in_channels, out_channels, n_subregions", [(4, 3, 3), (2, 1, 2)])
def test_segguidednet_gates_add_under_0_2_percent(in_channels, out_channels, n_subregions):
    net = create_model("segguidednet", in_channels, out_channels, n_subregions=n_subregions)
    gate_params = sum(n_params(stage.gate) for stage in net.decoders)
    assert gate_params > 0
    assert gate_params / (n_params(net) - gate_params) < 0.002


@pytest.mark.parametrize("in_channels, out_channels", [(2, 1), (4, 3)])
@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name, in_channels, out_channels):
    torch.manual_seed(0)
    net = create_model(name, in_channels, out_channels, **setup_options(name, in_channels)).train()
    x = torch.randn(1, in_channels, *SIZE)
    out = net(x)
    assert isinstance(out, NetworkOutput)
    assert out.logits.shape == (1, out_channels, *SIZE)
    assert all(torch.isfinite(t).all() for t in (out.logits, *out.attention_maps, *out.gate_maps))
    # every map comes with its logits, what the losses take
    assert [m.shape for m in out.attention_maps] == [z.shape for z in out.attention_logits]
    assert [m.shape for m in out.gate_maps] == [z.shape for z in out.gate_logits]
    target = (torch.rand_like(out.logits) > 0.5).float()
    loss = nn.functional.binary_cross_entropy_with_logits(out.logits, target)
    loss.backward()
    for param_name, param in net.named_parameters():
        assert param.grad is not None, f"{name}: {param_name} gets no gradient"
        assert torch.isfinite(param.grad).all(), f"{name}: {param_name} has a non-finite gradient"


@pytest.mark.parametrize("name", list_models())
def test_input_size_not_divisible_is_refused(name):
    net = create_model(name, 2, 1, **setup_options(name, 2))
    with pytest.raises(ValueError, match="divisible by"):
        net(torch.zeros(1, 2, 32, 32, 12))


def test_hard_gate_is_exactly_zero_where_closed_and_passes_gating_channels():
    torch.manual_seed(0)
    gate = SpatialGate(skip_channels=16, context_channels=32, mode="hard", threshold=0.5,
                       gate_channel_fraction=0.25)
    randomise_gates(gate)
    skip = torch.randn(2, 16, 8, 8, 8)
    context = torch.randn(2, 32, 4, 4, 4)
    gated, g, logit = gate(skip, context)
    assert g.shape == logit.shape == (2, 1, 8, 8, 8)
    assert set(g.unique().tolist()) == {0.0, 1.0}  # exact 0/1, and both occur
    assert torch.equal(g == 1, torch.sigmoid(logit) > 0.5)  # open exactly where p > tau
    closed = (g == 0).expand(-1, 12, -1, -1, -1)
    value_in, value_out = skip[:, 4:], gated[:, 4:]
    assert (value_out[closed] == 0).all()
    assert torch.equal(value_out[~closed], value_in[~closed])
    assert torch.equal(gated[:, :4], skip[:, :4])  # the gating part passes unchanged


def test_hard_gate_weights_learn_through_the_straight_through_estimator():
    torch.manual_seed(0)
    net = create_model("sgnet", 2, 1)
    randomise_gates(net.gates)
    out = net(torch.randn(2, 2, *SMALL))
    assert any(0 < f < 1 for f in net.last_open_fractions)  # some voxels closed, some open
    for g in out.gate_maps:
        assert set(g.unique().tolist()) <= {0.0, 1.0}
    out.logits.square().mean().backward()
    for name, param in net.gates.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"gate parameter {name} does not learn"


def test_raising_gate_threshold_never_opens_more_voxels():
    torch.manual_seed(0)
    reference = create_model("sgnet", 2, 1, gate_threshold=0.5)
    randomise_gates(reference.gates)
    x = torch.randn(2, 2, *SMALL)
    previous, totals = None, []
    for threshold in (0.1, 0.3, 0.5, 0.7, 0.9):
        net = create_model("sgnet", 2, 1, gate_threshold=threshold)
        net.load_state_dict(reference.state_dict())
        with torch.no_grad():
            gates = net.eval()(x).gate_maps
        if previous is not None:
            for low, high in zip(previous, gates):
                assert not (high > low).any(), f"threshold {threshold} opened a voxel closed at a lower one"
        previous = gates
        totals.append(sum(int(g.sum()) for g in gates))
    assert totals[0] > totals[-1]  # the threshold does close voxels


def test_gates_start_open():
    torch.manual_seed(0)
    for threshold in (0.1, 0.5, 0.9):
        net = create_model("sgnet", 2, 1, gate_threshold=threshold)
        out = net(torch.randn(2, 2, *SMALL))
        assert net.last_open_fractions == out.open_fractions() == [1.0, 1.0, 1.0]


def test_initialisation_does_not_depend_on_the_threshold():
    # The old design set each gate's bias to logit(tau) + 2, which made every decision independent
    # of tau. Now every tau starts from the same weights, so tau changes what the network does.
    states = []
    for threshold in (0.3, 0.7):
        torch.manual_seed(0)
        states.append(create_model("sgnet", 2, 1, gate_threshold=threshold).state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    # and the probability it starts at is the fixed reference, not something near tau
    torch.manual_seed(0)
    net = create_model("sgnet", 2, 1, gate_threshold=0.3)
    probabilities = torch.cat([torch.sigmoid(z).flatten() for z in net(torch.randn(2, 2, *SMALL)).gate_logits])
    assert (probabilities - INITIAL_OPEN_PROBABILITY).abs().max() < 0.02


def test_gate_threshold_is_settable_on_a_trained_network():
    torch.manual_seed(0)
    net = create_model("sgnet", 2, 1, gate_threshold=0.5)
    randomise_gates(net.gates)
    x = torch.randn(2, 2, *SMALL)
    with torch.no_grad():
        out = net.eval()(x)
        net.gate_threshold = 0.8
        raised = net(x)
    assert [g.threshold for g in net.gates] == [0.8] * 3
    for logit, gate, gate_raised in zip(out.gate_logits, out.gate_maps, raised.gate_maps):
        p = torch.sigmoid(logit.float())
        assert torch.equal(gate == 1, p > 0.5) and torch.equal(gate_raised == 1, p > 0.8)
    with pytest.raises(ValueError, match="gate_threshold"):
        net.gate_threshold = 1.0


def test_soft_and_none_modes():
    torch.manual_seed(0)
    x = torch.randn(2, 2, *SMALL)
    soft = create_model("sgnet", 2, 1, gate_mode="soft")
    randomise_gates(soft.gates)
    gates = soft(x).gate_maps
    assert [g.shape[2:] for g in gates] == [(4, 4, 2), (8, 8, 4), (16, 16, 8)]
    values = torch.cat([g.flatten() for g in gates])
    assert values.min() >= 0 and values.max() <= 1
    assert ((values > 0.01) & (values < 0.99)).any()  # continuous, not 0/1

    body = create_model("sgnet", 2, 1, gate_mode="none")
    out = body(x)
    assert out.gate_maps == () and body.last_open_fractions == [] and body.gates is None
    # an open hard gate is the identity: with the body's weights the gated net computes the body
    hard = create_model("sgnet", 2, 1)
    hard.load_state_dict(body.state_dict(), strict=False)
    body.eval(), hard.eval()
    with torch.no_grad():
        torch.testing.assert_close(hard(x).logits, body(x).logits, rtol=0, atol=0)


@pytest.mark.parametrize("value", [0.0, 1.0, 1.5, -0.2, "0.5", True])
def test_gate_threshold_is_validated(value):
    with pytest.raises(ValueError, match="gate_threshold"):
        create_model("sgnet", 2, 1, gate_threshold=value)


def test_gate_mode_is_validated():
    with pytest.raises(ValueError, match="gate_mode"):
        create_model("sgnet", 2, 1, gate_mode="binary")


@pytest.mark.parametrize("in_channels, out_channels, n_subregions", [(4, 3, 3), (2, 1, 2)])
def test_segguidednet_attention_maps(in_channels, out_channels, n_subregions):
    torch.manual_seed(0)
    net = create_model("segguidednet", in_channels, out_channels, n_subregions=n_subregions, base_channels=8)
    out = net(torch.randn(1, in_channels, *SIZE))
    # one map per sub-region after each of the three decoder stages, coarsest first
    assert [tuple(a.shape) for a in out.attention_maps] == [
        (1, n_subregions, 8, 8, 4), (1, n_subregions, 16, 16, 8), (1, n_subregions, *SIZE)
    ]
    for a, logits in zip(out.attention_maps, out.attention_logits):
        assert a.min() >= 0 and a.max() <= 1
        torch.testing.assert_close(a, torch.sigmoid(logits))
    # the maps are differentiable, so the auxiliary loss reaches the gates
    sum(a.mean() for a in out.attention_maps).backward()
    assert all(stage.gate.proj.weight.grad.abs().sum() > 0 for stage in net.decoders)


def test_segguidednet_size_options():
    net = create_model("segguidednet", 4, 3, base_channels=8, depth=3)
    out = net(torch.randn(1, 4, 16, 16, 8))
    assert len(out.attention_maps) == 2 and out.logits.shape == (1, 3, 16, 16, 8)
    with pytest.raises(ValueError, match="depth"):
        create_model("segguidednet", 4, 3, depth=1)


def test_create_model_errors_and_none_options():
    with pytest.raises(ValueError, match="unknown model 'vnet'.*sgnet.*unet"):
        create_model("vnet", 2, 1)
    with pytest.raises(ValueError, match="model 'unet' has no option 'gate_threshold'"):
        create_model("unet", 2, 1, gate_threshold=0.5)
    # None means "keep the default": a config may carry every option of every network
    net = create_model("sgnet", 2, 1, gate_threshold=None, gate_mode=None, channels=None)
    assert net.gate_mode == "hard" and net.gates[0].threshold == 0.5


def _readme_architectures() -> list[dict]:
    """Rows of README's Architectures table: ``name``, ``gate_modes`` (the row's, else []),
    parameter counts ``p2_1`` (2 in / 1 out) and ``p4_3`` (4 in / 3 out)."""
    section = (REPO / "README.md").read_text().split("## Architectures", 1)[1].split("\n## ", 1)[0]
    row = re.compile(r"\| `(\w+)`(?: \(([^)]*)\))? \|[^|]*\| ([\d,]+)[^|]*\| ([\d,]+) \|")
    return [{"name": m[1], "gate_modes": re.findall(r"`(?:gate_mode: )?(\w+)`", m[2] or ""),
             "p2_1": int(m[3].replace(",", "")), "p4_3": int(m[4].replace(",", ""))}
            for m in map(row.match, section.splitlines()) if m]


def test_readme_lists_every_registered_model_with_its_measured_parameter_counts():
    rows = _readme_architectures()
    assert sorted({row["name"] for row in rows}) == list_models()
    for row in rows:
        for gate_mode in row["gate_modes"] or [None]:
            for (in_channels, out_channels), expected in (((2, 1), row["p2_1"]), ((4, 3), row["p4_3"])):
                options = {**setup_options(row["name"], in_channels), "gate_mode": gate_mode}
                net = create_model(row["name"], in_channels, out_channels, **options)
                assert n_params(net) == expected, (row["name"], gate_mode, in_channels, out_channels)


def test_every_registered_model_has_its_config_fragment():
    fragments = {path.stem: load_config(path)["model"]["network"]
                 for path in (REPO / "experiments" / "models").glob("*.yaml")}
    assert sorted(fragments) == list_models()
    assert all(stem == network for stem, network in fragments.items()), fragments


def test_the_registry_refuses_a_taken_name_and_factories_it_could_not_check():
    known = list_models()

    def unet(in_channels, out_channels):
        return nn.Identity()

    def hidden_options(in_channels, out_channels, **options):
        return nn.Identity()

    def channels_last(out_channels, in_channels):
        return nn.Identity()

    with pytest.raises(ValueError, match="'unet' is already registered"):
        register_model(unet)
    with pytest.raises(ValueError, match="must list its options explicitly"):
        register_model(hidden_options)
    with pytest.raises(ValueError, match=r"must take \(in_channels, out_channels, \.\.\.\) first"):
        register_model(channels_last)
    assert list_models() == known and create_model("unet", 2, 1).__class__.__name__ != "Identity"
