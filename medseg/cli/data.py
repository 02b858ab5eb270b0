"""``medseg data check`` and ``medseg data preview``: validate a dataset folder, draw its labels."""

from __future__ import annotations

import argparse
from pathlib import Path

from medseg.cli import CLIError
from medseg.data import DatasetError
from medseg.data.labelled_folder import LabelledFolder, check_labelled_folder
from medseg.data.report import DATASETS, folder_report, run_check, write_preview


def _add_dataset_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--dataset", required=required, choices=DATASETS, help="which dataset layout to read")
    parser.add_argument(
        "--root",
        help="dataset folder (DRIVE: training/ and test/; CamVid: train/, trainannot/, ...). Default for drive, "
        "les-av and camvid: its folder in $MEDSEG_DATA_ROOT (DRIVE, LES-AV, CamVid); for synthetic, generated there "
        "if absent or empty (default: the medseg cache folder)",
    )


def add_folder_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--images``, ``--labels``, ``--masks`` and ``--label-positive``: a labelled folder of photographs, paired by
    file stem as ``medseg evaluate --images`` pairs them."""
    parser.add_argument("--images", type=Path, required=required, help="folder of photographs")
    parser.add_argument("--labels", type=Path, required=required,
                        help="folder of their vessel labels, one per photograph, same file stem")
    parser.add_argument("--masks", type=Path, help="folder of their FOV masks (NAME.* or NAME_mask.*); without it "
                        "the FOV is estimated, as at inference")
    parser.add_argument("--label-positive", type=int, nargs="+", metavar="V",
                        help="the vessel values of index-map labels (e.g. LES-AV's 1 2 3 4); default: binary labels")
    parser.add_argument("--void-value", type=int, metavar="V",
                        help="labels are index maps of classes (camvid_unet's: 0..10), V marking unlabelled pixels "
                        "(e.g. 255); default: vessel labels")


def labelled_folder(args: argparse.Namespace, classes: int | None = None) -> LabelledFolder:
    """The folder of ``--images``/``--labels``/``--masks``/``--label-positive``/``--void-value``; with
    ``--void-value``, index maps of ``classes`` classes."""
    try:
        return LabelledFolder.of(args.images, args.labels, args.masks, args.label_positive,
                                 classes if args.void_value is not None else None, args.void_value)
    except ValueError as err:
        raise CLIError(f"{args.labels}: {err}") from None


def _check(args: argparse.Namespace) -> int:
    if args.images is None:
        print(run_check(args.dataset, args.root))
        return 0
    if (args.void_value is None) != (args.classes is None):
        raise CLIError("labels of classes are --classes N --void-value V together (camvid_unet: --classes 11)")
    folder = labelled_folder(args, args.classes)
    print(folder_report(folder, check_labelled_folder(folder)))
    return 0


def _preview(args: argparse.Namespace) -> int:
    print(f"wrote {write_preview(args.dataset, args.root, args.out, n=args.n)}")
    return 0


def _reporting_data_errors(handler):
    """Turn dataset problems into the CLI's one-error-and-exit-1 path."""

    def run(args: argparse.Namespace) -> int:
        if getattr(args, "images", None) is not None or getattr(args, "labels", None) is not None:
            if args.images is None or args.labels is None or args.dataset is not None:
                raise CLIError("a labelled folder is --images DIR --labels DIR, without --dataset")
        elif args.dataset is None:
            raise CLIError("--dataset, or --images DIR --labels DIR, is required")
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
        "vessel or class fractions and FOV fraction. Exits 1 naming each bad file if any is missing or invalid. "
        "--images DIR --labels DIR [--masks DIR] checks your own labelled photographs before `medseg train`.",
    )
    _add_dataset_arguments(check, required=False)
    add_folder_arguments(check, required=False)
    check.add_argument("--classes", type=int, metavar="N",
                       help="with --void-value: the labels' classes are 0..N-1 (medseg train takes N from the bundle)")
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
