"""The `sgnet` command line as one parser: every command has a help page, and every command that
takes a config takes its overrides in one syntax (`--set KEY=VALUE` or `--KEY VALUE`) with one meaning.

Bad overrides (unknown dotted keys, a flag without a value) are cases of tests/test_cli_errors.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from sgnet_lightning.cli import build_parser, main, parse_args
from sgnet_lightning.cli.benchmark import load_benchmark_from

REPO = Path(__file__).resolve().parents[1]
DEMO_BENCHMARK = str(REPO / "experiments" / "benchmarks" / "demo.yaml")


Parser = argparse.ArgumentParser


def _commands(parser: Parser, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Parser]:
    """Every command of the parser, as its words (``("data", "synth")``) -> its own parser."""
    found = {path: parser} if path else {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(_commands(sub, (*path, name)))
    return found


COMMANDS = _commands(build_parser())
TAKES_OVERRIDES = sorted(words for words, p in COMMANDS.items() if "--set" in p._option_string_actions)


def _required_args(parser: argparse.ArgumentParser) -> list[str]:
    """Placeholder values for a command's required arguments: enough to parse it, never to run it."""
    argv = []
    for action in parser._actions:
        if action.option_strings and action.required:
            argv += [action.option_strings[0], "x"]
        elif not action.option_strings and action.nargs not in ("?", "*", argparse.PARSER):
            argv.append("x")
    return argv


@pytest.mark.parametrize("words", sorted(COMMANDS), ids=" ".join)
def test_every_command_has_a_help_page(words, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*words, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: sgnet {' '.join(words)}")


def test_the_commands_that_take_a_config_take_overrides():
    """The set the `sgnet` docstring and the README name as taking `--set` and dotted flags."""
    assert TAKES_OVERRIDES == sorted([("fit",), ("validate",), ("test",), ("gate-scan",), ("benchmark",),
                                      ("sweep", "run")])


@pytest.mark.parametrize("words", TAKES_OVERRIDES, ids=" ".join)
@pytest.mark.parametrize("flags", [["--trainer.max_epochs", "1"], ["--trainer.max_epochs=1"]], ids=["space", "equals"])
def test_a_dotted_flag_is_the_same_override_as_set(words, flags):
    argv = [*words, *_required_args(COMMANDS[words]), "--set", "data.batch_size=2"]
    assert parse_args([*argv, *flags]).set == parse_args([*argv, "--set", "trainer.max_epochs=1"]).set \
        == ["data.batch_size=2", "trainer.max_epochs=1"]


def test_a_dotted_flag_reaches_every_benchmark_run_as_set_does():
    dotted = load_benchmark_from(parse_args(["benchmark", "--config", DEMO_BENCHMARK, "--trainer.max_epochs", "1",
                                             "--model.optimizer.lr=0.01"]))
    with_set = load_benchmark_from(parse_args(["benchmark", "--config", DEMO_BENCHMARK,
                                               "--set", "trainer.max_epochs=1", "--set", "model.optimizer.lr=0.01"]))
    assert len(dotted["runs"]) == 10  # 5 models x 2 seeds, each with its own config
    assert [run["config"] for run in dotted["runs"]] == [run["config"] for run in with_set["runs"]]
    assert {run["config"]["trainer"]["max_epochs"] for run in dotted["runs"]} == {1}  # the YAML's budget says 20
    assert {run["config"]["model"]["optimizer"]["lr"] for run in dotted["runs"]} == {0.01}


def test_benchmark_keys_of_its_own_stay_benchmark_keys():
    bench = load_benchmark_from(parse_args(["benchmark", "--config", DEMO_BENCHMARK, "--set", "seeds=[3]",
                                            "--budget.data.batch_size", "2"]))
    assert {run["seed"] for run in bench["runs"]} == {3}
    assert {run["config"]["data"]["batch_size"] for run in bench["runs"]} == {2}
