"""Arguments several ``sgnet`` commands share, and the one override syntax.

Overrides: a command that takes ``--set KEY=VALUE`` also takes the same override as a dotted flag,
``--KEY VALUE`` or ``--KEY=VALUE``: ``--trainer.max_epochs 3`` is ``--set trainer.max_epochs=3``.
Values are YAML (``3`` an int, ``[32, 32, 16]`` a list, ``null``); dotted flags apply after every
``--set``. Each command says where its overrides go (an experiment config, every run of a benchmark,
every trial of a sweep), and refuses a key its runs would reject, before anything runs.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

# ``--section.key[=value]``: no option of ``sgnet`` has a dot in its name, so this is always an override
DOTTED_FLAG = re.compile(r"--([A-Za-z_]\w*(?:\.\w+)+)(?:=(.*))?", re.DOTALL)


def split_dotted_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """Take the dotted override flags out of a command line.

    Returns:
        the rest of ``argv``, and the overrides as ``KEY=VALUE`` strings in command-line order, e.g.
        ``["fit", "--config", "x.yaml"]`` and ``["trainer.max_epochs=3"]`` for
        ``fit --config x.yaml --trainer.max_epochs 3``.

    Raises:
        ValueError: a dotted flag without a value.
    """
    rest: list[str] = []
    pairs: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        if token == "--":  # argparse's end of options: the rest is positional
            rest += [token, *tokens]
            break
        match = DOTTED_FLAG.fullmatch(token)
        if match is None:
            rest.append(token)
            continue
        key, value = match.groups()
        if value is None:
            value = next(tokens, None)
            if value is None or value.startswith("--"):
                raise ValueError(f"{token} needs a value ({token}=VALUE or {token} VALUE)")
        pairs.append(f"{key}={value}")
    return rest, pairs


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def add_override_arg(p: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE`` (repeatable); its command then also takes dotted flags (see the module doc)."""
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help=help + "; or as a dotted flag: --trainer.max_epochs 3 is --set trainer.max_epochs=3")


def override_keys(pairs: list[str]) -> list[str]:
    """The dotted keys of ``KEY=VALUE`` overrides, e.g. ``["trainer.max_epochs"]``."""
    return [pair.split("=", 1)[0].strip() for pair in pairs]


def check_override_keys(keys: list[str], config: dict[str, Any], where: str) -> None:
    """Refuse an override key that an experiment config cannot take (unknown section, argument or
    network option), in one message, instead of LightningCLI's usage block after minutes of setup.

    Raises:
        ConfigError: naming the key and listing the known ones.
    """
    from sgnet_lightning.sweeps.space import check_config_key

    for key in keys:
        if key != "seed_everything":  # a top-level value of its own, not a section
            check_config_key(key, config, where, tunable=False)


def experiment_config(args: argparse.Namespace) -> dict[str, Any]:
    """``--config`` (composed through ``defaults``) with the command's overrides merged on top."""
    from sgnet_lightning.config import deep_merge, load_config, parse_overrides

    config = deep_merge(load_config(args.config), parse_overrides(args.set or []))
    check_override_keys(override_keys(args.set or []), config, where="override")
    return config


def add_experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="experiment YAML (experiments/...)")
    add_override_arg(p, "override in the experiment config, e.g. model.aux_loss_weight=0.5")
    p.add_argument("--run-dir", help="run folder (default: runs/<name>/<network>/<dataset>/seed<k>)")


def add_gate_threshold_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gate-threshold", metavar="TAU|validated",
                   help="SG-Net hard gates' threshold: a number in (0, 1), or 'validated' for the operating "
                        "point chosen on validation by `sgnet gate-scan --store` (default: as trained)")
