"""Optuna studies over experiment configs: ``sgnet sweep run | best | report``.

A *search space* (``sweeps/*.yaml``, :mod:`~sgnet_lightning.sweeps.space`) names the experiment config
it tunes, the config keys it varies, the validation metric(s) it optimises and the seeds every
trial trains. :func:`~sgnet_lightning.sweeps.study.run_sweep` runs trials into an Optuna storage
that any number of worker processes or machines share; :func:`~sgnet_lightning.sweeps.best.write_best_config`
turns the chosen trial into an experiment config the benchmark runs; and
:func:`~sgnet_lightning.sweeps.sweep_report.write_report` draws the study from its storage.

A sweep trains on the training split and scores on the validation split only: the test split's
loader is never built and its subjects' cached volumes are never opened.
"""

from sgnet_lightning.sweeps.best import choose_trial, write_best_config
from sgnet_lightning.sweeps.sweep_report import write_report
from sgnet_lightning.sweeps.space import Objective, Parameter, SearchSpace, load_space
from sgnet_lightning.sweeps.storage import default_storage, open_storage
from sgnet_lightning.sweeps.study import load_study, run_sweep, validation_results

__all__ = [
    "Objective",
    "Parameter",
    "SearchSpace",
    "choose_trial",
    "default_storage",
    "load_space",
    "load_study",
    "open_storage",
    "run_sweep",
    "validation_results",
    "write_best_config",
    "write_report",
]
