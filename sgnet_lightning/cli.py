"""``sgnet``: the command line, thin over plain functions.

    sgnet data synth | manifest | check | preprocess     source folder -> manifest -> cache
    sgnet fit | validate | test | predict                 experiments (LightningCLI configs)
    sgnet evaluate                                        score any prediction folder
    sgnet gate-scan                                       SG-Net gate threshold on validation, fixed weights
    sgnet benchmark | stats | report | summary            multi-seed comparison -> statistics -> report -> table
    sgnet sweep [best]                                    Optuna studies
    sgnet bench [loader]                                  speed measurements

Experiment commands take ``--config FILE`` (YAML, composed through ``defaults``), ``--set key=value``
overrides, and any LightningCLI flag such as ``--trainer.max_epochs=3``.
Errors of the suite (bad data, bad config) print one line and exit 1; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path

from sgnet_lightning.errors import SgnetError


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2) instead of the usage block followed
    by the error: every command reports bad input as one line (``--help`` shows the usage)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _experiment_config(args) -> dict:
    from sgnet_lightning.config import deep_merge, load_config, parse_overrides

    config = load_config(args.config)
    return deep_merge(config, parse_overrides(args.set or []))


def _add_experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="experiment YAML (experiments/...)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. model.aux_loss_weight=0.5")
    p.add_argument("--run-dir", help="run folder (default: runs/<name>/<network>/<dataset>/seed<k>)")


def _add_gate_threshold_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gate-threshold", metavar="TAU|validated",
                   help="SG-Net hard gates' threshold: a number in (0, 1), or 'validated' for the operating "
                        "point chosen on validation by `sgnet gate-scan --store` (default: as trained)")


# -- data ------------------------------------------------------------------------------------------
def cmd_data_synth(args) -> int:
    from sgnet_lightning.data.synth import synthesize_dataset

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise SgnetError(f"--out {args.out}: exists and is not a folder")
    cases = synthesize_dataset(args.kind, args.n, args.out, seed=args.seed, size=args.size)
    print(f"wrote {len(cases)} {args.kind} phantom subjects to {args.out}")
    return 0


def cmd_data_manifest(args) -> int:
    from sgnet_lightning.data.manifest import load_split_rule, make_manifest
    from sgnet_lightning.data.validate import manifest_problems

    if args.split and not Path(args.split).is_file():
        raise SgnetError(f"split-rule file not found: {args.split} (see data_manifests/splits/)")
    if args.groups and not Path(args.groups).is_file():
        raise SgnetError(f"groups file not found: {args.groups} (a CSV with columns subject,patient)")
    split_rule = load_split_rule(args.split) if args.split else {"name": "seed_way"}
    out = args.out or f"data_manifests/{args.dataset}.csv"
    manifest = make_manifest(args.dataset, args.root, out, split_rule=split_rule, seed=args.seed, task=args.task,
                             exclude=args.exclude or [], groups=args.groups)
    for problem in manifest_problems(manifest):  # incomplete and unlabelled subjects, split patients
        print(problem.format())
    counts = manifest.rows["split"].value_counts().to_dict()
    n_incomplete = len(manifest.incomplete_subjects)
    print(f"wrote {out}: {len(manifest.rows)} subjects of {manifest.rows['patient'].nunique()} patients "
          f"({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})"
          + (f"; {n_incomplete} incomplete: run `sgnet data check {out}` for every problem" if n_incomplete else ""))
    return 0


def cmd_data_check(args) -> int:
    from sgnet_lightning.data.manifest import Manifest
    from sgnet_lightning.data.validate import check_manifest

    report = check_manifest(Manifest.load(args.manifest, root=args.root), exclude=args.exclude or [],
                            verify_hashes=not args.no_hash)
    text = report.format()
    print(text if text else f"{args.manifest}: no problems found")
    if args.json:
        report.to_json(args.json)
    return 0 if report.ok else 2


def cmd_data_preprocess(args) -> int:
    from sgnet_lightning.data.manifest import Manifest
    from sgnet_lightning.data.preprocess import PreprocessSettings, preprocess_manifest

    settings = PreprocessSettings(spacing_mm=(args.spacing,) * 3)
    out = preprocess_manifest(Manifest.load(args.manifest, root=args.root), args.cache_root, settings,
                              workers=args.workers, exclude=args.exclude or [])
    print(f"cache ready: {out}")
    return 0


# -- experiments -------------------------------------------------------------------------------------
def cmd_fit(args, extra: list[str]) -> int:
    from sgnet_lightning.experiment import train

    metrics = train(_experiment_config(args), run_dir=args.run_dir, overrides=extra)
    print("fit done: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
    return 0


def cmd_validate(args, extra: list[str]) -> int:
    from sgnet_lightning.experiment import validate

    metrics = validate(_experiment_config(args), run_dir=args.run_dir, ckpt=args.ckpt, overrides=extra)
    print("validation: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
    return 0


def cmd_test(args, extra: list[str]) -> int:
    from sgnet_lightning.experiment import run_dir_for, run_test

    config = _experiment_config(args)
    results = run_test(config, run_dir=args.run_dir, ckpt=args.ckpt, save_predictions=not args.no_predictions,
                       save_nifti=args.nifti or None, overrides=extra, gate_threshold=args.gate_threshold)
    run_dir = Path(args.run_dir) if args.run_dir else run_dir_for(config)
    summary = results.groupby(["region", "metric"])["value"].mean().unstack("metric")
    print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"per-subject results: {run_dir / 'results.csv'}")
    return 0


def cmd_predict(args) -> int:
    from sgnet_lightning.predict import predict

    written = predict(args.ckpt, args.input, args.out, write_probabilities=args.probabilities,
                      write_maps=args.maps, device=args.device, sw_batch_size=args.sw_batch_size,
                      gate_threshold=args.gate_threshold)
    print(f"wrote {len(written)} segmentation(s) to {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    from functools import partial

    from sgnet_lightning.evaluation.evaluate import evaluate_folders
    from sgnet_lightning.evaluation.references import dataset_references

    results = evaluate_folders(
        args.pred, args.ref, args.dataset, args.out, task=args.task,
        ref_loader=partial(dataset_references, args.dataset), allow_missing=args.allow_missing,
        workers=args.workers, distances=not args.no_distances, empty_penalty_mm=args.penalty_mm,
    )
    summary = results.groupby(["region", "metric"])["value"].mean().unstack("metric")
    print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"{results['subject'].nunique()} subjects scored; tidy rows in {args.out}")
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, set[str]]:
    parser = OneLineParser(prog="sgnet", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="data sets: synth, manifest, check, preprocess")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("synth", help="write an MRI phantom data set in a real layout")
    p.add_argument("--kind", required=True, choices=["bml", "brats2021", "brats2023"])
    p.add_argument("--n", type=_positive_int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, help="voxels along the longest axis (small test sets)")
    p.set_defaults(func=cmd_data_synth)
    p = data_sub.add_parser("manifest", help="scan a data folder and write a manifest with its split")
    p.add_argument("--dataset", required=True, choices=["bml", "brats2021", "brats2023"])
    p.add_argument("--root", required=True)
    p.add_argument("--out", help="manifest CSV (default data_manifests/<dataset>.csv)")
    p.add_argument("--split", help="split-rule YAML (data_manifests/splits/...); default: the seed way")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--task", help="task whose labels a subject needs to be trained on")
    p.add_argument("--groups", help="CSV with columns subject,patient (default: the data set's naming rule)")
    p.add_argument("--exclude", nargs="*", help="subject IDs to leave out of the manifest")
    p.set_defaults(func=cmd_data_manifest)
    p = data_sub.add_parser("check", help="read every file of a manifest and report every problem")
    p.add_argument("manifest")
    p.add_argument("--root", help="data folder, if not the manifest's recorded root")
    p.add_argument("--exclude", nargs="*", help="subject IDs to skip")
    p.add_argument("--no-hash", action="store_true", help="skip the content-hash comparison")
    p.add_argument("--json", help="also write the report as JSON")
    p.set_defaults(func=cmd_data_check)
    p = data_sub.add_parser("preprocess", help="build the preprocessed cache of a manifest")
    p.add_argument("manifest")
    p.add_argument("--root", help="data folder, if not the manifest's recorded root")
    p.add_argument("--cache-root", default="cache")
    p.add_argument("--spacing", type=float, default=1.0, help="isotropic spacing in mm")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument("--exclude", nargs="*")
    p.set_defaults(func=cmd_data_preprocess)

    lightning_commands = set()
    for name, func, helptext in (("fit", cmd_fit, "train a model"),
                                 ("validate", cmd_validate, "validate a trained run"),
                                 ("test", cmd_test, "test a trained run: per-subject results")):
        p = sub.add_parser(name, help=helptext)
        _add_experiment_args(p)
        if name != "fit":
            p.add_argument("--ckpt", default="best", help="best, last or a checkpoint path")
        if name == "test":
            p.add_argument("--no-predictions", action="store_true", help="do not store predictions")
            p.add_argument("--nifti", action="store_true",
                           help="also write predictions as NIfTI on each subject's own grid")
            _add_gate_threshold_arg(p)
        p.set_defaults(func=func)
        lightning_commands.add(name)

    p = sub.add_parser("predict", help="segment new cases; NIfTI on each input's own grid")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--input", nargs="+", required=True, help="a folder in the data set's layout, or image files")
    p.add_argument("--out", required=True)
    p.add_argument("--probabilities", action="store_true", help="also write probability maps")
    p.add_argument("--maps", action="store_true",
                   help="also write attention maps and every gate level (<subject>_gate<level>.nii.gz)")
    _add_gate_threshold_arg(p)
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--sw-batch-size", type=int)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="score a prediction folder against references")
    p.add_argument("--pred", required=True)
    p.add_argument("--ref", required=True, help="reference folder in the data set's layout, or label maps")
    p.add_argument("--dataset", required=True, choices=["bml", "brats2021", "brats2023"])
    p.add_argument("--task")
    p.add_argument("--out", required=True, help="tidy metrics CSV")
    p.add_argument("--no-distances", action="store_true", help="skip HD95/ASSD/NSD (faster)")
    p.add_argument("--penalty-mm", type=float, default=374.0, help="HD95 of a missed or spurious lesion")
    p.add_argument("--allow-missing", action="store_true", help="score what matches, list the rest")
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=cmd_evaluate)

    from sgnet_lightning.commands import register_more

    register_more(sub)
    return parser, lightning_commands


def main(argv: list[str] | None = None) -> int:
    parser, lightning_commands = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in lightning_commands:
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command in lightning_commands:
            return args.func(args, extra)
        return args.func(args)
    except SgnetError as err:
        if args.verbose:
            raise
        # one line, whatever the message quotes (a YAML parser's pointer lines, a file's contents)
        print("error: " + re.sub(r"\s*\n\s*", " ", str(err)).strip(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
