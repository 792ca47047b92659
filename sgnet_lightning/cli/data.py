"""``sgnet data synth | manifest | check | preprocess``: source folder -> manifest -> cache."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sgnet_lightning.cli.options import positive_int
from sgnet_lightning.datasets import list_datasets
from sgnet_lightning.errors import SgnetError


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


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sgnet data synth | manifest | check | preprocess``."""
    data = subparsers.add_parser("data", help="data sets: synth, manifest, check, preprocess")
    data_sub = data.add_subparsers(dest="data_command", required=True)

    p = data_sub.add_parser("synth", help="write an MRI phantom data set in a real layout")
    p.add_argument("--kind", required=True, choices=list_datasets(with_phantom=True))
    p.add_argument("--n", type=positive_int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, help="voxels along the longest axis (small test sets)")
    p.set_defaults(func=cmd_data_synth)

    p = data_sub.add_parser("manifest", help="scan a data folder and write a manifest with its split")
    p.add_argument("--dataset", required=True, choices=list_datasets())
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
