"""Subcommands for the later stages: benchmark, stats, report, sweep, bench (see ``sgnet_lightning.cli``)."""

from __future__ import annotations

import argparse
from pathlib import Path


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

        from sgnet_lightning.tracking import log_summary_run

        tables = {"stats": pd.read_csv(out / "stats.csv"), "results": pd.read_csv(out / "results.csv")}
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


def cmd_gate_scan(args) -> int:
    import pandas as pd

    from sgnet_lightning.cli import _experiment_config
    from sgnet_lightning.experiment import run_dir_for
    from sgnet_lightning.gate_scan import SCAN_CSV, SCAN_DIR, run_gate_scan

    config = _experiment_config(args)
    run_dir = Path(args.run_dir) if args.run_dir else run_dir_for(config)
    summary = run_gate_scan(config, run_dir, ckpt=args.ckpt, thresholds=args.thresholds, choose=args.choose,
                            store=args.store)
    means = pd.DataFrame(summary["means"])
    shown = means[means["metric"].isin(["dice", "precision", "recall", "lesion_f1", "lesion_fp", "hd95_mm"])
                  | means["metric"].str.startswith("gate_open_fraction_")]
    print(shown.pivot_table(index="threshold", columns=["metric", "region"], values="mean")
          .to_string(float_format=lambda v: f"{v:.3f}"))
    point = summary["operating_point"]
    print(f"operating point (best mean {point['metric']} {point['region']} on {len(point['validation_subjects'])} "
          f"validation subjects): gate threshold {point['gate_threshold']:g}"
          + (f", stored in {run_dir / 'operating_point.json'}" if args.store else " (not stored; --store stores it)"))
    print(f"scan: {run_dir / SCAN_DIR / SCAN_CSV}")
    return 0


def register_more(sub: argparse._SubParsersAction) -> None:
    from sgnet_lightning.gate_scan import DEFAULT_CHOICE, DEFAULT_THRESHOLDS

    p = sub.add_parser("gate-scan", help="SG-Net: score gate thresholds on validation with fixed weights")
    p.add_argument("--config", required=True, help="the run's experiment YAML")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, as for sgnet test")
    p.add_argument("--run-dir", help="run folder (default: runs/<name>/<network>/<dataset>/seed<k>)")
    p.add_argument("--ckpt", default="best", help="best, last or a checkpoint path")
    p.add_argument("--thresholds", nargs="+", type=float, default=list(DEFAULT_THRESHOLDS), metavar="TAU")
    p.add_argument("--choose", metavar="METRIC[:REGION]",
                   help=f"metric whose validation mean picks the operating point (default {DEFAULT_CHOICE} of "
                        "the task's main region)")
    p.add_argument("--store", action="store_true",
                   help="store the operating point in <run>/operating_point.json, for --gate-threshold validated")
    p.set_defaults(func=cmd_gate_scan)

    from sgnet_lightning.benchmark import register_benchmark_command

    register_benchmark_command(sub)  # sgnet benchmark [run|status], with its launcher options

    p = sub.add_parser("stats", help="paired statistics over a benchmark's per-subject results")
    p.add_argument("--results", required=True, help="results CSV or benchmark folder")
    p.add_argument("--reference", default="unet", help="model every other is compared with")
    p.add_argument("--out", required=True)
    p.add_argument("--n-bootstrap", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--primary", metavar="METRIC:REGION",
                   help="primary endpoint, its own Holm family (default: benchmark.json's primary_endpoint, "
                        "else Dice of the task's main region)")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("report", help="HTML + Markdown report built only from a benchmark folder")
    p.add_argument("--benchmark", required=True)
    p.add_argument("--out")
    p.add_argument("--reference")
    p.add_argument("--check-browser", action="store_true", help="open it in headless Chromium")
    p.add_argument("--no-wandb", action="store_true", help="do not log the summary run to W&B (offline)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("summary", help="print a benchmark's results table (the end of make demo)")
    p.add_argument("benchmark", help="benchmark folder, e.g. runs/demo")
    p.set_defaults(func=cmd_summary)

    try:
        from sgnet_lightning.sweep import register_sweep_commands
    except ImportError:
        pass
    else:
        register_sweep_commands(sub)
    try:
        from sgnet_lightning.perf.commands import register_bench_commands
    except ImportError:
        pass
    else:
        register_bench_commands(sub)
