"""The one training module: real Trainer.fit on a tiny synthetic blob, for every architecture."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from sgnet_lightning.evaluation.metrics import dice_per_channel
from sgnet_lightning.models import list_models
from sgnet_lightning.module import SegmentationModule

# The MONAI U-Nets downsample four times with instance norm: they need 32^3 at least. The others
# run on 16^3 so the test stays cheap on two cores.
SIZE = {"unet": 32, "resunet": 32, "attention_unet": 32}
# Steps each network needs on the blob at lr 3e-3 (measured; all pass Dice 0.9 inside them).
STEP_BUDGET = {"sgnet": 30, "unet": 30, "resunet": 100, "attention_unet": 40, "segguidednet": 25, "segresnet": 40}


def blob_volume(seed: int = 0, channels: int = 2, size: int = 16):
    """(C, X, Y, Z) noisy image with a bright ball; (1, X, Y, Z) its mask; (2, ...) two sub-regions."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 3, indexing="ij"))
    centre = (torch.tensor([0.4, 0.55, 0.45]) * size).view(3, 1, 1, 1)
    dist = (grid - centre).pow(2).sum(0).sqrt()
    mask = (dist < size / 5).float()
    image = 0.2 * torch.randn(channels, size, size, size, generator=g) + mask
    core = (dist < size / 10).float()
    return image, mask[None], torch.stack([core, mask - core])


class RepeatedVolume(Dataset):
    def __init__(self, n: int, size: int = 16):
        self.n = n
        self.image, self.target, self.subregions = blob_volume(size=size)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"image": self.image, "target": self.target, "subregions": self.subregions}


def make_module(name: str, **kwargs) -> SegmentationModule:
    options = {"n_subregions": 2} if name == "segguidednet" else {}
    return SegmentationModule(
        network=name, network_options=options, in_channels=2, out_channels=1,
        optimizer={"name": "adam", "lr": 3e-3}, scheduler={"name": "none"},
        sliding_window={"roi_size": [SIZE.get(name, 16)] * 3, "sw_batch_size": 1},
        aux_loss_weight=0.5 if name == "segguidednet" else 0.0, **kwargs,
    )


def fit(module: SegmentationModule, steps: int, tmp_path, size: int = 16) -> pl.Trainer:
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=DataLoader(RepeatedVolume(steps * 2, size), batch_size=2))
    return trainer


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_every_network_overfits_a_blob(name, tmp_path):
    pl.seed_everything(0)
    size = SIZE.get(name, 16)
    module = make_module(name)
    fit(module, STEP_BUDGET[name], tmp_path, size)
    module.eval()
    image, target, _ = blob_volume(size=size)
    probabilities = module.predict_volume(image[None])["probabilities"]
    dice = dice_per_channel(probabilities > 0.5, target[None] > 0.5)
    assert float(dice.mean()) > 0.9, f"{name} reached Dice {float(dice.mean()):.3f}"


def test_checkpoint_round_trip_reproduces_outputs(tmp_path):
    pl.seed_everything(0)
    module = make_module("sgnet", channels_last=False)
    trainer = fit(module, 3, tmp_path)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    restored = SegmentationModule.load_from_checkpoint(path, map_location="cpu")
    module.eval(), restored.eval()
    image = blob_volume(seed=3)[0][None]
    with torch.no_grad():
        assert torch.equal(module(image).logits, restored(image).logits)
    assert restored.hparams.network == "sgnet"
    assert restored.hparams.network_options == module.hparams.network_options


def test_aux_loss_weight_zero_turns_auxiliary_loss_off():
    module = make_module("segguidednet")
    batch = RepeatedVolume(1)[0]
    batch = {k: v[None] for k, v in batch.items()}
    out = module(batch["image"])
    with_aux, parts = module._loss(out, batch)
    assert "loss_aux" in parts and parts["loss_aux"] > 0
    module.hparams.aux_loss_weight = 0.0
    without_aux, parts = module._loss(out, batch)
    assert "loss_aux" not in parts
    assert torch.isclose(with_aux - without_aux, 0.5 * module.aux_loss(out.attention_logits, batch["subregions"]))


@pytest.mark.parametrize(
    ("optimizer", "scheduler", "expected"),
    [({"name": "adam", "lr": 1e-4}, {"name": "plateau", "factor": 0.5, "patience": 5}, "ReduceLROnPlateau"),
     ({"name": "adamw", "lr": 1e-3}, {"name": "cosine_restarts", "T_0": 10}, "CosineAnnealingWarmRestarts")],
)
def test_optimiser_and_scheduler_from_config(optimizer, scheduler, expected):
    module = SegmentationModule(network="unet", optimizer=optimizer, scheduler=scheduler)
    config = module.configure_optimizers()
    assert type(config["lr_scheduler"]["scheduler"]).__name__ == expected
    assert config["optimizer"].defaults["lr"] == optimizer["lr"]


def test_unknown_optimiser_is_a_clear_error():
    module = SegmentationModule(network="unet", optimizer={"name": "lion"})
    with pytest.raises(ValueError, match="optimizer.name 'lion'"):
        module.configure_optimizers()
