"""``sgnet benchmark [run|status] | stats | report | summary``: many runs -> statistics -> report -> table.

A benchmark's overrides (``--set KEY=VALUE`` or ``--KEY VALUE``) change its YAML; those in a run
section (``model``, ``data``, ``trainer``, ``run``) go into its ``budget``, so they reach every run
as they would reach one ``sgnet fit``: ``--trainer.max_epochs 1`` is ``--set budget.trainer.max_epochs=1``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sgnet_lightning.cli.options import add_override_arg, check_override_keys, override_keys, positive_int
from sgnet_lightning.errors import ConfigError

# Experiment-config sections an override changes in every run (through the budget). Not
# seed_everything: a benchmark's runs take their seeds from its `seeds`.
RUN_SECTIONS = ("model", "data", "trainer", "run")


def load_benchmark_from(args: argparse.Namespace) -> dict:
    """The benchmark ``--config`` names, with ``--data`` and the overrides, every run's config resolved.

    Raises:
        ConfigError: an override key neither the benchmark nor its runs' configs know.
    """
    from sgnet_lightning.benchmark import BENCHMARK_KEYS, load_benchmark

    keys = override_keys(_benchmark_pairs(args))
    for key in keys:
        root = key.partition(".")[0]
        if root not in BENCHMARK_KEYS:
            raise ConfigError(f"override {key!r}: a benchmark has no key {root!r}; its keys are "
                              f"{', '.join(BENCHMARK_KEYS)}, and {', '.join(RUN_SECTIONS)} for every run")
    bench = load_benchmark(args.config, benchmark_overrides(args))
    for key in keys:
        root, _, run_key = key.partition(".")
        if root == "budget" and run_key:
            for run in {run["label"]: run for run in bench["runs"]}.values():  # one run per model
                check_override_keys([run_key], run["config"], where=f"override (model {run['label']})")
    return bench


def benchmark_overrides(args: argparse.Namespace) -> dict:
    """The overrides of the benchmark YAML, as a nested dict (run sections moved into ``budget``)."""
    from sgnet_lightning.config import deep_merge, parse_overrides

    overrides = parse_overrides(_benchmark_pairs(args))
    if args.data:
        overrides = deep_merge(overrides, {"budget": {"data": {"data_root": args.data}}})
    return overrides


def _benchmark_pairs(args: argparse.Namespace) -> list[str]:
    """The command's ``KEY=VALUE`` overrides, those of a run section moved under ``budget.``."""
    keys = override_keys(args.set or [])
    return [f"budget.{pair}" if key.split(".")[0] in RUN_SECTIONS else pair for key, pair in zip(keys, args.set or [])]


def cmd_benchmark(args) -> int:
    """``sgnet benchmark [run]``: run what is missing (through the launcher), gather the results."""
    from sgnet_lightning.benchmark import run_benchmark
    from sgnet_lightning.launch import command_line_overrides, load_launcher

    if args.action == "status":
        return cmd_benchmark_status(args)
    load_benchmark_from(args)  # refuses unknown override keys before anything runs
    launcher = load_launcher(args.launcher, command_line_overrides(args.launcher_set, args.gpus, args.workers))
    bench_dir = run_benchmark(args.config, overrides=benchmark_overrides(args), only=args.only,
                              redo_changed=args.redo_changed, launcher=launcher, wait=args.wait)
    if bench_dir is None:
        print(f"`sgnet benchmark status --config {args.config}` shows where each run stands; rerun this command "
              "(or add --wait) to gather the results once they are done")
    else:
        print(f"benchmark results: {bench_dir / 'results.csv'}")
    return 0


def cmd_benchmark_status(args) -> int:
    """``sgnet benchmark status``: every run's state, job and log; ``--project``: wall-time projection."""
    from sgnet_lightning.files import atomic_write_json
    from sgnet_lightning.launch.jobs import format_benchmark_status
    from sgnet_lightning.launch.projection import format_projection, project

    bench = load_benchmark_from(args)
    if not args.project:
        print(format_benchmark_status(bench))
        return 0
    projection = project(bench, args.slots, measured_from=args.measured_from, anchors_file=args.anchors)
    if args.json:
        atomic_write_json(args.json, projection)
    print(format_projection(projection))
    return 0


def cmd_stats(args) -> int:
    from sgnet_lightning.analysis.results import load_results
    from sgnet_lightning.analysis.stats import compute_stats, primary_endpoint, write_stats

    results = load_results(args.results)
    stats = compute_stats(results, reference=args.reference, n_bootstrap=args.n_bootstrap, seed=args.seed,
                          primary=primary_endpoint(args.results, args.primary))
    write_stats(stats, args.out)
    endpoint = stats.attrs["settings"]["primary_endpoint"]
    print(f"statistics for {stats['model'].nunique()} models written to {args.out} (primary endpoint: "
          + (f"{endpoint['metric']} {endpoint['region']})" if endpoint else "none)"))
    return 0


def cmd_report(args) -> int:
    from sgnet_lightning.analysis.document import check_in_browser
    from sgnet_lightning.analysis.report import build_report

    out = Path(args.out or Path(args.benchmark) / "report")
    html, md = build_report(args.benchmark, out, reference=args.reference)
    if not args.no_wandb:
        import pandas as pd

        from sgnet_lightning.runs import RESULTS_FILE
        from sgnet_lightning.tracking import log_summary_run

        tables = {"stats": pd.read_csv(out / "stats.csv"), "results": pd.read_csv(out / RESULTS_FILE)}
        log_summary_run(Path(args.benchmark), tables, sorted((out / "figures").glob("*.png")),
                        group=Path(args.benchmark).name)
    if args.check_browser:
        result = check_in_browser(html)
        print(f"browser check: {result['loaded']}/{result['images']} figures loaded")
    print(f"report: {html}\nmarkdown: {md}")
    return 0


def cmd_summary(args) -> int:
    from sgnet_lightning.analysis.summary import print_summary

    print_summary(args.benchmark)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sgnet benchmark [run|status]``, ``sgnet stats``, ``sgnet report`` and ``sgnet summary``."""
    p = subparsers.add_parser("benchmark", help="every model x seed [x fold]: fit + test, resumable; `status`: "
                                                "where each run stands")
    p.add_argument("action", nargs="?", choices=("run", "status"), default="run",
                   help="run (default): run what is missing and gather; status: list every run's state")
    p.add_argument("--config", required=True, help="benchmark YAML (experiments/benchmarks/...)")
    add_override_arg(p, "override in the benchmark config, e.g. seeds=[0,1]; model, data, trainer and run keys "
                        "go into its budget (every run)")
    p.add_argument("--data", help="folder of the real data set (overrides the manifest's root)")
    p.add_argument("--only", nargs="*", help="model labels to run")
    p.add_argument("--redo-changed", action="store_true",
                   help="runs made with another config than the YAML now gives: move them aside "
                        "(<run>.replaced-<time>) and run them anew (default: refuse, listing the changes)")
    launch = p.add_argument_group("launcher (run)")
    launch.add_argument("--launcher", default="inline",
                        help="inline (default: one run after another here), local (side by side on this machine's "
                             "GPUs or CPUs), slurm (one job array), or a launcher YAML (experiments/launchers/)")
    launch.add_argument("--launcher-set", action="append", metavar="KEY=VALUE",
                        help="launcher setting, e.g. runs_per_gpu=2, partition=gpu, time_min=720")
    launch.add_argument("--gpus", help="local: GPU indices to use, e.g. 0,1,2,3 (default: every visible GPU)")
    launch.add_argument("--workers", type=positive_int, help="local, CPU-only machine: runs at a time")
    launch.add_argument("--wait", action="store_true", help="slurm: wait for the array, then gather the results")
    projection = p.add_argument_group("projection (status --project)")
    projection.add_argument("--project", action="store_true",
                            help="project the benchmark's wall time on --slots parallel slots")
    projection.add_argument("--slots", type=positive_int, nargs="+", default=[1, 8],
                            help="numbers of parallel slots (GPUs x runs per GPU, SLURM tasks at once)")
    projection.add_argument("--measured-from", help="benchmark folder whose run.json times to use (default: this one)")
    projection.add_argument("--anchors", help="GPU throughput anchors JSON instead of measured times (a lower bound)")
    projection.add_argument("--json", help="also write the projection as JSON")
    p.set_defaults(func=cmd_benchmark)

    p = subparsers.add_parser("stats", help="paired statistics over a benchmark's per-subject results")
    p.add_argument("--results", required=True, help="results CSV or benchmark folder")
    p.add_argument("--reference", default="unet", help="model every other is compared with")
    p.add_argument("--out", required=True)
    p.add_argument("--n-bootstrap", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--primary", metavar="METRIC:REGION",
                   help="primary endpoint, its own Holm family (default: benchmark.json's primary_endpoint, "
                        "else Dice of the task's main region)")
    p.set_defaults(func=cmd_stats)

    p = subparsers.add_parser("report", help="HTML + Markdown report built only from a benchmark folder")
    p.add_argument("--benchmark", required=True)
    p.add_argument("--out")
    p.add_argument("--reference")
    p.add_argument("--check-browser", action="store_true", help="open it in headless Chromium")
    p.add_argument("--no-wandb", action="store_true", help="do not log the summary run to W&B (offline)")
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser("summary", help="print a benchmark's results table (the end of make demo)")
    p.add_argument("benchmark", help="benchmark folder, e.g. runs/demo")
    p.set_defaults(func=cmd_summary)
