"""``medseg evaluate BUNDLE``: run the bundle's ``configs/evaluate.yaml`` and print its metrics table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medseg.cli import CLIError
from medseg.cli.train import add_bundle_arguments, bundle_overrides, output_dir
from medseg.engines.workflow import run_bundle_config


def format_metrics(report: dict) -> str:
    """Rows = metric names, columns = the report's sections that hold metrics (e.g. thresholds, observer)."""
    sections = {name: values for name, values in report.items() if isinstance(values, dict)}
    names = list(dict.fromkeys(key for values in sections.values() for key in values))
    header = ["metric", *sections]
    rows = [
        [name, *(f"{values[name]:.4f}" if isinstance(values.get(name), float) else "-" for values in sections.values())]
        for name in names
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    scalars = [f"{name}: {value}" for name, value in report.items() if not isinstance(value, dict)]
    return "\n".join(lines + scalars)


def _evaluate(args: argparse.Namespace) -> int:
    overrides = bundle_overrides(args)
    overrides["split"] = args.split
    if args.checkpoint is not None:
        if not args.checkpoint.is_file():
            raise CLIError(f"{args.checkpoint}: no such checkpoint")
        overrides["ckpt_path"] = str(args.checkpoint.resolve())
    metrics_file = output_dir(args) / f"metrics_{args.split}.json"
    overrides["metrics_file"] = str(metrics_file)
    try:
        run_bundle_config(args.bundle, "evaluate", overlays=args.overlays, overrides=overrides, workflow_type="eval")
    except FileNotFoundError as err:
        raise CLIError(str(err)) from None
    print(format_metrics(json.loads(metrics_file.read_text())))
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
    parser.add_argument("--checkpoint", type=Path, help="weights to evaluate (default: BUNDLE/models/model.pt)")
    parser.add_argument("--split", choices=("val", "test"), default="test", help="which images (default: test)")
    parser.set_defaults(func=_evaluate)
