"""Experiment config -> module, DataModule and Trainer: the suite's ``LightningCLI``, used as a parser.

Not a command line (that is :mod:`sgnet_lightning.cli`): :func:`sgnet_lightning.experiment.build`
hands it one resolved config file. LightningCLI brings the parser: types and unknown keys are checked
against the signatures of ``SegmentationModule``, ``SegmentationDataModule`` and ``Trainer``, and
the data's shapes are linked into the model.
"""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningCLI

from sgnet_lightning.data.datamodule import SegmentationDataModule
from sgnet_lightning.module import SegmentationModule


class SuiteCLI(LightningCLI):
    """``LightningCLI`` over the one module and the one DataModule.

    ``model.in_channels`` and ``model.out_channels`` are not written in configs: they follow from the
    data set (modalities) and the task (regions), so a model config works on every data set.
    """

    def __init__(self, instantiate: bool = True, **kwargs):
        self._instantiate = instantiate
        kwargs.setdefault("save_config_callback", None)  # the experiment writes config.yaml itself
        # The suite always hands LightningCLI its arguments explicitly; hide the process's own argv
        # (the `sgnet` command line) so LightningCLI does not warn about receiving both.
        argv, sys.argv = sys.argv, sys.argv[:1]
        try:
            super().__init__(SegmentationModule, SegmentationDataModule, subclass_mode_model=False,
                             subclass_mode_data=False, **kwargs)
        finally:
            sys.argv = argv

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_channels", "model.in_channels", apply_on="instantiate")
        parser.link_arguments("data.num_regions", "model.out_channels", apply_on="instantiate")

    def instantiate_classes(self) -> None:
        # instantiate=False validates a config (types, unknown keys) without touching data or model:
        # used to check every shipped config, including those for data sets absent here
        if self._instantiate:
            super().instantiate_classes()
