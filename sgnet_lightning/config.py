"""Experiment configs: YAML files that compose through a ``defaults`` list.

A config may start with ``defaults: [base.yaml, ../models/sgnet.yaml]`` (paths relative to the file);
those files are merged first, in order, then the file's own keys on top (dicts merge key by key,
everything else replaces). So a dataset base, a model file and a seed-way file compose into one
experiment, and a sweep or benchmark changes a value instead of copying a file.

Top-level sections: ``model`` (``SegmentationModule`` arguments), ``data``
(``SegmentationDataModule`` arguments), ``trainer`` (Lightning ``Trainer`` arguments),
``seed_everything``, and the suite's own ``run`` (``name``, ``root``, ``resume``, ``wandb``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from sgnet_lightning.errors import ConfigError


def deep_merge(base: dict, override: dict) -> dict:
    """Return ``base`` updated by ``override``: nested dicts merge, other values replace."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_config(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Load a YAML config and everything its ``defaults`` list names, merged."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: 'defaults' form a cycle: {' -> '.join(map(str, _seen + (path,)))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        own = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(own, dict):
        raise ConfigError(f"{path}: a config must be a mapping, got {type(own).__name__}")
    merged: dict[str, Any] = {}
    for parent in own.pop("defaults", []) or []:
        merged = deep_merge(merged, load_config(path.parent / parent, _seen + (path,)))
    return deep_merge(merged, own)


def set_dotted(config: dict, dotted_key: str, value: Any) -> dict:
    """Set ``config["a"]["b"]["c"] = value`` for ``dotted_key="a.b.c"``, creating dicts on the way."""
    node = config
    *parents, leaf = dotted_key.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted_key!r}: {key!r} is not a mapping")
    node[leaf] = value
    return config


def get_dotted(config: dict, dotted_key: str, default: Any = None) -> Any:
    node: Any = config
    for key in dotted_key.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def parse_overrides(pairs: list[str]) -> dict:
    """``["model.aux_loss_weight=0.5", "trainer.max_epochs=3"]`` -> nested dict (values parsed as YAML)."""
    config: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} must look like key.path=value")
        key, raw = pair.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            problem = str(err).splitlines()[0]
            raise ConfigError(f"override {key.strip()}={raw!r}: the value is not valid YAML ({problem})") from None
        set_dotted(config, key.strip(), value)
    return config
