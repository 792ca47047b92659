"""Search spaces: what a study tunes, how it scores a trial, and with which budget.

A space is a YAML file (``sweeps/*.yaml``)::

    experiment: experiments/bml/sgnet.yaml     # the config tuned (relative to the repository root)
    parameters:                                # dotted config keys -> distributions
      model.network_options.gate_threshold: {type: float, low: 0.05, high: 0.95}
      model.network_options.gate_mode: {type: categorical, choices: [hard, soft]}
      model.optimizer.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
      model.aux_loss_weight: {type: float, low: 1.0e-3, high: 10.0, log: true, include_zero: true}
    objectives:                                # one, or several for a Pareto front
      - {metric: dice, direction: maximize}
      - {metric: lesion_fp, direction: minimize}
    seeds: [0, 1]                              # every trial trains once per seed; scores are averaged
    sampler: {name: tpe, seed: 0}              # tpe | random | nsga2 | qmc | gp | cmaes, plus options
    pruner: {name: median, n_warmup_steps: 5}  # none | median | percentile | hyperband | successive_halving | threshold
    n_trials: 40                               # default target for --n-trials
    fixed:                                     # merged into every trial's config (the budget)
      trainer: {max_epochs: 40}
    heartbeat: {interval_s: 60, grace_period_s: 300, max_retry: 2}   # RDB storages only
    gate_scan: {thresholds: [0.1, 0.3, 0.5, 0.7, 0.9], choose: lesion_f1}   # optional, SG-Net

Parameters:
    ``type: float | int`` with ``low``, ``high`` and optionally ``log: true`` (log-uniform; needs
    ``low > 0``) or ``step``; ``include_zero: true`` adds 0 as a separate choice (the Optuna
    parameter ``<key>:zero`` switches between 0 and the range), so "off" is searched beside a
    log range. ``type: categorical`` with ``choices``. Keys must exist in the suite's sections:
    ``model.<SegmentationModule argument>``, ``model.network_options.<option of the network>``,
    ``data.<SegmentationDataModule argument>``, ``trainer.<Trainer argument>``.

Objectives (always on the VALIDATION split of the experiment's fold):
    a name of :data:`sgnet_lightning.evaluation.METRICS` (``dice``, ``hd95_mm``, ``lesion_fp``,
    ...): the best checkpoint of each seed is evaluated subject by subject on the validation split,
    and the objective is the mean over subjects and regions (or of one ``region: WT``);
    or a value logged while training: ``best_val_dice`` (the best epoch's validation Dice) or
    ``val/<name>`` (the last epoch's). The direction must be given and must agree with METRICS.

Gate scan (optional): after each seed of a trial whose network has hard gates, ``sgnet gate-scan``
scores its best checkpoint on the validation split at each of ``thresholds`` with fixed weights
(:mod:`sgnet_lightning.gate_scan`) into ``<trial>/seed<k>/gate_scan/``; ``choose`` (``METRIC[:REGION]``)
names the metric whose best threshold is recorded there (not stored as the run's operating point).
``sgnet sweep report`` draws each trial's curve. It changes no objective, so it is not part of the
study's lock.
"""

from __future__ import annotations

import copy
import inspect
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sgnet_lightning.config import deep_merge, get_dotted, load_config, set_dotted
from sgnet_lightning.errors import ConfigError

PARAMETER_TYPES = ("float", "int", "categorical")
DIRECTIONS = ("maximize", "minimize")
LOGGED_METRICS = re.compile(r"^(best_val_dice|val/[A-Za-z0-9_]+)$")
TUNABLE_ROOTS = ("model", "data", "trainer")
# free-form dict arguments of SegmentationModule whose keys are checked when the run builds them
FREE_FORM_MODEL_ARGS = ("optimizer", "scheduler", "sliding_window")
SPACE_KEYS = ("experiment", "parameters", "objectives", "seeds", "sampler", "pruner", "n_trials", "fixed",
              "heartbeat", "gate_scan")
DEFAULT_HEARTBEAT = {"interval_s": 60, "grace_period_s": 300, "max_retry": 2}
ZERO_SWITCH = ":zero"  # suffix of the Optuna parameter that chooses 0 for an include_zero range


@dataclass(frozen=True)
class Parameter:
    """One tuned config key and its distribution (see the module docstring)."""

    key: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()
    include_zero: bool = False

    def suggest(self, trial) -> Any:
        """Draw this parameter's config value from an Optuna trial."""
        if self.include_zero and trial.suggest_categorical(self.key + ZERO_SWITCH, [False, True]):
            return 0 if self.type == "int" else 0.0
        if self.type == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(self.key, list(self.choices))

    def describe(self) -> str:
        if self.type == "categorical":
            return f"{self.key} in {{{', '.join(map(str, self.choices))}}}"
        scale = "log-uniform" if self.log else "uniform"
        text = f"{self.key} {self.type} {scale} [{self.low:g}, {self.high:g}]"
        return text + (" or 0" if self.include_zero else "")


@dataclass(frozen=True)
class Objective:
    """A validation metric and its direction; ``region`` restricts a METRICS name to one region."""

    metric: str
    direction: str
    region: str | None = None

    @property
    def label(self) -> str:
        """Name used in trial attributes, figures and ``sweep best --pick``: ``dice`` or ``dice[WT]``."""
        return f"{self.metric}[{self.region}]" if self.region else self.metric

    @property
    def per_subject(self) -> bool:
        """True when the metric comes from per-subject evaluation of the validation split."""
        return not LOGGED_METRICS.match(self.metric)


@dataclass
class SearchSpace:
    """A parsed, checked search space; :func:`load_space` builds it."""

    path: Path
    experiment: str  # as written in the space
    experiment_path: Path  # resolved
    base_config: dict[str, Any]  # the experiment config with ``fixed`` merged in
    parameters: list[Parameter]
    objectives: list[Objective]
    seeds: list[int]
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe"})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "none"})
    n_trials: int = 20
    fixed: dict[str, Any] = field(default_factory=dict)
    heartbeat: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_HEARTBEAT))
    gate_scan: dict[str, Any] | None = None  # {"thresholds": [...], "choose": "METRIC[:REGION]" or None}

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def prunes(self) -> bool:
        """Whether trials report intermediate validation Dice to a pruner (single objective only)."""
        return self.pruner["name"] != "none"

    def suggest(self, trial) -> dict[str, Any]:
        """Config values for one trial: ``{dotted key: value}`` in the space's order."""
        return {p.key: p.suggest(trial) for p in self.parameters}

    def trial_config(self, values: dict[str, Any], seed: int) -> dict[str, Any]:
        """The experiment config of one trial and seed (run folder and W&B names are set by the caller)."""
        config = copy.deepcopy(self.base_config)
        for key, value in values.items():
            set_dotted(config, key, value)
        config["seed_everything"] = int(seed)
        return config

    def make_sampler(self, seed_offset: int = 0):
        """The configured Optuna sampler; a given ``seed`` is shifted by ``seed_offset`` (the number of
        trials already in the study) so a resumed study does not redraw its first points."""
        options = dict(self.sampler)
        name = options.pop("name")
        if options.get("seed") is not None:
            options["seed"] = int(options["seed"]) + seed_offset
        return _instantiate("sampler", name, _samplers(), options)

    def make_pruner(self):
        options = dict(self.pruner)
        name = options.pop("name")
        return _instantiate("pruner", name, _pruners(), options)

    def to_record(self) -> dict[str, Any]:
        """JSON-ready description stored with the study (``sweep best`` and ``report`` read it)."""
        return {
            "space_file": str(self.path),
            "experiment": self.experiment,
            "experiment_path": str(self.experiment_path),
            "parameters": [p.describe() for p in self.parameters],
            "objectives": [{"metric": o.metric, "direction": o.direction, "region": o.region,
                            "label": o.label} for o in self.objectives],
            "seeds": list(self.seeds),
            "sampler": self.sampler,
            "pruner": self.pruner,
            "fixed": self.fixed,
            "gate_scan": self.gate_scan,
        }

    def identity(self) -> dict[str, Any]:
        """What workers sharing one study must agree on."""
        record = self.to_record()
        return {k: record[k] for k in ("parameters", "objectives", "seeds")}


# -- loading and checking --------------------------------------------------------------------------
def load_space(path: str | Path, overrides: dict[str, Any] | None = None) -> SearchSpace:
    """Read and check a search space; ``overrides`` (e.g. from ``--set``) merge into ``fixed``.

    Raises:
        ConfigError: naming the file, the key and the problem, for anything that cannot work.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search space not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a search space must be a mapping")
    where = str(path)
    unknown = sorted(set(raw) - set(SPACE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; a space has {', '.join(SPACE_KEYS)}")
    for key in ("experiment", "parameters", "objectives"):
        if not raw.get(key):
            raise ConfigError(f"{where}: '{key}' is required")

    experiment_path = resolve_experiment(raw["experiment"], path)
    fixed = deep_merge(raw.get("fixed") or {}, overrides or {})
    if not isinstance(fixed, dict):
        raise ConfigError(f"{where}: 'fixed' must be a mapping of config sections")
    base_config = deep_merge(load_config(experiment_path), fixed)

    parameters = _parse_parameters(raw["parameters"], where)
    for parameter in parameters:
        check_config_key(parameter.key, base_config, where, tunable=True)
        if get_dotted(fixed, parameter.key) is not None:
            raise ConfigError(f"{where}: {parameter.key} is both tuned and fixed; remove it from one of them")
    for key in _fixed_keys(fixed):
        check_config_key(key, base_config, where, tunable=False)
    _check_single_device(base_config, where)

    objectives = _parse_objectives(raw["objectives"], where)
    seeds = _parse_seeds(raw.get("seeds", [0]), where)
    sampler = _parse_component(raw.get("sampler") or {"name": "tpe"}, "sampler", where)
    pruner = _parse_component(raw.get("pruner") or {"name": "none"}, "pruner", where)
    if len(objectives) > 1 and pruner["name"] != "none":
        raise ConfigError(f"{where}: Optuna cannot prune multi-objective studies; set pruner: {{name: none}}")
    n_trials = raw.get("n_trials", 20)
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        raise ConfigError(f"{where}: n_trials must be a positive integer, got {n_trials!r}")
    heartbeat = _parse_heartbeat(raw.get("heartbeat") or {}, where)
    gate_scan = _parse_gate_scan(raw.get("gate_scan"), where)

    space = SearchSpace(path=path, experiment=str(raw["experiment"]), experiment_path=experiment_path,
                        base_config=base_config, parameters=parameters, objectives=objectives, seeds=seeds,
                        sampler=sampler, pruner=pruner, n_trials=n_trials, fixed=fixed, heartbeat=heartbeat,
                        gate_scan=gate_scan)
    space.make_sampler()  # fail now, not in the first trial, on options the class does not take
    space.make_pruner()
    return space


def resolve_experiment(experiment: str, space_path: Path) -> Path:
    """Find the tuned experiment config: as given (absolute, or relative to the current folder), else
    relative to the folder above the space's folder (the repository root for ``sweeps/*.yaml``)."""
    candidates = [Path(experiment)]
    if not Path(experiment).is_absolute():
        candidates.append(space_path.resolve().parent.parent / experiment)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"{space_path}: experiment config {experiment!r} not found "
                      f"(looked at {', '.join(str(c) for c in candidates)})")


def _parse_parameters(raw: Any, where: str) -> list[Parameter]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: 'parameters' must map dotted config keys to distributions")
    parameters = []
    for key, spec in raw.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: parameter {key}: expected a mapping like {{type: float, low: 0, high: 1}}")
        spec = dict(spec)
        kind = spec.pop("type", None)
        if kind not in PARAMETER_TYPES:
            raise ConfigError(f"{where}: parameter {key}: unknown type {kind!r}; "
                              f"use one of {', '.join(PARAMETER_TYPES)}")
        allowed = {"choices"} if kind == "categorical" else {"low", "high", "log", "step", "include_zero"}
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise ConfigError(f"{where}: parameter {key}: unknown option(s) {', '.join(unknown)} for type {kind}; "
                              f"allowed: {', '.join(sorted(allowed))}")
        parameters.append(_categorical(key, spec, where) if kind == "categorical" else _numeric(key, kind, spec, where))
    return parameters


def _categorical(key: str, spec: dict, where: str) -> Parameter:
    choices = spec.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"{where}: parameter {key}: 'choices' must be a non-empty list")
    bad = [c for c in choices if c is not None and not isinstance(c, (bool, int, float, str))]
    if bad:
        raise ConfigError(f"{where}: parameter {key}: choices must be numbers, strings, booleans or null; got {bad!r}")
    if len(set(map(repr, choices))) != len(choices):
        raise ConfigError(f"{where}: parameter {key}: choices repeat a value")
    return Parameter(key=key, type="categorical", choices=tuple(choices))


def _numeric(key: str, kind: str, spec: dict, where: str) -> Parameter:
    number = int if kind == "int" else (int, float)
    for bound in ("low", "high"):
        value = spec.get(bound)
        if not isinstance(value, number) or isinstance(value, bool) or not math.isfinite(value):
            raise ConfigError(f"{where}: parameter {key}: '{bound}' must be a finite {kind}, got {value!r}")
    low, high = spec["low"], spec["high"]
    log, step, include_zero = bool(spec.get("log", False)), spec.get("step"), bool(spec.get("include_zero", False))
    if low >= high:
        raise ConfigError(f"{where}: parameter {key}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise ConfigError(f"{where}: parameter {key}: a log scale needs low > 0, got low={low}")
    if step is not None:
        if log:
            raise ConfigError(f"{where}: parameter {key}: 'step' and 'log' cannot be combined")
        if not isinstance(step, number) or isinstance(step, bool) or step <= 0:
            raise ConfigError(f"{where}: parameter {key}: 'step' must be a positive {kind}, got {step!r}")
    if include_zero and low <= 0:
        raise ConfigError(f"{where}: parameter {key}: include_zero adds 0 beside the range, so low must be > 0")
    if kind == "float":
        low, high = float(low), float(high)
    return Parameter(key=key, type=kind, low=low, high=high, log=log, step=step, include_zero=include_zero)


def _parse_objectives(raw: Any, where: str) -> list[Objective]:
    from sgnet_lightning.evaluation import METRICS

    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: 'objectives' must be a list like [{{metric: dice, direction: maximize}}]")
    objectives = []
    for item in raw:
        if not isinstance(item, dict) or set(item) - {"metric", "direction", "region"}:
            raise ConfigError(f"{where}: objective {item!r}: use keys metric, direction and optionally region")
        metric, direction, region = item.get("metric"), item.get("direction"), item.get("region")
        if direction not in DIRECTIONS:
            raise ConfigError(f"{where}: objective {metric}: direction must be maximize or minimize, got {direction!r}")
        if isinstance(metric, str) and LOGGED_METRICS.match(metric):
            if region is not None:
                raise ConfigError(f"{where}: objective {metric}: 'region' applies to per-subject metrics only "
                                  f"(use val/dice_<region> for a logged per-region value)")
        elif metric in METRICS:
            if METRICS[metric] is None:
                raise ConfigError(f"{where}: objective {metric}: a descriptive metric (volume, gate open fraction), "
                                  "not something to optimise")
            expected = "maximize" if METRICS[metric] else "minimize"
            if direction != expected:
                raise ConfigError(f"{where}: objective {metric}: lower is {'worse' if METRICS[metric] else 'better'}, "
                                  f"so its direction must be {expected}")
        else:
            raise ConfigError(
                f"{where}: objective metric {metric!r} unknown; use a per-subject validation metric "
                f"({', '.join(m for m, higher in METRICS.items() if higher is not None)}) or a logged validation "
                f"value (best_val_dice, val/<name>). Sweeps never score on the test split."
            )
        objectives.append(Objective(metric=metric, direction=direction, region=region))
    labels = [o.label for o in objectives]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{where}: objectives repeat a metric: {labels}")
    return objectives


def _parse_seeds(raw: Any, where: str) -> list[int]:
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = [raw]
    if (not isinstance(raw, list) or not raw
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in raw)):
        raise ConfigError(f"{where}: 'seeds' must be a non-empty list of non-negative integers, got {raw!r}")
    if len(set(raw)) != len(raw):
        raise ConfigError(f"{where}: 'seeds' repeats a seed: {raw}")
    return list(raw)


def _parse_component(raw: Any, kind: str, where: str) -> dict[str, Any]:
    known = _samplers() if kind == "sampler" else _pruners()
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or raw.get("name") not in known:
        name = raw.get("name") if isinstance(raw, dict) else raw
        raise ConfigError(f"{where}: {kind} {name!r} unknown; use one of {', '.join(known)}")
    return dict(raw)


def _parse_gate_scan(raw: Any, where: str) -> dict[str, Any] | None:
    from sgnet_lightning.evaluation import METRICS
    from sgnet_lightning.gate_scan import DEFAULT_THRESHOLDS

    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"thresholds", "choose"}:
        raise ConfigError(f"{where}: gate_scan takes thresholds (a list in (0, 1)) and choose (METRIC[:REGION])")
    thresholds = raw.get("thresholds", list(DEFAULT_THRESHOLDS))
    if (not isinstance(thresholds, list) or not thresholds
            or not all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < 1 for t in thresholds)):
        raise ConfigError(f"{where}: gate_scan.thresholds must be a list of numbers in (0, 1), got {thresholds!r}")
    choose = raw.get("choose")
    if choose is not None:
        metric = str(choose).partition(":")[0]
        if METRICS.get(metric) is None:
            raise ConfigError(f"{where}: gate_scan.choose {choose!r}: not a metric with a better and a worse "
                              f"({', '.join(m for m, higher in METRICS.items() if higher is not None)})")
    return {"thresholds": [float(t) for t in thresholds], "choose": choose}


def _parse_heartbeat(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict) or set(raw) - set(DEFAULT_HEARTBEAT):
        raise ConfigError(f"{where}: 'heartbeat' takes {', '.join(DEFAULT_HEARTBEAT)}")
    heartbeat = {**DEFAULT_HEARTBEAT, **raw}
    for key, value in heartbeat.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "max_retry" else 1):
            raise ConfigError(f"{where}: heartbeat.{key} must be a positive integer, got {value!r}")
    return heartbeat


def _samplers() -> dict[str, Any]:
    import optuna

    s = optuna.samplers
    return {"tpe": s.TPESampler, "random": s.RandomSampler, "nsga2": s.NSGAIISampler, "qmc": s.QMCSampler,
            "gp": s.GPSampler, "cmaes": s.CmaEsSampler}


def _pruners() -> dict[str, Any]:
    import optuna

    p = optuna.pruners
    return {"none": p.NopPruner, "median": p.MedianPruner, "percentile": p.PercentilePruner,
            "hyperband": p.HyperbandPruner, "successive_halving": p.SuccessiveHalvingPruner,
            "threshold": p.ThresholdPruner}


def _instantiate(kind: str, name: str, known: dict[str, Any], options: dict[str, Any]):
    import warnings

    import optuna

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return known[name](**options)
    except (TypeError, ValueError, ImportError) as err:
        raise ConfigError(f"{kind} {name} with options {options}: {err}") from None


# -- config keys -----------------------------------------------------------------------------------
def check_config_key(key: str, config: dict[str, Any], where: str, tunable: bool) -> None:
    """Refuse a dotted key the run would reject only after minutes of setup, with a message naming it.

    Checked: the root section, the argument of ``SegmentationModule`` / ``SegmentationDataModule`` /
    ``Trainer`` it names, and for ``model.network_options.<x>`` the options of the configured network.
    Seeds are the space's own (``seeds``), never a tuned or fixed key.
    """
    parts = key.split(".")
    roots = TUNABLE_ROOTS if tunable else (*TUNABLE_ROOTS, "run")
    if parts[0] not in roots:
        hint = " (list seeds under 'seeds')" if parts[0] == "seed_everything" else ""
        raise ConfigError(f"{where}: config key {key!r}: unknown root {parts[0]!r}{hint}; "
                          f"{'tuned' if tunable else 'fixed'} keys start with {', '.join(roots)}")
    if parts[0] == "run" or len(parts) < 2:
        if len(parts) < 2 and tunable:
            raise ConfigError(f"{where}: config key {key!r} names a whole section; tune one value in it")
        return
    arguments = _section_arguments(parts[0])
    if parts[1] not in arguments:
        raise ConfigError(f"{where}: config key {key!r}: {parts[0]} has no argument {parts[1]!r}; "
                          f"known: {', '.join(sorted(arguments))}")
    if parts[:2] == ["model", "network_options"] and len(parts) > 2:
        from sgnet_lightning.models.registry import model_options

        network = get_dotted(config, "model.network", "sgnet")
        try:
            options = model_options(network)
        except ValueError as err:
            raise ConfigError(f"{where}: {err}") from None
        if parts[2] not in options:
            raise ConfigError(f"{where}: config key {key!r}: network {network!r} has no option {parts[2]!r}; "
                              f"its options are {', '.join(options)}")
    elif len(parts) > 2 and not (parts[0] == "model" and parts[1] in FREE_FORM_MODEL_ARGS):
        value = get_dotted(config, ".".join(parts[:2]))
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: config key {key!r}: {'.'.join(parts[:2])} is not a mapping in the experiment")


def _section_arguments(section: str) -> set[str]:
    if section == "model":
        from sgnet_lightning.module import SegmentationModule as target
    elif section == "data":
        from sgnet_lightning.data.datamodule import SegmentationDataModule as target
    else:
        from lightning.pytorch import Trainer as target
    return set(inspect.signature(target.__init__).parameters) - {"self"}


def _fixed_keys(fixed: dict[str, Any]) -> list[str]:
    """Dotted keys of a ``fixed`` block down to the level :func:`check_config_key` checks:
    ``section.argument``, and ``model.network_options.<option>``."""
    keys = []
    for section, body in fixed.items():
        if section == "run" or not isinstance(body, dict):
            keys.append(section)
            continue
        for argument, value in body.items():
            if section == "model" and argument == "network_options" and isinstance(value, dict):
                keys.extend(f"model.network_options.{option}" for option in value)
            else:
                keys.append(f"{section}.{argument}")
    return keys


def _check_single_device(config: dict[str, Any], where: str) -> None:
    # Under DDP every rank would run the objective and draw its own parameters (optuna-integration
    # #59, #223): one trial per process, one device per trial; start one worker per GPU instead.
    devices = get_dotted(config, "trainer.devices", 1)
    count = len(devices) if isinstance(devices, (list, tuple)) else devices
    if str(count) != "1":
        raise ConfigError(f"{where}: a sweep trial runs on one device, but trainer.devices is {devices!r}; "
                          f"set fixed: {{trainer: {{devices: 1}}}} and start one worker per GPU "
                          f"(CUDA_VISIBLE_DEVICES=<i> sgnet sweep run ...)")
