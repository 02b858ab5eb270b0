"""The ``medseg`` command line: one module per command group, each exposing ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from medseg import __version__

# Each module registers its own sub-command(s) and sets ``func`` on the parser it adds.
COMMAND_MODULES = ("data", "train", "evaluate", "infer", "runs", "demo", "bundle")


class CLIError(Exception):
    """An error to report to the user as one line, with a non-zero exit code."""


def bundle_argument(text: str) -> Path:
    """argparse type: a bundle folder, or the name of a bundle medseg ships (:func:`medseg.resources.bundle_folder`)."""
    from medseg.resources import bundle_folder

    try:
        return bundle_folder(text)
    except FileNotFoundError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def overlay_argument(text: str) -> Path:
    """argparse type: a config file, or the name of an overlay medseg ships (:func:`medseg.resources.overlay_file`)."""
    from medseg.resources import overlay_file

    try:
        return overlay_file(text)
    except FileNotFoundError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_overlay_argument(parser: argparse.ArgumentParser, onto: str) -> None:
    """``--config OVERLAY.yaml`` (repeatable): config files merged, in order, onto ``onto``."""
    parser.add_argument(
        "--config",
        dest="overlays",
        action="append",
        default=[],
        type=overlay_argument,
        metavar="OVERLAY.yaml",
        help=f"config file merged on top of {onto} (repeatable, in order), e.g. configs/cpu_budget.yaml, or the "
        "name of a shipped overlay (cpu_budget, demo, ...)",
    )


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """``--precision``; left out, the model's own setting (:class:`medseg.inference.InferenceSettings`) applies."""
    from medseg.inference import PRECISIONS, InferenceSettings

    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="auto: bfloat16 where the device computes it natively (CPUs with AMX or AVX512-BF16, GPUs from sm_80), "
        f"float32 elsewhere; the log says which (default: the bundle's, else {InferenceSettings.precision})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medseg",
        description="MONAI-based medical image segmentation: data checks, training, evaluation, "
        "sliding-window inference, MLflow runs and MONAI bundles.",
    )
    parser.add_argument("--version", action="version", version=f"medseg {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"medseg.cli.{name}").register(subparsers)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record (a redirected or captured stderr too)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # logging.StreamHandler assigns it; the property always reads sys.stderr
        pass


def _log_to_stderr() -> None:
    """medseg's own log records (INFO and up) on stderr, once per process; other libraries' stay as they are."""
    logger = logging.getLogger("medseg")
    if not any(isinstance(handler, _StderrHandler) for handler in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    _log_to_stderr()
    try:
        return int(args.func(args) or 0)
    except CLIError as err:
        print(f"medseg {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
