"""Every `sgnet` command turns bad input into one line on stderr and a non-zero exit, no traceback.

Each case runs the `sgnet` console entry in this process on inputs a user gets wrong (a missing
file, a misspelt option, a malformed table or YAML) and checks the exit code, that stderr holds
exactly one line naming the problem, and that nothing printed a traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from _nifti_helpers import make_bml_case
from conftest import sgnet

REPO = Path(__file__).resolve().parents[1]
PHANTOM_CONFIG = str(REPO / "experiments" / "phantom_bml" / "sgnet.yaml")
DEMO_BENCHMARK = str(REPO / "experiments" / "benchmarks" / "demo.yaml")


def _written(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _not_a_manifest(tmp_path: Path) -> str:
    """A CSV with a JSON sidecar that `sgnet data manifest` did not write."""
    _written(tmp_path, "x.json", "{}")
    return _written(tmp_path, "x.csv", "a,b\n1,2\n")


# name -> (argv factory given tmp_path, text the error line must contain)
CASES = {
    "data synth: n of 0": (
        lambda t: ["data", "synth", "--kind", "bml", "--n", "0", "--out", str(t / "o")],
        "argument --n: must be a positive integer, got 0",
    ),
    "data synth: unknown kind": (
        lambda t: ["data", "synth", "--kind", "bml2", "--n", "2", "--out", str(t / "o")],
        "argument --kind: invalid choice: 'bml2'",
    ),
    "data synth: out is a file": (
        lambda t: ["data", "synth", "--kind", "bml", "--n", "2", "--out", _written(t, "f", "")],
        "exists and is not a folder",
    ),
    "data manifest: no data folder": (
        lambda t: ["data", "manifest", "--dataset", "bml", "--root", str(t / "nowhere"), "--out", str(t / "m.csv")],
        "data folder does not exist",
    ),
    "data manifest: split rule not YAML": (
        lambda t: ["data", "manifest", "--dataset", "bml", "--root", str(t), "--out", str(t / "m.csv"),
                   "--split", _written(t, "rule.yaml", "name: kfold\n  n_folds: [3\n")],
        "rule.yaml: cannot be read",
    ),
    "data manifest: groups file missing": (
        lambda t: ["data", "manifest", "--dataset", "bml", "--root", str(t), "--groups", str(t / "g.csv")],
        "groups file not found",
    ),
    "data check: no manifest": (
        lambda t: ["data", "check", str(t / "absent.csv")],
        "manifest file does not exist",
    ),
    "data check: not a manifest": (
        lambda t: ["data", "check", _not_a_manifest(t)],
        "manifest sidecar lacks dataset, root, split_rule",
    ),
    "data preprocess: no manifest": (
        lambda t: ["data", "preprocess", str(t / "absent.csv"), "--cache-root", str(t / "cache")],
        "manifest file does not exist",
    ),
    "fit: no config": (lambda t: ["fit", "--config", str(t / "absent.yaml")], "config file not found"),
    "fit: override without =": (
        lambda t: ["fit", "--config", PHANTOM_CONFIG, "--set", "model.aux_loss_weight"],
        "override 'model.aux_loss_weight' must look like key.path=value",
    ),
    "fit: manifest missing": (
        lambda t: ["fit", "--config", PHANTOM_CONFIG, "--set", f"data.manifest={t / 'absent.csv'}"],
        "manifest file does not exist",
    ),
    "validate: no config": (lambda t: ["validate", "--config", str(t / "absent.yaml")], "config file not found"),
    "test: config not YAML": (
        lambda t: ["test", "--config", _written(t, "bad.yaml", "model: [unclosed\n")], "not valid YAML",
    ),
    "predict: no checkpoint": (
        lambda t: ["predict", "--ckpt", str(t / "absent.ckpt"), "--input", str(t), "--out", str(t / "seg")],
        "checkpoint not found",
    ),
    "evaluate: no prediction folder": (
        lambda t: ["evaluate", "--pred", str(t / "absent"), "--ref", str(t), "--dataset", "bml",
                   "--out", str(t / "m.csv")],
        "does not exist",
    ),
    "benchmark: no config": (
        lambda t: ["benchmark", "--config", str(t / "absent.yaml")], "config file not found",
    ),
    "benchmark: misspelt key in the YAML": (
        lambda t: ["benchmark", "status", "--config", _written(
            t, "typo.yaml", f"name: typo\nexperiment: {REPO}/experiments/datasets/phantom_bml.yaml\n"
            f"models: {{unet: {{defaults: [{REPO}/experiments/models/unet.yaml]}}}}\nseed: [0]\n")],
        "unknown benchmark key(s) seed; known: name, root",
    ),
    "stats: metric misspelt": (
        lambda t: ["stats", "--results", _written(t, "results.csv", "model,seed,subject,region,metric,value\n"
                                                  "unet,0,s1,WT,hd95,3.0\n"), "--out", str(t / "s")],
        "unknown metric 'hd95' in results.csv; known: dice",
    ),
    "stats: not a table": (
        lambda t: ["stats", "--results", _written(t, "r.csv", "model,seed\n1,2,3,4\n\"x\n"), "--out", str(t / "s")],
        "r.csv",
    ),
    "stats: bad primary endpoint": (
        lambda t: ["stats", "--results", _written(t, "results.csv", "model,seed,subject,region,metric,value\n"
                                                  "unet,0,s1,WT,dice,0.5\n"), "--out", str(t / "s"),
                   "--primary", "dice"],
        "expected METRIC:REGION",
    ),
    "report: no benchmark folder": (
        lambda t: ["report", "--benchmark", str(t / "absent"), "--no-wandb"], "benchmark.json is missing",
    ),
    "sweep: bad space": (
        lambda t: ["sweep", "run", _written(t, "space.yaml", f"experiment: {PHANTOM_CONFIG}\nparameters:\n"
                                            "  model.optimizer.lr: {type: floaty, low: 0.1, high: 1}\n"
                                            "objectives:\n  - {metric: dice, direction: maximize}\n"),
                   "--study", "s", "--storage", f"sqlite:///{t / 's.db'}"],
        "floaty",
    ),
    "sweep: space not YAML": (
        lambda t: ["sweep", "run", _written(t, "space.yaml", "parameters: [\n"), "--study", "s"],
        "not valid YAML",
    ),
    "bench: unknown option": (lambda t: ["bench", "--nope"], "unrecognised arguments: --nope"),
    "bench: unknown part": (lambda t: ["bench", "--parts", "nope"], "argument --parts: invalid choice: 'nope'"),
    "bench: unknown model": (
        lambda t: ["bench", "--models", "nope", "--quick", "--out", str(t / "b.json")], "unknown model(s) nope",
    ),
    "predict: corrupt checkpoint": (
        lambda t: ["predict", "--ckpt", _written(t, "bad.ckpt", "not a checkpoint"), "--input", str(t),
                   "--out", str(t / "seg")],
        "bad.ckpt",
    ),
    "fit: override value not YAML": (
        lambda t: ["fit", "--config", PHANTOM_CONFIG, "--set", "model.aux_loss_weight=[1"], "model.aux_loss_weight",
    ),
    "no command": (lambda t: [], "the following arguments are required: command"),
    "fit: unknown dotted key": (
        lambda t: ["fit", "--config", PHANTOM_CONFIG, "--trainer.max_epoch", "1"],
        "config key 'trainer.max_epoch': trainer has no argument 'max_epoch'",
    ),
    "fit: dotted flag without a value": (
        lambda t: ["fit", "--config", PHANTOM_CONFIG, "--trainer.max_epochs"], "--trainer.max_epochs needs a value",
    ),
    "benchmark: unknown dotted key": (
        lambda t: ["benchmark", "--config", DEMO_BENCHMARK, "--trainer.max_epoch=1"],
        "config key 'trainer.max_epoch': trainer has no argument 'max_epoch'",
    ),
    "benchmark: unknown dotted section": (
        lambda t: ["benchmark", "status", "--config", DEMO_BENCHMARK, "--trainr.max_epochs", "1"],
        "a benchmark has no key 'trainr'",
    ),
    "sweep: unknown dotted key": (
        lambda t: ["sweep", "run", str(REPO / "sweeps" / "tiny_phantom_gate.yaml"), "--study", "s",
                   "--runs-root", str(t / "sweeps"), "--data.batch_sise", "2"],
        "data has no argument 'batch_sise'",
    ),
    "data check: dotted flag": (
        lambda t: ["data", "check", str(t / "m.csv"), "--trainer.max_epochs", "1"], "takes no config overrides",
    ),
}


def _assert_one_line_error(code, out, err, expected) -> None:
    lines = err.strip().splitlines()
    assert code not in (0, None), (code, out, err)
    assert len(lines) == 1, err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in out + err


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_a_non_zero_exit(case, tmp_path, capsys):
    make_argv, expected = CASES[case]
    ran = sgnet(*make_argv(tmp_path), capsys=capsys)
    _assert_one_line_error(ran.code, ran.out, ran.err, expected)


def test_incomplete_manifest_is_refused_by_preprocess_in_one_line(tmp_path, capsys):
    root = tmp_path / "data"
    for i in range(4):
        make_bml_case(root, f"C{i}", seed=i)
    (root / "C2" / "C2_t1ce_img.nii.gz").unlink()
    out = tmp_path / "m.csv"
    made = sgnet("data", "manifest", "--dataset", "bml", "--root", root, "--out", out,
                 "--split", _written(tmp_path, "k.yaml", "name: kfold\nn_folds: 2\ntest_size: 1\n"), capsys=capsys)
    assert made.code == 0 and "FATAL: subject C2" in made.out and "missing modality t1ce" in made.out
    refused = sgnet("data", "preprocess", out, "--cache-root", tmp_path / "cache", "--workers", "1", capsys=capsys)
    _assert_one_line_error(refused.code, "", refused.err, "subject C2")
    assert "incomplete subject (missing modality t1ce" in refused.err and "--exclude" in refused.err
