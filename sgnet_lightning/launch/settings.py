"""Launcher settings: which engine runs a benchmark's runs (or a sweep's workers), and with what.

``--launcher`` takes

- ``inline`` (the default): one run after another in this process, as ``sgnet benchmark`` always did;
- ``local`` or ``slurm``: the settings in ``experiments/launchers/<name>.yaml``;
- the path of a YAML file with ``launcher: local`` or ``launcher: slurm`` (a lab's cluster settings,
  e.g. a copy of ``slurm.yaml``; it may start from ``defaults: [...]`` like every suite config).

``--launcher-set key=value`` changes one key (the value parsed as YAML, as ``--set`` does);
``--gpus 0,1,2,3`` and ``--workers N`` are short for ``gpus`` and ``workers``. A key that the shipped
file of that kind does not have is refused, naming the known ones: the shipped files are the schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sgnet_lightning.config import deep_merge, load_config
from sgnet_lightning.errors import ConfigError

LAUNCHERS_DIR = Path(__file__).resolve().parents[2] / "experiments" / "launchers"
INLINE = "inline"
KINDS = ("local", "slurm")

# value checks; the values themselves live in the YAML files
_POSITIVE_INTS = {"runs_per_gpu", "workers", "cpus", "cpus_per_run", "array_parallelism", "time_min", "timeout_min"}
_NON_NEGATIVE_INTS = {"gpus_per_run", "max_requeues", "signal_delay_s"}


@dataclass(frozen=True)
class Launcher:
    """A resolved launcher: ``kind`` (``inline``, ``local`` or ``slurm``) and its settings."""

    kind: str
    settings: dict[str, Any]
    source: str = ""  # the YAML file the settings came from

    def __getitem__(self, key: str) -> Any:
        return self.settings[key]

    @property
    def inline(self) -> bool:
        return self.kind == INLINE


def load_launcher(name: str | None = None, overrides: dict[str, Any] | None = None) -> Launcher:
    """The launcher called ``name`` (``inline``, ``local``, ``slurm`` or a YAML path) with ``overrides``.

    Raises:
        ConfigError: an unknown launcher, a file without ``launcher: local|slurm``, an unknown key
            or a value of the wrong kind (each named).
    """
    overrides = dict(overrides or {})
    if name in (None, INLINE):
        if overrides:
            raise ConfigError(f"launcher settings ({', '.join(sorted(overrides))}) need --launcher local or slurm")
        return Launcher(INLINE, {})
    path = Path(name) if name.endswith((".yaml", ".yml")) else LAUNCHERS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"--launcher {name}: no such launcher; use inline, {', '.join(KINDS)} or a YAML file "
                          "with `launcher: local|slurm`")
    raw = load_config(path)
    kind = raw.pop("launcher", None)
    if kind not in KINDS:
        raise ConfigError(f"{path}: needs `launcher: local` or `launcher: slurm` (got {kind!r})")
    reference = load_config(LAUNCHERS_DIR / f"{kind}.yaml")
    reference.pop("launcher")
    settings = deep_merge(deep_merge(reference, raw), overrides)
    unknown = sorted((set(raw) | set(overrides)) - set(reference))
    if unknown:
        raise ConfigError(f"{kind} launcher: unknown setting(s) {', '.join(unknown)}; known: {', '.join(reference)}")
    _check_values(kind, settings)
    return Launcher(kind, settings, str(path))


def command_line_overrides(sets: list[str] | None, gpus: str | None = None, workers: int | None = None) -> dict:
    """``--launcher-set`` pairs, ``--gpus 0,1`` and ``--workers N`` as one settings dict."""
    from sgnet_lightning.config import parse_overrides

    overrides = parse_overrides(sets or [])
    if gpus is not None:
        try:
            overrides["gpus"] = [int(g) for g in gpus.split(",") if g.strip()]
        except ValueError:
            raise ConfigError(f"--gpus {gpus}: give GPU indices separated by commas, e.g. 0,1,2,3") from None
    if workers is not None:
        overrides["workers"] = workers
    return overrides


def _check_values(kind: str, settings: dict[str, Any]) -> None:
    def bad(key: str, expected: str) -> ConfigError:
        return ConfigError(f"{kind} launcher: {key} must be {expected}, got {settings[key]!r}")

    for key, value in settings.items():
        if key in _POSITIVE_INTS and value is not None and (not isinstance(value, int) or value < 1):
            raise bad(key, "a positive integer")
        if key in _NON_NEGATIVE_INTS and (not isinstance(value, int) or value < 0):
            raise bad(key, "an integer >= 0")
    gpus = settings.get("gpus")
    if gpus is not None and not (isinstance(gpus, list) and all(isinstance(g, int) and g >= 0 for g in gpus)):
        raise bad("gpus", "a list of GPU indices or null")
    if not isinstance(settings.get("sbatch", {}), dict):
        raise bad("sbatch", "a mapping of sbatch options, e.g. {account: mylab}")
    if not (isinstance(settings.get("setup", []), list) and all(isinstance(s, str) for s in settings.get("setup", []))):
        raise bad("setup", "a list of shell lines")
    mem = settings.get("mem_gb")
    if mem is not None and (not isinstance(mem, (int, float)) or mem <= 0):
        raise bad("mem_gb", "a positive number or null")
