"""``sgnet sweep run | status | best | report``: the command line over :mod:`sgnet_lightning.sweeps`.

    sgnet sweep run sweeps/sgnet_gate.yaml --study sgnet_gate --n-trials 40 [--storage URL]
        [--launcher local|slurm --workers N]
    sgnet sweep status --study sgnet_gate [--storage URL]
    sgnet sweep best --study sgnet_gate [--storage URL] --out experiments/tuned/sgnet_gate.yaml
    sgnet sweep report --study sgnet_gate [--storage URL] --out runs/sweeps/sgnet_gate/report

``run`` takes overrides for every trial, merged into the space's ``fixed`` and checked like it:
``--set data.data_root=/data/BML`` or, the same, ``--data.data_root /data/BML``.

Without ``--storage`` a study lives in ``<runs-root>/<study>.journal`` (one machine). Workers share a
study through its storage: ``--launcher local --workers N`` starts N on this machine (one per GPU by
default), ``--launcher slurm --workers N`` submits N as one SLURM array (PostgreSQL storage needed),
and the same ``run`` command started by hand on several machines with one PostgreSQL URL joins the
same study (see docs/cluster.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sgnet_lightning.cli.options import add_override_arg, positive_int

DEFAULT_RUNS_ROOT = "runs/sweeps"


def cmd_sweep_run(args) -> int:
    from sgnet_lightning.config import parse_overrides
    from sgnet_lightning.errors import SgnetError
    from sgnet_lightning.launch import command_line_overrides, load_launcher
    from sgnet_lightning.sweeps import load_space, run_sweep
    from sgnet_lightning.sweeps.study import FINISHED

    launcher = load_launcher(args.launcher, command_line_overrides(args.launcher_set, args.gpus))
    space_overrides = parse_overrides(args.set or [])
    space = load_space(args.space, overrides=space_overrides)
    study_name = args.study or Path(args.space).stem
    options = {"storage": args.storage, "n_trials": args.n_trials, "runs_root": args.runs_root,
               "timeout": args.timeout, "heartbeat_interval": args.heartbeat_interval,
               "grace_period": args.grace_period, "max_retry": args.max_retry}
    if launcher.inline:
        if args.workers not in (None, 1):
            raise SgnetError("--workers needs --launcher local or slurm (inline is this one process)")
        study = run_sweep(space, study_name, **options)
    else:
        from sgnet_lightning.launch.jobs import launch_sweep_workers
        from sgnet_lightning.sweeps import load_study

        options["n_trials"] = args.n_trials if args.n_trials is not None else space.n_trials
        failed = launch_sweep_workers(args.space, space_overrides, study_name, options, launcher, args.workers,
                                      wait=args.wait)
        if failed:
            raise SgnetError(f"{len(failed)} sweep worker(s) failed: "
                             + "; ".join(f"{name}: {error}" for name, error in failed.items())
                             + f"; `sgnet sweep status --study {study_name}` lists the trials and logs")
        if launcher.kind == "slurm" and not args.wait:
            print(f"`sgnet sweep status --study {study_name}"
                  + (f" --storage {_storage_label(args.storage, args.runs_root, study_name)}`" if args.storage else "`")
                  + " shows its trials and workers")
            return 0
        study = load_study(study_name, _storage(args))
    states = [t.state for t in study.get_trials(deepcopy=False)]
    finished = sum(state in FINISHED for state in states)
    failed_trials = sum(state.name == "FAIL" for state in states)
    print(f"study {study_name}: {finished} finished trials ({failed_trials} failed) in "
          f"{_storage_label(args.storage, args.runs_root, study_name)}")
    return 0


def cmd_sweep_status(args) -> int:
    from sgnet_lightning.launch.jobs import format_sweep_status

    print(format_sweep_status(args.study, _storage(args), args.runs_root))
    return 0


def cmd_sweep_best(args) -> int:
    from sgnet_lightning.sweeps import load_study, write_best_config
    from sgnet_lightning.sweeps.best import format_front

    study = load_study(args.study, _storage(args))
    trial = write_best_config(study, args.out, pareto_index=args.pareto_index, pick=args.pick)
    if len(study.directions) > 1:
        print("Pareto front (--pareto-index picks a row):\n" + format_front(study))
    values = ", ".join(f"{k}={v}" for k, v in trial.user_attrs["config_values"].items())
    print(f"trial {trial.number} ({values}) written to {args.out}")
    return 0


def cmd_sweep_report(args) -> int:
    from sgnet_lightning.sweeps import load_study, write_report

    study = load_study(args.study, _storage(args))
    page = write_report(study, args.out, storage_label=_storage_label(args.storage, args.runs_root, args.study))
    print(f"sweep report: {page}")
    return 0


def _storage(args) -> str:
    from sgnet_lightning.sweeps import default_storage

    return args.storage or default_storage(args.runs_root, args.study)


def _storage_label(storage: str | None, runs_root: str, study: str) -> str:
    from sgnet_lightning.sweeps.storage import default_storage, safe_url

    return safe_url(storage or default_storage(runs_root, study))


def _add_storage_args(p: argparse.ArgumentParser, study_required: bool) -> None:
    p.add_argument("--study", required=study_required, help="study name" + ("" if study_required else
                   " (default: the space file's name)"))
    p.add_argument("--storage", help="journal file or RDB URL, e.g. postgresql+psycopg2://user@host/db "
                   "(default: <runs-root>/<study>.journal)")
    p.add_argument("--runs-root", default=DEFAULT_RUNS_ROOT, help="folder of trial runs and the default storage")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sgnet sweep run | status | best | report``."""
    sweep = subparsers.add_parser("sweep", help="Optuna studies: run trials, status, write the best config, report")
    sweep_sub = sweep.add_subparsers(dest="sweep_command", required=True)

    p = sweep_sub.add_parser("run", help="run trials of a study until it has --n-trials finished ones")
    p.add_argument("space", help="search space YAML (sweeps/...)")
    _add_storage_args(p, study_required=False)
    p.add_argument("--n-trials", type=int, help="target number of finished trials in the study, across all "
                   "workers and reruns (default: the space's n_trials)")
    p.add_argument("--timeout", type=float, help="stop this worker after this many seconds")
    add_override_arg(p, "config override for every trial, e.g. data.data_root=/data/BML (merged into 'fixed')")
    p.add_argument("--heartbeat-interval", type=int, help="seconds between heartbeats (RDB storage; default 60)")
    p.add_argument("--grace-period", type=int, help="seconds without heartbeat before a trial counts as dead")
    p.add_argument("--max-retry", type=int, help="how often a dead trial is re-queued")
    launch = p.add_argument_group("launcher")
    launch.add_argument("--launcher", default="inline",
                        help="inline (default: this process is the one worker), local (--workers on this machine, "
                             "one per GPU by default), slurm (--workers as one SLURM array), or a launcher YAML")
    launch.add_argument("--workers", type=positive_int, help="workers to start (local, slurm)")
    launch.add_argument("--launcher-set", action="append", metavar="KEY=VALUE",
                        help="launcher setting, e.g. runs_per_gpu=2, partition=gpu, time_min=720")
    launch.add_argument("--gpus", help="local: GPU indices to use, e.g. 0,1,2,3 (default: every visible GPU)")
    launch.add_argument("--wait", action="store_true", help="slurm: wait until the workers are done")
    p.set_defaults(func=cmd_sweep_run)

    p = sweep_sub.add_parser("status", help="a study's trials (state, values, worker, SLURM job, log) and workers")
    _add_storage_args(p, study_required=True)
    p.set_defaults(func=cmd_sweep_status)

    p = sweep_sub.add_parser("best", help="write the best (or a chosen Pareto) trial as an experiment config")
    _add_storage_args(p, study_required=True)
    p.add_argument("--out", required=True, help="experiment YAML to write (e.g. experiments/tuned/<study>.yaml)")
    p.add_argument("--pareto-index", type=int, help="multi-objective: the index of a Pareto-front trial")
    p.add_argument("--pick", help="multi-objective: take the front's best trial on this objective "
                   "(default: the first objective)")
    p.set_defaults(func=cmd_sweep_best)

    p = sweep_sub.add_parser("report", help="figures and an HTML/Markdown page drawn from the study storage")
    _add_storage_args(p, study_required=True)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_sweep_report)
