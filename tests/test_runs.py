"""The run-folder contract (sgnet_lightning.runs): paths, checkpoints, run.json merges, the
completion marker, and that gathering reads back the folders the builders make."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from sgnet_lightning import runs
from sgnet_lightning.analysis.results import find_runs
from sgnet_lightning.errors import SgnetError


def test_path_builders_give_the_documented_layout(tmp_path):
    assert runs.benchmark_run_dir(tmp_path, "sgnet", 3) == tmp_path / "sgnet" / "seed3"
    assert runs.benchmark_run_dir(tmp_path, "sgnet", 3, fold=0) == tmp_path / "sgnet" / "seed3" / "fold0"
    study = runs.study_dir(tmp_path, "gate")
    assert runs.seed_dir(runs.trial_dir(study, 7), 1) == tmp_path / "gate" / "trial7" / "seed1"
    config = {"run": {"root": str(tmp_path), "name": "demo"}, "model": {"network": "unet"}, "seed_everything": 2,
              "data": {"manifest": "unused.csv"}}
    config["run"]["dir"] = str(tmp_path / "given")
    assert runs.run_dir_for(config) == tmp_path / "given"  # run.dir wins; the manifest is not read


def test_gathering_finds_exactly_the_benchmark_folders_the_builders_make(tmp_path):
    made = [runs.benchmark_run_dir(tmp_path, model, seed, fold)
            for model in ("a", "b") for seed in (0, 1) for fold in (None,)]
    made.append(runs.benchmark_run_dir(tmp_path, "c", 0, fold=1))
    for path in made:
        path.mkdir(parents=True)
    (tmp_path / "a" / "seed0.replaced-20260101-000000").mkdir()  # moved aside: not a run
    (tmp_path / "report").mkdir()
    runs.mark_complete(made[0])
    complete, incomplete = find_runs(tmp_path)
    assert [r.path for r in complete] == [made[0]]
    assert sorted(r.path for r in complete + incomplete) == sorted(made)
    assert {(r.model, r.seed, r.fold) for r in incomplete} == {("a", 1, None), ("b", 0, None), ("b", 1, None),
                                                               ("c", 0, 1)}
    assert runs.parse_seed_dir("seed0.replaced-1") is None and runs.parse_fold_dir("fold12") == 12


def test_completion_marker_is_the_last_word(tmp_path):
    assert not runs.is_complete(tmp_path)
    runs.mark_complete(tmp_path)
    assert runs.is_complete(tmp_path)
    assert (tmp_path / "COMPLETE").read_text().startswith("20")  # its content: when


def test_checkpoint_lookup(tmp_path):
    with pytest.raises(SgnetError, match="no checkpoint"):
        runs.trained_checkpoint(tmp_path)
    with pytest.raises(SgnetError, match="checkpoint not found: .*best.ckpt"):
        runs.find_checkpoint(tmp_path, "best")
    assert runs.find_checkpoint(tmp_path, None) is None
    assert not runs.can_resume(tmp_path)
    last = runs.checkpoint_file(tmp_path, runs.LAST)
    last.parent.mkdir()
    last.write_bytes(b"x")
    assert last == tmp_path / "checkpoints" / "last.ckpt"
    assert runs.can_resume(tmp_path) and runs.trained_checkpoint(tmp_path) == last  # no best: last
    best = runs.checkpoint_file(tmp_path, runs.BEST)
    best.write_bytes(b"x")
    assert runs.trained_checkpoint(tmp_path) == best == runs.find_checkpoint(tmp_path, "best")
    assert runs.find_checkpoint(tmp_path, str(last)) == last
    assert runs.run_dir_of_checkpoint(best) == tmp_path.resolve()


def test_run_json_updates_merge_and_a_reader_never_sees_half_a_file(tmp_path):
    assert runs.read_run_json(tmp_path) == {}
    runs.update_run_json(tmp_path, config_hash="abc", train_time_s=1.0)
    merged = runs.update_run_json(tmp_path, train_time_s=2.0, model="sgnet")
    assert merged == {"config_hash": "abc", "train_time_s": 2.0, "model": "sgnet"} == runs.read_run_json(tmp_path)

    # a reader polling while a writer rewrites it always parses a whole record
    stop, seen = threading.Event(), []

    def read():
        while not stop.is_set():
            seen.append(json.loads((tmp_path / runs.RUN_FILE).read_text())["step"])

    runs.update_run_json(tmp_path, step=0, padding="x" * 200_000)
    reader = threading.Thread(target=read)
    reader.start()
    try:
        for step in range(1, 30):
            runs.update_run_json(tmp_path, step=step)
    finally:
        stop.set()
        reader.join()
    assert seen and seen == sorted(seen)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]  # no temporary file left behind
    assert Path(tmp_path / runs.RUN_FILE).is_file()
