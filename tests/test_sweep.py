"""Optuna sweeps: search-space checks, trial selection and storage (fast), and tiny studies that really
train on a phantom Brain-Mets-Lung set (slow): resume, pruning, crashes, W&B, Pareto fronts, two
workers on one journal file, and a killed worker's trial retried through the heartbeat."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from conftest import start_sgnet

from sgnet_lightning import cli
from sgnet_lightning.config import load_config
from sgnet_lightning.errors import ConfigError, SgnetError
from sgnet_lightning.sweeps import choose_trial, load_space, open_storage, write_best_config, write_report
from sgnet_lightning.sweeps.space import Objective
from sgnet_lightning.sweeps.storage import engine_kwargs, safe_url
from sgnet_lightning.sweeps.study import mean_over_subjects

REPO = Path(__file__).resolve().parents[1]
SWEEPS = REPO / "sweeps"
TINY_GATE, TINY_AUX, TINY_PARETO = (SWEEPS / f"tiny_phantom_{n}.yaml" for n in ("gate", "aux", "pareto"))
PHANTOM_SGNET = REPO / "experiments" / "phantom_bml" / "sgnet.yaml"
GATE = "model.network_options.gate_threshold"
COMPLETE, PRUNED, FAIL = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                          optuna.trial.TrialState.FAIL)


# -- helpers shared with test_sweep_postgres.py and test_slurm.py ----------------------------------------
def space_variant(source: Path, folder: Path, **changes) -> Path:
    """A copy of a shipped space with top-level keys replaced, its experiment path made absolute."""
    raw = yaml.safe_load(source.read_text())
    raw["experiment"] = str(REPO / raw["experiment"])
    raw.update(changes)
    path = folder / f"{source.stem}-variant.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def sweep_run_args(space: Path, study: str, storage: str, runs_root: Path, n_trials: int, *extra: str) -> list[str]:
    return ["sweep", "run", str(space), "--study", study, "--storage", storage, "--runs-root", str(runs_root),
            "--n-trials", str(n_trials), *extra]


def start_worker(args: list[str], log_path: Path) -> subprocess.Popen:
    """``sgnet <args>`` in its own process, output to ``log_path``."""
    with open(log_path, "w") as log:
        return start_sgnet(*args, stdout=log, stderr=subprocess.STDOUT,
                           env={"WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"})


def check_two_worker_study(study: optuna.Study, target: int, runs_root: Path) -> None:
    """Both workers together reached the target without running any trial twice."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == COMPLETE]
    # Optuna's MaxTrialsCallback: workers finishing at the same moment may each start one more
    assert target <= len(complete) <= target + 1, [(t.number, t.state.name) for t in trials]
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    assert len({t.params[GATE] for t in complete}) == len(complete)  # no point drawn twice
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in trials)
    for trial in complete:
        assert Path(trial.user_attrs["run_dir"]) == runs_root / study.study_name / f"trial{trial.number}"
        assert (Path(trial.user_attrs["run_dir"]) / "seed0" / "validation_results.csv").is_file()


# -- search spaces ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_spaces_parse(path):
    space = load_space(path)
    assert space.experiment_path.is_file()
    assert space.parameters and space.objectives and space.seeds
    assert space.heartbeat["interval_s"] >= 60
    assert load_config(space.experiment_path)["model"]["network"] == space.base_config["model"]["network"]


def test_shipped_spaces_tune_what_the_issue_asks():
    gate = load_space(SWEEPS / "sgnet_gate.yaml")
    assert {p.key: p for p in gate.parameters}[GATE].low == 0.05
    aux = {p.key: p for p in load_space(SWEEPS / "segguidednet_aux.yaml").parameters}["model.aux_loss_weight"]
    assert (aux.log, aux.include_zero, aux.low, aux.high) == (True, True, 1e-3, 10.0)
    pareto = load_space(SWEEPS / "sgnet_gate_pareto.yaml")
    assert pareto.directions == ["maximize", "minimize"] and not pareto.prunes


def _minimal_space() -> dict:
    return {"experiment": str(PHANTOM_SGNET),
            "parameters": {GATE: {"type": "float", "low": 0.1, "high": 0.9}},
            "objectives": [{"metric": "dice", "direction": "maximize"}]}


def _with(path: str, value):
    """A change to the minimal space: set the value at a '/'-separated path (None deletes)."""
    def change(space: dict) -> dict:
        *parents, leaf = path.split("/")
        node = space
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        node[leaf] = value
        return space
    return change


BAD_SPACES = {
    "unknown type": (_with(f"parameters/{GATE}/type", "normal"), "unknown type 'normal'"),
    "low >= high": (_with(f"parameters/{GATE}/low", 0.9), "low (0.9) must be below high (0.9)"),
    "log with low 0": (_with("parameters/model.optimizer.lr", {"type": "float", "low": 0, "high": 1, "log": True}),
                       "log scale needs low > 0"),
    "step with log": (_with("parameters/model.optimizer.lr",
                            {"type": "float", "low": 1e-4, "high": 1e-2, "log": True, "step": 1e-4}),
                      "'step' and 'log' cannot be combined"),
    "empty choices": (_with("parameters/model.network_options.gate_mode", {"type": "categorical", "choices": []}),
                      "'choices' must be a non-empty list"),
    "unknown option": (_with(f"parameters/{GATE}/scale", "log"), "unknown option(s) scale"),
    "unknown direction": (_with("objectives/0/direction", "up"), "direction must be maximize or minimize"),
    "wrong direction": (_with("objectives/0/direction", "minimize"), "its direction must be maximize"),
    "test metric": (_with("objectives/0/metric", "test/dice"), "objective metric 'test/dice' unknown"),
    "unknown metric": (_with("objectives/0/metric", "dsc"), "objective metric 'dsc' unknown"),
    "unknown root": (_with("parameters/modle.aux_loss_weight", {"type": "float", "low": 0.1, "high": 1}),
                     "unknown root 'modle'"),
    "tuned seed": (_with("parameters/seed_everything", {"type": "int", "low": 0, "high": 9}),
                   "list seeds under 'seeds'"),
    "unknown module argument": (_with("parameters/model.learning_rate", {"type": "float", "low": 0.1, "high": 1}),
                                "model has no argument 'learning_rate'"),
    "unknown network option": (_with("parameters/model.network_options.gate_thresh",
                                     {"type": "float", "low": 0.1, "high": 0.9}), "has no option 'gate_thresh'"),
    "unknown data argument": (_with("fixed/data/patchsize", [16, 16, 16]), "data has no argument 'patchsize'"),
    "tuned and fixed": (_with("fixed/model/network_options/gate_threshold", 0.5), "both tuned and fixed"),
    "several devices": (_with("fixed/trainer/devices", 2), "runs on one device"),
    "pruning two objectives": (lambda s: {**s, "pruner": {"name": "median"}, "objectives": [
        {"metric": "dice", "direction": "maximize"}, {"metric": "hd95_mm", "direction": "minimize"}]},
        "cannot prune multi-objective"),
    "unknown sampler": (_with("sampler", {"name": "bayes"}), "sampler 'bayes' unknown"),
    "bad sampler option": (_with("sampler", {"name": "tpe", "n_startup": 3}), "sampler tpe with options"),
    "repeated seed": (_with("seeds", [0, 0]), "'seeds' repeats a seed"),
    "unknown key": (_with("budget", {}), "unknown key(s) budget"),
    "missing experiment": (_with("experiment", "experiments/none.yaml"),
                           "experiment config 'experiments/none.yaml' not found"),
}


@pytest.mark.parametrize("name", list(BAD_SPACES))
def test_bad_space_is_refused_with_a_clear_message(name, tmp_path):
    mutate, message = BAD_SPACES[name]
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(mutate(_minimal_space())))
    with pytest.raises(ConfigError) as err:
        load_space(path)
    assert message in str(err.value)
    assert str(path) in str(err.value) or "with options" in str(err.value)


def test_include_zero_searches_zero_beside_the_log_range():
    space = load_space(TINY_AUX)
    study = optuna.create_study()
    study.enqueue_trial({"model.aux_loss_weight:zero": True})
    study.enqueue_trial({"model.aux_loss_weight:zero": False, "model.aux_loss_weight": 0.37})
    drawn = [space.suggest(study.ask()) for _ in range(2)]
    assert drawn == [{"model.aux_loss_weight": 0.0}, {"model.aux_loss_weight": 0.37}]
    config = space.trial_config(drawn[1], seed=3)
    assert config["model"]["aux_loss_weight"] == 0.37 and config["seed_everything"] == 3
    assert config["trainer"]["max_epochs"] == 2  # the space's fixed budget
    assert config["model"]["network"] == "segguidednet"  # the experiment underneath


def test_storage_is_a_journal_file_or_an_rdb_with_heartbeat(tmp_path):
    journal = open_storage(str(tmp_path / "sweeps" / "s.journal"))
    assert isinstance(journal, optuna.storages.JournalStorage)
    rdb = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=60, grace_period=300)
    assert isinstance(rdb, optuna.storages.RDBStorage)
    assert rdb.get_heartbeat_interval() == 60 and rdb.grace_period == 300
    assert rdb.heartbeat_stale_trial_callback is not None
    postgres = engine_kwargs("postgresql+psycopg2://u:secret@db:5432/sweeps")
    assert postgres["pool_pre_ping"] and postgres["pool_size"] + postgres["max_overflow"] <= 4
    assert "secret" not in safe_url("postgresql+psycopg2://u:secret@db:5432/sweeps")


def test_objective_is_the_mean_over_subjects_then_regions_and_refuses_nan():
    rows = pd.DataFrame({"subject": ["a", "b", "c", "a"], "region": ["WT", "WT", "WT", "TC"],
                         "metric": ["dice"] * 4, "value": [0.2, 0.4, 0.6, 1.0]})
    assert mean_over_subjects(rows, Objective("dice", "maximize"), Path(".")) == pytest.approx((0.4 + 1.0) / 2)
    assert mean_over_subjects(rows, Objective("dice", "maximize", "TC"), Path(".")) == pytest.approx(1.0)
    with pytest.raises(SgnetError, match="no region 'ET'"):
        mean_over_subjects(rows, Objective("dice", "maximize", "ET"), Path("."))
    rows.loc[1, "value"] = float("nan")
    with pytest.raises(SgnetError, match="NaN for subject"):
        mean_over_subjects(rows, Objective("dice", "maximize"), Path("."))


def _recorded_study(objectives: list[dict], trials: list[tuple[list[float], float]]) -> optuna.Study:
    """An in-memory study as `sweep run` records it, with given objective values and gate thresholds."""
    space = load_space(TINY_GATE)
    record = {**space.to_record(), "objectives": [{**o, "label": o["metric"], "region": None} for o in objectives]}
    study = optuna.create_study(directions=[o["direction"] for o in objectives])
    study.set_user_attr("space", record)
    distribution = optuna.distributions.FloatDistribution(0.05, 0.95)
    for values, gate in trials:
        study.add_trial(optuna.trial.create_trial(values=values, params={GATE: gate},
                                                  distributions={GATE: distribution},
                                                  user_attrs={"config_values": {GATE: gate}}))
    return study


def test_best_of_a_pareto_front_by_rule_or_index(tmp_path):
    dice_up, fp_down = {"metric": "dice", "direction": "maximize"}, {"metric": "lesion_fp", "direction": "minimize"}
    # trial 1 is dominated by trial 0; the front is trials 0, 2, 3
    study = _recorded_study([dice_up, fp_down], [([0.6, 2.0], 0.2), ([0.5, 3.0], 0.3), ([0.8, 4.0], 0.4),
                                                 ([0.3, 0.0], 0.5)])
    assert [t.number for t in study.best_trials] == [0, 2, 3]
    assert choose_trial(study).number == 2  # default: best Dice within the front
    assert choose_trial(study, pick="lesion_fp").number == 3
    assert choose_trial(study, pareto_index=0).number == 0
    with pytest.raises(ConfigError, match="indices 0..2"):
        choose_trial(study, pareto_index=3)
    with pytest.raises(ConfigError, match="objectives are dice, lesion_fp"):
        choose_trial(study, pick="hd95_mm")

    out = tmp_path / "tuned" / "sgnet_pareto.yaml"
    write_best_config(study, out, pick="lesion_fp")
    config = load_config(out)
    assert config["model"]["network_options"]["gate_threshold"] == 0.5
    assert config["model"]["network"] == "sgnet" and config["data"]["spacing_mm"] == 3.0  # from the experiment
    assert "trainer" not in yaml.safe_load(out.read_text())  # the sweep's budget is not carried over
    assert "--pick" not in out.read_text() and "best lesion_fp within the front" in out.read_text()

    single = _recorded_study([dice_up], [([0.6], 0.2), ([0.7], 0.9)])
    assert choose_trial(single).number == 1
    with pytest.raises(ConfigError, match="one objective"):
        choose_trial(single, pareto_index=0)


def test_report_of_a_recorded_study_links_its_figures_and_lists_every_trial(tmp_path):
    """The sweep report from the storage alone (no training): both pages link each figure written beside
    them, say why a figure is missing, and show the Pareto front and every trial, failed ones included."""
    dice_up, fp_down = {"metric": "dice", "direction": "maximize"}, {"metric": "lesion_fp", "direction": "minimize"}
    study = _recorded_study([dice_up, fp_down], [([0.6, 2.0], 0.2), ([0.5, 3.0], 0.3), ([0.8, 4.0], 0.4)])
    failed = optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={"error": "out | of memory"})
    study.add_trial(failed)
    out = tmp_path / "report"
    html = write_report(study, out, storage_label="runs/gate/optuna.log").read_text()
    markdown = (out / "index.md").read_text()
    for name in ("history_dice", "history_lesion_fp", "slice", "pareto"):
        assert (out / f"{name}.png").stat().st_size > 1000
        assert f'src="{name}.png"' in html and f"]({name}.png)" in markdown
    assert "No parameter importances" in html and "No parameter importances" in markdown  # one parameter tuned
    assert "## Pareto front" in markdown and "runs/gate/optuna.log" in markdown
    assert "out \\| of memory" in markdown and "out | of memory" in html
    assert len(pd.read_csv(out / "trials.csv")) == 4


def test_a_study_refuses_trials_from_another_space_or_budget(tmp_path):
    from sgnet_lightning.sweeps import run_sweep

    storage = str(tmp_path / "s.journal")
    gate = load_space(space_variant(TINY_GATE, tmp_path))
    run_sweep(gate, "mine", storage=storage, n_trials=0, runs_root=tmp_path)  # creates the study, runs nothing
    run_sweep(gate, "mine", storage=storage, n_trials=0, runs_root=tmp_path)  # the same space may attach again
    # where the data lie on a worker's machine is no part of the space
    elsewhere = load_space(space_variant(TINY_GATE, tmp_path), overrides={"data": {"data_root": "/data/elsewhere"}})
    run_sweep(elsewhere, "mine", storage=storage, n_trials=0, runs_root=tmp_path)

    fixed = yaml.safe_load(TINY_GATE.read_text())["fixed"]
    longer = load_space(space_variant(TINY_GATE, tmp_path, fixed={**fixed, "trainer": {**fixed["trainer"], "max_epochs": 3}}))
    with pytest.raises(ConfigError, match=r"another search space or budget: config\.trainer\.max_epochs: 2 -> 3; "
                                          r"use another --study name"):
        run_sweep(longer, "mine", storage=storage, n_trials=0, runs_root=tmp_path)
    other_seeds = load_space(space_variant(TINY_GATE, tmp_path, seeds=[5]))
    with pytest.raises(ConfigError, match=r"seeds: \[0, 1\] -> \[5\]; use another --study name"):
        run_sweep(other_seeds, "mine", storage=storage, n_trials=0, runs_root=tmp_path)
    narrower = load_space(space_variant(TINY_GATE, tmp_path, parameters={
        GATE: {"type": "float", "low": 0.2, "high": 0.95},
        "model.network_options.gate_mode": {"type": "categorical", "choices": ["hard", "soft"]}}))
    with pytest.raises(ConfigError, match=r"parameters\.model\.network_options\.gate_threshold\.low: 0\.05 -> 0\.2;"):
        run_sweep(narrower, "mine", storage=storage, n_trials=0, runs_root=tmp_path)
    with pytest.raises(ConfigError, match="use another --study name"):
        run_sweep(load_space(space_variant(TINY_PARETO, tmp_path)), "mine", storage=storage, n_trials=0,
                  runs_root=tmp_path)

    # a study recorded before spaces were locked cannot be checked: refused, not adopted
    old = optuna.create_study(study_name="old", storage=open_storage(storage), direction="maximize")
    old.set_user_attr("space", gate.to_record())
    with pytest.raises(ConfigError, match="made before studies recorded their search space and budget"):
        run_sweep(gate, "old", storage=storage, n_trials=0, runs_root=tmp_path)


def test_worker_stops_after_repeated_failures(tmp_path, monkeypatch):
    from sgnet_lightning import experiment

    def broken_train(*args, **kwargs):
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(experiment, "train", broken_train)
    storage = str(tmp_path / "s.journal")
    args = sweep_run_args(space_variant(TINY_GATE, tmp_path), "broken", storage, tmp_path / "runs", 5)
    assert cli.main(args) == 1  # the suite's one-line error, not a traceback
    with pytest.raises(SgnetError, match="5 trials in a row failed.*device-side assert"):
        cli.main(["-v", *args])
    study = optuna.load_study(study_name="broken", storage=open_storage(storage))
    assert [t.state for t in study.trials] == [FAIL] * 10
    assert study.trials[0].user_attrs["error"] == "RuntimeError: CUDA error: device-side assert triggered"


# -- tiny studies on the phantom --------------------------------------------------------------------------
@pytest.mark.slow
def test_sweep_trains_on_train_scores_on_validation_resumes_and_writes_best_and_report(
        sweep_phantom, tmp_path, monkeypatch, opened_files):
    from sgnet_lightning.data.datamodule import SegmentationDataModule

    volume_loader = SegmentationDataModule._volume_loader

    def no_test_loader(self, split):
        assert split != "test", "a sweep built the test loader"
        return volume_loader(self, split)

    monkeypatch.setattr(SegmentationDataModule, "_volume_loader", no_test_loader)
    space = space_variant(TINY_GATE, tmp_path, pruner={"name": "none"})
    storage, runs = str(tmp_path / "runs" / "gate.journal"), tmp_path / "runs"

    assert cli.main(sweep_run_args(space, "gate", storage, runs, 1, *sweep_phantom.sets)) == 0
    assert cli.main(sweep_run_args(space, "gate", storage, runs, 1, *sweep_phantom.sets)) == 0  # target reached: no-op
    study = optuna.load_study(study_name="gate", storage=open_storage(storage))
    assert len(study.trials) == 1
    assert cli.main(sweep_run_args(space, "gate", storage, runs, 2, *sweep_phantom.sets)) == 0  # continue to 2
    study = optuna.load_study(study_name="gate", storage=open_storage(storage))
    assert [(t.number, t.state) for t in study.trials] == [(0, COMPLETE), (1, COMPLETE)]
    assert study.trials[0].params != study.trials[1].params  # the resumed sampler did not redraw trial 0

    for trial in study.trials:
        per_seed = [trial.user_attrs[f"seed{seed}/dice"] for seed in (0, 1)]
        assert trial.value == pytest.approx(sum(per_seed) / 2)
        assert trial.user_attrs["config_values"][GATE] == trial.params[GATE]
        for seed, score in zip((0, 1), per_seed):
            run_dir = runs / "gate" / f"trial{trial.number}" / f"seed{seed}"
            rows = pd.read_csv(run_dir / "validation_results.csv")
            assert sorted(rows["subject"].unique()) == sorted(sweep_phantom.val_subjects)
            dice = rows[rows["metric"] == "dice"]
            assert dice["value"].mean() == pytest.approx(score)
            resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
            assert resolved["model"]["network_options"]["gate_threshold"] == trial.params[GATE]
            assert resolved["seed_everything"] == seed

    # the test split: its loader never built (patched above), its cached volumes never opened
    cache_reads = [p for p in opened_files if p.endswith((".npy",))]
    assert any(f"/{s}/" in p for p in cache_reads for s in sweep_phantom.val_subjects)  # the audit sees cache reads
    assert not [p for p in cache_reads for s in sweep_phantom.test_subjects if f"/{s}/" in p]

    out = tmp_path / "experiments" / "tuned" / "gate.yaml"
    assert cli.main(["sweep", "best", "--study", "gate", "--storage", storage, "--out", str(out)]) == 0
    best = study.best_trial
    tuned = load_config(out)
    assert tuned["model"]["network_options"]["gate_threshold"] == best.params[GATE]
    assert tuned["model"]["network_options"]["gate_mode"] == best.params["model.network_options.gate_mode"]
    assert tuned["model"]["network"] == "sgnet"

    report = tmp_path / "report"
    assert cli.main(["sweep", "report", "--study", "gate", "--storage", storage, "--out", str(report)]) == 0
    for figure in ("history_dice.png", "slice.png", "importances.png"):
        assert (report / figure).stat().st_size > 1000
        assert figure in (report / "index.html").read_text() and figure in (report / "index.md").read_text()
    assert len(pd.read_csv(report / "trials.csv")) == 2


@pytest.mark.slow
def test_pruned_trial_stops_in_its_first_seed(sweep_phantom, tmp_path):
    # a threshold pruner prunes any validation Dice below 2, i.e. at the first report
    space = space_variant(TINY_GATE, tmp_path, pruner={"name": "threshold", "lower": 2.0})
    storage, runs = str(tmp_path / "p.journal"), tmp_path / "runs"
    assert cli.main(sweep_run_args(space, "pruned", storage, runs, 1, *sweep_phantom.sets)) == 0
    (trial,) = optuna.load_study(study_name="pruned", storage=open_storage(storage)).trials
    assert trial.state == PRUNED
    assert list(trial.intermediate_values) == [0] and 0 <= trial.intermediate_values[0] <= 1
    assert (runs / "pruned" / "trial0" / "seed0" / "run.json").is_file()
    assert not (runs / "pruned" / "trial0" / "seed1").exists()
    assert not (runs / "pruned" / "trial0" / "seed0" / "validation_results.csv").exists()


@pytest.mark.slow
def test_crashing_trial_is_recorded_failed_and_the_next_logs_to_wandb_offline(sweep_phantom, tmp_path, monkeypatch):
    import wandb

    from sgnet_lightning import experiment, tracking

    real_train, calls = experiment.train, []

    def train_crashing_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("simulated out of memory")
        return real_train(*args, **kwargs)

    finished_runs = []
    real_finish = tracking.finish_wandb

    def finish_and_record():
        if wandb.run is not None:
            finished_runs.append((wandb.run.group, wandb.run.name))
        real_finish()

    monkeypatch.setattr(experiment, "train", train_crashing_once)
    monkeypatch.setattr(tracking, "finish_wandb", finish_and_record)
    # W&B's settings live in the environment: restore them after the test
    for name, value in (("WANDB_MODE", "offline"), ("WANDB_ERROR_REPORTING", "false"), ("WANDB_SILENT", "true"),
                        ("WANDB_DIR", str(tmp_path))):
        monkeypatch.setenv(name, value)
    space = space_variant(TINY_GATE, tmp_path, seeds=[0], pruner={"name": "none"})
    storage, runs = str(tmp_path / "c.journal"), tmp_path / "runs"
    args = sweep_run_args(space, "crash", storage, runs, 1, *sweep_phantom.sets, "--set", "run.wandb.enabled=true",
                          "--set", "run.wandb.mode=offline")
    assert cli.main(args) == 0
    trials = optuna.load_study(study_name="crash", storage=open_storage(storage)).trials
    assert [t.state for t in trials] == [FAIL, COMPLETE]
    assert trials[0].user_attrs["error"] == "RuntimeError: simulated out of memory"
    assert finished_runs == [("crash", "trial-1-seed0")]
    assert list((runs / "crash" / "trial1" / "seed0" / "wandb").glob("offline-run-*/run-*.wandb"))


@pytest.mark.slow
def test_two_objectives_give_a_pareto_front_best_and_report(sweep_phantom, tmp_path):
    storage, runs = str(tmp_path / "mo.journal"), tmp_path / "runs"
    space = space_variant(TINY_PARETO, tmp_path)
    assert cli.main(sweep_run_args(space, "pareto", storage, runs, 2, *sweep_phantom.sets)) == 0
    study = optuna.load_study(study_name="pareto", storage=open_storage(storage))
    assert [t.state for t in study.trials] == [COMPLETE, COMPLETE]
    for trial in study.trials:
        assert trial.values == [trial.user_attrs["seed0/dice"], trial.user_attrs["seed0/lesion_fp"]]
        assert trial.values[1] >= 0
    out = tmp_path / "pareto_best.yaml"
    assert cli.main(["sweep", "best", "--study", "pareto", "--storage", storage, "--out", str(out),
                     "--pick", "lesion_fp"]) == 0
    chosen = min(study.best_trials, key=lambda t: (t.values[1], t.number))
    assert load_config(out)["model"]["threshold"] == chosen.params["model.threshold"]
    report = tmp_path / "report"
    assert cli.main(["sweep", "report", "--study", "pareto", "--storage", storage, "--out", str(report)]) == 0
    assert (report / "pareto.png").stat().st_size > 1000
    assert (report / "history_lesion_fp.png").is_file()


@pytest.mark.slow
def test_two_workers_share_one_journal_study(sweep_phantom, tmp_path):
    # unseeded: two workers starting together with one sampler seed would draw the same points
    space = space_variant(TINY_GATE, tmp_path, seeds=[0], pruner={"name": "none"}, sampler={"name": "random"})
    storage, runs = str(tmp_path / "runs" / "shared.journal"), tmp_path / "runs"
    args = sweep_run_args(space, "shared", storage, runs, 4, *sweep_phantom.sets)
    workers = [start_worker(args, tmp_path / f"worker{i}.log") for i in range(2)]
    codes = [w.wait(timeout=400) for w in workers]
    assert codes == [0, 0], [(tmp_path / f"worker{i}.log").read_text()[-3000:] for i in range(2)]
    check_two_worker_study(optuna.load_study(study_name="shared", storage=open_storage(storage)), 4, runs)


@pytest.mark.slow
def test_killed_workers_trial_is_failed_by_heartbeat_and_retried_from_its_checkpoint(
        sweep_phantom, tmp_path, caplog):
    space = space_variant(TINY_GATE, tmp_path, seeds=[0], pruner={"name": "none"})
    storage, runs = f"sqlite:///{tmp_path / 'hb.db'}", tmp_path / "runs"
    heartbeat = ["--heartbeat-interval", "1", "--grace-period", "3"]
    # Both workers run the same budget (the study's space lock refuses another one). Worker A is killed
    # once its first of four epochs is checkpointed, three epochs before it could finish.
    budget = ["--set", "trainer.max_epochs=4", "--set", "data.steps_per_epoch=12"]
    worker = start_worker(sweep_run_args(space, "hb", storage, runs, 1, *sweep_phantom.sets, *heartbeat, *budget),
                          tmp_path / "killed.log")
    last = runs / "hb" / "trial0" / "seed0" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.is_file() and worker.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert last.is_file(), (tmp_path / "killed.log").read_text()[-3000:]
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    time.sleep(4)  # > grace period since the last heartbeat

    caplog.set_level("INFO", logger="sgnet_lightning.experiment")
    assert cli.main(sweep_run_args(space, "hb", storage, runs, 1, *sweep_phantom.sets, *heartbeat, *budget)) == 0
    trials = optuna.load_study(study_name="hb", storage=open_storage(storage)).trials
    assert [t.state for t in trials] == [FAIL, COMPLETE]
    killed, retry = trials
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == killed.params
    assert retry.user_attrs["run_dir"] == str(runs / "hb" / "trial0")
    assert any("resuming" in r.getMessage() and "last.ckpt" in r.getMessage() for r in caplog.records)
