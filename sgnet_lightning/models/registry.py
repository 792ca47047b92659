"""The network registry (timm style) and the input-size check every registered network shares.

A network is registered by decorating a *factory*, a function
``fn(in_channels, out_channels, *, option=default, ...) -> nn.Module`` whose name is the network's
name. Factories take every option as an explicit keyword argument with a default, so that:

- :func:`create_model` can drop options that are None (an unset config field keeps the factory's
  default) and reject an unknown option with a message naming it and the model;
- :func:`model_options` can list a network's options and defaults (for configs and sweeps).

Example::

    >>> import torch
    >>> from sgnet_lightning.models import create_model
    >>> net = create_model("sgnet", in_channels=2, out_channels=1, gate_threshold=0.6)
    >>> out = net(torch.zeros(1, 2, 96, 96, 32))
    >>> out.logits.shape
    torch.Size([1, 1, 96, 96, 32])
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

ModelFactory = Callable[..., nn.Module]

_MODELS: dict[str, ModelFactory] = {}
# the two arguments every factory takes positionally; everything else is an option
_REQUIRED = ("in_channels", "out_channels")


def register_model(fn: ModelFactory) -> ModelFactory:
    """Register ``fn`` under its own name (decorator); returns ``fn`` unchanged.

    Raises:
        ValueError: if the name is taken, or ``fn`` does not start with ``in_channels, out_channels``
            or takes ``**kwargs`` (options must be explicit so unknown ones can be rejected).
    """
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    params = list(inspect.signature(fn).parameters.values())
    if tuple(p.name for p in params[:2]) != _REQUIRED:
        raise ValueError(f"factory {name!r} must take (in_channels, out_channels, ...) first")
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        raise ValueError(f"factory {name!r} must list its options explicitly, not take **kwargs")
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    """Names of all registered networks, sorted."""
    return sorted(_MODELS)


def _factory(name: str) -> ModelFactory:
    try:
        return _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def model_options(name: str) -> dict[str, Any]:
    """The options of network ``name`` (everything but in/out channels) with their defaults."""
    params = inspect.signature(_factory(name)).parameters
    return {k: p.default for k, p in params.items() if k not in _REQUIRED}


def create_model(name: str, in_channels: int, out_channels: int, **options: Any) -> nn.Module:
    """Build network ``name`` with ``in_channels`` input and ``out_channels`` output channels.

    Options whose value is None are dropped, so the factory's default applies; this lets a config
    carry every option of every network and set only those it means to change.

    Raises:
        ValueError: unknown ``name`` (the message lists the known ones), or an option the network
            does not take (the message names the option, the network and its valid options).
    """
    factory = _factory(name)
    options = {k: v for k, v in options.items() if v is not None}
    valid = model_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"model {name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options are: {', '.join(valid) or '(none)'}"
        )
    return factory(in_channels, out_channels, **options)


def check_spatial_size(x: torch.Tensor, divisor: int, model: str) -> None:
    """Raise ``ValueError`` unless ``x`` is (B, C, X, Y, Z) with X, Y and Z divisible by ``divisor``.

    Every network here halves the resolution ``log2(divisor)`` times and concatenates or adds
    encoder and decoder features of equal size; other sizes fail deep inside with a shape mismatch
    that does not say what to change. Sliding-window inference and crops must use such sizes.
    """
    if x.ndim != 5:
        raise ValueError(f"{model} expects a (B, C, X, Y, Z) tensor, got shape {tuple(x.shape)}")
    bad = [s for s in x.shape[2:] if s % divisor]
    if bad:
        raise ValueError(
            f"{model} needs every spatial size divisible by {divisor}, got {tuple(x.shape[2:])} voxels"
        )
