"""``medseg train BUNDLE``: run the bundle's ``configs/train.yaml`` with MLflow tracking.

The same workflow as ``python -m monai.bundle run --config_file configs/train.yaml --tracking mlflow`` from the
bundle folder: this command makes paths absolute and fills in the tracking store. A bundle that ships an ensemble
(``ensemble_members`` N > 1) trains its N members with :func:`medseg.engines.ensemble.train_members`.
"""

from __future__ import annotations

import argparse
import json
import shlex

from medseg.cli import CLIError, add_bundle_arguments, bundle_overrides, ensemble_plan, output_dir, passed_arguments
from medseg.engines.ensemble import EnsembleError, EnsemblePlan, train_ensemble
from medseg.engines.evaluation import report_table
from medseg.engines.output_lock import FolderInUse, training_lock
from medseg.engines.workflow import MLFLOW_TRACKING, ConfigError, run_bundle_config
from medseg.tracking import check_tracking_server, default_tracking_uri


def _train_ensemble(args: argparse.Namespace, plan: EnsemblePlan, tracking_uri: str) -> int:
    again = passed_arguments(args)
    try:
        trained = train_ensemble(args.bundle, plan, output_dir(args), tracking_uri, again, args.overlays,
                                 bundle_overrides(args), resume=args.resume, echo=not args.quiet)
    except EnsembleError as err:
        raise CLIError(str(err)) from None
    print(report_table(json.loads(trained.report.read_text())))
    print(f"the ensemble on its validation images: {trained.report} (MLflow run {trained.run_id}, the members' parent)")
    checkpoints = [arg for weight in trained.weights for arg in ("--checkpoint", str(weight))]
    print("evaluate the ensemble: " + shlex.join(["medseg", "evaluate", str(args.bundle), *again, *checkpoints]))
    print("ship it: " + shlex.join(["medseg", "bundle", "ship", str(args.bundle), *map(str, trained.weights), *again]))
    print(f"review the runs: mlflow ui --backend-store-uri {tracking_uri}")
    return 0


def _train(args: argparse.Namespace) -> int:
    tracking_uri = args.tracking_uri or default_tracking_uri()
    check_tracking_server(tracking_uri)
    plan = ensemble_plan(args)
    try:
        with training_lock(output_dir(args)):
            return _train_ensemble(args, plan, tracking_uri) if plan.members > 1 else _train_one(args, tracking_uri)
    except FolderInUse as err:
        raise CLIError(str(err)) from None


def _train_one(args: argparse.Namespace, tracking_uri: str) -> int:
    overrides = bundle_overrides(args)
    overrides["tracking_uri"] = tracking_uri
    if args.quiet:
        overrides["quiet"] = True
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
    except (FileNotFoundError, ConfigError) as err:
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
    parser.add_argument(
        "--quiet", action="store_true",
        help="no progress bar and no per-epoch lines (an ensemble's members still write them to their logs)",
    )
    parser.set_defaults(func=_train)
