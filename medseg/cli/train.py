"""``medseg train BUNDLE``: run the bundle's ``configs/train.yaml`` with MLflow tracking.

The same workflow as ``python -m monai.bundle run --config_file configs/train.yaml --tracking mlflow`` from the
bundle folder: this command only makes paths absolute and fills in the tracking store.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medseg.cli import CLIError, add_overlay_argument
from medseg.engines.workflow import MLFLOW_TRACKING, parse_overrides, run_bundle_config
from medseg.tracking import check_tracking_server, default_tracking_uri


def add_bundle_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="bundle folder, e.g. bundles/drive_vessel_unet")
    add_overlay_argument(parser, "the bundle's config")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config id, value parsed as YAML (repeatable), e.g. --set max_epochs=5",
    )
    parser.add_argument("--data-root", type=Path, help="dataset folder (the bundle's dataset_dir)")
    parser.add_argument(
        "--output-dir", type=Path, help="where checkpoints and reports go (default: outputs/<bundle name>)"
    )


def output_dir(args: argparse.Namespace) -> Path:
    return (args.output_dir or Path("outputs") / args.bundle.resolve().name).resolve()


def bundle_overrides(args: argparse.Namespace) -> dict:
    """Config overrides from the shared bundle arguments, paths made absolute."""
    try:
        overrides = parse_overrides(args.overrides)
    except ValueError as err:
        raise CLIError(str(err)) from None
    # an expression, as in the bundle: MONAI's tracking patch appends to it to name the exported config file
    overrides["output_dir"] = f"${str(output_dir(args))!r}"
    if args.data_root is not None:
        if not args.data_root.is_dir():
            raise CLIError(f"{args.data_root}: --data-root is not a folder")
        overrides["dataset_dir"] = str(args.data_root.resolve())
    return overrides


def _train(args: argparse.Namespace) -> int:
    overrides = bundle_overrides(args)
    tracking_uri = args.tracking_uri or default_tracking_uri()
    check_tracking_server(tracking_uri)
    overrides["tracking_uri"] = tracking_uri
    if args.resume:
        overrides["resume"] = True
    try:
        run_bundle_config(
            args.bundle,
            "train",
            overlays=args.overlays,
            overrides=overrides,
            tracking=str(MLFLOW_TRACKING),
            workflow_type="train",
        )
    except FileNotFoundError as err:
        raise CLIError(str(err)) from None
    print(f"checkpoints in {output_dir(args) / 'checkpoints'}")
    print(f"review the run: mlflow ui --backend-store-uri {tracking_uri}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a bundle (MONAI ConfigWorkflow) with MLflow tracking",
        description="Run BUNDLE/configs/train.yaml (plus overlays and overrides) as MONAI's bundle runner does, "
        "logging the run to MLflow. Same code path as `python -m monai.bundle run --tracking mlflow`.",
    )
    add_bundle_arguments(parser)
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlflow.db in the working directory)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in the output folder"
    )
    parser.set_defaults(func=_train)
