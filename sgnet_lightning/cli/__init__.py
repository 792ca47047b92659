"""``sgnet``: the command line, one module per stage, each thin over plain functions.

    sgnet data synth | manifest | check | preprocess     source folder -> manifest -> cache     (cli/data.py)
    sgnet fit | validate | test | predict                 one experiment (LightningCLI configs)  (cli/run.py)
    sgnet evaluate                                        score any prediction folder
    sgnet gate-scan                                       SG-Net gate threshold on validation, fixed weights
    sgnet benchmark [status] | stats | report | summary   multi-seed comparison -> statistics    (cli/benchmark.py)
                                                          -> report -> table
    sgnet sweep run | status | best | report              Optuna studies                         (cli/sweep.py)
    sgnet bench [loader]                                  speed measurements                     (cli/perf.py)

Each stage module has ``register(subparsers)``, whose parsers ``set_defaults(func=handler)``; a
handler takes the parsed arguments and returns the exit code.

Overrides, one syntax for every command that takes a config (fit, validate, test, gate-scan,
benchmark, sweep run): ``--set KEY=VALUE`` (repeatable), or the same as a dotted flag,
``--KEY VALUE`` or ``--KEY=VALUE``::

    sgnet fit --config experiments/bml/sgnet.yaml --trainer.max_epochs 3 --set data.batch_size=2
    sgnet benchmark --config experiments/benchmarks/demo.yaml --trainer.max_epochs=1   # every run

Values are YAML (``3``, ``3.0e-3``, ``[32, 32, 16]``, ``null``); dotted flags apply after the
``--set`` ones. A key the runs would reject (``--trainer.max_epoch``) is refused before anything runs.

Errors of the suite (bad data, bad config) print one line and exit 1; usage errors print one line
and exit 2; no traceback (``-v`` shows it).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys

# the stages, in data-flow order: each adds its commands to the parser
from sgnet_lightning.cli import data, run, benchmark, sweep, perf
from sgnet_lightning.cli.options import split_dotted_flags
from sgnet_lightning.errors import SgnetError

STAGES = (data, run, benchmark, sweep, perf)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2) instead of the usage block followed
    by the error: every command reports bad input as one line (``--help`` shows the usage)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="sgnet", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    subparsers = parser.add_subparsers(dest="command", required=True)  # each a OneLineParser too
    for stage in STAGES:
        stage.register(subparsers)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse an ``sgnet`` command line; dotted override flags are appended to ``args.set``.

    Exits (code 2, one line) on a usage error, as argparse does.
    """
    parser = build_parser()
    try:
        argv, dotted = split_dotted_flags(argv)
    except ValueError as err:
        parser.error(str(err))
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(f"unrecognised arguments: {' '.join(unknown)}")
    if dotted:
        if not hasattr(args, "set"):  # the command takes no config, so no overrides
            parser.error(f"unrecognised arguments: {' '.join('--' + pair for pair in dotted)} "
                         f"(`sgnet {args.command}` takes no config overrides)")
        args.set = [*(args.set or []), *dotted]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except SgnetError as err:
        if args.verbose:
            raise
        # one line, whatever the message quotes (a YAML parser's pointer lines, a file's contents)
        print("error: " + re.sub(r"\s*\n\s*", " ", str(err)).strip(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
