"""The ``medseg`` command line: one module per command group, each exposing ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import logging
import shlex
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from medseg import __version__
from medseg.engines.workflow import share_the_console

if TYPE_CHECKING:
    import torch

    from medseg.engines.ensemble import EnsemblePlan

# Each module registers its own sub-command(s) and sets ``func`` on the parser it adds.
COMMAND_MODULES = ("data", "train", "evaluate", "infer", "runs", "demo", "bundle")


class CLIError(Exception):
    """An error to report to the user as one line, with a non-zero exit code."""


def bundle_argument(text: str) -> Path:
    """argparse type: a bundle folder, or the name of a bundle medseg ships (:func:`medseg.resources.bundle_folder`).

    A bundle that is not there is a :class:`CLIError` (exit 1, as in ``medseg bundle info``), not a usage error:
    argparse turns only ``ArgumentTypeError``, ``TypeError`` and ``ValueError`` into one, and lets it through.
    """
    from medseg.resources import bundle_folder

    try:
        return bundle_folder(text)
    except FileNotFoundError as err:
        raise CLIError(str(err)) from None


def bundle_shown(bundle: Path) -> str:
    """How a printed command names ``bundle``: by its name when it is the bundle medseg ships under that name (a
    path into the installed package says nothing to a user), else by its path."""
    from medseg.resources import bundles_root

    return bundle.name if (bundles_root() / bundle.name).resolve() == bundle.resolve() else str(bundle)


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
        "float32 elsewhere; the log says which; int8: OpenVINO only, quantized on windows of the bundle's training "
        f"photographs (default: the bundle's, else {InferenceSettings.precision})",
    )


def add_runtime_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """``--runtime``; left out, ``default`` applies (the model's own setting, or evaluation's)."""
    from medseg.inference import RUNTIMES

    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        help="what computes the network: torch, openvino (CPU; pip install 'medseg[openvino]'; converted once per "
        "weights and cached) or auto (OpenVINO on a CPU where it is installed, else torch); windows, TTA, scale "
        f"and FOV are medseg's on each (default: {default})",
    )


def add_bundle_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of every command that runs a bundle's config: BUNDLE, ``--config``, ``--set``,
    ``--data-root``, ``--output-dir`` and ``--verbose``."""
    parser.add_argument("bundle", type=bundle_argument,
                        help="bundle folder, or the name of a shipped bundle, e.g. drive_vessel_unet")
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
    parser.add_argument(
        "--verbose", action="store_true",
        help="also print the libraries' INFO lines (ignite's and MONAI's per-epoch records; the metrics are in MLflow)",
    )


def output_dir(args: argparse.Namespace) -> Path:
    """``--output-dir``, by default ``outputs/<bundle name>`` in the working directory, absolute."""
    return (args.output_dir or Path("outputs") / args.bundle.resolve().name).resolve()


def creatable_folder(path: Path) -> Path:
    """``path``, a folder that exists or can be made, checked without making it: a CLI error names it when a file
    stands where it or one of its parents would be."""
    existing = next(folder for folder in (path, *path.parents) if folder.exists())
    if not existing.is_dir():
        raise CLIError(f"{path}: cannot be made a folder: {existing} is a file")
    return path


def bundle_overrides(args: argparse.Namespace) -> dict:
    """Config overrides from the shared bundle arguments, paths made absolute."""
    from medseg.engines.finetune import folder_training_ids
    from medseg.engines.workflow import check_override_ids, parse_overrides

    try:
        overrides = parse_overrides(args.overrides)
        trains_on_folder = args.command == "train" and getattr(args, "images", None) is not None
        check_override_ids(args.bundle, overrides, args.overlays,
                           folder_training_ids(args.bundle) if trains_on_folder else ())
    except (ValueError, FileNotFoundError) as err:
        raise CLIError(str(err)) from None
    # an expression, as in the bundle: MONAI's tracking patch appends to it to name the exported config file
    overrides["output_dir"] = f"${str(creatable_folder(output_dir(args)))!r}"
    if args.data_root is not None:
        if not args.data_root.is_dir():
            raise CLIError(f"{args.data_root}: --data-root is not a folder")
        overrides["dataset_dir"] = str(args.data_root.resolve())
    return overrides


def config_failure(err: Exception, args: argparse.Namespace) -> CLIError:
    """``err``, raised running a bundle's config, as the CLI's one line; a dataset the user did not name and the
    bundle could not read says how to name it."""
    from medseg.data import DatasetError
    from medseg.resources import DATA_ROOT_VARIABLE

    if isinstance(getattr(err, "root", err), DatasetError) and args.data_root is None:
        return CLIError(f"{err} (give the dataset folder with --data-root DIR, or set {DATA_ROOT_VARIABLE} to the "
                        "folder that holds the datasets)")
    return CLIError(str(err))


def mlflow_ui_command(tracking_uri: str) -> str:
    """``mlflow ui --backend-store-uri URI`` with the ``mlflow`` installed beside this Python, by its path: a
    virtual environment's ``bin/`` is on PATH only while the environment is active."""
    beside = Path(sys.executable).parent / "mlflow"
    return shlex.join([str(beside) if beside.is_file() else "mlflow", "ui", "--backend-store-uri", tracking_uri])


def passed_arguments(args: argparse.Namespace) -> list[str]:
    """The bundle arguments this command was given (overlays, ``--set``, ``--data-root``), paths made absolute."""
    passed = [arg for overlay in args.overlays for arg in ("--config", str(Path(overlay).resolve()))]
    passed += [arg for pair in args.overrides for arg in ("--set", pair)]
    return passed + (["--data-root", str(args.data_root.resolve())] if args.data_root is not None else [])


def ensemble_plan(args: argparse.Namespace) -> EnsemblePlan:
    """The ensemble the bundle arguments describe (:func:`medseg.engines.ensemble.read_ensemble_plan`)."""
    from medseg.engines.ensemble import EnsembleError, read_ensemble_plan

    try:
        return read_ensemble_plan(args.bundle, args.overlays, bundle_overrides(args))
    except (FileNotFoundError, EnsembleError) as err:
        raise CLIError(str(err)) from None


def joined_weights(checkpoints: Sequence[Path]) -> dict[str, torch.Tensor]:
    """The weights in ``checkpoints`` (:func:`medseg.engines.ensemble.join_checkpoints`), a bad file a CLI error."""
    from medseg.engines.ensemble import EnsembleError, join_checkpoints

    try:
        return join_checkpoints(checkpoints)
    except EnsembleError as err:
        raise CLIError(str(err)) from None


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


def _medseg_warning_as_one_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                                line: str | None = None) -> str:
    """``warnings.formatwarning`` that writes medseg's own warnings (a lost MLflow server, ...) as one console line,
    like its log records, instead of the file, line and source line Python adds; other libraries' as before."""
    if Path(filename).resolve().is_relative_to(Path(__file__).resolve().parents[1]):
        return f"WARNING: {message}\n"
    return _python_formatwarning(message, category, filename, lineno, line)


_python_formatwarning = warnings.formatwarning


def _log_to_stderr(verbose: bool = False) -> None:
    """medseg's own log records (INFO and up; DEBUG too when ``verbose``) and warnings on stderr as one line each,
    once per process; other libraries' records from WARNING up, or all that they log when ``verbose``
    (:func:`medseg.engines.workflow.share_the_console`)."""
    warnings.formatwarning = _medseg_warning_as_one_line
    logger = logging.getLogger("medseg")
    if not any(isinstance(handler, _StderrHandler) for handler in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    share_the_console()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except CLIError as err:  # raised by an argument's type (bundle_argument)
        command = next((arg for arg in (sys.argv[1:] if argv is None else argv) if not arg.startswith("-")), "")
        print(f"medseg {command}: error: {err}", file=sys.stderr)
        return 1
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    _log_to_stderr(getattr(args, "verbose", False))
    try:
        return int(args.func(args) or 0)
    except CLIError as err:
        print(f"medseg {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
