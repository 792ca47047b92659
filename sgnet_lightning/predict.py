"""``sgnet predict``: segment new cases and write NIfTI on each input's own grid.

The same preprocessing as training (from the checkpoint's record of it), sliding-window inference,
then the prediction is put back on the reference modality's original grid, so the written file has
exactly that file's shape and affine.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from sgnet_lightning.data.labels import get_task, regions_to_label_map
from sgnet_lightning.datasets import image_name_ending
from sgnet_lightning.errors import SgnetError
from sgnet_lightning.nifti import save_native

log = logging.getLogger(__name__)


def load_trained(ckpt: str | Path, device: str | torch.device = "cpu"):
    """Rebuild a :class:`SegmentationModule` and its data description from a checkpoint alone."""
    from sgnet_lightning.module import SegmentationModule

    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise SgnetError(f"checkpoint not found: {ckpt}")
    try:
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises pickle, zip and runtime errors alike for a damaged file
        raise SgnetError(f"{ckpt}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(checkpoint, dict) or "sgnet_data" not in checkpoint:
        raise SgnetError(f"{ckpt} was not written by `sgnet fit` (no data description inside)")
    module = SegmentationModule.load_from_checkpoint(ckpt, map_location="cpu")
    return module.to(device).eval(), checkpoint["sgnet_data"]


def _subject_id(path: Path) -> str:
    name = re.sub(r"\.nii(\.gz)?$", "", path.name)
    return image_name_ending().sub("", name)


def collect_inputs(inputs: Sequence[str | Path], dataset: str) -> dict[str, dict[str, Path]]:
    """Subjects to segment: ``{subject: {modality: path}}``.

    ``inputs`` is either one folder in the data set's layout (found by the data set's reader, labels
    not needed) or image files, one per modality in the training channel order.
    """
    from sgnet_lightning.data.sources import get_source

    source = get_source(dataset)
    paths = [Path(p) for p in inputs]
    if len(paths) == 1 and paths[0].is_dir():
        records = source.discover(paths[0])
        return {r.subject: dict(r.images) for r in records}
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise SgnetError(f"input file not found: {missing[0]}")
    if len(paths) != len(source.modalities):
        raise SgnetError(
            f"{dataset} models take {len(source.modalities)} images ({', '.join(source.modalities)}, in "
            f"this order); got {len(paths)} file(s)"
        )
    return {_subject_id(paths[0]): dict(zip(source.modalities, paths))}


def predict(ckpt: str | Path, inputs: Sequence[str | Path], out_dir: str | Path, *,
            write_probabilities: bool = False, write_maps: bool = False, device: str | None = None,
            sw_batch_size: int | None = None, progress: bool = True,
            gate_threshold: str | float | None = None) -> list[Path]:
    """Segment every subject of ``inputs``; return the written label files.

    Writes ``<out_dir>/<subject>.nii.gz`` (uint8 label map in the data set's convention, on the
    reference modality's original grid) and, on request, ``<subject>_probabilities.nii.gz``
    (4D, one volume per region), ``<subject>_attention.nii.gz`` (SegGuidedNet's finest attention
    maps, 4D) and ``<subject>_gate<level>.nii.gz`` (each SG-Net gate level, 0 = coarsest, resized to
    the cached grid, then put on the input's grid; hard gates: the share of sliding windows that
    opened the voxel, 0 or 1 where windows do not overlap).

    Args:
        gate_threshold: hard gates' threshold: None (as trained), a number in (0, 1), or
            ``"validated"``: the operating point stored in the checkpoint's run folder
            (``<run>/operating_point.json``, ``sgnet gate-scan --store``), refused for another checkpoint.
    """
    from sgnet_lightning.data.preprocess import PreprocessSettings, preprocess_images
    from sgnet_lightning.data.sources import get_source
    from sgnet_lightning.operating_point import hard_gated_network, resolve_gate_threshold
    from sgnet_lightning.runs import run_dir_of_checkpoint

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    threshold, source = resolve_gate_threshold(gate_threshold, run_dir_of_checkpoint(ckpt), ckpt)
    module, data = load_trained(ckpt, device)
    if threshold is not None:
        hard_gated_network(module, f"sgnet predict --gate-threshold {gate_threshold}").gate_threshold = threshold
        log.info("gate threshold %.3g (%s)", threshold, source)
    if sw_batch_size:
        module.window.sw_batch_size = sw_batch_size
    task = get_task(data["dataset"], data["task"])
    source = get_source(data["dataset"])
    settings = PreprocessSettings(spacing_mm=(data["spacing_mm"],) * 3)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    subjects = collect_inputs(inputs, data["dataset"])
    if not subjects:
        raise SgnetError(f"no subjects found in {', '.join(map(str, inputs))}")
    for subject, images in tqdm(subjects.items(), desc="predict", unit="subject", disable=not progress):
        image, meta = preprocess_images(images, source, settings, subject)
        batch = torch.from_numpy(np.asarray(image, dtype=np.float32))[None].to(device)
        maps = module.predict_volume(batch, with_maps=write_maps)
        probabilities = maps["probabilities"][0].cpu().numpy()
        label_map = regions_to_label_map(probabilities > module.hparams.threshold, task)
        written.append(save_native(label_map, meta, out_dir / f"{subject}.nii.gz"))
        if write_probabilities:
            save_native(probabilities, meta, out_dir / f"{subject}_probabilities.nii.gz", "linear")
        if write_maps and "attention" in maps:
            save_native(maps["attention"][0].float().cpu().numpy(), meta, out_dir / f"{subject}_attention.nii.gz",
                        "linear")
        if write_maps and "gate" in maps:
            for level, gate in enumerate(maps["gate"][0].float().cpu().numpy()):
                save_native(gate, meta, out_dir / f"{subject}_gate{level}.nii.gz", "linear")
    return written
