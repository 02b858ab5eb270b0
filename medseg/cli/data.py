"""``medseg data check`` and ``medseg data preview``: validate a dataset folder, draw its labels."""

from __future__ import annotations

import argparse

from medseg.cli import CLIError
from medseg.data import DatasetError
from medseg.data.report import DATASETS, run_check, write_preview


def _add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=DATASETS, help="which dataset layout to read")
    parser.add_argument(
        "--root",
        help="dataset folder (DRIVE: training/ and test/; CamVid: train/, trainannot/, ...). Default for drive, "
        "les-av and camvid: its folder in $MEDSEG_DATA_ROOT (DRIVE, LES-AV, CamVid); for synthetic, generated there "
        "if absent or empty (default: the medseg cache folder)",
    )


def _check(args: argparse.Namespace) -> int:
    print(run_check(args.dataset, args.root))
    return 0


def _preview(args: argparse.Namespace) -> int:
    print(f"wrote {write_preview(args.dataset, args.root, args.out, n=args.n)}")
    return 0


def _reporting_data_errors(handler):
    """Turn dataset problems into the CLI's one-error-and-exit-1 path."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (DatasetError, ValueError) as err:  # ValueError: no --root and no MEDSEG_DATA_ROOT
            raise CLIError(str(err)) from None

    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser(
        "data",
        help="check a dataset folder or preview its labels",
        description="Validate dataset folders (every file is opened) and draw label overlays.",
    )
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    check = commands.add_parser(
        "check",
        help="open every file and print counts, sizes, label values and fractions",
        description="Open every image, label and mask; print per-split counts, image sizes, label values, "
        "vessel or class fractions and FOV fraction. Exits 1 naming each bad file if any is missing or invalid.",
    )
    _add_dataset_arguments(check)
    check.set_defaults(func=_reporting_data_errors(_check))

    preview = commands.add_parser(
        "preview",
        help="write a PNG grid of training images with label overlays",
        description="Write a PNG grid of the first training images with their labels overlaid "
        "(vessels in green, FOV border in yellow, CamVid classes in the SegNet palette). "
        "Nothing is written if a shown file is invalid.",
    )
    _add_dataset_arguments(preview)
    preview.add_argument("--out", required=True, help="PNG file to write")
    preview.add_argument("-n", type=int, default=8, help="number of images in the grid (default: 8)")
    preview.set_defaults(func=_reporting_data_errors(_preview))
