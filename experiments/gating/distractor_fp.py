"""Where do a benchmark's false-positive lesions lie? On the phantoms' unlabelled distractors or elsewhere.

For every run of a benchmark folder (the runs its ``benchmark.json`` lists, complete ones) and every
test subject, this reads the stored test prediction (``<run>/predictions_nifti/<subject>.nii.gz``,
written by ``sgnet test --nifti`` or ``run.test_nifti``, on the T1ce grid), the subject's reference
(the data set's reader, as ``sgnet test`` scores against it) and the phantom's distractor truth map
(``<data>/phantom_truth/<subject>_distractors.nii.gz``, on the T1ce grid: 1 vessel, 2 dura,
3 choroid plexus, 4 periventricular FLAIR lesion; ``sgnet_lightning.data.synth``). The false-positive
lesions are those ``lesion_fp`` counts (``sgnet_lightning.evaluation.lesions``, the data set's
lesion-wise preset); one lies *on a distractor* when it overlaps at least one distractor voxel, and
is attributed to the kind it overlaps most.

    python experiments/gating/distractor_fp.py runs/gating_phantom --out docs/gating/distractor_fp

writes ``<out>.csv`` (model, seed, subject, region, false-positive lesions in all, on each distractor
kind, and elsewhere; their voxels) and ``<out>.json`` (per model: mean over seeds of the per-seed
totals over test subjects, and the share of false-positive lesions on distractors).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from sgnet_lightning.files import atomic_write_json, atomic_write_text
from sgnet_lightning.data.labels import get_task, label_map_to_masks
from sgnet_lightning.data.manifest import Manifest
from sgnet_lightning.errors import DataError, SgnetError
from sgnet_lightning.evaluation.evaluate import default_lesion_settings
from sgnet_lightning.evaluation.lesions import false_positive_components
from sgnet_lightning.evaluation.references import read_reference
from sgnet_lightning.runs import BENCHMARK_FILE, COMPLETE_FILE

TRUTH_DIR = "phantom_truth"


def distractor_kinds(data_root: Path) -> dict[int, str]:
    """Truth-map value -> distractor name, from the phantom set's ``dataset_info.json``."""
    info_file = data_root / "dataset_info.json"
    if not info_file.is_file():
        raise SgnetError(f"{info_file} not found: distractor truth maps come with `sgnet data synth` phantoms")
    values = json.loads(info_file.read_text()).get("distractor_values")
    if not values:
        raise SgnetError(f"{info_file} lists no distractor_values: phantoms made before distractors existed")
    return {int(v): name for name, v in values.items()}


def subject_false_positives(pred_file: Path, truth_file: Path, reference, task, settings,
                            kinds: dict[int, str], subject: str) -> list[dict]:
    """One row per region: false-positive lesions in all, on each distractor kind, elsewhere."""
    pred_image = nib.load(pred_file)
    truth_image = nib.load(truth_file)
    pred = np.asarray(pred_image.dataobj).astype(np.uint8)
    truth = np.asarray(truth_image.dataobj).astype(np.uint8)
    for role, image, data in (("prediction", pred_image, pred), ("truth map", truth_image, truth)):
        if data.shape != reference.label_map.shape or not np.allclose(image.affine, reference.affine, atol=1e-3):
            raise DataError(subject, pred_file if role == "prediction" else truth_file,
                            f"{role} is not on the grid of the reference {reference.file}")
    rows = []
    for region, pred_mask, ref_mask in zip(task.region_names, label_map_to_masks(pred, task.regions),
                                           label_map_to_masks(reference.label_map, task.regions)):
        components, false_ids = false_positive_components(pred_mask, ref_mask, settings)
        row = {"subject": subject, "region": region, "fp_lesions": len(false_ids),
               **{f"fp_on_{name}": 0 for name in kinds.values()}, "fp_elsewhere": 0,
               "fp_voxels": 0, "fp_voxels_on_distractors": 0}
        for component in false_ids:
            mask = components == component
            overlap = np.bincount(truth[mask], minlength=max(kinds) + 1)[1:]  # voxels per kind 1..K
            row["fp_voxels"] += int(mask.sum())
            row["fp_voxels_on_distractors"] += int(overlap.sum())
            if overlap.sum():
                row[f"fp_on_{kinds[int(np.argmax(overlap)) + 1]}"] += 1
            else:
                row["fp_elsewhere"] += 1
        rows.append(row)
    return rows


def analyse(bench_dir: Path) -> pd.DataFrame:
    """Rows for every complete run that ``benchmark.json`` lists and every test subject."""
    info_file = bench_dir / BENCHMARK_FILE
    if not info_file.is_file():
        raise SgnetError(f"{info_file} not found: run `sgnet benchmark` first")
    info = json.loads(info_file.read_text())
    manifest = Manifest.load(info["manifest"])
    task = get_task(info["dataset"], info["task"])
    settings = default_lesion_settings(info["dataset"])
    data_root = Path(manifest.root)
    kinds = distractor_kinds(data_root)
    rows = []
    for run in info["runs"]:
        run_dir = bench_dir / run["model"] / f"seed{run['seed']}"
        if run.get("fold") is not None:
            run_dir = run_dir / f"fold{run['fold']}"
        if not (run_dir / COMPLETE_FILE).is_file():
            print(f"skipped (not complete): {run_dir}", file=sys.stderr)
            continue
        predictions = run_dir / "predictions_nifti"
        if not predictions.is_dir():
            raise SgnetError(f"{predictions}: no NIfTI predictions (test with --nifti or run.test_nifti: true)")
        for subject in sorted(pd.read_csv(run_dir / "results.csv", dtype={"subject": str})["subject"].unique()):
            reference = read_reference(info["dataset"], manifest.record(subject))
            for row in subject_false_positives(predictions / f"{subject}.nii.gz",
                                               data_root / TRUTH_DIR / f"{subject}_distractors.nii.gz",
                                               reference, task, settings, kinds, subject):
                rows.append({"model": run["model"], "seed": run["seed"], "fold": run.get("fold"), **row})
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame) -> dict:
    """Per model and region: totals over test subjects per seed, then mean and SD over seeds."""
    counts = [c for c in table.columns if c.startswith("fp_")]
    per_seed = table.groupby(["model", "region", "seed"])[counts].sum()
    summary = {}
    for (model, region), seeds in per_seed.groupby(level=["model", "region"]):
        on = seeds["fp_lesions"] - seeds["fp_elsewhere"]
        summary.setdefault(model, {})[region] = {
            "n_seeds": len(seeds), "n_subjects": int(table[(table["model"] == model)]["subject"].nunique()),
            **{f"{c}_mean": float(seeds[c].mean()) for c in counts},
            **{f"{c}_sd": float(seeds[c].std(ddof=1)) if len(seeds) > 1 else None for c in counts},
            "share_on_distractors": float(on.sum() / seeds["fp_lesions"].sum()) if seeds["fp_lesions"].sum() else None,
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("benchmark", help="benchmark folder (runs/<name>)")
    parser.add_argument("--out", required=True, help="output stem: <out>.csv and <out>.json")
    args = parser.parse_args(argv)
    try:
        table = analyse(Path(args.benchmark))
    except SgnetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".csv"), table.to_csv(index=False))
    summary = {"benchmark": str(args.benchmark), "lesion_settings": default_lesion_settings("bml").describe(),
               "rule": "a false-positive lesion (lesion_fp) lies on a distractor when it overlaps one of its "
                       "voxels; attributed to the kind it overlaps most", "models": summarise(table)}
    atomic_write_json(out.with_suffix(".json"), summary)
    for model, regions in summary["models"].items():
        for region, s in regions.items():
            print(f"{model:28s} {region}: {s['fp_lesions_mean']:.1f} false-positive lesions per seed, "
                  f"{s['fp_lesions_mean'] - s['fp_elsewhere_mean']:.1f} on distractors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
