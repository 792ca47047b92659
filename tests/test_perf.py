"""``sgnet bench``: the JSON has every field, the settings follow the YAML configs, the suite's numerics match
fp32, the helpers are right.

No timing is asserted: figures depend on the machine. Runs on the CPU at tiny sizes (``--quick``)
on a small phantom set made once per module.

Numerics tolerance (every architecture, CPU): bf16 autocast and channels-last 3D may move sigmoid
probabilities by at most MEAN_ABS_TOLERANCE on average, and the thresholded masks (0.5) must agree
on more than MASK_AGREEMENT of voxels. Measured on 2 x 2 x 32 x 32 x 16 inputs: mean differences
of 4e-5 to 5e-3 and agreement of 99.3 % to 99.97 % (bf16); channels-last alone below 1e-6.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
import yaml

from sgnet_lightning.cli import main
from sgnet_lightning.config import load_config
from sgnet_lightning.data.datamodule import SegmentationDataModule
from sgnet_lightning.data.synth import synthesize_dataset
from sgnet_lightning.errors import ConfigError
from sgnet_lightning.models import list_models
from sgnet_lightning.perf import loaders, measure, projection, run, settings

MEAN_ABS_TOLERANCE = 0.02
MASK_AGREEMENT = 0.99
REPO = Path(__file__).resolve().parents[1]
DATAMODULE_DEFAULTS = {key: p.default for key, p in inspect.signature(SegmentationDataModule).parameters.items()}


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread (the bench's ``--threads 1``) on a shared 2-core machine; restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom_bml")
    synthesize_dataset("bml", 6, out, seed=0, size=40, progress=False)
    return out


def test_quick_bench_writes_every_field(tmp_path, phantom, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--quick", "--models", "unet", "sgnet", "--threads", "1", "--phantom-dir", str(phantom),
                 "--cache-root", str(tmp_path / "cache"), "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "| unet |" in printed and "| sgnet |" in printed and "DataModule / naive" in printed

    assert report["quick"] is True
    for key in ("type", "name", "torch", "cpu_count", "torch_threads", "load_average_start", "load_average_end"):
        assert key in report["device"]
    assert report["device"]["type"] == "cpu" and report["device"]["torch_threads"] == 1
    assert report["date"] and report["sizes"]["patch"] == [32, 32, 16]
    assert set(report["settings"]) == {"seed_way", "suite", "suite_device"}
    assert report["settings"]["seed_way"]["precision"] == "fp32" and report["settings"]["suite"]["channels_last"]
    assert any("CPU run" in note for note in report["notes"])
    assert report["data"]["train_subjects"] == len(report["data"]["cached_image_shapes"]) >= 2

    assert set(report["models"]) == {"unet", "sgnet"}
    for name, entry in report["models"].items():
        assert entry["parameters"] > 0
        assert set(entry["end_to_end"]) == {"seed_way", "suite", "suite_device"}
        for section in ("model_only", "end_to_end"):
            for setting in ("seed_way", "suite"):
                measured = entry[section][setting]
                assert measured["patches_per_s"] > 0, (name, section, setting)
                assert measured["peak_host_rss_gib"] > 0 and measured["peak_device_gib"] is None
        assert set(entry["inference"]) == {"seed_way_sw4", "suite_sw4"}
        for measured in entry["inference"].values():
            assert measured["ms_per_volume"] > 0 and measured["volume"] == [2, 48, 48, 32]
        for agreement in entry["numerics"].values():
            assert agreement["mask_agreement"] > MASK_AGREEMENT
        ratios = entry["ratios"]
        assert all(value is not None and value > 0 for value in ratios.values()), ratios
        assert ratios["model_only_suite_over_seed"] == pytest.approx(
            entry["model_only"]["suite"]["patches_per_s"] / entry["model_only"]["seed_way"]["patches_per_s"])

    loader = report["loader"]
    for setting in ("seed_way", "suite"):
        for way in ("datamodule", "naive", "device_sampler"):
            assert loader[setting][way]["patches_per_s"] > 0
        # timed past the queue's buffer (first fill + subjects loaded ahead), over twice as many patches
        queue = loader[setting]["queue"]
        assert loader[setting]["datamodule"]["skipped_patches"] > loaders.queue_buffer(queue) > queue["queue_length"]
        assert loader[setting]["datamodule"]["timed_patches"] >= 2 * loaders.queue_buffer(queue)
        assert loader[setting]["datamodule_over_naive"] > 0
    assert loader["suite_over_seed_naive"]["datamodule"] > 0


def test_loader_mode_writes_its_json(tmp_path, phantom, capsys):
    out = tmp_path / "loader.json"
    assert main(["bench", "loader", "--quick", "--threads", "1", "--phantom-dir", str(phantom), "--queue", "2", "4", "0",
                 "--cache-root", str(tmp_path / "cache"), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["loader"]) == {"seed_way", "suite", "spv2_q4_w0", "suite_over_seed_naive"}
    assert report["loader"]["spv2_q4_w0"]["queue"] == {"samples_per_volume": 2, "queue_length": 4, "num_workers": 0}
    assert report["loader"]["suite"]["naive"]["batch_shape"] == [2, 2, 32, 32, 16]
    assert report["loader"]["suite"]["datamodule"]["batch_shape"] == [2, 2, 32, 32, 16]
    assert "device sampler" in capsys.readouterr().out


@pytest.mark.parametrize("name", list_models())
def test_suite_numerics_match_fp32(name):
    """bf16 autocast and channels-last (the suite's GPU settings) against fp32, on the CPU."""
    device = torch.device("cpu")
    for precision, channels_last in (("bf16", False), ("fp32", True), ("bf16", True)):
        agreement = measure.prediction_agreement(name, precision, channels_last, device)
        assert agreement["mean_abs_diff"] < MEAN_ABS_TOLERANCE, (name, precision, channels_last, agreement)
        assert agreement["mask_agreement"] > MASK_AGREEMENT, (name, precision, channels_last, agreement)
        if precision == "fp32":  # a memory format alone changes only summation order
            assert agreement["max_abs_diff"] < 1e-4


def test_unknown_model_is_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown model.*nonet"):
        run.run_bench(tmp_path / "x.json", models=["nonet"], quick=True)


def test_settings_are_the_configs():
    """On a GPU the two ways are what load_config gives for the seed-way and the suite's BML configs."""
    cuda = torch.device("cuda")
    sizes = settings.sizes_for(cuda, quick=False)
    for way, path in ((settings.seed_way(cuda, sizes), settings.SEED_CONFIG),
                      (settings.suite_defaults(cuda, sizes), settings.SUITE_CONFIG)):
        config = load_config(path)
        assert way.lightning_precision == config["trainer"]["precision"], way.name
        assert way.cudnn_benchmark == config["trainer"].get("benchmark", False), way.name
        assert way.channels_last == config["model"].get("channels_last", False), way.name
        assert way.batch_size == config["data"]["batch_size"], way.name
        window = config["model"]["sliding_window"]
        assert (way.sw_batch_size, way.sw_mode) == (window["sw_batch_size"], window["mode"]), way.name
        for key in ("samples_per_volume", "queue_length"):
            assert way.data[key] == config["data"].get(key, DATAMODULE_DEFAULTS[key]), (way.name, key)
    assert settings.suite_defaults(cuda, sizes).data["samples_per_volume"] == load_config(
        REPO / "experiments/base/gpu.yaml")["data"]["samples_per_volume"]


def test_settings_follow_an_edited_config(tmp_path):
    """Change the seed-way YAML (through a file that composes it) and the measured setting follows."""
    edited = tmp_path / "seed_way.yaml"
    edited.write_text(yaml.safe_dump({
        "defaults": [str(settings.SEED_CONFIG)],
        "trainer": {"precision": "bf16-mixed", "benchmark": True},
        "model": {"channels_last": True, "sliding_window": {"sw_batch_size": 6, "mode": "gaussian"}},
        "data": {"samples_per_volume": 3, "queue_length": 48, "num_workers": 1},
    }))
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    way = settings.seed_way(cuda, settings.sizes_for(cuda, quick=False), config_path=edited)
    assert (way.precision, way.cudnn_benchmark, way.channels_last) == ("bf16", True, True)
    assert (way.sw_batch_size, way.sw_mode) == (6, "gaussian")
    assert way.data == {"samples_per_volume": 3, "queue_length": 48, "num_workers": 1}
    # on a CPU: fp32, and the queue under the quick run's caps (queue 4, 4 per volume, 1 worker)
    way = settings.seed_way(cpu, settings.sizes_for(cpu, quick=True), config_path=edited)
    assert way.precision == "fp32" and way.data == {"samples_per_volume": 3, "queue_length": 4, "num_workers": 1}
    # the CPU suite takes its sliding-window batch from the seed-way config it is given
    assert settings.suite_defaults(cpu, settings.sizes_for(cpu, quick=True), seed_config_path=edited).sw_batch_size == 6


def test_models_are_built_as_in_their_bml_experiment():
    module = measure.build_module("segguidednet", settings.seed_way(torch.device("cpu"), settings.sizes_for(
        torch.device("cpu"), quick=True)), torch.device("cpu"))
    bml = load_config(REPO / "experiments/bml/segguidednet.yaml")["model"]
    assert module.hparams.aux_loss_weight == bml["aux_loss_weight"]
    assert module.hparams.network_options == bml["network_options"]


def test_bml_benchmark_is_read_from_its_config(tmp_path):
    """The projection's assumptions come from the benchmark YAML: edit it and they follow."""
    real = projection.bml_benchmark()
    assert (real["n_test"], real["n_val"]) == (21, 17)  # 104 subjects: 20 % test, fold 0 of 5 over the other 83
    experiments = REPO / "experiments"
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump({
        "name": "edited", "experiment": str(experiments / "datasets/bml.yaml"), "seeds": [0, 1],
        "models": {"unet": {"defaults": [str(experiments / "models/unet.yaml")]},
                   "sgnet": {"defaults": [str(experiments / "models/sgnet.yaml")]},
                   "sgnet_soft": {"defaults": [str(experiments / "models/sgnet.yaml")],
                                  "model": {"network_options": {"gate_mode": "soft"}}}},
        "budget": {"trainer": {"max_epochs": 7}, "data": {"steps_per_epoch": 11, "batch_size": 16}},
    }))
    edited = projection.bml_benchmark(config)
    assert edited["configs_per_architecture"] == {"unet": 1, "sgnet": 2}
    assert (edited["seeds"], edited["folds"], edited["epochs"], edited["steps_per_epoch"], edited["batch_size"]) == (
        2, 1, 7, 11, 16)


def test_time_loader_skips_the_first_fill():
    produced = []

    def batches():
        while True:
            produced.append(len(produced))
            yield {"image": torch.zeros(4, 2, 2, 2, 2)}

    result = loaders.time_loader(batches(), lambda b: b, batch_size=4, skip_patches=64, timed_patches=128,
                               device=torch.device("cpu"))
    assert result["skipped_patches"] == 4 * (64 // 4 + 1)  # one batch past the fill
    assert result["timed_patches"] == 128 and len(produced) == 17 + 32


def test_random_rot90_turns_every_image_alike():
    import torchio as tio

    label = torch.zeros(1, 6, 6, 3, dtype=torch.uint8)
    label[0, 0, 1, 0] = 1
    subject = tio.Subject(image=tio.ScalarImage(tensor=label.float()), label=tio.LabelMap(tensor=label))
    turned = loaders.RandomRot90(p=1.0)(subject)
    assert torch.equal(turned["image"].data, turned["label"].data.float())
    assert not torch.equal(turned["label"].data, label)


def test_projection_formula():
    hours = projection.project_benchmark_hours({"a": 100.0, "b": 50.0}, {"a": 2.0, "b": 4.0}, seeds=5, epochs=100,
                                          steps_per_epoch=100, batch_size=32, n_val=10, n_test=20)
    # a: 5 x (100 x (3200 / 100 + 10 x 2) + 20 x 2) / 3600
    assert hours["a"] == pytest.approx(5 * (100 * (32 + 20) + 40) / 3600)
    assert hours["b"] == pytest.approx(5 * (100 * (64 + 40) + 80) / 3600)
    assert hours["total"] == pytest.approx(hours["a"] + hours["b"])


def test_bml_projection_needs_every_architecture():
    benchmark = {"configs_per_architecture": {"unet": 1, "sgnet": 3}, "seeds": 5, "folds": 1, "epochs": 100,
                 "steps_per_epoch": 100, "batch_size": 32, "n_val": 17, "n_test": 21}
    measured = {"end_to_end": {"suite": {"patches_per_s": 320.0}}, "inference": {"suite_sw32": {"ms_per_volume": 100.0}}}
    models = {"unet": measured, "sgnet": measured}
    result = projection.project_bml(models, benchmark)
    one = 5 * (100 * (100 * 32 / 320 + 17 * 0.1) + 21 * 0.1) / 3600
    assert result["hours_per_architecture"]["sgnet"] == pytest.approx(3 * one)
    assert result["total_hours"] == pytest.approx(4 * one)
    del models["unet"]
    assert projection.project_bml(models, benchmark) is None
