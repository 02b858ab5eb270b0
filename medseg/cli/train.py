"""``medseg train BUNDLE``: run the bundle's ``configs/train.yaml`` with MLflow tracking.

The same workflow as ``python -m monai.bundle run --config_file configs/train.yaml --tracking mlflow`` from the
bundle folder: this command makes paths absolute and fills in the tracking store. A bundle that ships an ensemble
(``ensemble_members`` N > 1) trains its N members with :func:`medseg.engines.ensemble.train_members`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
from pathlib import Path

from medseg.cli import (
    CLIError,
    add_bundle_arguments,
    bundle_argument,
    bundle_overrides,
    bundle_shown,
    config_failure,
    ensemble_plan,
    mlflow_ui_command,
    output_dir,
    passed_arguments,
)
from medseg.cli.data import add_folder_arguments, labelled_folder
from medseg.data import DatasetError, LabelledFolder, check_labelled_folder
from medseg.engines.ensemble import EnsembleError, EnsemblePlan, train_ensemble
from medseg.engines.evaluation import report_table
from medseg.engines.finetune import (
    FolderTraining,
    bundle_classes,
    folder_training_overrides,
    initial_weights,
    initial_weights_overrides,
    member_initial_weights,
)
from medseg.engines.output_lock import FolderInUse, training_lock
from medseg.engines.workflow import MLFLOW_TRACKING, ConfigError, run_bundle_config
from medseg.tracking import check_tracking_server, default_tracking_uri


def folder_training(args: argparse.Namespace) -> FolderTraining | None:
    """The labelled folder of ``--images`` (and its validation), checked file by file before anything is written;
    ``None`` for the bundle's own dataset."""
    if args.images is None and args.labels is None:
        if args.val is not None or args.val_images is not None or getattr(args, "keep_bundle_data", False):
            raise CLIError("--val, --val-images and --keep-bundle-data need --images DIR --labels DIR")
        return None
    if args.images is None or args.labels is None:
        raise CLIError("a labelled folder is --images DIR --labels DIR")
    if args.val is not None and args.val_images is not None:
        raise CLIError("--val N splits the folder; --val-images gives a folder of its own: not both")
    if (args.val_images is None) != (args.val_labels is None):
        raise CLIError("--val-images and --val-labels go together")
    classes = _folder_classes(args)
    folder = labelled_folder(args, classes)
    val = None if args.val_images is None else LabelledFolder.of(
        args.val_images, args.val_labels, args.val_masks, args.label_positive, folder.classes, folder.void_value)
    try:
        pairs = len(check_labelled_folder(folder))
        if val is not None:
            check_labelled_folder(val)
    except DatasetError as err:
        raise CLIError(str(err)) from None
    if args.val is not None and not 0 < args.val < pairs:
        raise CLIError(f"--val {args.val}: the folder holds {pairs} pairs; keep at least one to train on")
    return FolderTraining(folder, args.val, val, getattr(args, "keep_bundle_data", False))


def _folder_classes(args: argparse.Namespace) -> int | None:
    """The class count of a bundle of classes, which takes index-map labels with ``--void-value``; ``None`` for a
    vessel bundle, which takes none."""
    classes = bundle_classes(args.bundle)
    if classes is None and args.void_value is not None:
        raise CLIError(f"{args.bundle.name} learns vessels from binary labels (or --label-positive V ...); "
                       "--void-value is for bundles of classes")
    if classes is not None and args.void_value is None:
        raise CLIError(f"{args.bundle.name} learns {classes} classes from index-map labels (values 0..{classes - 1}): "
                       "name the value of their unlabelled pixels with --void-value V")
    return classes


def _folder_arguments(args: argparse.Namespace) -> list[str]:
    """The folder arguments of this command, paths absolute, for an ensemble's member trainings."""
    passed = []
    for flag in ("images", "labels", "masks", "val_images", "val_labels", "val_masks"):
        if getattr(args, flag) is not None:
            passed += ["--" + flag.replace("_", "-"), str(Path(getattr(args, flag)).resolve())]
    if args.label_positive:
        passed += ["--label-positive", *map(str, args.label_positive)]
    if args.void_value is not None:
        passed += ["--void-value", str(args.void_value)]
    if args.val is not None:
        passed += ["--val", str(args.val)]
    return passed + (["--keep-bundle-data"] if args.keep_bundle_data else [])


def _initial_weights(args: argparse.Namespace, members: int) -> list[Path]:
    """Each member's starting weights (``--init-from``), written under the output folder; none without it."""
    if not args.init_from:
        return []
    sources = [Path(source) for source in args.init_from]
    try:
        if len(sources) == 1 and not sources[0].is_file():  # a bundle, by folder or by name
            sources = [bundle_argument(args.init_from[0])]
        return member_initial_weights(initial_weights(sources), members, output_dir(args) / "init_weights")
    except argparse.ArgumentTypeError as err:
        raise CLIError(f"--init-from: {err}") from None
    except (EnsembleError, ValueError) as err:
        raise CLIError(f"--init-from {' '.join(map(str, args.init_from))}: {err}") from None


def _train_ensemble(args: argparse.Namespace, plan: EnsemblePlan, tracking_uri: str,
                    training: FolderTraining | None) -> int:
    again, folder = passed_arguments(args), _folder_arguments(args)
    overrides = bundle_overrides(args)
    if training is not None:
        overrides.update(folder_training_overrides(args.bundle, training, "evaluate", overrides))
    plan = dataclasses.replace(plan, member_init=tuple(map(str, _initial_weights(args, plan.members))))
    try:
        trained = train_ensemble(args.bundle, plan, output_dir(args), tracking_uri, again + folder, args.overlays,
                                 overrides, resume=args.resume, echo=not args.quiet)
    except EnsembleError as err:
        raise CLIError(str(err)) from None
    print(report_table(json.loads(trained.report.read_text())))
    print(f"the ensemble on its validation images: {trained.report} (MLflow run {trained.run_id}, the members' parent)")
    checkpoints = [arg for weight in trained.weights for arg in ("--checkpoint", str(weight))]
    bundle = bundle_shown(args.bundle)
    if training is None:
        print("evaluate the ensemble: " + shlex.join(["medseg", "evaluate", bundle, *again, *checkpoints]))
        print("ship it: " + shlex.join(["medseg", "bundle", "ship", bundle, *map(str, trained.weights), *again]))
    else:  # weights of a folder are scored on other photographs of it, and ship into a bundle of their own
        print("score it: " + shlex.join(["medseg", "evaluate", bundle, *again, "--images", "DIR", "--labels", "DIR",
                                         *checkpoints]))
        print("ship it: " + shlex.join(["medseg", "bundle", "ship", bundle, *map(str, trained.weights),
                                        *again, "--new-bundle", "DIR",
                                        *(arg for arg in folder if arg != "--keep-bundle-data")]))
    print(f"review the runs: {mlflow_ui_command(tracking_uri)}")
    return 0


def add_training_folder_arguments(parser: argparse.ArgumentParser, description: str) -> argparse._ArgumentGroup:
    """The group of a labelled folder and its validation: ``--images``, ``--labels``, ``--masks``,
    ``--label-positive``, ``--val N`` or ``--val-images``/``--val-labels``/``--val-masks``."""
    folders = parser.add_argument_group("your own labelled photographs", description)
    add_folder_arguments(folders, required=False)
    folders.add_argument("--val", type=int, metavar="N",
                         help="hold out N of the folder's photographs for validation (default: a fifth, at least one)")
    folders.add_argument("--val-images", type=Path, metavar="DIR", help="validation photographs of their own")
    folders.add_argument("--val-labels", type=Path, metavar="DIR", help="their labels")
    folders.add_argument("--val-masks", type=Path, metavar="DIR", help="their FOV masks (default: estimated)")
    return folders


def _train(args: argparse.Namespace) -> int:
    training = folder_training(args)  # checked file by file before anything is written
    tracking_uri = args.tracking_uri or default_tracking_uri()
    check_tracking_server(tracking_uri)
    plan = ensemble_plan(args)
    try:
        with training_lock(output_dir(args)):
            if plan.members > 1:
                return _train_ensemble(args, plan, tracking_uri, training)
            return _train_one(args, tracking_uri, training)
    except FolderInUse as err:
        raise CLIError(str(err)) from None


def _train_one(args: argparse.Namespace, tracking_uri: str, training: FolderTraining | None) -> int:
    overrides = bundle_overrides(args)
    if training is not None:
        overrides.update(folder_training_overrides(args.bundle, training, "train", overrides))
    init = _initial_weights(args, 1) or overrides.get("init_weights")
    if init:
        overrides.update(initial_weights_overrides(args.bundle, init[0] if isinstance(init, list) else init,
                                                   args.overlays))
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
        raise config_failure(err, args) from None
    print(f"checkpoints in {output_dir(args) / 'checkpoints'}")
    print(f"review the run: {mlflow_ui_command(tracking_uri)}")
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
    folders = add_training_folder_arguments(
        parser, "train the bundle's recipe on a folder (paired by file stem, as medseg evaluate --images pairs "
        "them; checked as medseg data check checks it before anything is written)")
    folders.add_argument("--keep-bundle-data", action="store_true",
                         help="mix the bundle's own training photographs in (keep_bundle_data_ratio of them per "
                         "photograph of yours), so that the model keeps serving the cameras it was trained on")
    parser.add_argument("--init-from", nargs="+", metavar="BUNDLE|CHECKPOINT",
                        help="start from trained weights: a bundle (its models/model.pt) or one checkpoint per "
                        "ensemble member; each member starts from its own. Use with --config finetune")
    parser.set_defaults(func=_train)
