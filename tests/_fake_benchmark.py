"""Write a small fake benchmark folder (the layout the benchmark runner writes) for the tests of
gathering, statistics and the report.

Everything is tiny but real: 16^3 cached BraTS-2023-style subjects (canonical labels 1 NCR, 2 ED,
3 ET), predictions made by perturbing the reference in a model-specific way, and ``results.csv``
computed from those arrays (Dice, precision, recall, a simple HD95), so every number the report shows
can be traced back to the arrays. Run-time fields of ``run.json`` (parameters, times, memory) are
fixture values.

Models:
    unet       over-segments (every region dilated by one voxel): high recall, low precision;
               on subject s001 it predicts no ET (an empty-prediction convention case).
    sgnet      under-segments (every region eroded by one voxel where that leaves something):
               high precision.
    segguided  the reference with a few boundary voxels flipped; saves attention maps whose 0.5
               threshold is exactly the reference sub-regions (overlap Dice 1 where defined).
Subject s004 has no ET at all, so ET there is a both-empty case for models that predict none.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from scipy import ndimage

from sgnet_lightning.files import atomic_write_json
from sgnet_lightning.data.cache import write_cached_subject
from sgnet_lightning.data.labels import get_task, label_map_to_masks

SHAPE = (16, 16, 16)
TASK = get_task("brats2023", "regions")  # regions ET, TC, WT; sub-regions NCR, ED, ET
MODELS = {
    "unet": {"network": "unet", "options": {}, "n_parameters": 1_979_177},
    "sgnet": {"network": "sgnet", "options": {"gate_threshold": 0.5}, "n_parameters": 668_673},
    "segguided": {"network": "segguidednet", "options": {"aux_loss_weight": 0.3}, "n_parameters": 1_204_000},
}
HD95_PENALTY_MM = 374.0


def _label_map(index: int, with_et: bool) -> np.ndarray:
    """(X, Y, Z) uint8 canonical map: an ED sphere around a core; the core's rim is ET (or NCR)."""
    centre = np.array([7.5 + (index % 3) - 1, 7.5 - (index % 2), 7.5 + (index % 2)])
    dist = np.linalg.norm(np.indices(SHAPE).T - centre, axis=-1).T
    whole_r, core_r = 4.5 + 0.4 * index, 2.6 + 0.2 * index
    label = np.zeros(SHAPE, np.uint8)
    label[dist < whole_r] = 2
    label[dist < core_r] = 3 if with_et else 1
    label[dist < core_r - 1.2] = 1
    return label


def _predict(model: str, reference: np.ndarray, subject: str, rng: np.random.Generator) -> np.ndarray:
    """(R, X, Y, Z) uint8 region masks the fake ``model`` predicts for the reference masks."""
    pred = np.empty_like(reference)
    for r, mask in enumerate(reference.astype(bool)):
        if model == "unet":
            out = ndimage.binary_dilation(mask) if mask.any() else mask
        elif model == "sgnet":
            eroded = ndimage.binary_erosion(mask)
            out = eroded if eroded.any() else mask.copy()  # a thin ET rim would vanish entirely
        else:
            out = mask.copy()
        # seed-dependent noise on the boundary so seeds differ
        boundary = np.argwhere(ndimage.binary_dilation(out) ^ ndimage.binary_erosion(out))
        flips = boundary[rng.choice(len(boundary), size=min(3, len(boundary)), replace=False)]
        out[tuple(flips.T)] ^= True
        pred[r] = out
    if model == "unet" and subject == "s001":
        pred[TASK.region_names.index("ET")] = 0
    return pred


def _hd95(pred: np.ndarray, ref: np.ndarray) -> float:
    """95th percentile of the pooled surface-to-surface distances (voxels of 1 mm)."""
    pred_surface = pred ^ ndimage.binary_erosion(pred)
    ref_surface = ref ^ ndimage.binary_erosion(ref)
    to_ref = ndimage.distance_transform_edt(~ref_surface)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface)[ref_surface]
    return float(np.percentile(np.concatenate([to_ref, to_pred]), 95))


def _scores(pred: np.ndarray, ref: np.ndarray) -> tuple[dict[str, float], str]:
    """Dice, precision, recall, hd95_mm of one region and the empty-mask case, written the way
    :mod:`sgnet_lightning.evaluation.evaluate` writes the ``convention`` column."""
    pred, ref = pred.astype(bool), ref.astype(bool)
    if not pred.any() and not ref.any():
        return {"dice": 1.0, "precision": 1.0, "recall": 1.0, "hd95_mm": 0.0}, "both_empty"
    if not pred.any() or not ref.any():
        which = "pred_empty" if not pred.any() else "ref_empty"
        return {"dice": 0.0, "precision": 0.0, "recall": 0.0, "hd95_mm": HD95_PENALTY_MM}, which
    tp = float(np.logical_and(pred, ref).sum())
    return {
        "dice": 2 * tp / (pred.sum() + ref.sum()),
        "precision": tp / pred.sum(),
        "recall": tp / ref.sum(),
        "hd95_mm": _hd95(pred, ref),
    }, "both_present"


def _config_hash(model: str, seed: int) -> str:
    """A stand-in for the hash of a run's locked config (one per model and seed, as real ones are)."""
    return hashlib.sha256(f"{model}/{seed}".encode()).hexdigest()


def write_fake_benchmark(
    root: str | Path,
    n_subjects: int = 5,
    seeds: tuple[int, ...] = (0, 1),
    with_incomplete_run: bool = True,
    models: tuple[str, ...] = tuple(MODELS),
) -> Path:
    """Write ``root/cache`` and ``root/bench`` for ``models`` (a subset of :data:`MODELS`); returns
    the benchmark folder.

    With ``with_incomplete_run`` a run ``<first model>/seed<max+1>`` is written without its COMPLETE marker
    (it must be ignored by everything that reads the folder).
    """
    root = Path(root)
    cache_dir, bench = root / "cache", root / "bench"
    subjects = [f"s{i:03d}" for i in range(n_subjects)]
    references = {}
    for i, subject in enumerate(subjects):
        label = _label_map(i, with_et=subject != "s004")
        noise = np.random.default_rng(100 + i).random((2, *SHAPE)) * 0.3
        image = np.clip(noise + 0.5 * (label > 0) + 0.2 * (label == 3), 0, 1)
        meta = {"subject": subject, "dataset": "brats2023", "modalities": ["t1c", "t2f"],
                "spacing_mm": [1.0, 1.0, 1.0], "shape": list(SHAPE)}  # fmt: skip
        write_cached_subject(cache_dir / subject, image, label, meta)
        references[subject] = label

    runs = [(m, s, True) for m in models for s in seeds]
    if with_incomplete_run:  # still running: listed by the benchmark, not complete
        runs.append((models[0], max(seeds) + 1, False))
    atomic_write_json(bench / "benchmark.json", {
        "name": "fake", "dataset": "brats2023", "task": "regions", "manifest": "manifest.csv",
        "cache_dir": str(cache_dir),
        "models": {m: {"network": MODELS[m]["network"], "options": MODELS[m]["options"]} for m in models},
        "seeds": list(seeds), "folds": None,
        "runs": [{"model": m, "seed": s, "fold": None, "config_hash": _config_hash(m, s)} for m, s, _ in runs],
        "primary_endpoint": {"metric": "dice", "region": "WT"},
        "split": {"kind": "fixed", "test": subjects},
        "commit": "0123abc", "versions": {"torch": "2.13.0", "monai": "1.6.1"},
        "hardware": {"gpu": "none (fake)", "cpus": 2},
    })  # fmt: skip

    for model, seed, complete in runs:
        run_dir = bench / model / f"seed{seed}"
        rng = np.random.default_rng([seed, list(MODELS).index(model)])
        rows = ["subject,region,metric,value,convention"]
        for subject, label in references.items():
            ref_regions = label_map_to_masks(label, TASK.regions).astype(np.uint8)
            pred = _predict(model, ref_regions, subject, rng)
            arrays = {"pred": pred}
            if model == "segguided":
                sub = label_map_to_masks(label, TASK.subregions).astype(np.float32)
                arrays["attention"] = (0.1 + 0.8 * sub + 0.05 * rng.random(sub.shape)).astype(np.float16)
            (run_dir / "predictions").mkdir(parents=True, exist_ok=True)
            np.savez_compressed(run_dir / "predictions" / f"{subject}.npz", **arrays)
            for r, region in enumerate(TASK.region_names):
                scores, convention = _scores(pred[r], ref_regions[r])
                for metric, value in scores.items():
                    note = convention
                    if metric == "hd95_mm" and convention in ("pred_empty", "ref_empty"):
                        note += f";penalty_mm={HD95_PENALTY_MM:g}"
                    rows.append(f"{subject},{region},{metric},{float(value)!r},{note}")
        (run_dir / "results.csv").write_text("\n".join(rows) + "\n")
        atomic_write_json(run_dir / "run.json", {
            "model": model, "network": MODELS[model]["network"], "options": MODELS[model]["options"],
            "seed": seed, "fold": None, "config_hash": _config_hash(model, seed),
            "n_parameters": MODELS[model]["n_parameters"],
            "train_time_s": 600.0 + 10 * seed, "inference_time_s_per_volume": 0.5 + 0.01 * seed,
            "peak_memory_mb": 1024.0, "deterministic": True, "device": "cpu",
            "versions": {"torch": "2.13.0"}, "commit": "0123abc", "complete": complete,
        })  # fmt: skip
        if complete:
            (run_dir / "COMPLETE").write_text("")
    return bench
