"""Experiments end to end on a tiny phantom: configs, fit -> test -> predict, native grids, DDP."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import sgnet

from sgnet_lightning.benchmark import load_benchmark
from sgnet_lightning.config import ConfigError, load_config
from sgnet_lightning.experiment import SUITE_KEYS, run_test, train
from sgnet_lightning.predict import predict

REPO = Path(__file__).resolve().parents[1]
# Run configs: one data set x one model (benchmarks are checked run by run below, launchers by
# tests/test_launch.py). Fragments (base/, models/) are only meaningful composed into these.
EXPERIMENTS = sorted(
    p for p in (REPO / "experiments").rglob("*.yaml") if not {"benchmarks", "launchers", "base", "models"} & set(p.parts)
)
FRAGMENTS = sorted(p for folder in ("base", "models") for p in (REPO / "experiments" / folder).glob("*.yaml"))


def parse_only(config: dict) -> None:
    """Validate a config with the suite's LightningCLI parser, instantiating nothing."""
    import tempfile

    from sgnet_lightning.lightning_config import SuiteCLI

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(yaml.safe_dump({k: v for k, v in config.items() if k not in SUITE_KEYS}))
        SuiteCLI(args=["--config", str(path)], run=False, instantiate=False)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(REPO / "experiments")))
def test_every_experiment_config_parses(path):
    config = load_config(path)
    assert config["data"]["manifest"]
    if path.parent.name != "datasets" and path.stem != "base":
        assert config["model"]["network"] == path.stem
    parse_only(config)


@pytest.mark.parametrize("path", FRAGMENTS, ids=lambda p: str(p.relative_to(REPO / "experiments")))
def test_every_fragment_is_composed_into_a_parsed_config(path):
    """A fragment no run config names would go unchecked; every value it sets must reach the configs
    that name it (unless they set the key themselves)."""
    users = [p for p in EXPERIMENTS if path.resolve() in _defaults_of(p)]
    assert users, f"{path.relative_to(REPO)} is named in no run config's defaults"
    fragment = load_config(path)
    for user in users:
        own = yaml.safe_load(user.read_text()) or {}
        composed = load_config(user)
        for section, values in fragment.items():
            for key, value in (values.items() if isinstance(values, dict) else []):
                if key not in own.get(section, {}) and not _set_later(path, user, section, key):
                    assert composed[section][key] == value, (user.name, section, key)


def _defaults_of(path: Path) -> list[Path]:
    """Every file ``path`` composes, depth first, itself last."""
    names = (yaml.safe_load(path.read_text()) or {}).get("defaults", [])
    out = []
    for name in names:
        out += _defaults_of((path.parent / name).resolve())
    return out + [path.resolve()]


def _set_later(fragment: Path, user: Path, section: str, key: str) -> bool:
    """Whether a file composed after ``fragment`` into ``user`` sets ``section.key`` itself."""
    chain = _defaults_of(user)
    later = chain[chain.index(fragment.resolve()) + 1 :]
    return any(key in ((yaml.safe_load(p.read_text()) or {}).get(section) or {}) for p in later)


@pytest.mark.parametrize("path", sorted((REPO / "experiments" / "benchmarks").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_benchmark_config_resolves(path):
    bench = load_benchmark(path)
    assert bench["runs"], "a benchmark without runs"
    for run in bench["runs"][:: len(bench["seeds"] if "seeds" in bench else [0])]:
        parse_only(run["config"])


def test_bad_config_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults: [missing.yaml]\n")
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(bad)
    typo = load_config(REPO / "experiments" / "phantom_bml" / "sgnet.yaml")
    typo["model"]["gate_treshold"] = 0.5
    with pytest.raises(SystemExit):  # jsonargparse names the unknown key on stderr
        parse_only(typo)


@pytest.mark.slow
def test_fit_test_predict_on_a_tiny_phantom(make_config, phantom_bml, tmp_path):
    config = make_config("sgnet")
    run_dir = tmp_path / "run"
    metrics = train(config, run_dir=run_dir)
    assert metrics["epochs"] == 2 and metrics["steps"] == 4
    for name in ("config.yaml", "run.json", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "logs/metrics.csv"):
        assert (run_dir / name).is_file(), name
    logged = pd.read_csv(run_dir / "logs" / "metrics.csv")
    assert {"train/loss", "val/dice", "val/dice_WT", "gate/open_fraction_0"} <= set(logged.columns)

    results = run_test(config, run_dir=run_dir, save_nifti=True)
    on_disk = pd.read_csv(run_dir / "results.csv")
    assert len(on_disk) == len(results) > 0
    assert set(on_disk["region"]) == {"WT", "all"}  # "all": the gates' open fractions, one row per level
    gates = on_disk[on_disk["region"] == "all"]
    assert sorted(gates["metric"].unique()) == [f"gate_open_fraction_{level}" for level in range(3)]
    assert gates["value"].between(0, 1).all()
    assert {"dice", "precision", "recall", "hd95_mm", "lesion_f1"} <= set(on_disk["metric"])
    assert not on_disk["value"].isna().any()
    assert (run_dir / "logs" / "metrics.csv").is_file(), "testing must not replace the training log"
    test_subjects = set(on_disk["subject"].astype(str))
    assert {p.stem for p in (run_dir / "predictions").glob("*.npz")} == test_subjects
    for subject in test_subjects:  # NIfTI predictions on each subject's own T1ce grid
        written = nib.load(run_dir / "predictions_nifti" / f"{subject}.nii.gz")
        reference = nib.load(next(phantom_bml["root"].rglob(f"{subject}_t1ce_img.nii*")))
        assert written.shape == reference.shape
        np.testing.assert_allclose(written.affine, reference.affine, atol=1e-5)

    out = tmp_path / "pred"
    written = predict(run_dir / "checkpoints" / "best.ckpt", [phantom_bml["root"]], out, write_maps=True,
                      write_probabilities=True, progress=False)
    assert written
    for path in written:
        subject = path.name.removesuffix(".nii.gz")
        reference = nib.load(next(phantom_bml["root"].rglob(f"{subject}_t1ce_img.nii*")))
        segmentation = nib.load(path)
        assert segmentation.shape == reference.shape
        np.testing.assert_allclose(segmentation.affine, reference.affine, atol=1e-5)
        assert set(np.unique(np.asarray(segmentation.dataobj))) <= {0, 1}
        for level in range(3):  # every gate level, 0 = coarsest, on the input's grid
            gate = nib.load(out / f"{subject}_gate{level}.nii.gz")
            assert gate.shape == reference.shape
            np.testing.assert_allclose(gate.affine, reference.affine, atol=1e-5)


def _twin(src: Path, dst: Path, make_affine) -> None:
    img = nib.load(src)
    data, affine = make_affine(np.asarray(img.dataobj), img.affine)
    dst.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), dst)


@pytest.mark.slow
def test_predict_on_oblique_anisotropic_lps_input_matches_its_ras_twin(make_config, phantom_bml, tmp_path):
    """An LPS-stored, oblique, anisotropic input is valid: its segmentation lands on its own grid
    and equals the segmentation of the same image stored in RAS order, mapped back."""
    config = make_config("sgnet", trainer={"max_epochs": 1})
    run_dir = tmp_path / "run"
    train(config, run_dir=run_dir)
    case = sorted(p for p in phantom_bml["root"].iterdir() if p.is_dir())[0]
    angle = np.deg2rad(12)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])

    def oblique_ras(data, affine):
        new = affine.copy()
        new[:3, :3] = rotation @ np.diag([4.0, 5.0, 6.5])  # anisotropic voxels
        return data, new

    def oblique_lps(data, affine):
        data, ras = oblique_ras(data, affine)
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])  # store x and y reversed: same world image
        shift = np.eye(4)
        shift[:2, 3] = [data.shape[0] - 1, data.shape[1] - 1]
        return data[::-1, ::-1].copy(), ras @ shift @ flip

    outputs = {}
    for name, transform in (("ras", oblique_ras), ("lps", oblique_lps)):
        files = []
        for modality in ("t1ce", "flair"):
            src = next(case.glob(f"*_{modality}_img.nii*"))
            dst = tmp_path / name / f"oblique {modality}.nii.gz"
            if modality == "flair":  # put FLAIR on the T1ce grid first so both share the oblique affine
                from sgnet_lightning.data.io import resample_to_grid

                t1 = nib.load(next(case.glob("*_t1ce_img.nii*")))
                flair = nib.load(src)
                resampled = resample_to_grid(np.asarray(flair.dataobj, dtype=np.float32), flair.affine,
                                             t1.shape, t1.affine, order=1)
                src = tmp_path / "flair_on_t1.nii.gz"
                nib.save(nib.Nifti1Image(resampled, t1.affine), src)
            _twin(src, dst, transform)
            files.append(dst)
        out = tmp_path / f"pred_{name}"
        (written,) = predict(run_dir / "checkpoints" / "best.ckpt", files, out, write_probabilities=True,
                             progress=False)
        given = nib.load(files[0])
        segmentation = nib.load(written)
        assert segmentation.shape == given.shape
        np.testing.assert_allclose(segmentation.affine, given.affine, atol=1e-5)
        outputs[name] = np.asarray(nib.load(out / written.name.replace(".nii.gz", "_probabilities.nii.gz")).dataobj)
    np.testing.assert_allclose(outputs["lps"][::-1, ::-1], outputs["ras"], atol=1e-5)


@pytest.mark.slow
def test_fit_with_ddp_on_two_cpu_processes(make_config, tmp_path):
    """Lightning's DDP path (gloo, two processes): the TorchIO queue shards subjects across ranks."""
    config = make_config("sgnet", trainer={"max_epochs": 1, "strategy": "ddp", "devices": 2, "accelerator": "cpu"})
    config_file = tmp_path / "ddp.yaml"
    config_file.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "ddp_run"
    fitted = sgnet("fit", "--config", config_file, "--run-dir", run_dir, process=True)
    assert fitted.code == 0, fitted.err[-3000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    logged = pd.read_csv(run_dir / "logs" / "metrics.csv")
    assert "val/dice" in logged.columns
