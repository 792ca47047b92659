"""Network registry (timm style): plain ``nn.Module``s created by name.

Every registered network takes ``in_channels`` and ``out_channels`` and returns a
:class:`~sgnet_lightning.models.output.NetworkOutput`.
"""

from sgnet_lightning.models.output import NetworkOutput
from sgnet_lightning.models.registry import create_model, list_models, register_model

# importing the modules registers their networks
from sgnet_lightning.models import baselines, segguidednet, sgnet  # noqa: E402,F401

__all__ = ["NetworkOutput", "create_model", "list_models", "register_model"]
