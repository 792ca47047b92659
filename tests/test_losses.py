"""Losses: safe under CUDA autocast (checked on the CPU), the auxiliary loss masked where a label is
absent, the gate supervision target, and the presence flags the DataModule attaches to batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch.utils._python_dispatch import TorchDispatchMode

from sgnet_lightning.losses import AttentionSupervisionLoss, DiceBCELoss, GateSupervisionLoss

AUTOCAST_CUDA = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCUDA) | torch._C.DispatchKeySet(
    torch._C.DispatchKey.CPU
)


class RecordOps(TorchDispatchMode):
    """Records every aten op (with its arguments) run inside the ``with`` block, forward and backward."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.calls.append((func, args, kwargs))
        return func(*args, **kwargs)


def autocast_check(run) -> tuple[set[str], set[str]]:
    """Run ``run()`` (forward and backward of a loss) on the CPU; return (the ops CUDA autocast would
    refuse, all ops sent to CUDA autocast's kernels).

    CPU autocast does not refuse anything, so a CPU test cannot see the failure directly. Each
    recorded op that has its own AutocastCUDA kernel (the casting wrappers and the banned ops; all
    other ops fall through autocast) is sent to that kernel, with the CPU kernel behind it: the banned
    ones raise "... unsafe to autocast", the others cast nothing (CPU tensors) and run on the CPU.
    """
    with RecordOps() as recorder:
        run()
    refused, checked = set(), set()
    for func, args, kwargs in recorder.calls:
        name = func.name()
        if name in checked or not torch._C._dispatch_has_kernel_for_dispatch_key(name, torch._C.DispatchKey.AutocastCUDA):
            continue
        checked.add(name)
        try:
            func.redispatch(AUTOCAST_CUDA, *args, **kwargs)
        except RuntimeError as error:
            if "unsafe to autocast" not in str(error):
                raise
            refused.add(name)
    return refused, checked


def _logits_and_masks(shape=(2, 2, 8, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, requires_grad=True)
    masks = (torch.rand(shape, generator=g) > 0.7).float()
    return logits, masks


def test_the_autocast_check_catches_binary_cross_entropy_on_probabilities():
    logits, target = _logits_and_masks()

    def old_attention_loss():  # what AttentionSupervisionLoss used to do
        F.binary_cross_entropy(torch.sigmoid(logits).clamp(1e-6, 1 - 1e-6), target).backward()

    assert autocast_check(old_attention_loss)[0] == {"aten::binary_cross_entropy"}
    refused, checked = autocast_check(lambda: F.binary_cross_entropy_with_logits(logits, target).backward())
    assert not refused and "aten::binary_cross_entropy_with_logits" in checked


def test_every_loss_of_the_suite_is_safe_under_cuda_autocast():
    seg_logits, target = _logits_and_masks((2, 1, 16, 16, 16))
    attention = tuple(_logits_and_masks((2, 2, n, n, n), seed=n)[0] for n in (4, 8, 16))
    gates = tuple(_logits_and_masks((2, 1, n, n, n), seed=n)[0] for n in (4, 8, 16))
    subregions = _logits_and_masks((2, 2, 16, 16, 16), seed=3)[1]
    present = torch.tensor([[True, False], [True, True]])
    losses = {
        "DiceBCELoss": lambda: DiceBCELoss()(seg_logits, target),
        "AttentionSupervisionLoss": lambda: AttentionSupervisionLoss()(attention, subregions, present),
        "GateSupervisionLoss": lambda: GateSupervisionLoss(dilation=2)(gates, target),
    }
    for name, loss in losses.items():
        refused, checked = autocast_check(lambda: loss().backward())
        assert not refused, f"{name} calls {refused}, which CUDA autocast refuses"
        assert "aten::binary_cross_entropy_with_logits" in checked, name  # the check saw the loss's ops


# -- the auxiliary loss where a label is absent ----------------------------------------------------------
def test_absent_subregions_contribute_nothing_and_get_exactly_zero_gradient():
    loss_fn = AttentionSupervisionLoss()
    subregions = _logits_and_masks((2, 2, 16, 16, 16), seed=1)[1]
    stages = tuple(_logits_and_masks((2, 2, n, n, n), seed=n)[0] for n in (8, 16))
    present = torch.tensor([[True, False], [True, True]])  # subject 0 lacks sub-region 1
    loss = loss_fn(stages, subregions, present)
    loss.backward()
    for logits in stages:
        assert torch.count_nonzero(logits.grad[0, 1]) == 0  # exactly zero, not small
        assert all(torch.count_nonzero(logits.grad[b, s]) > 0 for b, s in ((0, 0), (1, 0), (1, 1)))

    # the value is the mean over the known maps only: the same loss scored map by map
    def one_map(b, s):
        return loss_fn(tuple(z[b:b + 1, s:s + 1] for z in stages), subregions[b:b + 1, s:s + 1])

    with torch.no_grad():
        expected = sum(one_map(b, s) for b, s in ((0, 0), (1, 0), (1, 1))) / 3
        torch.testing.assert_close(loss_fn(stages, subregions, present), expected)
        # and an absent map's content does not matter
        changed = tuple(z.detach().clone() for z in stages)
        for z in changed:
            z[0, 1] = 50.0
        torch.testing.assert_close(loss_fn(changed, subregions, present), loss)


def test_no_known_subregion_gives_a_zero_loss_with_zero_gradient():
    logits, masks = _logits_and_masks()
    loss = AttentionSupervisionLoss()((logits,), masks, torch.zeros(2, 2, dtype=torch.bool))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.count_nonzero(logits.grad) == 0


# -- gate supervision ------------------------------------------------------------------------------------
def test_gate_target_is_the_dilated_tumour_max_pooled_to_each_gate():
    g = torch.Generator().manual_seed(0)
    target = torch.zeros(1, 2, 16, 16, 8)
    target[0, 0, 3, 4, 2] = 1  # one region, a voxel
    target[0, 1, 10:12, 9:13, 5:7] = (torch.rand(2, 4, 2, generator=g) > 0.3).float()  # the other
    loss = GateSupervisionLoss(dilation=2)
    tumour = target.amax(1)[0].numpy() > 0
    cube = np.ones((5, 5, 5), dtype=bool)
    dilated = ndimage.binary_dilation(tumour, structure=cube)  # scipy's dilation by the 5^3 cube
    assert np.array_equal(loss.vicinity(target, (16, 16, 8))[0, 0].numpy() > 0, dilated)
    for factor in (2, 4):
        size = (16 // factor, 16 // factor, 8 // factor)
        blocks = dilated.reshape(size[0], factor, size[1], factor, size[2], factor).any(axis=(1, 3, 5))
        assert np.array_equal(loss.vicinity(target, size)[0, 0].numpy() > 0, blocks)
    assert np.array_equal(GateSupervisionLoss(dilation=0).vicinity(target, (16, 16, 8))[0, 0].numpy() > 0, tumour)


def test_gate_loss_weighs_tumour_vicinity_and_background_equally():
    # constant logits c: vicinity cells cost softplus(-c), others softplus(c), each class half,
    # however small the tumour is
    loss = GateSupervisionLoss(dilation=1)
    small, large = torch.zeros(1, 1, 16, 16, 16), torch.zeros(1, 1, 16, 16, 16)
    small[0, 0, 8, 8, 8] = 1
    large[0, 0, 2:12, 2:12, 2:12] = 1
    logits = (torch.full((1, 1, 8, 8, 8), 1.5), torch.full((1, 1, 16, 16, 16), 1.5))
    expected = 0.5 * (F.softplus(torch.tensor(-1.5)) + F.softplus(torch.tensor(1.5)))
    torch.testing.assert_close(loss(logits, small), expected)
    torch.testing.assert_close(loss(logits, large), expected)
    # a batch without tumour: background only
    torch.testing.assert_close(loss(logits, torch.zeros(1, 1, 16, 16, 16)), F.softplus(torch.tensor(1.5)))


@pytest.mark.parametrize("dilation", [-1, 1.5, True])
def test_gate_target_dilation_is_validated(dilation):
    with pytest.raises(ValueError, match="gate_target_dilation"):
        GateSupervisionLoss(dilation)


def test_gate_loss_needs_gates():
    with pytest.raises(ValueError, match="gate_loss_weight > 0 but the network returns no gates"):
        GateSupervisionLoss()((), torch.zeros(1, 1, 8, 8, 8))


# -- presence flags from the cache to the batch ----------------------------------------------------------
@pytest.mark.parametrize("loader", ["queue", "device"])
def test_training_batches_carry_each_subjects_subregion_presence(phantom_bml, loader):
    from sgnet_lightning.data import cache
    from sgnet_lightning.data.datamodule import SegmentationDataModule

    dm = SegmentationDataModule(str(phantom_bml["manifest"]), cache_root=str(phantom_bml["cache"]), spacing_mm=5.0,
                                patch_size=(16, 16, 16), batch_size=8, samples_per_volume=4, queue_length=16,
                                num_workers=0, steps_per_epoch=4, loader=loader)
    dm.prepare_data()
    dm.setup("fit")
    labels = {s: cache.read_meta(dm.cache_dir / s)["labels_present"] for s in dm.splits["train"]}
    lacking_core = [s for s, present in labels.items() if "core" not in present]
    assert lacking_core, "the phantom set should hold a training case without core_seg (BML-0008)"
    seen = set()
    for batch in dm.train_dataloader():
        batch = dm.on_after_batch_transfer(batch, 0)
        assert batch["subregions_present"].shape == (8, 2)  # core, edema
        for index, present in zip(batch["volume_index"].tolist(), batch["subregions_present"].tolist()):
            subject = dm.splits["train"][index]
            seen.add(subject)
            # core needs core_seg; edema (whole minus core) needs both label files
            assert present == ["core" in labels[subject], "core" in labels[subject] and "whole" in labels[subject]]
    assert len(seen) > 1


def test_a_training_subject_without_the_tasks_labels_is_refused(phantom_bml):
    from sgnet_lightning.data.datamodule import SegmentationDataModule
    from sgnet_lightning.errors import DataError

    # a core + whole task on a manifest made for the whole-tumour task: BML-0008 has no core_seg
    dm = SegmentationDataModule(str(phantom_bml["manifest"]), cache_root=str(phantom_bml["cache"]), spacing_mm=5.0,
                                patch_size=(16, 16, 16), num_workers=0, task="core_whole")
    dm.prepare_data()
    dm.setup("fit")
    with pytest.raises(DataError, match="lacks label core, which task 'core_whole' trains on"):
        dm.train_dataloader()
