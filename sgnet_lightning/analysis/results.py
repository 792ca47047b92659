"""Gather the per-subject results of a benchmark folder into one tidy table.

A benchmark folder (written by the benchmark runner) holds one folder per run (the layout of
:mod:`sgnet_lightning.runs`)::

    <bench>/benchmark.json
    <bench>/<model_label>/seed<k>/[fold<f>/]run.json, results.csv, predictions/, COMPLETE

A run counts only once its ``COMPLETE`` marker exists (the runner writes it last); runs without it
(still training, or killed) are skipped and counted in a logged warning, never half-read. Where
``benchmark.json`` lists the benchmark's runs (``runs``: model, seed, fold, config_hash), only
those are read, and each must carry that config hash in its ``run.json``: folders of models or seeds
dropped from the benchmark's config are left out with a logged line.

The gathered table has one row per model x seed x fold x subject x region x metric:

    model (str), seed (int), fold (Int64, <NA> without folds), subject (str), region (str),
    metric (str), value (float), convention (str, as the evaluator wrote it: the empty-mask case
    first, e.g. ``both_present``, ``both_empty``, ``pred_empty``, ``ref_empty``,
    ``no_scored_lesions``, then after ``;`` the settings that shaped the value; see
    :mod:`sgnet_lightning.evaluation.evaluate`)
"""

from __future__ import annotations

import difflib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from sgnet_lightning.errors import DataError, SgnetError
from sgnet_lightning.files import atomic_write_text
from sgnet_lightning.runs import (BENCHMARK_FILE, COMPLETE_FILE, RESULTS_FILE, RUN_FILE, RUN_RESULTS_COLUMNS,
                                  is_complete, parse_fold_dir, parse_seed_dir, prediction_file)

logger = logging.getLogger(__name__)

COLUMNS = ["model", "seed", "fold", *RUN_RESULTS_COLUMNS]
# Empty-mask cases in which every metric kept its plain definition (``both_present`` is
# sgnet_lightning.evaluation.metrics.BOTH_PRESENT; "" for results written without the column filled).
PLAIN_CASES = frozenset({"", "both_present"})


@dataclass(frozen=True)
class RunDir:
    """Where one run lives and which model, seed and fold its folder name says it is."""

    path: Path
    model: str
    seed: int
    fold: int | None

    @property
    def complete(self) -> bool:
        return is_complete(self.path)

    def prediction_file(self, subject: str) -> Path:
        return prediction_file(self.path, subject)


def read_benchmark(bench_dir: str | os.PathLike) -> dict:
    """The benchmark's ``benchmark.json`` (name, dataset, task, models, seeds, split, provenance)."""
    path = Path(bench_dir) / BENCHMARK_FILE
    if not path.is_file():
        raise DataError("?", path, "not a benchmark folder: benchmark.json is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError("?", path, f"invalid JSON ({err})") from None


def listed_runs(bench_dir: str | os.PathLike) -> dict[tuple[str, int, int | None], str | None] | None:
    """The runs ``benchmark.json`` lists, ``(model, seed, fold) -> config_hash`` (None where not
    recorded); None when it lists none (written by hand or by an older version: every run folder
    then counts)."""
    if not (Path(bench_dir) / BENCHMARK_FILE).is_file():
        return None
    listed = read_benchmark(bench_dir).get("runs")
    if listed is None:
        return None
    return {(str(r["model"]), int(r["seed"]), None if r.get("fold") is None else int(r["fold"])): r.get("config_hash")
            for r in listed}


def find_runs(bench_dir: str | os.PathLike) -> tuple[list[RunDir], list[RunDir]]:
    """The run folders of a benchmark's current runs (those ``benchmark.json`` lists), split into
    (complete, incomplete), each sorted by model, seed and fold. Folders that do not follow the
    ``<model>/seed<k>[/fold<f>]`` layout (a report folder, a run moved aside as
    ``seed0.replaced-<time>``) are not runs and are left alone."""
    runs, _ = _current_and_left_out(bench_dir)
    return [r for r in runs if r.complete], [r for r in runs if not r.complete]


def _current_and_left_out(bench_dir: str | os.PathLike) -> tuple[list[RunDir], list[RunDir]]:
    """Every run folder, split into those ``benchmark.json`` lists and the others."""
    runs = _run_folders(Path(bench_dir))
    listed = listed_runs(bench_dir)
    if listed is None:
        return runs, []
    return ([r for r in runs if (r.model, r.seed, r.fold) in listed],
            [r for r in runs if (r.model, r.seed, r.fold) not in listed])


def _run_folders(bench_dir: Path) -> list[RunDir]:
    runs: list[RunDir] = []
    for model_dir in sorted(p for p in bench_dir.iterdir() if p.is_dir()):
        for seed_dir in model_dir.iterdir():
            seed = parse_seed_dir(seed_dir.name)
            if not (seed_dir.is_dir() and seed is not None):
                continue
            fold_dirs = [
                (p, fold)
                for p in seed_dir.iterdir()
                if p.is_dir() and (fold := parse_fold_dir(p.name)) is not None
            ]
            if fold_dirs:
                runs += [RunDir(path, model_dir.name, seed, fold) for path, fold in fold_dirs]
            elif not any(p.is_dir() and p.name.startswith("fold") for p in seed_dir.iterdir()):
                runs.append(RunDir(seed_dir, model_dir.name, seed, None))  # (not: only moved-aside folds)
    runs.sort(key=lambda r: (r.model, r.seed, -1 if r.fold is None else r.fold))
    return runs


def complete_runs(bench_dir: str | os.PathLike) -> list[RunDir]:
    """The complete current runs; logs one line naming the run folders the benchmark no longer
    lists (models, seeds or folds dropped from its config) and one naming the incomplete ones."""
    bench_dir = Path(bench_dir)
    current, left_out = _current_and_left_out(bench_dir)
    if left_out:
        logger.warning(
            "left out %d run folder(s) of %s that its current config does not list (models, seeds or folds "
            "no longer in it): %s",
            len(left_out),
            bench_dir,
            ", ".join(str(r.path.relative_to(bench_dir)) for r in left_out),
        )
    complete, incomplete = [r for r in current if r.complete], [r for r in current if not r.complete]
    if incomplete:
        logger.warning(
            "ignored %d incomplete run(s) of %s (no %s marker): %s",
            len(incomplete),
            bench_dir,
            COMPLETE_FILE,
            ", ".join(str(r.path.relative_to(bench_dir)) for r in incomplete),
        )
    return complete


def read_run_info(run: RunDir) -> dict:
    """A run's ``run.json``, checked against what its folder name says (model, seed, fold)."""
    path = run.path / RUN_FILE
    if not path.is_file():
        raise DataError("?", path, "complete run without run.json")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError("?", path, f"invalid JSON ({err})") from None
    stated = (info.get("model"), info.get("seed"), info.get("fold"))
    if stated != (run.model, run.seed, run.fold):
        raise DataError(
            "?",
            path,
            f"says model/seed/fold {stated} but its folder says {(run.model, run.seed, run.fold)}",
        )
    return info


def gather_runs(bench_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per complete run: model, seed, fold and every scalar field of its ``run.json``
    (n_parameters, train_time_s, inference_time_s_per_volume, peak_memory_mb, deterministic,
    device, commit, ...); nested fields (options, versions) are left out."""
    rows = []
    for run in find_runs(bench_dir)[0]:  # gather_results warns about the incomplete ones
        info = read_run_info(run)
        scalars = {k: v for k, v in info.items() if not isinstance(v, (dict, list))}
        rows.append({**scalars, "model": run.model, "seed": run.seed, "fold": run.fold})
    table = pd.DataFrame(rows)
    if not table.empty:
        table["fold"] = table["fold"].astype("Int64")
    return table


def _read_run_results(run: RunDir) -> pd.DataFrame:
    path = run.path / RESULTS_FILE
    if not path.is_file():
        raise DataError("?", path, "complete run without results.csv")
    table = pd.read_csv(path, dtype={"subject": str, "region": str, "metric": str, "convention": str})
    missing = [c for c in RUN_RESULTS_COLUMNS if c not in table.columns]
    if missing:
        raise DataError("?", path, f"missing column(s) {', '.join(missing)}")
    duplicated = table.duplicated(["subject", "region", "metric"], keep=False)
    if duplicated.any():
        first = table[duplicated].iloc[0]
        raise DataError(
            first["subject"], path, f"{int(duplicated.sum())} rows repeat a subject/region/metric"
        )
    table = table[RUN_RESULTS_COLUMNS].copy()
    table.insert(0, "model", run.model)
    table.insert(1, "seed", run.seed)
    table.insert(2, "fold", run.fold)
    return table


def _normalise(table: pd.DataFrame) -> pd.DataFrame:
    """Fix the dtypes of a gathered table so a CSV round trip gives back an equal frame."""
    table = table[COLUMNS].copy()
    table["model"] = table["model"].astype(str)
    table["seed"] = table["seed"].astype(int)
    table["fold"] = table["fold"].astype("Int64")
    for col in ("subject", "region", "metric"):
        table[col] = table[col].astype(str)
    table["value"] = pd.to_numeric(table["value"], errors="raise").astype(float)
    table["convention"] = table["convention"].fillna("").astype(str)
    return table.reset_index(drop=True)


def convention_case(convention: pd.Series) -> pd.Series:
    """The empty-mask case of each ``convention`` entry (the part before the first ``;``)."""
    return convention.fillna("").astype(str).str.split(";").str[0].str.strip()


def gather_results(bench_dir: str | os.PathLike) -> pd.DataFrame:
    """Concatenate the ``results.csv`` of every complete run of ``bench_dir`` (see module docstring
    for the columns). Incomplete runs are ignored with a logged warning saying how many."""
    runs = complete_runs(bench_dir)
    if not runs:
        raise DataError("?", bench_dir, "no complete run (no COMPLETE marker in any run folder)")
    listed = listed_runs(bench_dir) or {}
    tables = []
    for run in runs:
        info = read_run_info(run)  # the folder and run.json must agree before its numbers are used
        expected = listed.get((run.model, run.seed, run.fold))
        if expected is not None and info.get("config_hash") != expected:
            raise DataError("?", run.path / RUN_FILE, f"made with config {str(info.get('config_hash'))[:12]}, but "
                            f"the benchmark lists {expected[:12]} for this run: rerun `sgnet benchmark`, which "
                            "names the changed keys")
        tables.append(_read_run_results(run))
    return _normalise(pd.concat(tables, ignore_index=True))


# The columns a results table from any tool must have; fold and convention are optional.
REQUIRED_COLUMNS = ["model", "seed", "subject", "region", "metric", "value"]


def check_metric_names(metrics, where: str) -> None:
    """Raise one :class:`SgnetError` line naming every metric of ``metrics`` that the suite does not
    know (``sgnet_lightning.evaluation.METRICS``), the known ones, and the closest known name."""
    from sgnet_lightning.evaluation import METRICS

    unknown = sorted({str(m) for m in metrics} - set(METRICS))
    if not unknown:
        return
    hints = [f"did you mean {close[0]}?" for m in unknown if (close := difflib.get_close_matches(m, METRICS, n=1))]
    names = ", ".join(repr(m) for m in unknown)
    raise SgnetError(
        f"unknown metric{'s' if len(unknown) > 1 else ''} {names} in {where}; known: {', '.join(METRICS)}"
        + (f" ({'; '.join(hints)})" if hints else "")
    )


def load_results(path_or_dir: str | os.PathLike) -> pd.DataFrame:
    """Results from a benchmark folder, or from a CSV: as :func:`write_results` writes it, or any
    tidy table with columns model, seed, subject, region, metric, value (fold and convention
    optional; other columns are ignored).

    Raises:
        DataError: no such file, an unreadable table, a missing column, a seed that is not an
            integer, a value that is not a number, or two rows for one model/seed/fold/subject/
            region/metric; each names the first offending row.
        SgnetError: metric names the suite does not know (all named, with the closest known one).
    """
    path = Path(path_or_dir)
    if path.is_dir():
        return gather_results(path)
    if not path.is_file():
        raise DataError("?", path, "no such results file or benchmark folder")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError("?", path, f"cannot be read as a CSV table ({err})".replace("\n", " ")) from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise DataError("?", path, f"missing column(s) {', '.join(missing)} (a results table needs "
                        f"{', '.join(REQUIRED_COLUMNS)}; fold and convention are optional)")
    check_metric_names(table["metric"].unique(), path.name)
    table["value"] = _numbers(table, "value", path, "a number (or empty / nan for a missing value)", blank_ok=True)
    table["seed"] = _numbers(table, "seed", path, "an integer", integer=True)
    if "fold" in table.columns:
        table["fold"] = _numbers(table, "fold", path, "an integer or empty", integer=True, blank_ok=True)
    else:
        table["fold"] = pd.NA
    if "convention" not in table.columns:
        table["convention"] = ""
    repeated = table.duplicated(["model", "seed", "fold", "subject", "region", "metric"], keep=False)
    if repeated.any():
        row = table[repeated].iloc[0]
        raise DataError(row["subject"], path, f"{int(repeated.sum())} rows repeat a model/seed/fold/subject/region/"
                        f"metric (e.g. {row['model']} seed {row['seed']} {row['region']} {row['metric']})")
    return _normalise(table)


def _numbers(table: pd.DataFrame, column: str, path: Path, what: str, *, integer: bool = False,
             blank_ok: bool = False) -> pd.Series:
    """``table[column]`` (strings) as floats; a :class:`DataError` naming the first entry that is
    not ``what`` (its line in the file counts the header as line 1)."""
    text = table[column].str.strip()
    blank = text.str.lower().isin(["", "nan"])
    numbers = pd.to_numeric(text.where(~blank, "nan"), errors="coerce")
    bad = (numbers.isna() & ~blank) | (blank & (not blank_ok))
    if integer:
        bad |= numbers.notna() & (numbers % 1 != 0)
    if bad.any():
        index = bad.idxmax()
        raise DataError(table.loc[index, "subject"], path,
                        f"line {index + 2}: {column} {table.loc[index, column]!r} is not {what}")
    return numbers


def write_results(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a gathered table as CSV (``fold`` empty without folds), atomically."""
    buffer = io.StringIO()
    df[COLUMNS].to_csv(buffer, index=False)
    atomic_write_text(path, buffer.getvalue())
