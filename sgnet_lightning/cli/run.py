"""``sgnet fit | validate | test | predict | evaluate | gate-scan``: one experiment, and scoring.

``fit``, ``validate``, ``test`` and ``gate-scan`` take an experiment config (``--config``) and
overrides (``--set KEY=VALUE`` or ``--KEY VALUE``, :mod:`sgnet_lightning.cli.options`); ``predict``
reads everything it needs from the checkpoint; ``evaluate`` scores any folder of predictions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sgnet_lightning.datasets import list_datasets
from sgnet_lightning.cli.options import add_experiment_args, add_gate_threshold_arg, experiment_config


def cmd_fit(args) -> int:
    from sgnet_lightning.experiment import train

    metrics = train(experiment_config(args), run_dir=args.run_dir)
    print("fit done: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
    return 0


def cmd_validate(args) -> int:
    from sgnet_lightning.experiment import validate

    metrics = validate(experiment_config(args), run_dir=args.run_dir, ckpt=args.ckpt)
    print("validation: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
    return 0


def cmd_test(args) -> int:
    from sgnet_lightning.experiment import run_test
    from sgnet_lightning.runs import RESULTS_FILE, run_dir_for

    config = experiment_config(args)
    results = run_test(config, run_dir=args.run_dir, ckpt=args.ckpt, save_predictions=not args.no_predictions,
                       save_nifti=args.nifti or None, gate_threshold=args.gate_threshold)
    run_dir = Path(args.run_dir) if args.run_dir else run_dir_for(config)
    summary = results.groupby(["region", "metric"])["value"].mean().unstack("metric")
    print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"per-subject results: {run_dir / RESULTS_FILE}")
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


def cmd_gate_scan(args) -> int:
    import pandas as pd

    from sgnet_lightning.gate_scan import SCAN_CSV, SCAN_DIR, run_gate_scan
    from sgnet_lightning.runs import OPERATING_POINT, run_dir_for

    config = experiment_config(args)
    run_dir = Path(args.run_dir) if args.run_dir else run_dir_for(config)
    summary = run_gate_scan(config, run_dir, ckpt=args.ckpt, thresholds=args.thresholds, choose=args.choose,
                            store=args.store)
    means = pd.DataFrame(summary["means"])
    shown = means[means["metric"].isin(["dice", "precision", "recall", "lesion_f1", "lesion_fp", "hd95_mm"])
                  | means["metric"].str.startswith("gate_open_fraction_")]
    print(shown.pivot_table(index="threshold", columns=["metric", "region"], values="mean")
          .to_string(float_format=lambda v: f"{v:.3f}"))
    point = summary["operating_point"]
    print(f"operating point (best mean {point['metric']} {point['region']} on {len(point['validation_subjects'])} "
          f"validation subjects): gate threshold {point['gate_threshold']:g}"
          + (f", stored in {run_dir / OPERATING_POINT}" if args.store else " (not stored; --store stores it)"))
    print(f"scan: {run_dir / SCAN_DIR / SCAN_CSV}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sgnet fit | validate | test | predict | evaluate | gate-scan``."""
    from sgnet_lightning.gate_scan import DEFAULT_CHOICE, DEFAULT_THRESHOLDS

    for name, func, helptext in (("fit", cmd_fit, "train a model"),
                                 ("validate", cmd_validate, "validate a trained run"),
                                 ("test", cmd_test, "test a trained run: per-subject results")):
        p = subparsers.add_parser(name, help=helptext)
        add_experiment_args(p)
        if name != "fit":
            p.add_argument("--ckpt", default="best", help="best, last or a checkpoint path")
        if name == "test":
            p.add_argument("--no-predictions", action="store_true", help="do not store predictions")
            p.add_argument("--nifti", action="store_true",
                           help="also write predictions as NIfTI on each subject's own grid")
            add_gate_threshold_arg(p)
        p.set_defaults(func=func)

    p = subparsers.add_parser("predict", help="segment new cases; NIfTI on each input's own grid")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--input", nargs="+", required=True, help="a folder in the data set's layout, or image files")
    p.add_argument("--out", required=True)
    p.add_argument("--probabilities", action="store_true", help="also write probability maps")
    p.add_argument("--maps", action="store_true",
                   help="also write attention maps and every gate level (<subject>_gate<level>.nii.gz)")
    add_gate_threshold_arg(p)
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--sw-batch-size", type=int)
    p.set_defaults(func=cmd_predict)

    p = subparsers.add_parser("evaluate", help="score a prediction folder against references")
    p.add_argument("--pred", required=True)
    p.add_argument("--ref", required=True, help="reference folder in the data set's layout, or label maps")
    p.add_argument("--dataset", required=True, choices=list_datasets())
    p.add_argument("--task")
    p.add_argument("--out", required=True, help="tidy metrics CSV")
    p.add_argument("--no-distances", action="store_true", help="skip HD95/ASSD/NSD (faster)")
    p.add_argument("--penalty-mm", type=float, default=374.0, help="HD95 of a missed or spurious lesion")
    p.add_argument("--allow-missing", action="store_true", help="score what matches, list the rest")
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser("gate-scan", help="SG-Net: score gate thresholds on validation with fixed weights")
    add_experiment_args(p)
    p.add_argument("--ckpt", default="best", help="best, last or a checkpoint path")
    p.add_argument("--thresholds", nargs="+", type=float, default=list(DEFAULT_THRESHOLDS), metavar="TAU")
    p.add_argument("--choose", metavar="METRIC[:REGION]",
                   help=f"metric whose validation mean picks the operating point (default {DEFAULT_CHOICE} of "
                        "the task's main region)")
    p.add_argument("--store", action="store_true",
                   help="store the operating point in <run>/operating_point.json, for --gate-threshold validated")
    p.set_defaults(func=cmd_gate_scan)
