"""``sgnet sweep report``: figures and a page drawn from a study's storage, nothing else.

Writes into the output folder:
    history_<objective>.png      objective value of every complete trial, with the best so far
    intermediate.png             validation Dice per epoch of the first seed (the pruner's input)
    importances[_<objective>].png  fANOVA parameter importances (>= 2 complete trials, > 1 parameter)
    slice.png                    the Dice objective against each tuned parameter (gate_threshold,
                                 aux_loss_weight, ...)
    pareto.png                   the Pareto front (studies with 2 or 3 objectives)
    gate_scan_trial<N>.png       trials with gate scans (the space's ``gate_scan``): precision, recall,
                                 false-positive lesions and open fractions against the gate threshold
                                 at fixed weights, on validation (means over seeds and subjects)
    gate_scans.csv               those scans' validation means: trial, seed, threshold, region, metric
    trials.csv                   one row per trial: state, values, config values, duration, error
    index.md, index.html         the study's summary, best trial / Pareto front, figures, all trials

The pages are a document of :mod:`sgnet_lightning.analysis.document`, like the benchmark report;
the HTML links the PNG files beside it instead of embedding them.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import pandas as pd

from sgnet_lightning.analysis.document import Plot, Section, Table, figure_png, write_document
from sgnet_lightning.files import atomic_write_text
from sgnet_lightning.sweeps.best import objective_labels, pareto_front

FIGURE_DPI = 110


def write_report(study: optuna.Study, out_dir: str | Path, storage_label: str = "") -> Path:
    """Draw ``study`` into ``out_dir``; return the HTML page's path."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir = Path(out_dir)
    trials = trials_table(study)
    atomic_write_text(out_dir / "trials.csv", trials.to_csv(index=False))
    with warnings.catch_warnings():  # optuna.visualization.matplotlib is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        notes: list[str] = []
        plots = _draw_figures(study, notes)
    plots += _gate_scan_figures(study, out_dir, notes)
    sections = _sections(study, trials, plots, notes, storage_label)
    html_path, _ = write_document(out_dir, f"Optuna study {study.study_name}", sections, stem="index",
                                  figure_dir="", embed_figures=False)  # fmt: skip
    return html_path


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """Every trial of the study as one row (values per objective, applied config values, error)."""
    labels = objective_labels(study)
    rows = []
    for trial in study.get_trials(deepcopy=False):
        row = {"trial": trial.number, "state": trial.state.name}
        for i, label in enumerate(labels):
            row[label] = trial.values[i] if trial.values else None
        row.update(trial.user_attrs.get("config_values", trial.params))
        duration = trial.duration
        row["duration_s"] = round(duration.total_seconds(), 1) if duration else None
        row["last_epoch_reported"] = max(trial.intermediate_values) if trial.intermediate_values else None
        row["worker"] = trial.user_attrs.get("worker")
        row["retry_of"] = trial.system_attrs.get("failed_trial")
        row["error"] = trial.user_attrs.get("error") or trial.system_attrs.get("fail_reason")
        rows.append(row)
    return pd.DataFrame(rows)


# -- figures ------------------------------------------------------------------------------------------
def _draw_figures(study: optuna.Study, notes: list[str]) -> list[Plot]:
    """Draw what the study's content supports; appends to ``notes`` why a figure is missing."""
    from optuna.visualization import matplotlib as plots

    labels = objective_labels(study)
    multi = len(labels) > 1
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    figures: list[Plot] = []
    if not complete:
        notes.append("No figures: the study has no complete trial yet.")
        return figures

    def target(i):
        return (lambda t: t.values[i]) if multi else None

    for i, label in enumerate(labels):
        axes = plots.plot_optimization_history(study, target=target(i), target_name=label)
        figures.append(Plot(f"history_{_slug(label)}", f"Optimisation history of {label} (validation, mean over "
                            "seeds).", _png(axes)))  # fmt: skip

    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        figures.append(Plot("intermediate", "Validation Dice after each epoch of every trial's first seed "
                            "(pruning input).", _png(plots.plot_intermediate_values(study))))  # fmt: skip

    shared = set.intersection(*(set(t.params) for t in complete))
    if len(complete) >= 2 and len(shared) > 1:
        for i, label in enumerate(labels):
            if len({t.values[i] for t in complete}) < 2:
                notes.append(f"No importances for {label}: every complete trial scored {complete[0].values[i]:.4g}.")
                continue
            # fANOVA, seeded: Optuna's default evaluator changed between versions (PED-ANOVA in 5.x)
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
            axes = plots.plot_param_importances(study, evaluator=evaluator, target=target(i), target_name=label)
            figures.append(Plot(f"importances_{_slug(label)}" if multi else "importances",
                                f"fANOVA importance of each parameter for {label}.", _png(axes)))
    else:
        notes.append("No parameter importances: they need at least 2 complete trials sharing more than one parameter.")

    dice = next((i for i, label in enumerate(labels) if "dice" in label), 0)
    tuned = sorted({name for t in complete for name in t.params})
    axes = plots.plot_slice(study, params=tuned, target=target(dice), target_name=labels[dice])
    figures.append(Plot("slice", f"{labels[dice]} of every complete trial against each tuned parameter.",
                        _png(axes, size=(5.0 * len(tuned) + 1.0, 4.5))))  # room for the dotted key names per panel

    if len(labels) in (2, 3):
        figures.append(Plot("pareto", "Objective values of every complete trial; the Pareto front highlighted.",
                            _png(plots.plot_pareto_front(study, target_names=labels))))
    return figures


def _gate_scan_figures(study: optuna.Study, out_dir: Path, notes: list[str]) -> list[Plot]:
    """One figure per complete trial whose seeds have a gate scan (``<trial>/seed<k>/gate_scan/``);
    writes their validation means to ``gate_scans.csv``."""
    from sgnet_lightning.gate_scan import SCAN_CSV, SCAN_DIR, plot_scan

    figures, means = [], []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        run_dir = trial.user_attrs.get("run_dir")
        files = sorted(Path(run_dir).glob(f"seed*/{SCAN_DIR}/{SCAN_CSV}")) if run_dir else []
        if not files:
            continue
        scans = [pd.read_csv(f, dtype={"subject": str}).assign(seed=int(f.parent.parent.name[4:])) for f in files]
        scan = pd.concat(scans, ignore_index=True)
        means.append(scan.groupby(["seed", "threshold", "region", "metric"])["value"].mean().reset_index()
                     .assign(trial=trial.number))
        values = trial.user_attrs.get("config_values", trial.params)
        tuned = ", ".join(f"{k.rsplit('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
                          for k, v in values.items())
        figures.append(Plot(f"gate_scan_trial{trial.number}",
                            f"Trial {trial.number}: the gate threshold at inference with the trial's weights fixed, "
                            f"on the validation split (means over {len(files)} seed(s) and their subjects).",
                            plot_scan(scan, f"trial {trial.number} ({tuned})")))
    if means:
        table = pd.concat(means, ignore_index=True)[["trial", "seed", "threshold", "region", "metric", "value"]]
        atomic_write_text(out_dir / "gate_scans.csv", table.to_csv(index=False))
    elif (study.user_attrs.get("space") or {}).get("gate_scan"):
        notes.append("No gate-scan curves: no complete trial with hard gates has a gate scan yet.")
    return figures


def _png(axes, size: tuple[float, float] | None = None) -> bytes:
    """PNG of the pyplot figure an Optuna plot drew (``axes``: one Axes or an array of them); closes it."""
    import matplotlib.pyplot as plt

    first = axes.flat[0] if hasattr(axes, "flat") else axes
    figure = first.figure
    if size is not None:
        figure.set_size_inches(*size)
    png = figure_png(figure, dpi=FIGURE_DPI)
    plt.close(figure)
    return png


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in label).strip("_")


# -- pages ----------------------------------------------------------------------------------------------
def _summary(study: optuna.Study, trials: pd.DataFrame, storage_label: str) -> list[tuple[str, str]]:
    record = study.user_attrs.get("space") or {}
    counts = trials["state"].value_counts().to_dict() if not trials.empty else {}
    objectives = ", ".join(f"{o['label']} ({o['direction']})" for o in record.get("objectives", []))
    return [
        ("study", study.study_name),
        ("storage", storage_label),
        ("search space", str(record.get("space_file", ""))),
        ("experiment tuned", str(record.get("experiment", ""))),
        ("parameters", "; ".join(record.get("parameters", []))),
        ("objectives (validation split)", objectives),
        ("seeds per trial", str(record.get("seeds", ""))),
        ("sampler / pruner", f"{record.get('sampler')} / {record.get('pruner')}"),
        ("budget (fixed)", str(record.get("fixed", {}))),
        ("trials", ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none"),
    ]


def _best_table(study: optuna.Study, trials: pd.DataFrame) -> pd.DataFrame:
    if trials.empty or not (trials["state"] == "COMPLETE").any():
        return pd.DataFrame()
    numbers = [t.number for t in pareto_front(study)]
    best = trials[trials["trial"].isin(numbers)].drop(columns=["state", "error", "retry_of", "last_epoch_reported"])
    if len(study.directions) > 1:
        best.insert(0, "pareto_index", range(len(best)))
    return best


def _shown(frame: pd.DataFrame) -> pd.DataFrame:
    """The cells as the pages show them: floats to 4 significant digits, missing values blank."""

    def cell(value) -> str:
        if value is None or (isinstance(value, float) and value != value):
            return ""
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    return frame.map(cell)


def _sections(study: optuna.Study, trials: pd.DataFrame, figures: list[Plot], notes: list[str],
              storage_label: str) -> list[Section]:
    summary = pd.DataFrame(_summary(study, trials, storage_label), columns=["item", "value"])
    best = _best_table(study, trials)
    return [
        Section("Study", [Table(summary)]),
        Section("Pareto front" if len(study.directions) > 1 else "Best trial",
                [Table(_shown(best)) if not best.empty else "none yet"]),
        Section("Figures", [*figures, *notes]),
        Section("All trials", [Table(_shown(trials)) if not trials.empty else "none"]),
    ]  # fmt: skip
