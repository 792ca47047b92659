"""Two ``sgnet sweep run`` workers at once against one PostgreSQL study, as on several GPU boxes.

Needs a running server: ``SGNET_TEST_POSTGRES_URL`` (``.ci/run`` starts one on a private port and sets
it, e.g. ``postgresql+psycopg2://postgres@127.0.0.1:55432/postgres``).
"""

from __future__ import annotations

import os
import uuid

import optuna
import pytest

from sgnet_lightning import cli
from sgnet_lightning.config import load_config
from sgnet_lightning.sweeps import open_storage
from test_sweep import GATE, TINY_GATE, check_two_worker_study, space_variant, start_worker, sweep_run_args

URL = os.environ.get("SGNET_TEST_POSTGRES_URL")

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.skipif(not URL, reason="SGNET_TEST_POSTGRES_URL is not set: no PostgreSQL server to test the "
                                       "distributed sweep against (.ci/run starts one)"),
]


def test_two_workers_share_one_postgresql_study_and_best_reads_it(sweep_phantom, tmp_path):
    study_name = f"test_{uuid.uuid4().hex[:10]}"  # the database outlives the test: a fresh study each run
    space = space_variant(TINY_GATE, tmp_path, seeds=[0], pruner={"name": "none"}, sampler={"name": "random"})
    runs = tmp_path / "runs"
    args = sweep_run_args(space, study_name, URL, runs, 4, *sweep_phantom.sets)
    try:
        workers = [start_worker(args, tmp_path / f"worker{i}.log") for i in range(2)]
        codes = [w.wait(timeout=400) for w in workers]
        assert codes == [0, 0], [(tmp_path / f"worker{i}.log").read_text()[-3000:] for i in range(2)]
        study = optuna.load_study(study_name=study_name, storage=open_storage(URL))
        check_two_worker_study(study, 4, runs)

        out = tmp_path / "tuned.yaml"
        assert cli.main(["sweep", "best", "--study", study_name, "--storage", URL, "--out", str(out)]) == 0
        assert load_config(out)["model"]["network_options"]["gate_threshold"] == study.best_trial.params[GATE]
    finally:
        if study_name in optuna.get_all_study_names(storage=URL):
            optuna.delete_study(study_name=study_name, storage=URL)
