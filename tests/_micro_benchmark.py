"""A 2-model x 2-seed benchmark on tiny Brain-Mets-Lung volumes, seconds per run on one CPU thread:
what the launcher tests run sequentially, side by side and through SLURM."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
MODELS = {
    "sgnet": {"defaults": [str(REPO / "experiments" / "models" / "sgnet.yaml")]},
    "segguided": {"defaults": [str(REPO / "experiments" / "models" / "segguidednet.yaml")],
                  "model": {"network_options": {"n_subregions": 2, "base_channels": 8}, "aux_loss_weight": 0.3}},
}


def write_micro_benchmark(folder: Path, data: dict[str, Path], runs_root: Path, name: str = "micro",
                          max_epochs: int = 3, steps_per_epoch: int = 3) -> Path:
    """Write ``folder/<name>.yaml`` (and its experiment base) on the phantom set ``data`` (conftest's
    ``tiny_bml``) running into ``runs_root/<name>``."""
    folder.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load((REPO / "experiments" / "datasets" / "phantom_bml.yaml").read_text())
    base["defaults"] = [str(REPO / "experiments" / "base" / "trainer.yaml")]
    base["data"].update(manifest=str(data["manifest"]), cache_root=str(data["cache"]), spacing_mm=3.0,
                        patch_size=[16, 16, 16], batch_size=2, steps_per_epoch=steps_per_epoch, samples_per_volume=2,
                        queue_length=4, num_workers=0)
    base["model"] = {"optimizer": {"name": "adam", "lr": 3.0e-3}, "scheduler": {"name": "none"},
                     "sliding_window": {"roi_size": [16, 16, 16], "sw_batch_size": 2}}
    base["trainer"].update(max_epochs=max_epochs, log_every_n_steps=1, enable_progress_bar=False,
                           enable_model_summary=False, deterministic=True)
    base["run"] = {"wandb": {"enabled": False}}
    experiment = folder / f"{name}_experiment.yaml"
    experiment.write_text(yaml.safe_dump(base))
    bench = folder / f"{name}.yaml"
    bench.write_text(yaml.safe_dump({"name": name, "root": str(runs_root), "experiment": str(experiment),
                                     "models": MODELS, "seeds": [0, 1]}))
    return bench
