"""One LightningModule that trains, validates and tests every registered network.

The module knows nothing about architectures: it creates the network by name from the registry,
reads its :class:`~sgnet_lightning.models.NetworkOutput`, and gets optimiser and scheduler from
config. Sampling and augmentation live in the DataModule, metrics in ``sgnet_lightning.evaluation``,
sliding-window inference in ``sgnet_lightning.inference``. The module computes and writes nothing:
its test step returns each subject's prediction and result rows, and a callback
(:class:`~sgnet_lightning.writers.EvaluationWriter`) writes them where the experiment says.

Batches (built by :class:`~sgnet_lightning.data.datamodule.SegmentationDataModule`):
    training:   {"image": (B, C, X, Y, Z) float, "target": (B, R, X, Y, Z) {0,1},
                 "subregions": (B, S, X, Y, Z) {0,1}, "subregions_present": (B, S) bool (optional;
                 False where a subject's sub-region label is unknown)}
    validation / test: the same keys for one whole cached volume (B = 1), plus "label_map"
                 (B, X, Y, Z) uint8 or None, "subject" (list of str), "spacing_mm" (B, 3).
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from sgnet_lightning.evaluation.metrics import consolidate_regions, dice_per_channel
from sgnet_lightning.inference import SlidingWindow, sliding_window_predict
from sgnet_lightning.losses import AttentionSupervisionLoss, DiceBCELoss, GateSupervisionLoss
from sgnet_lightning.models import create_model

DEFAULT_OPTIMIZER = {"name": "adam", "lr": 1e-4, "weight_decay": 0.0}
DEFAULT_SCHEDULER = {"name": "plateau", "factor": 0.5, "patience": 5}


class SegmentationModule(pl.LightningModule):
    """Wraps any registered network with the loss, optimiser, scheduler and evaluation of the suite.

    Args:
        network: registered network name (``sgnet_lightning.models.list_models()``).
        network_options: keyword options of that network, e.g. ``{"gate_threshold": 0.5}``.
        in_channels: input modalities (2 for Brain-Mets-Lung, 4 for BraTS); linked from the data.
        out_channels: output regions (1 for the seed's whole tumour, 3 for ET/TC/WT); linked.
        aux_loss_weight: weight of the attention-map auxiliary loss; 0 turns it off.
        gate_loss_weight: weight of SG-Net's gate supervision loss (each gate against the dilated
            tumour at its resolution, :class:`~sgnet_lightning.losses.GateSupervisionLoss`); 0 turns
            it off. SG-Net's counterpart of ``aux_loss_weight``.
        gate_target_dilation: margin in voxels around the tumour where the supervised gates should
            be open (voxels of the cached grid: millimetres at the default 1 mm).
        optimizer: ``{"name": "adam" | "adamw" | "sgd", "lr": ..., **kwargs}``.
        scheduler: ``{"name": "plateau" | "cosine_restarts" | "none", **kwargs}``; ``plateau`` steps on
            validation Dice (mode max), ``cosine_restarts`` per epoch (``T_0``, ``T_mult``, ``eta_min``).
        sliding_window: ``{"roi_size": [x, y, z] voxels, "overlap": 0.25, "sw_batch_size": 4,
            "mode": "constant" | "gaussian"}`` for validation, test and prediction.
        threshold: probability above which a voxel belongs to a region.
        channels_last: use the channels-last 3D memory format (faster convolutions on recent GPUs).
        test_metrics: keyword options of :func:`~sgnet_lightning.evaluation.evaluate.evaluate_case`
            for the test step's rows (``distances``, ``lesions``, ...); the experiment passes the
            config's ``run.test_metrics`` here.
        test_maps: the test step also returns SG-Net's gate maps and SegGuidedNet's attention maps
            (whole volumes: memory and time), for writing them beside the prediction.
    """

    def __init__(
        self,
        network: str = "sgnet",
        network_options: dict[str, Any] | None = None,
        in_channels: int = 2,
        out_channels: int = 1,
        aux_loss_weight: float = 0.0,
        gate_loss_weight: float = 0.0,
        gate_target_dilation: int = 3,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        sliding_window: dict[str, Any] | None = None,
        threshold: float = 0.5,
        channels_last: bool = False,
        test_metrics: dict[str, Any] | None = None,
        test_maps: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        for name, weight in (("aux_loss_weight", aux_loss_weight), ("gate_loss_weight", gate_loss_weight)):
            if weight < 0:
                raise ValueError(f"{name} must be >= 0, got {weight}")
        self.net = create_model(network, in_channels, out_channels, **(network_options or {}))
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last_3d)
        self.loss = DiceBCELoss()
        self.aux_loss = AttentionSupervisionLoss()
        self.gate_loss = GateSupervisionLoss(gate_target_dilation)
        self._gate_tally: list[torch.Tensor] | None = None  # see start_gate_tally
        self.window = SlidingWindow(**(sliding_window or {}))
        self.optimizer_config = {**DEFAULT_OPTIMIZER, **(optimizer or {})}
        # a given scheduler replaces the default whole: plateau's keys mean nothing to another one
        self.scheduler_config = dict(scheduler) if scheduler else dict(DEFAULT_SCHEDULER)

    # -- forward and loss ---------------------------------------------------------------------
    def forward(self, image: torch.Tensor):
        if self.hparams.channels_last:
            image = image.contiguous(memory_format=torch.channels_last_3d)
        out = self.net(image)
        if self._gate_tally is not None and out.gate_maps:
            self._count_open_gates(out.gate_maps)
        return out

    def _loss(self, out, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        seg = self.loss(out.logits, batch["target"])
        parts = {"loss_seg": seg.detach()}
        total = seg
        if self.hparams.aux_loss_weight > 0:
            aux = self.aux_loss(out.attention_logits, batch["subregions"], batch.get("subregions_present"))
            parts["loss_aux"] = aux.detach()
            total = total + self.hparams.aux_loss_weight * aux
        if self.hparams.gate_loss_weight > 0:
            gate = self.gate_loss(out.gate_logits, batch["target"])
            parts["loss_gate"] = gate.detach()
            total = total + self.hparams.gate_loss_weight * gate
        return total, parts

    def on_train_epoch_start(self) -> None:
        # the DataModule reseeds its patch queue per epoch so resumed runs repeat uninterrupted ones
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "start_epoch"):
            datamodule.start_epoch(self.current_epoch)

    def training_step(self, batch, batch_idx):
        out = self(batch["image"])
        loss, parts = self._loss(out, batch)
        batch_size = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log_dict({f"train/{k}": v for k, v in parts.items()}, batch_size=batch_size)
        for i, gate in enumerate(out.gate_maps):  # a tensor, so logging never waits for the device
            self.log(f"gate/open_fraction_{i}", (gate > 0.5).float().mean(), batch_size=batch_size)
        return loss

    # -- gate open fractions over whole volumes ---------------------------------------------------
    def start_gate_tally(self) -> None:
        """From now on ``forward`` counts open and total gate voxels per level, summed over calls.

        Whole-volume inference runs the network once per sliding window; counting in ``forward``
        sees every window (a voxel in overlapping windows counts once per window). The counts stay
        tensors, so nothing waits on the device.
        """
        self._gate_tally = []

    def stop_gate_tally(self) -> list[torch.Tensor]:
        """Stop counting; return each gate level's open fraction (0-dim tensors), coarsest first,
        over the forwards since :meth:`start_gate_tally` (empty for networks without gates)."""
        tally, self._gate_tally = self._gate_tally or [], None
        return [open_voxels / voxels for open_voxels, voxels in tally]

    def _count_open_gates(self, gate_maps) -> None:
        counts = [torch.stack([(g > 0.5).sum().float(), g.new_tensor(float(g.numel()), dtype=torch.float32)])
                  for g in gate_maps]
        self._gate_tally = [t + c for t, c in zip(self._gate_tally, counts)] if self._gate_tally else counts

    # val/gate_open_fraction_<level>: per validation subject, averaged over subjects by Lightning.
    # In these hooks rather than in validation_step, which is about segmentation metrics.
    def on_validation_batch_start(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.start_gate_tally()

    def on_validation_batch_end(self, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        for level, fraction in enumerate(self.stop_gate_tally()):
            self.log(f"val/gate_open_fraction_{level}", fraction, batch_size=1, sync_dist=True)

    # -- whole-volume evaluation ----------------------------------------------------------------
    def predict_volume(self, image: torch.Tensor, with_maps: bool = False) -> dict[str, torch.Tensor]:
        """Sliding-window prediction over whole volumes.

        Args:
            image: (B, C, X, Y, Z).
        Returns:
            ``{"probabilities": (B, R, X, Y, Z)}`` and, with ``with_maps``, ``"attention"``
            (B, S, X, Y, Z) from the finest stage and/or ``"gate"`` (B, L, X, Y, Z), every gate level
            coarsest first, on the input grid.
        """
        return sliding_window_predict(self, image, self.window, with_maps=with_maps)

    def validation_step(self, batch, batch_idx):
        probabilities = self.predict_volume(batch["image"])["probabilities"]
        loss = self.loss(torch.logit(probabilities.clamp(1e-6, 1 - 1e-6)), batch["target"])
        pred = probabilities > self.hparams.threshold
        task = self.trainer.datamodule.task if self._has_datamodule() else None
        if task is not None:  # the regions of the label map that test scores, not the raw channels
            pred = consolidate_regions(pred, task)
        dice = dice_per_channel(pred, batch["target"] > 0.5)  # (B, R), on the cached grid (fast)
        names = task.region_names if task is not None else None
        self.log("val/loss", loss, batch_size=1, sync_dist=True)
        self.log("val/dice", dice.mean(), prog_bar=True, batch_size=1, sync_dist=True)
        for r in range(dice.shape[1]):
            name = names[r] if names else str(r)
            self.log(f"val/dice_{name}", dice[:, r].mean(), batch_size=1, sync_dist=True)

    def _has_datamodule(self) -> bool:
        return getattr(self.trainer, "datamodule", None) is not None and hasattr(self.trainer.datamodule, "task")

    # -- test: per-subject results ----------------------------------------------------------------
    def on_test_epoch_start(self):
        self.test_rows: list[dict] = []  # every subject's result rows, in test order
        self.test_inference_seconds: list[float] = []  # per subject: sliding-window prediction

    def test_step(self, batch, batch_idx) -> dict[str, Any]:
        """Predict one cached volume, put the label map back on the subject's original grid and
        score it there against the original reference file, by the code ``sgnet evaluate`` runs
        on a written NIfTI file (so both give the same numbers for one prediction).

        Returns (for the callbacks, :class:`~sgnet_lightning.writers.EvaluationWriter`; the rows are also
        collected in ``test_rows``)::

            {"subject": str,
             "prediction": (R, X, Y, Z) bool, on the cached grid,
             "maps": {"attention": (1, S, X, Y, Z), "gate": (1, L, X, Y, Z)} where the network has
                     them and ``test_maps`` is on, else {},
             "native": nibabel image: the uint8 label map on the subject's original grid,
             "rows": [{"subject", "region", "metric", "value", "convention"}, ...] including the
                     ``gate_open_fraction_<level>`` rows}
        """
        from sgnet_lightning.data.cache import read_meta
        from sgnet_lightning.data.labels import regions_to_label_map
        from sgnet_lightning.evaluation.evaluate import score_prediction
        from sgnet_lightning.evaluation.references import read_reference
        from sgnet_lightning.nifti import native_image

        datamodule = self.trainer.datamodule
        task = datamodule.task
        start = time.perf_counter()
        self.start_gate_tally()
        maps = self.predict_volume(batch["image"], with_maps=self.hparams.test_maps)
        open_fractions = self.stop_gate_tally()
        if batch["image"].is_cuda:
            torch.cuda.synchronize()
        self.test_inference_seconds.append(time.perf_counter() - start)
        pred = (maps.pop("probabilities")[0] > self.hparams.threshold).cpu().numpy()  # (R, X, Y, Z)
        subject = batch["subject"][0]
        native = native_image(regions_to_label_map(pred, task), read_meta(datamodule.cache_dir / subject))
        reference = read_reference(task.dataset, datamodule.manifest.record(subject))
        scores = score_prediction(subject, np.asarray(native.dataobj), native.affine,
                                  f"test prediction of {subject} on its original grid", reference, task,
                                  **(self.hparams.test_metrics or {}))
        rows = [{"subject": subject, **row} for row in scores] + gate_rows(subject, open_fractions)
        self.test_rows.extend(rows)
        return {"subject": subject, "prediction": pred, "maps": maps, "native": native, "rows": rows}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # a checkpoint alone must be enough for `sgnet predict`: keep how the data was prepared
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "task"):
            checkpoint["sgnet_data"] = _data_description(datamodule)

    # -- optimisation ------------------------------------------------------------------------------
    def configure_optimizers(self):
        opt_cfg = dict(self.optimizer_config)
        name = opt_cfg.pop("name").lower()
        optimizers = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
        if name not in optimizers:
            raise ValueError(f"optimizer.name {name!r} unknown; choose one of {', '.join(optimizers)}")
        optimizer = optimizers[name](self.parameters(), **opt_cfg)

        sched_cfg = dict(self.scheduler_config)
        sched_name = sched_cfg.pop("name").lower()
        if sched_name == "none":
            return optimizer
        if sched_name == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", **sched_cfg)
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": "val/dice", "strict": False},
            }
        if sched_name == "cosine_restarts":
            sched_cfg.setdefault("T_0", 10)
            scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, **sched_cfg)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
        raise ValueError(f"scheduler.name {sched_name!r} unknown; choose plateau, cosine_restarts or none")


def gate_rows(subject: str, open_fractions: list[torch.Tensor]) -> list[dict]:
    """Results rows of one subject's gate open fractions (:meth:`SegmentationModule.stop_gate_tally`,
    coarsest level first): metric ``gate_open_fraction_<level>``, region ``all``, value in [0, 1]."""
    from sgnet_lightning.evaluation import gate_open_fraction_metric

    return [{"subject": subject, "region": "all", "metric": gate_open_fraction_metric(level),
             "value": float(fraction), "convention": ""} for level, fraction in enumerate(open_fractions)]


def _data_description(datamodule) -> dict[str, Any]:
    """What ``sgnet predict`` needs to preprocess new cases exactly as in training."""
    from sgnet_lightning.data.sources import get_source

    task = datamodule.task
    return {
        "dataset": task.dataset,
        "task": task.name,
        "modalities": list(get_source(task.dataset).modalities),
        "spacing_mm": float(datamodule.hparams.spacing_mm),
        "region_names": task.region_names,
        "subregion_names": task.subregion_names,
    }

