"""Config-locked benchmarks: a rerun with another config is refused naming the changed keys, redone
only on request, and gathering reads only the runs of the benchmark's current config."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pandas as pd
import pytest
import yaml
from _fake_benchmark import write_fake_benchmark
from conftest import tiny_config

from sgnet_lightning import cli
from sgnet_lightning.analysis.results import gather_results, load_results
from sgnet_lightning.benchmark import primary_endpoint
from sgnet_lightning.config_lock import ConfigChangedError, changed_keys, config_hash, locked_config, read_lock
from sgnet_lightning.data.labels import get_task
from sgnet_lightning.data.manifest import make_manifest
from sgnet_lightning.errors import ConfigError, DataError
from sgnet_lightning.experiment import train

REPO = Path(__file__).resolve().parents[1]


def _config(tiny_bml, run_root: Path, **sections) -> dict:
    return tiny_config(tiny_bml, run_root, "sgnet", **{"data": {"spacing_mm": 3.0}, "trainer": {"max_epochs": 1},
                                                         **sections})


def test_the_lock_ignores_locations_and_logging_but_not_what_changes_results(tiny_bml, tmp_path):
    config = _config(tiny_bml, tmp_path / "runs")
    locked = locked_config(config)
    elsewhere = copy.deepcopy(config)
    elsewhere["data"].update(data_root=str(tiny_bml["root"]), cache_root="/fast/local/cache", preprocess_workers=8)
    elsewhere["run"].update(root="/scratch/runs", name="other", wandb={"enabled": True, "mode": "offline"})
    elsewhere["trainer"].update(log_every_n_steps=50, enable_progress_bar=True)
    assert config_hash(locked_config(elsewhere)) == config_hash(locked)

    tuned = copy.deepcopy(config)
    tuned["model"]["optimizer"]["lr"] = 1e-3
    tuned["model"]["network_options"]["gate_threshold"] = 0.3
    tuned["run"]["test_metrics"] = {"empty_penalty_mm": 373.13}  # changes test numbers: locked
    assert changed_keys(locked, locked_config(tuned)) == [
        "model.network_options.gate_threshold: 0.5 -> 0.3",
        "model.optimizer.lr: 0.003 -> 0.001",
        "run.test_metrics.empty_penalty_mm: (unset) -> 373.13",
    ]
    # the same data split another way is another config
    make_manifest("bml", tiny_bml["root"], tmp_path / "kfold.csv", split_rule={"name": "kfold", "n_folds": 2,
                                                                                "test_size": 2}, seed=0, progress=False)
    resplit = copy.deepcopy(config)
    resplit["data"]["manifest"] = str(tiny_bml["manifest"].with_name("bml.csv"))
    assert config_hash(locked_config(resplit)) == config_hash(locked)  # same file content, same hash
    resplit["data"]["manifest"] = str(tmp_path / "kfold.csv")
    assert [line.split(":")[0] for line in changed_keys(locked, locked_config(resplit))] == ["data.manifest",
                                                                                          "manifest_sha256"]


def test_gathering_reads_only_the_runs_the_benchmark_lists(tmp_path, caplog):
    bench = write_fake_benchmark(tmp_path, n_subjects=3, seeds=(0, 1), with_incomplete_run=False)
    info = json.loads((bench / "benchmark.json").read_text())
    # the config now has no segguided and only seed 0 of unet
    info["runs"] = [r for r in info["runs"] if r["model"] != "segguided" and (r["model"], r["seed"]) != ("unet", 1)]
    del info["models"]["segguided"]
    (bench / "benchmark.json").write_text(json.dumps(info))
    with caplog.at_level(logging.WARNING):
        results = gather_results(bench)
    assert set(zip(results["model"], results["seed"])) == {("unet", 0), ("sgnet", 0), ("sgnet", 1)}
    assert "left out 3 run folder(s)" in caplog.text
    assert all(name in caplog.text for name in ("segguided/seed0", "segguided/seed1", "unet/seed1"))
    pd.testing.assert_frame_equal(load_results(bench), results)  # `sgnet stats --results <folder>` alike

    run_json = bench / "sgnet" / "seed1" / "run.json"  # a run made with another config than listed
    run_json.write_text(json.dumps({**json.loads(run_json.read_text()), "config_hash": "0" * 64}))
    with pytest.raises(DataError, match=r"sgnet/seed1/run.json.*made with config 000000000000, but the benchmark "
                                        r"lists"):
        gather_results(bench)


def test_primary_endpoint_is_declared_or_dice_of_the_main_region_and_checked():
    task = get_task("brats2023", "regions")
    assert primary_endpoint({}, task) == {"metric": "dice", "region": "WT"}
    assert primary_endpoint({"primary_endpoint": {"metric": "lesion_f1", "region": "ET"}}, task) == {
        "metric": "lesion_f1", "region": "ET"}
    for declared, message in (({"metric": "hd95", "region": "ET"}, "'hd95' unknown"),
                              ({"metric": "volume_pred_ml", "region": "ET"}, "a volume has no better or worse"),
                              ({"metric": "dice", "region": "WT1"}, "'WT1' is not a region of task regions"),
                              ({"metric": "dice", "region": "ET", "family": 1}, "takes metric and region")):
        with pytest.raises(ConfigError, match=message):
            primary_endpoint({"primary_endpoint": declared}, task)


def _bench_yaml(path: Path, experiment: Path, models: dict) -> Path:
    path.write_text(yaml.safe_dump({"name": "tiny", "root": str(path.parent / "runs"), "experiment": str(experiment),
                                    "models": models, "seeds": [0]}))
    return path


@pytest.mark.slow
def test_changed_config_is_refused_redone_on_request_and_dropped_labels_are_not_gathered(
        tiny_bml, tmp_path, capsys, caplog):
    base = _config(tiny_bml, tmp_path / "runs")  # the data set's base: the models come from the benchmark
    for key in ("network", "network_options"):
        del base["model"][key]
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(yaml.safe_dump(base))
    sgnet = {"defaults": [str(REPO / "experiments" / "models" / "sgnet.yaml")]}
    segguided = {"defaults": [str(REPO / "experiments" / "models" / "segguidednet.yaml")],
                 "model": {"network_options": {"n_subregions": 2, "base_channels": 8}, "aux_loss_weight": 0.3,
                           "optimizer": {"name": "adam", "lr": 3.0e-3}, "scheduler": {"name": "none"}}}
    models = {"sgnet": sgnet, "segguided": segguided}
    bench = _bench_yaml(tmp_path / "bench.yaml", experiment, models)
    bench_dir = tmp_path / "runs" / "tiny"
    assert cli.main(["benchmark", "--config", str(bench)]) == 0
    info = json.loads((bench_dir / "benchmark.json").read_text())
    assert info["primary_endpoint"] == {"metric": "dice", "region": "WT"}
    assert sorted((r["model"], r["seed"], r["fold"]) for r in info["runs"]) == [("segguided", 0, None),
                                                                                 ("sgnet", 0, None)]
    done = {label: (bench_dir / label / "seed0" / "COMPLETE").stat().st_mtime_ns for label in models}

    # a changed auxiliary-loss weight and learning rate: refused, the keys named, nothing touched
    changed = copy.deepcopy(segguided)
    changed["model"].update(aux_loss_weight=0.0, optimizer={"name": "adam", "lr": 1.0e-3})
    _bench_yaml(bench, experiment, {"sgnet": sgnet, "segguided": changed})
    capsys.readouterr()
    assert cli.main(["benchmark", "--config", str(bench)]) == 1
    message = capsys.readouterr().err
    assert "segguided seed 0: model.aux_loss_weight: 0.3 -> 0.0; model.optimizer.lr: 0.003 -> 0.001" in message
    assert "sgnet seed" not in message and "--redo-changed" in message and "Traceback" not in message
    assert {label: (bench_dir / label / "seed0" / "COMPLETE").stat().st_mtime_ns for label in models} == done

    # resuming a run folder from its last.ckpt with another gate threshold: refused before training
    sgnet_config = _config(tiny_bml, tmp_path / "runs", model={"network_options": {"gate_threshold": 0.3}})
    with pytest.raises(ConfigChangedError, match=r"model\.network_options\.gate_threshold: 0\.5 -> 0\.3"):
        train(sgnet_config, run_dir=bench_dir / "sgnet" / "seed0")

    # --redo-changed: the old segguided run is moved aside, kept, and only segguided runs again
    assert cli.main(["benchmark", "--config", str(bench), "--redo-changed"]) == 0
    (replaced,) = (bench_dir / "segguided").glob("seed0.replaced-*")
    assert (replaced / "COMPLETE").is_file() and read_lock(replaced)["model"]["aux_loss_weight"] == 0.3
    assert (bench_dir / "sgnet" / "seed0" / "COMPLETE").stat().st_mtime_ns == done["sgnet"]
    assert read_lock(bench_dir / "segguided" / "seed0")["model"]["aux_loss_weight"] == 0.0
    results = pd.read_csv(bench_dir / "results.csv")
    assert set(results["model"]) == {"sgnet", "segguided"}
    fresh = pd.read_csv(bench_dir / "segguided" / "seed0" / "results.csv")
    assert len(results[results["model"] == "segguided"]) == len(fresh)  # the new run's rows, not the old ones

    # a label dropped from the YAML is no longer gathered, and a line says so
    _bench_yaml(bench, experiment, {"sgnet": sgnet})
    with caplog.at_level(logging.WARNING):
        assert cli.main(["benchmark", "--config", str(bench)]) == 0
    assert set(pd.read_csv(bench_dir / "results.csv")["model"]) == {"sgnet"}
    assert "left out 1 run folder(s)" in caplog.text and "segguided/seed0" in caplog.text
    assert (bench_dir / "sgnet" / "seed0" / "COMPLETE").stat().st_mtime_ns == done["sgnet"]
