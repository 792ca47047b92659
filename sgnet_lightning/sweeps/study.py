"""Running a study: one Optuna trial = one config from the space, trained once per seed, scored on
the validation split; any number of workers share the study through its storage.

Trial folders: ``<runs_root>/<study>/trial<N>/seed<k>/`` (an ordinary run folder, see
:mod:`sgnet_lightning.runs`) with ``validation_results.csv``, the per-subject validation
scores the objective was computed from, and, where the space has ``gate_scan`` and the trial's
network hard gates, ``gate_scan/`` (:mod:`sgnet_lightning.gate_scan`, validation split only). A
retry of a trial whose worker died continues in the first attempt's folder, from its last checkpoint.

Study attributes written (``study.user_attrs``): ``space`` (the space's record, for ``sweep best``
and ``report``) and ``space_lock`` (:func:`space_lock` and its hash): a rerun or another worker with
another space or budget is refused, with the changed keys listed.

Trial attributes written (``study.trials[i].user_attrs``): ``config_values`` (dotted key -> value
applied), ``seed<k>/<objective>`` per-seed scores, ``run_dir``, ``worker`` (host:pid), and for a
failed trial ``error`` (exception type and message).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import socket
import warnings
from pathlib import Path
from typing import Any, Sequence

import optuna
import pandas as pd

from sgnet_lightning import runs
from sgnet_lightning.config import get_dotted, set_dotted
from sgnet_lightning.config_lock import ConfigChangedError, changed_keys, config_hash, locked_config
from sgnet_lightning.errors import ConfigError, SgnetError
from sgnet_lightning.sweeps.space import Objective, SearchSpace
from sgnet_lightning.sweeps.storage import default_storage, is_url, open_storage, retry_history, safe_url

log = logging.getLogger(__name__)

SPACE_LOCK = "space_lock"  # study user attribute: {"hash", "lock": space_lock(space)}
PRUNING_MONITOR = "val/dice"  # reported to the pruner after every validation epoch of a trial's first seed
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
# metrics whose computation needs surface distances or connected components (skipped otherwise)
_DISTANCE_METRICS = {"hd95_mm", "assd_mm", "nsd", "lesion_hd95_mm"}


def run_sweep(space: SearchSpace, study_name: str, storage: str | None = None, n_trials: int | None = None,
              runs_root: str | Path = "runs/sweeps", timeout: float | None = None,
              heartbeat_interval: int | None = None, grace_period: int | None = None,
              max_retry: int | None = None, max_consecutive_failures: int = 5,
              callbacks: Sequence = ()) -> optuna.Study:
    """Create or continue study ``study_name`` and run trials until it has ``n_trials`` finished ones.

    ``n_trials`` is the study's target, not this worker's share: every worker (and every rerun)
    stops once the study holds that many COMPLETE or PRUNED trials, so rerunning a finished command
    does nothing, and rerunning with a larger number continues the study. FAILED trials do not
    count. Workers that finish at the same moment may each start one more trial, so a study run by
    W workers can end up to W - 1 trials over the target.

    Args:
        space: the parsed search space.
        study_name: the study's name in the storage.
        storage: journal file path or RDB URL (see :mod:`~sgnet_lightning.sweeps.storage`); default
            ``<runs_root>/<study>.journal``.
        n_trials: target number of finished trials (default: the space's ``n_trials``).
        runs_root: parent of the study's trial folders.
        timeout: stop this worker after this many seconds (the running trial finishes first).
        heartbeat_interval, grace_period, max_retry: override the space's ``heartbeat`` block.
        max_consecutive_failures: stop this worker, with an error, after this many failed trials
            in a row (a broken setup should not spin through the whole budget).
        callbacks: extra Lightning callbacks every trial trains with (a launched worker's).

    Raises:
        ConfigChangedError: the study exists with another search space, budget, objectives or seeds.
        SgnetError: ``max_consecutive_failures`` trials in a row failed.
    """
    runs_root = Path(runs_root)
    storage = storage or default_storage(runs_root, study_name)
    heartbeat = {**space.heartbeat, **{k: v for k, v in (("interval_s", heartbeat_interval),
                                                         ("grace_period_s", grace_period),
                                                         ("max_retry", max_retry)) if v is not None}}
    storage_backend = open_storage(storage, heartbeat["interval_s"], heartbeat["grace_period_s"],
                                   heartbeat["max_retry"])
    study = optuna.create_study(study_name=study_name, storage=storage_backend, directions=space.directions,
                                load_if_exists=True, sampler=space.make_sampler(), pruner=space.make_pruner())
    _claim_or_check(study, space, storage)
    existing = len(study.get_trials(deepcopy=False))
    if existing:
        study.sampler = space.make_sampler(seed_offset=existing)
    if space.sampler.get("seed") is not None:
        log.info("sampler seed %s + %d: reproducible for one worker; workers started together with the same "
                 "seed draw the same points (leave sampler.seed unset for parallel studies)",
                 space.sampler["seed"], existing)

    target = n_trials if n_trials is not None else space.n_trials
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    if finished >= target:
        log.info("study %s already has %d finished trials (target %d): nothing to do", study_name, finished, target)
        return study
    log.info("study %s (%s): %d of %d trials finished; running trials until the study has %d",
             study_name, safe_url(storage), finished, target, target)

    guard = _StopAfterRepeatedFailures(max_consecutive_failures)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.optimize(
            TrialObjective(space, study_name, runs.study_dir(runs_root, study_name), callbacks),
            timeout=timeout,
            catch=(Exception,),  # a crashing trial is recorded FAILED (with its error) and the study goes on
            callbacks=[optuna.study.MaxTrialsCallback(target, states=FINISHED), guard],
            gc_after_trial=True,
        )
    guard.raise_if_tripped()
    return study


def load_study(study_name: str, storage: str) -> optuna.Study:
    """Open an existing study for reading (``sweep best``, ``sweep report``)."""
    if not is_url(storage) and not Path(storage).is_file():
        raise ConfigError(f"study storage not found: {storage} (pass the --storage the study ran with)")
    backend = open_storage(storage)
    try:
        return optuna.load_study(study_name=study_name, storage=backend)
    except KeyError:
        names = optuna.get_all_study_names(storage=backend)
        raise ConfigError(f"no study {study_name!r} in {safe_url(storage)}; "
                          f"studies there: {', '.join(names) or '(none)'}") from None


def space_lock(space: SearchSpace) -> dict[str, Any]:
    """What every trial of a study depends on besides its own parameter values: the locked
    experiment config with the space's ``fixed`` budget merged in (:mod:`sgnet_lightning.config_lock`;
    tuned keys and the seed are set per trial and left out), the parameters' distributions, the
    objectives and the seeds. The sampler and pruner only decide which points are tried and are
    left out."""
    tuned = tuple(p.key for p in space.parameters)
    return {
        "config": locked_config(space.base_config, drop=(*tuned, "seed_everything")),
        "parameters": json.loads(json.dumps({p.key: {k: v for k, v in dataclasses.asdict(p).items() if k != "key"}
                                             for p in space.parameters})),
        "objectives": {o.label: o.direction for o in space.objectives},
        "seeds": list(space.seeds),
    }


def _claim_or_check(study: optuna.Study, space: SearchSpace, storage: str) -> None:
    """Record the space and its lock with a new study; refuse to add trials of another space or
    budget to an existing one, listing the changed keys."""
    mine = space_lock(space)
    if "space" not in study.user_attrs:
        # the lock first: a worker started at the same moment that sees "space" also sees the lock
        study.set_user_attr(SPACE_LOCK, {"hash": config_hash(mine), "lock": mine})
        study.set_user_attr("space", space.to_record())
        return
    recorded = study.user_attrs.get(SPACE_LOCK)
    where = f"study {study.study_name!r} in {safe_url(storage)}"
    if recorded is None:
        raise ConfigChangedError(f"{where} was made before studies recorded their search space and budget, so "
                                 "its trials cannot be checked against this space; use another --study name")
    if recorded["hash"] != config_hash(mine):
        made_from = study.user_attrs["space"].get("space_file")
        raise ConfigChangedError(f"{where} was made from {made_from} with another search space or budget: "
                                 f"{'; '.join(changed_keys(recorded['lock'], mine))}; use another --study name")


class _StopAfterRepeatedFailures:
    """Optuna callback: stop this worker once ``limit`` trials in a row have failed."""

    def __init__(self, limit: int):
        self.limit, self.count, self.last_error = limit, 0, ""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state != optuna.trial.TrialState.FAIL:
            self.count = 0
            return
        self.count += 1
        self.last_error = trial.user_attrs.get("error") or trial.system_attrs.get("fail_reason", "")
        if self.count >= self.limit:
            study.stop()

    def raise_if_tripped(self) -> None:
        if self.count >= self.limit:
            raise SgnetError(f"{self.count} trials in a row failed, so this worker stopped; last error: "
                             f"{self.last_error} (see the trial folders and `sgnet sweep report`)")


class TrialObjective:
    """The Optuna objective: train the trial's config once per seed, score each on validation,
    return the mean over seeds of every objective.

    Pruning: the first seed reports validation Dice after every epoch through Optuna's
    ``PyTorchLightningPruningCallback``; a pruned trial stops there and its other seeds never run.
    """

    def __init__(self, space: SearchSpace, study_name: str, study_dir: Path, callbacks: Sequence = ()):
        self.space, self.study_name, self.study_dir = space, study_name, Path(study_dir)
        self.callbacks = list(callbacks)

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        values = self.space.suggest(trial)
        trial.set_user_attr("config_values", values)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        attempts = retry_history(trial.study, trial.number)
        # a retry continues in its first attempt's folder so Lightning restores that run completely
        trial_dir = runs.trial_dir(self.study_dir, attempts[0] if attempts else trial.number)
        trial.set_user_attr("run_dir", str(trial_dir))
        try:
            per_seed = [
                self._run_seed(trial, values, seed, runs.seed_dir(trial_dir, seed), first=(i == 0),
                               retry=bool(attempts))
                for i, seed in enumerate(self.space.seeds)
            ]
        except optuna.TrialPruned:
            raise
        except Exception as err:
            trial.set_user_attr("error", f"{type(err).__name__}: {err}")
            raise
        means = [sum(scores[o.label] for scores in per_seed) / len(per_seed) for o in self.space.objectives]
        return means[0] if len(means) == 1 else means

    def _run_seed(self, trial: optuna.Trial, values: dict[str, Any], seed: int, run_dir: Path, first: bool,
                  retry: bool) -> dict[str, float]:
        from sgnet_lightning.experiment import train

        resume = retry and runs.can_resume(run_dir)
        if run_dir.exists() and not resume:
            log.warning("removing %s, left by an earlier study of the same name", run_dir)
            shutil.rmtree(run_dir)
        config = self.space.trial_config(values, seed)
        set_dotted(config, "run.dir", str(run_dir))
        set_dotted(config, "run.resume", resume)
        wandb = dict(get_dotted(config, "run.wandb") or {})
        set_dotted(config, "run.wandb", {**wandb, "group": self.study_name, "name": f"trial-{trial.number}-seed{seed}"})
        callbacks = list(self.callbacks)
        if first and self.space.prunes:
            from optuna_integration import PyTorchLightningPruningCallback

            callbacks.append(PyTorchLightningPruningCallback(trial, monitor=PRUNING_MONITOR))
        metrics = train(config, run_dir=run_dir, callbacks=callbacks, resume=resume)
        scores = score_run(self.space.objectives, metrics, config, run_dir)
        if self.space.gate_scan is not None:
            scan_trial_gates(self.space.gate_scan, config, run_dir)
        for label, value in scores.items():
            trial.set_user_attr(f"seed{seed}/{label}", value)
        return scores


def scan_trial_gates(options: dict[str, Any], config: dict[str, Any], run_dir: Path) -> Path | None:
    """The space's gate scan of one trained seed (validation split, fixed weights) into
    ``<run_dir>/gate_scan/``; None, with a log line, for a network without hard gates."""
    from sgnet_lightning.gate_scan import SCAN_DIR, run_gate_scan
    from sgnet_lightning.operating_point import NoHardGatesError

    try:
        run_gate_scan(config, run_dir, ckpt=str(runs.trained_checkpoint(run_dir)), thresholds=options["thresholds"],
                      choose=options.get("choose"))
    except NoHardGatesError as err:  # e.g. a trial that drew gate_mode soft
        log.info("%s: no gate scan: %s", run_dir, err)
        return None
    return run_dir / SCAN_DIR


# -- scoring on the validation split -----------------------------------------------------------------
def score_run(objectives: Sequence[Objective], metrics: dict[str, float], config: dict[str, Any],
              run_dir: Path) -> dict[str, float]:
    """Each objective's value for one trained run: logged values from ``metrics`` (what
    :func:`~sgnet_lightning.experiment.train` returned), per-subject metrics from
    :func:`validation_results` of the run's best checkpoint."""
    scores: dict[str, float] = {}
    for objective in objectives:
        if not objective.per_subject:
            value = metrics.get(objective.metric)
            if value is None or math.isnan(value):
                raise SgnetError(f"{run_dir}: {objective.metric} was not logged (logged: {', '.join(sorted(metrics))})")
            scores[objective.label] = float(value)
    per_subject = [o for o in objectives if o.per_subject]
    if per_subject:
        names = {o.metric for o in per_subject}
        options = {"distances": bool(names & _DISTANCE_METRICS), "lesions": any(n.startswith("lesion_") for n in names)}
        rows = validation_results(config, run_dir, metric_options=options)
        for objective in per_subject:
            scores[objective.label] = mean_over_subjects(rows, objective, run_dir)
    return scores


def mean_over_subjects(rows: pd.DataFrame, objective: Objective, run_dir: Path) -> float:
    """Mean of ``objective.metric`` over validation subjects, per region, then over regions (or of
    ``objective.region`` alone). A NaN is an error, never skipped: skipping drops exactly the worst
    cases (the evaluation already turns empty masks into defined values)."""
    selected = rows[rows["metric"] == objective.metric]
    if objective.region is not None:
        regions = sorted(selected["region"].unique())
        selected = selected[selected["region"] == objective.region]
        if selected.empty:
            raise SgnetError(f"objective {objective.label}: no region {objective.region!r} "
                             f"in the validation results; regions: {', '.join(regions)}")
    if selected.empty:
        raise SgnetError(f"{run_dir}: the validation results hold no {objective.metric!r} values")
    nan = selected[selected["value"].isna()]
    if not nan.empty:
        subjects = ", ".join(sorted(set(nan["subject"])))
        raise SgnetError(f"{run_dir}: {objective.metric} is NaN for subject(s) {subjects}")
    return float(selected.groupby("region")["value"].mean().mean())


def validation_results(config: dict[str, Any], run_dir: str | Path,
                       metric_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """Evaluate a trained run's best checkpoint subject by subject on its VALIDATION split.

    The module's test step scores whole volumes (sliding window, every metric of
    :mod:`sgnet_lightning.evaluation`); here on the validation split
    (:func:`~sgnet_lightning.experiment.validation_scorer`), so the test split's loader is never
    built. Its log goes to ``logs/validate/``, beside the training log.

    Args:
        config: the run's experiment config.
        run_dir: the trained run's folder (``checkpoints/best.ckpt``, else ``last.ckpt``).
        metric_options: keyword options of ``evaluate_case`` (``distances``, ``lesions``, ...), on top
            of the config's ``run.test_metrics``.

    Returns:
        Tidy rows ``subject, region, metric, value, convention``, also written atomically to
        ``<run_dir>/validation_results.csv``.
    """
    from sgnet_lightning.experiment import validation_scorer
    from sgnet_lightning.writers import EvaluationWriter

    run_dir = Path(run_dir)
    checkpoint = runs.trained_checkpoint(run_dir)
    writer = EvaluationWriter(results_file=run_dir / runs.VALIDATION_RESULTS_FILE)
    module, datamodule, trainer = validation_scorer(config, run_dir, metric_options, callbacks=[writer])
    trainer.test(module, datamodule=datamodule, ckpt_path=str(checkpoint), verbose=False)
    return pd.DataFrame(module.test_rows)
