"""Test every hard-gated run of a benchmark again at the gate threshold chosen on validation.

For each complete run with an ``operating_point.json`` (``sgnet gate-scan --store``), this copies the
run's config, checkpoints and operating point into ``<out>/<model>/seed<k>/`` (the benchmark's own
``results.csv``, at the trained threshold, stays as it is) and runs ``sgnet test --gate-threshold
validated`` there. It then writes, per model, ``<out>/results_<model>.csv``: the benchmark's test
rows of its runs (model label ``<model>``) beside the new ones (``<model>@validated``), a tidy
table that ``sgnet stats --results ... --reference <model>`` reads, so the model at the validated
threshold is compared with itself at its trained threshold, paired by test subject.

    python experiments/gating/operating_point_test.py runs/gating_phantom --out runs/gating_phantom_validated
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import yaml

from sgnet_lightning.analysis.results import gather_results
from sgnet_lightning.files import atomic_write_text
from sgnet_lightning.experiment import run_test
from sgnet_lightning.runs import COMPLETE_FILE, OPERATING_POINT

VALIDATED = "@validated"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("benchmark", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    info = json.loads((args.benchmark / "benchmark.json").read_text())
    tables, tested = [], []
    for run in info["runs"]:
        source = args.benchmark / run["model"] / f"seed{run['seed']}"
        if not (source / COMPLETE_FILE).is_file() or not (source / OPERATING_POINT).is_file():
            continue
        target = args.out / run["model"] / f"seed{run['seed']}"
        (target / "checkpoints").mkdir(parents=True, exist_ok=True)
        for name in ("config.yaml", OPERATING_POINT, "checkpoints/best.ckpt"):
            shutil.copyfile(source / name, target / name)
        config = yaml.safe_load((target / "config.yaml").read_text())
        rows = run_test(config, run_dir=target, ckpt="best", save_predictions=False, save_nifti=False,
                        gate_threshold="validated")
        threshold = json.loads((target / "run.json").read_text())["test_gate_threshold"]
        print(f"{run['model']} seed {run['seed']}: tested at gate threshold {threshold:g}")
        tables.append(rows.assign(model=run["model"] + VALIDATED, seed=run["seed"], fold=pd.NA))
        tested.append(run["model"])
    if not tables:
        print(f"error: no complete run with {OPERATING_POINT} in {args.benchmark}", file=sys.stderr)
        return 1
    trained = gather_results(args.benchmark)
    trained = trained[trained["model"].isin(tested)]
    combined = pd.concat([trained, *tables], ignore_index=True)[trained.columns]
    for model in dict.fromkeys(tested):
        pair = combined[combined["model"].isin([model, model + VALIDATED])]
        atomic_write_text(args.out / f"results_{model}.csv", pair.to_csv(index=False))
        print(f"wrote {args.out / f'results_{model}.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
