"""The benchmark report's image sections: example slices and attention maps.

Both read the cache the benchmark names (images and reference labels) and the runs' saved
predictions (``predictions/<subject>.npz``: ``pred`` (R, X, Y, Z) region masks, and ``attention``
(S, X, Y, Z) for networks with attention maps). Images are drawn in the cached grid (RAS, so an axial
slice is ``[:, :, z]``) with the patient's right on the right of the picture (neurological convention).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from sgnet_lightning.analysis.document import Plot, Section, Table, figure_png, fmt
from sgnet_lightning.analysis.results import RunDir
from sgnet_lightning.data import cache
from sgnet_lightning.data.labels import label_map_to_masks
from sgnet_lightning.errors import DataError
from sgnet_lightning.evaluation.attention import ATTENTION_THRESHOLD, attention_overlap, overlap_dice

if TYPE_CHECKING:  # the report module builds the Benchmark and calls these sections
    from sgnet_lightning.analysis.report import Benchmark


def _prediction(bench: Benchmark, model: str, subject: str) -> tuple[RunDir, dict[str, np.ndarray]] | None:
    """The first complete run of ``model`` (lowest seed, fold) that saved a prediction of ``subject``."""
    for run in bench.runs_of(model):
        path = run.prediction_file(subject)
        if path.is_file():
            with np.load(path) as npz:
                return run, {key: npz[key] for key in npz.files}
    return None


def _cached_label(bench: Benchmark, subject: str) -> np.ndarray | None:
    """(X, Y, Z) canonical label map of a cached subject; None when the cache lacks it."""
    subject_dir = bench.cache_dir / subject
    return cache.load_label(subject_dir, mmap=False) if cache.is_complete(subject_dir) else None


def _region_index_map(masks: np.ndarray, groups: dict[str, tuple[int, ...]]) -> np.ndarray:
    """(X, Y) map of 1-based region indices from (R, X, Y) masks, the most specific region on top
    (regions with fewer label values are drawn last)."""
    out = np.zeros(masks.shape[1:], dtype=np.int16)
    for r in sorted(range(len(groups)), key=lambda i: -len(list(groups.values())[i])):
        out[masks[r].astype(bool)] = r + 1
    return out


def _largest_tumour_slice(reference: np.ndarray) -> int:
    """Axial index z with the largest reference tumour area; reference: (R, X, Y, Z) masks."""
    area = reference.any(axis=0).sum(axis=(0, 1))
    return int(np.argmax(area)) if area.any() else reference.shape[-1] // 2


def _chosen_subjects(values: pd.DataFrame, models: list[str]) -> list[tuple[str, str]]:
    """(label, subject) of the median and the worst subject by mean Dice over models and regions,
    among subjects every model has."""
    dice = values[values["metric"] == "dice"]
    per_subject = dice.groupby(["subject", "model"])["value"].mean().unstack("model")
    per_subject = per_subject.reindex(columns=models).dropna()
    if per_subject.empty:
        return []
    score = per_subject.mean(axis=1).reset_index(name="score").sort_values(["score", "subject"])
    ordered = list(score["subject"])
    median, worst = ordered[(len(ordered) - 1) // 2], ordered[0]
    if median == worst:
        return [("median and worst", median)]
    return [("median", median), ("worst", worst)]


def _dice_note(bench: Benchmark, run: RunDir, subject: str) -> str:
    rows = bench.results[(bench.results["model"] == run.model) & (bench.results["seed"] == run.seed)
                         & (bench.results["subject"] == subject) & (bench.results["metric"] == "dice")]
    if run.fold is not None:
        rows = rows[rows["fold"] == run.fold]
    return " ".join(f"{r.region} {r.value:.2f}" for r in rows.itertuples())


def example_slices(bench: Benchmark, values: pd.DataFrame) -> tuple[list, tuple[str, int] | None]:
    """Figures of the median and the worst subject; also returns (subject, z) of the first one shown,
    for the attention figure."""
    blocks: list = []
    first = None
    regions = bench.task.regions
    region_colours = [colormaps["Set1"](i) for i in range(len(regions))]
    overlay_map = ListedColormap(region_colours)
    for label, subject in _chosen_subjects(values, bench.models):
        label_map = _cached_label(bench, subject)
        if label_map is None:
            blocks.append(f"{label} subject {subject}: no reference in the cache at {bench.cache_dir}; "
                          "slice left out.")  # fmt: skip
            continue
        subject_dir = bench.cache_dir / subject
        image = cache.load_image(subject_dir)
        reference = label_map_to_masks(label_map, regions)
        z = _largest_tumour_slice(reference)
        modality = (cache.read_meta(subject_dir).get("modalities") or ["channel 0"])[0]
        panels = [("input: " + modality, None, ""), ("reference", reference, "")]
        shown = []
        for model in bench.models:
            found = _prediction(bench, model, subject)
            if found is None:
                panels.append((f"{model}: no saved prediction", None, ""))
                continue
            run, arrays = found
            pred = arrays["pred"]
            if pred.shape != reference.shape:
                raise DataError(subject, run.prediction_file(subject),
                                f"pred has shape {pred.shape}, the reference regions {reference.shape}")
            panels.append((f"{model} (seed {run.seed})", pred, "Dice " + _dice_note(bench, run, subject)))
            shown.append(f"{model}: seed {run.seed}" + (f" fold {run.fold}" if run.fold is not None else ""))
        fig = Figure(figsize=(2.3 * len(panels), 2.9), layout="constrained")
        background = np.asarray(image[0, :, :, z], dtype=np.float32).T
        for i, (title, masks, subtitle) in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), i + 1)
            ax.imshow(background, cmap="gray", origin="lower", vmin=0, vmax=1, interpolation="nearest")
            if masks is not None:
                index = _region_index_map(masks[..., z], regions).T
                ax.imshow(np.ma.masked_equal(index, 0), cmap=overlay_map, vmin=1, vmax=len(regions),
                          alpha=0.55, origin="lower", interpolation="nearest")  # fmt: skip
            ax.set_title(title + (f"\n{subtitle}" if subtitle else ""), fontsize=8)
            ax.axis("off")
        fig.legend(handles=[Patch(color=c, label=n) for c, n in zip(region_colours, regions)],
                   loc="outside lower center", ncols=len(regions), fontsize=8)  # fmt: skip
        mean_dice = values[(values["metric"] == "dice") & (values["subject"] == subject)]["value"].mean()
        blocks.append(Plot(
            f"example_{label.replace(' ', '_')}_{subject}",
            f"{label.capitalize()} subject {subject} (mean Dice over models and regions {mean_dice:.3f}): axial "
            f"slice z = {z}, the reference's largest tumour area; patient's right on the right. Predictions "
            f"shown from {'; '.join(shown) or 'no run'}; Dice of that run over the whole volume.",
            figure_png(fig),
        ))  # fmt: skip
        first = first or (subject, z)
    return blocks, first


def attention_overlap_table(bench: Benchmark) -> pd.DataFrame:
    """:func:`~sgnet_lightning.evaluation.attention.attention_overlap` of every saved attention map.

    Reads each subject's reference once and every complete run's ``predictions/<subject>.npz`` that
    holds ``attention`` (S, X, Y, Z). Returns columns model, seed, fold, subject, subregion, dice
    (NaN where map and sub-region are both empty).
    """
    subregions = bench.task.subregions
    rows = []
    for subject in sorted(bench.results["subject"].unique()):
        label_map = _cached_label(bench, subject)
        if label_map is None:
            continue
        reference = None
        for run in bench.complete:
            path = run.prediction_file(subject)
            if not path.is_file():
                continue
            with np.load(path) as npz:
                if "attention" not in npz.files:
                    continue
                attention = npz["attention"]
            if reference is None:
                reference = label_map_to_masks(label_map, subregions)
            try:
                overlap = attention_overlap(attention, reference, subregions)
            except ValueError as error:
                raise DataError(subject, path, str(error)) from None
            rows += [{"model": run.model, "seed": run.seed, "fold": run.fold, "subject": subject,
                      "subregion": name, "dice": dice} for name, dice in overlap.items()]  # fmt: skip
    return pd.DataFrame(rows, columns=["model", "seed", "fold", "subject", "subregion", "dice"])


def attention_section(bench: Benchmark, overlap: pd.DataFrame, example: tuple[str, int] | None) -> Section:
    title = "Attention maps"
    if overlap.empty:
        return Section(title, ["No model saved attention maps."])
    blocks: list = [
        f"Overlap of each attention map with its reference sub-region: Dice between the map thresholded at "
        f"{ATTENTION_THRESHOLD} and the sub-region, over the whole volume (maps as saved, upsampled to the "
        "cached grid). Per subject the mean over seeds; mean ± SD over subjects. Cases where map and "
        "sub-region are both empty have no overlap to measure and are counted, not averaged."
    ]
    per_subject = overlap.groupby(["model", "subregion", "subject"], sort=False)["dice"].mean().reset_index()
    rows = []
    for (model, subregion), group in per_subject.groupby(["model", "subregion"], sort=False):
        values = group["dice"].dropna()
        rows.append({
            "model": model, "sub-region": subregion,
            "overlap Dice": f"{fmt(values.mean())} ± {fmt(values.std(ddof=1) if len(values) > 1 else np.nan)}",
            "subjects": len(values), "both empty (left out)": int(group["dice"].isna().sum()),
        })  # fmt: skip
    blocks.append(Table(pd.DataFrame(rows), "Attention-map overlap with the reference sub-regions"))
    if example is None:
        return Section(title, blocks)
    subject, z = example
    subregions = bench.task.subregions
    reference = label_map_to_masks(_cached_label(bench, subject), subregions)
    background = np.asarray(cache.load_image(bench.cache_dir / subject)[0, :, :, z], dtype=np.float32).T
    models = [m for m in bench.models if m in set(overlap["model"])]
    maps = {}
    for model in models:
        found = _prediction(bench, model, subject)
        if found is not None and "attention" in found[1]:
            maps[model] = found
    fig = Figure(figsize=(2.4 * (1 + len(maps)), 2.5 * len(subregions)), layout="constrained")
    image = None
    for s, name in enumerate(subregions):
        mask = reference[s, :, :, z].T
        ax = fig.add_subplot(len(subregions), 1 + len(maps), s * (1 + len(maps)) + 1)
        ax.imshow(background, cmap="gray", origin="lower", vmin=0, vmax=1, interpolation="nearest")
        ax.imshow(np.ma.masked_equal(mask.astype(np.int8), 0), cmap=ListedColormap(["#e41a1c"]), alpha=0.6,
                  origin="lower", interpolation="nearest")  # fmt: skip
        ax.set_title(f"reference {name}", fontsize=8)
        ax.axis("off")
        for k, (model, (run, arrays)) in enumerate(maps.items()):
            attention = arrays["attention"][s].astype(np.float32)
            ax = fig.add_subplot(len(subregions), 1 + len(maps), s * (1 + len(maps)) + 2 + k)
            image = ax.imshow(attention[:, :, z].T, cmap="magma", origin="lower", vmin=0, vmax=1,
                              interpolation="nearest")  # fmt: skip
            if mask.any():
                ax.contour(mask.astype(float), levels=[0.5], colors="cyan", linewidths=0.8)
            ax.set_title(f"{model} seed {run.seed}: {name}\nDice@{ATTENTION_THRESHOLD} "
                         f"{fmt(overlap_dice(attention, reference[s]))}", fontsize=8)  # fmt: skip
            ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=fig.axes, shrink=0.6, label="attention")
    blocks.append(Plot(f"attention_{subject}", f"Subject {subject}, axial slice z = {z}: reference sub-regions "
                       "(left) and each model's attention maps (cyan: reference outline). Dice over the whole "
                       "volume of that run.", figure_png(fig)))  # fmt: skip
    return Section(title, blocks)

