"""``sgnet sweep best``: the chosen trial of a study as an experiment config the benchmark runs.

The written file holds ``defaults: [<the tuned experiment config>]`` and the trial's values, nothing
else: the sweep's budget (``fixed``) is listed in a comment but not applied, so the benchmark's own
budget governs. Use it from a benchmark config like any other model::

    models:
      sgnet_tuned: {defaults: [../tuned/sgnet_gate.yaml]}

Which trial: a single-objective study's best trial. A multi-objective study has a Pareto front
(trials no other trial beats on every objective), listed by ``sweep best`` in trial-number order;
``--pareto-index i`` takes the i-th of that list, otherwise ``--pick <objective>`` (default: the
first objective) takes the front's best trial on that objective (ties: the lower trial number).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import optuna
import yaml

from sgnet_lightning.config import set_dotted
from sgnet_lightning.files import atomic_write_text
from sgnet_lightning.errors import ConfigError


def pareto_front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's best trials (its Pareto front when multi-objective), in trial-number order."""
    return sorted(study.best_trials, key=lambda t: t.number)


def objective_labels(study: optuna.Study) -> list[str]:
    record = study.user_attrs.get("space") or {}
    labels = [o["label"] for o in record.get("objectives", [])]
    return labels if len(labels) == len(study.directions) else [f"objective {i}" for i in range(len(study.directions))]


def choose_trial(study: optuna.Study, pareto_index: int | None = None,
                 pick: str | None = None) -> optuna.trial.FrozenTrial:
    """The trial ``sweep best`` writes (see the module docstring for the rule)."""
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        raise ConfigError(f"study {study.study_name!r} has no complete trial yet")
    if len(study.directions) == 1:
        if pareto_index is not None or pick is not None:
            raise ConfigError("--pareto-index and --pick choose among a multi-objective study's Pareto front; "
                              f"study {study.study_name!r} has one objective")
        return study.best_trial
    front = pareto_front(study)
    if pareto_index is not None:
        if not 0 <= pareto_index < len(front):
            raise ConfigError(f"--pareto-index {pareto_index}: the Pareto front has {len(front)} trials "
                              f"(indices 0..{len(front) - 1})")
        return front[pareto_index]
    labels = objective_labels(study)
    label = pick if pick is not None else labels[0]
    if label not in labels:
        raise ConfigError(f"--pick {label!r}: the study's objectives are {', '.join(labels)}")
    index = labels.index(label)
    sign = -1.0 if study.directions[index] == optuna.study.StudyDirection.MAXIMIZE else 1.0
    return min(front, key=lambda t: (sign * t.values[index], t.number))


def format_front(study: optuna.Study) -> str:
    """The Pareto front (or the best trial) as text lines: index, trial number, objective values."""
    labels = objective_labels(study)
    lines = [f"{'index':>5}  {'trial':>5}  " + "  ".join(f"{label:>14}" for label in labels)]
    for i, trial in enumerate(pareto_front(study)):
        lines.append(f"{i:>5}  {trial.number:>5}  " + "  ".join(f"{v:>14.4g}" for v in trial.values))
    return "\n".join(lines)


def write_best_config(study: optuna.Study, out: str | Path, pareto_index: int | None = None,
                      pick: str | None = None) -> optuna.trial.FrozenTrial:
    """Write the chosen trial of ``study`` to ``out`` as an experiment config; return that trial."""
    trial = choose_trial(study, pareto_index, pick)
    record = study.user_attrs.get("space")
    if not record or "config_values" not in trial.user_attrs:
        raise ConfigError(f"study {study.study_name!r} was not made by `sgnet sweep run` (no recorded space)")
    out = Path(out)
    experiment = locate_experiment(record)
    tuned: dict = {}
    for key, value in trial.user_attrs["config_values"].items():
        set_dotted(tuned, key, value)

    labels = objective_labels(study)
    scores = ", ".join(f"{label} = {value:.4g} ({direction.name.lower()})"
                       for label, value, direction in zip(labels, trial.values, study.directions))
    n_finished = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    header = [
        f"Tuned by Optuna study {study.study_name!r} with `sgnet sweep best` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC: trial {trial.number} of {n_finished} complete trials.",
        f"Validation split, mean over seeds {record.get('seeds')}: {scores}.",
        f"Search space: {record.get('space_file')}; experiment: {record.get('experiment')}.",
        f"The sweep's budget, NOT applied here: {json.dumps(record.get('fixed') or {})}",
    ]
    if len(study.directions) > 1:
        rule = (f"--pareto-index {pareto_index}" if pareto_index is not None
                else f"best {pick or labels[0]} within the front")
        header.append(f"Chosen from a Pareto front of {len(study.best_trials)} trials by: {rule}.")
    text = "".join("# " + line.replace("\n", " ") + "\n" for line in header)
    text += yaml.safe_dump({"defaults": [os.path.relpath(experiment, out.resolve().parent)]}, sort_keys=False)
    text += yaml.safe_dump(tuned, sort_keys=False)
    atomic_write_text(out, text)
    return trial


def locate_experiment(record: dict) -> Path:
    """The tuned experiment config on this machine: the space's path from the current folder (the
    repository root), else the absolute path recorded when the study was created."""
    candidates = [Path(record["experiment"]), Path(record["experiment_path"])]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"the study's experiment config is not here: looked at {', '.join(map(str, candidates))}; "
                      f"run `sgnet sweep best` from the repository root")
