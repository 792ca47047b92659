"""Config locks: the record of what a run's numbers depend on, so that no rerun mixes configs.

A run's *locked config* is the experiment config it is trained with, as the suite composed it (YAML
``defaults`` lists, ``--set`` overrides, a benchmark's model entry, budget, seed and fold), in a
canonical form (JSON, keys sorted), with

- the keys of :data:`EXCLUDED_KEYS` removed: they say where things are or how much is printed,
  never what is computed (each entry says why);
- ``manifest_sha256`` added: the SHA-256 of the manifest's subjects, splits, folds and file hashes,
  so a remade manifest with another split (or changed files) counts as another config.

It is not LightningCLI's fully resolved config (every default filled in): a run records the code
version (``commit`` in ``run.json``) separately, and a Lightning upgrade that adds a Trainer argument
must not make every finished run look changed.

A run folder keeps it in ``config.lock`` (JSON: ``config_hash``, ``config``) and ``config_hash`` in
``run.json``. :func:`changed_keys` lists what differs between two locked configs as dotted paths,
``model.network_options.gate_threshold: 0.5 -> 0.3``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sgnet_lightning.errors import ConfigError
from sgnet_lightning.files import atomic_write_json
from sgnet_lightning.runs import LOCK_FILE

# dotted key -> why leaving it out cannot change a result
EXCLUDED_KEYS: dict[str, str] = {
    "run.name": "names the run folder",
    "run.root": "where run folders go",
    "run.dir": "where the run folder is",
    "run.resume": "a resumed run ends as an uninterrupted one (tests/test_reliability.py)",
    "run.wandb": "W&B logging: mode, project, group and run name",
    "data.data_root": "where the data lie on this machine; manifest_sha256 pins their content",
    "data.cache_root": "where the cache lies; its content follows from the manifest and the preprocessing keys",
    "data.preprocess_workers": "processes building the cache; each subject is preprocessed alike",
    "trainer.log_every_n_steps": "how often training metrics are logged",
    "trainer.enable_progress_bar": "console output",
    "trainer.enable_model_summary": "console output",
}
# data.num_workers is left out too unless data.torchio_transforms is set: the queue's workers only
# load subjects, in the sampler's order, and patches and augmentation are drawn in the training
# process, so the batches are the same for any number of workers (tests/test_launch.py); TorchIO's
# own random transforms would draw in the workers. Launchers lower it to a run's share of the CPUs.
_UNSET = object()  # a key one side lacks


class ConfigChangedError(ConfigError):
    """A run folder (or a study) holds results or checkpoints of another config than the one asked for."""


def locked_config(config: dict[str, Any], drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """The locked form of an experiment ``config`` (see the module docstring).

    Args:
        config: a composed experiment config (sections ``model``, ``data``, ``trainer``, ``run``, ...).
        drop: further dotted keys to leave out (a sweep's tuned keys, set per trial).
    """
    locked = json.loads(json.dumps(config, default=str))  # a deep copy in JSON types (tuples -> lists)
    for key in (*EXCLUDED_KEYS, *drop):
        _remove_dotted(locked, key)
    if not (config.get("data") or {}).get("torchio_transforms"):
        _remove_dotted(locked, "data.num_workers")  # see the note above _UNSET
    locked = _without_empty_sections(locked)  # `run: {}` and no `run` configure the same run
    manifest = (config.get("data") or {}).get("manifest")
    if manifest:
        locked["manifest_sha256"] = manifest_sha256(manifest, (config.get("data") or {}).get("data_root"))
    return locked


def config_hash(locked: dict[str, Any]) -> str:
    """SHA-256 (hex) of a locked config's canonical JSON."""
    text = json.dumps(locked, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def manifest_sha256(manifest_path: str | Path, data_root: str | None = None) -> str:
    """SHA-256 of what a manifest decides about results: each subject's split, fold and file hashes
    (not its paths, so the same data under another root or in another clone hash alike)."""
    from sgnet_lightning.data.manifest import Manifest

    rows = Manifest.load(manifest_path, root=data_root).rows
    columns = ["subject", "split", "fold", *sorted(c for c in rows.columns if c.startswith("sha256_"))]
    table = rows[columns].astype(str).sort_values("subject")
    return hashlib.sha256(table.to_csv(index=False).encode()).hexdigest()


def write_lock(run_dir: Path, locked: dict[str, Any]) -> str:
    """Write ``<run_dir>/config.lock`` atomically; return the config hash."""
    digest = config_hash(locked)
    atomic_write_json(Path(run_dir) / LOCK_FILE, {"config_hash": digest, "config": locked})
    return digest


def read_lock(run_dir: Path) -> dict[str, Any] | None:
    """The locked config recorded in a run folder, or None when it has no ``config.lock``."""
    path = Path(run_dir) / LOCK_FILE
    return json.loads(path.read_text())["config"] if path.is_file() else None


def lock_differences(run_dir: Path, locked: dict[str, Any]) -> list[str]:
    """How the config recorded in ``run_dir`` differs from ``locked``: [] when they agree; one line
    saying so when the folder records none (made before configs were locked)."""
    recorded = read_lock(run_dir)
    if recorded is None:
        return [f"no {LOCK_FILE} recorded (made before runs recorded their config)"]
    return changed_keys(recorded, locked)


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"dotted.key: old -> new"`` for every leaf that differs (``(unset)`` where a side lacks it),
    sorted by key; lists are compared whole."""
    before, after = _flatten(old), _flatten(new)
    lines = []
    for key in sorted(set(before) | set(after)):
        old_value, new_value = before.get(key, _UNSET), after.get(key, _UNSET)
        if old_value != new_value:
            lines.append(f"{key}: {_show(old_value)} -> {_show(new_value)}")
    return lines


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _show(value: Any) -> str:
    return "(unset)" if value is _UNSET else json.dumps(value)


def _without_empty_sections(tree: dict[str, Any]) -> dict[str, Any]:
    pruned = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            value = _without_empty_sections(value)
            if not value:
                continue
        pruned[key] = value
    return pruned


def _remove_dotted(tree: dict[str, Any], dotted_key: str) -> None:
    *parents, leaf = dotted_key.split(".")
    node: Any = tree
    for key in parents:
        node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(leaf, None)
