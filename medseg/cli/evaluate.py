"""``medseg evaluate BUNDLE``: run the bundle's ``configs/evaluate.yaml`` and print its metrics table, or, with
``--images DIR --labels DIR [--masks DIR]``, score any labelled vessel dataset through the inference path of
``medseg infer`` (:func:`medseg.engines.evaluate_vessel_folder`).

``--checkpoint`` given more than once evaluates the ensemble of those networks, as ``medseg bundle ship`` would
ship it: with ``--checkpoint`` the bundle's ``ensemble_members`` follows the weights given; without it, the bundle's
own ``models/model.pt`` is evaluated as the bundle builds it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import torch

from medseg.cli import (
    CLIError,
    add_bundle_arguments,
    add_runtime_argument,
    bundle_overrides,
    config_failure,
    joined_weights,
    output_dir,
)
from medseg.data import DatasetError, vessel_folder_records
from medseg.engines.ensemble import EnsembleError, evaluate_checkpoints, joined_checkpoint
from medseg.engines.evaluation import evaluate_vessel_folder, report_table
from medseg.engines.workflow import ConfigError
from medseg.inference import PRECISIONS, load_model
from medseg.tracking import default_tracking_uri
from medseg.utils import format_table


def _evaluate_folder(args: argparse.Namespace) -> int:
    if args.labels is None:
        raise CLIError("--images needs --labels (and optionally --masks)")
    metrics_file = output_dir(args) / f"metrics_{args.images.resolve().name}.json"
    with contextlib.ExitStack() as stack:
        checkpoint = None
        if args.checkpoints:
            checkpoint = stack.enter_context(joined_checkpoint(joined_weights(args.checkpoints)))
        try:
            records = vessel_folder_records(args.images, args.labels, args.masks)
            model = load_model(args.bundle, overlays=args.overlays, overrides=bundle_overrides(args),
                               checkpoint=checkpoint)
            report = evaluate_vessel_folder(model, records, metrics_file, label_positive=args.label_positive,
                                            device=args.device, precision=args.precision,
                                            runtime=args.runtime or "torch")
        except (DatasetError, FileNotFoundError, ValueError) as err:
            raise CLIError(str(err)) from None
    print(report_table({key: value for key, value in report.items() if key != "per_image"}))
    print("\n" + format_table(["image", "per-image F1 at 0.5"], list(report["per_image"].items())))
    print(f"metrics written to {metrics_file}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    if args.images is not None:
        return _evaluate_folder(args)
    overrides = bundle_overrides(args)
    metrics_file = output_dir(args) / f"metrics_{args.split}.json"
    overrides.update(split=args.split, metrics_file=str(metrics_file))
    if args.runtime is not None:
        overrides["runtime"] = args.runtime
    try:
        evaluate_checkpoints(args.bundle, args.checkpoints, args.overlays, overrides,
                             tracking_uri=args.tracking_uri or default_tracking_uri())
    except (FileNotFoundError, ConfigError, EnsembleError, ValueError) as err:
        raise config_failure(err, args) from None
    print(report_table(json.loads(metrics_file.read_text())))
    print(f"metrics written to {metrics_file}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a bundle's weights on the validation or test images",
        description="Run BUNDLE/configs/evaluate.yaml: whole images through the sliding-window inference path, "
        "metrics as the bundle's protocol defines them; prints the table and writes it as JSON.",
    )
    add_bundle_arguments(parser)
    parser.add_argument(
        "--checkpoint", dest="checkpoints", type=Path, action="append", default=[],
        help="weights to evaluate (default: BUNDLE/models/model.pt); repeat it to evaluate the ensemble of the "
        "networks, each trained by its own run",
    )
    add_runtime_argument(parser, "torch, as the bundle's evaluate.yaml")
    parser.add_argument("--split", choices=("val", "test"), default="test", help="which images (default: test)")
    parser.add_argument("--tracking-uri", help="MLflow store of the evaluation run (default: sqlite:///mlflow.db "
                        "here); a checkpoint of a medseg train run is evaluated in a run nested under it")
    folders = parser.add_argument_group(
        "any labelled vessel dataset",
        "score the bundle on DIR of photographs through the inference path of medseg infer (--scale auto), the "
        "FOV given by --masks or estimated; files pair by stem (NAME.* in each folder, masks also NAME_mask.*)",
    )
    folders.add_argument("--images", type=Path, metavar="DIR", help="photographs (replaces --split)")
    folders.add_argument("--labels", type=Path, metavar="DIR", help="vessel labels: binary, or see --label-positive")
    folders.add_argument("--masks", type=Path, metavar="DIR", help="FOV masks (default: the automatic estimate)")
    folders.add_argument(
        "--label-positive", type=int, nargs="+", metavar="V",
        help="the labels are index maps and these stored values are vessel (LES-AV's vessel/: 1 2 3 4)",
    )
    folders.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    folders.add_argument("--precision", choices=PRECISIONS, default="float32",
                         help="float32 (default: scores that reproduce on any machine), bfloat16, auto or int8 (--runtime "
                         "openvino), as medseg infer")
    parser.set_defaults(func=_evaluate)
