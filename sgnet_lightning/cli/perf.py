"""``sgnet bench [loader]``: speed measurements on this machine's device, thin over :mod:`sgnet_lightning.perf`.

Results: a JSON file (``--out``) and Markdown tables on stdout (patches/s, ms per volume, GiB).
"""

from __future__ import annotations

import argparse

from sgnet_lightning.perf.run import PARTS, run_bench, run_loader_bench
from sgnet_lightning.perf.tables import format_loader_table, format_table


def cmd_bench(args) -> int:
    """``sgnet bench [all|loader]``: run the measurements, write the JSON, print its tables."""
    if args.mode == "loader":
        out = args.out or "runs/perf/loader.json"
        report = run_loader_bench(out, quick=args.quick, patch=args.patch, phantom_dir=args.phantom_dir,
                                  manifest=args.manifest, cache_root=args.cache_root, device=args.device,
                                  rounds=args.rounds, threads=args.threads, queues=args.queue)
        print(f"device: {report['device']['name']} ({report['device']['type']}), {report['date']}")
        print(format_loader_table(report["loader"]))
    else:
        out = args.out or "runs/perf/bench.json"
        report = run_bench(out, models=args.models, quick=args.quick, steps=args.steps, patch=args.patch,
                           phantom_dir=args.phantom_dir, manifest=args.manifest, cache_root=args.cache_root,
                           compile=args.compile, device=args.device, parts=tuple(args.parts), threads=args.threads)
        print(f"device: {report['device']['name']} ({report['device']['type']}), torch {report['device']['torch']}, "
              f"{report['date']}")
        for note in report["notes"]:
            print(f"note: {note}")
        print(format_table(report))
        if "loader" in report:
            print(format_loader_table(report["loader"]))
    print(f"written: {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sgnet bench [loader]``."""
    p = subparsers.add_parser("bench", help="speed: seed way vs suite defaults; `bench loader`: loaders only")
    p.add_argument("mode", nargs="?", choices=["all", "loader"], default="all",
                   help="all (default): models, end to end, loaders, inference; loader: the loader comparison")
    p.add_argument("--out", help="JSON file (default runs/perf/bench.json or runs/perf/loader.json)")
    p.add_argument("--models", nargs="+", help="architectures (default: every registered one)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (CPU smoke runs and tests)")
    p.add_argument("--steps", type=int, help="timed training steps per repeat (model only)")
    p.add_argument("--patch", type=int, nargs=3, metavar=("X", "Y", "Z"), help="patch / roi in voxels")
    p.add_argument("--phantom-dir", help="phantom BML set to reuse, or where to write one")
    p.add_argument("--manifest", help="manifest of a real data set instead of a phantom set")
    p.add_argument("--cache-root", help="preprocessed cache folder (default: a temporary one)")
    p.add_argument("--compile", action="store_true", help="also time the suite with torch.compile (CUDA)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to measure")
    p.add_argument("--rounds", type=int, help="loader: alternating DataModule / naive rounds")
    p.add_argument("--threads", type=int, help="torch threads of this process (default: torch's choice)")
    p.add_argument("--queue", type=int, nargs=3, action="append", metavar=("SPV", "LENGTH", "WORKERS"),
                   help="loader: also compare this queue (samples per volume, length, workers); repeatable")
    p.set_defaults(func=cmd_bench)
