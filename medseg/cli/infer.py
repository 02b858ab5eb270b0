"""``medseg infer``: sliding-window inference over files, folders and globs, each input on its own.

A thin layer over :func:`medseg.inference.infer_files`, which a bundle's ``configs/inference.yaml`` runs too.
A failing input (corrupt, unsupported, output already there) is reported by name and the others still run;
the exit code is 1 when anything failed, after a summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import torch

from medseg.cli import (
    CLIError,
    add_overlay_argument,
    add_precision_argument,
    add_runtime_argument,
    bundle_argument,
    creatable_folder,
)
from medseg.inference import DEFAULT_PROBABILITY_DTYPE, InferenceSettings, LoadedModel, load_model
from medseg.inference.distributed import RankFailed, infer_files_distributed, process_group, rank_device
from medseg.inference.predict import TTA_MODES

DEFAULTS = InferenceSettings()
# the settings a flag of the same name overrides
OVERRIDABLE = ("sw_overlap", "sw_batch_size", "mode", "threshold", "normalization", "tta", "precision", "runtime",
               "fov", "scale", "upsampled_edge_erosion", "slice_axis")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "infer",
        help="sliding-window inference on 2D images and NIfTI volumes",
        description="Predict masks for images (TIFF, PNG, JPEG, GIF, PPM) and NIfTI volumes (.nii, .nii.gz). "
        "Options left out come from the bundle's configs/inference.yaml, else from the defaults shown.",
    )
    parser.add_argument("model", type=_model,
                        help="bundle folder or the name of a shipped bundle (drive_vessel_unet, ...), TorchScript "
                        ".ts file, or checkpoint (with --network)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    parser.add_argument("--output", "-o", required=True, type=Path, help="folder for the outputs")
    parser.add_argument("--checkpoint", type=Path, help="weights for a bundle MODEL (default: MODEL/models/model.pt)")
    add_overlay_argument(parser, "a bundle's configs/inference.yaml")
    parser.add_argument("--network", help="network name for a checkpoint (medseg.networks.get_network)")
    parser.add_argument("--network-kwargs", type=json.loads, default={}, help="JSON keyword arguments for it")
    parser.add_argument(
        "--roi", type=_roi, help="window size: N for every axis, or H,W[,D] (default 256 in 2D, 96 in 3D)"
    )
    parser.add_argument("--sw-overlap", type=float,
                        help=f"window overlap fraction (default {DEFAULTS.sw_overlap})")
    parser.add_argument("--sw-batch-size", type=int, help="windows per forward pass (default 4 on a GPU, 1 on the CPU)")
    parser.add_argument("--mode", choices=("gaussian", "constant"), help=f"window blending (default {DEFAULTS.mode})")
    parser.add_argument("--threshold", type=float,
                        help=f"probability threshold of the mask (default {DEFAULTS.threshold})")
    parser.add_argument(
        "--normalization",
        help="scale255 | standardize | standardize_channelwise | minmax | none "
        "(default scale255 for 8-bit images, standardize otherwise)",
    )
    parser.add_argument(
        "--tta",
        nargs="?",
        const="flips",
        choices=TTA_MODES,
        help="test-time augmentation: flips (average over the flips along each spatial axis; the default of a bare "
        "--tta), dihedral (2D: the 8 rotations and reflections) or none (default: the bundle's tta, else none)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_precision_argument(parser)
    add_runtime_argument(parser, f"the bundle's, else {DEFAULTS.runtime}")
    parser.add_argument(
        "--save-prob",
        nargs="?",
        const=DEFAULT_PROBABILITY_DTYPE,
        choices=("uint16", "uint8", "float16"),
        help=f"also write probabilities: uint16 or uint8 (PNG / scaled NIfTI) or float16 (.npy; float32 NIfTI); "
        f"default {DEFAULT_PROBABILITY_DTYPE}, which keeps the metrics of the probabilities in memory",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--slice-axis", type=int,
                        help=f"axis a 2D network slices a volume along (default {DEFAULTS.slice_axis})")
    parser.add_argument(
        "--fov",
        help="2D field of view: auto (fundus estimate) | none | a folder of masks NAME.* or NAME_mask.* "
        "(default auto for fundus models, none otherwise); predictions outside it are zeroed",
    )
    parser.add_argument(
        "--scale",
        help="fundus models: auto (to the training FOV width) | none | a resampling FACTOR; "
        f"other models are never rescaled (default {DEFAULTS.scale})",
    )
    parser.add_argument(
        "--upsampled-edge-erosion",
        action=argparse.BooleanOptionalAction,
        help="after --scale shrank a photograph by F, erode the probabilities resampled back by ((1 + W)/F - 1)/2 of "
        "its pixels (W: the width networks add to vessels on a resampled photograph, the bundle's "
        "medseg.resampled_vessel_widening, else medseg.fundus.RESAMPLED_VESSEL_WIDENING), for networks whose "
        "training labels mark every pixel a vessel touches (default: the bundle's, else "
        f"{'on' if DEFAULTS.upsampled_edge_erosion else 'off'})",
    )
    parser.add_argument(
        "--fundus-width",
        type=float,
        help="treat the model as a fundus model trained at this median FOV width in pixels (bundles say it)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise CLIError(f"{args.checkpoint}: no such checkpoint")
    creatable_folder(args.output.resolve())  # before the model is loaded
    load = partial(_loaded_with_arguments, args)
    with process_group() as (rank, world_size):  # under torchrun, each rank predicts its share of the inputs
        try:
            summary = infer_files_distributed(load, args.inputs, args.output, device=rank_device(args.device),
                                              save_prob=args.save_prob, overwrite=args.overwrite,
                                              # bars for a person at a terminal only: in a pipe or a log they
                                              # interleave with the per-file lines
                                              progress=rank == 0 and sys.stderr.isatty())
        except (OSError, ValueError, KeyError, RankFailed) as err:
            raise CLIError(str(err)) from None
    if rank == 0:
        print(f"medseg infer: {summary}" + (f" by {world_size} processes" if world_size > 1 else ""))
        for failure in summary.failures:
            print(f"  failed: {failure}", file=sys.stderr)
    return 1 if summary.failures else 0


def _loaded_with_arguments(args: argparse.Namespace) -> LoadedModel:
    loaded = load_model(args.model, network=args.network, network_kwargs=args.network_kwargs, overlays=args.overlays,
                        checkpoint=args.checkpoint)
    return _with_arguments(loaded, args)


def _with_arguments(model: LoadedModel, args: argparse.Namespace) -> LoadedModel:
    """The model with the command line's overrides of its settings, each flag named as its setting (a single
    --roi N is N along every axis)."""
    overrides = {name: getattr(args, name) for name in OVERRIDABLE if getattr(args, name) is not None}
    if args.fundus_width is not None:
        overrides.update(fundus=True, training_fov_width=args.fundus_width)
    if args.roi is not None:
        overrides["roi_size"] = args.roi * model.settings.spatial_dims if len(args.roi) == 1 else args.roi
    return model.with_settings(**overrides)


def _model(text: str) -> Path:
    """A file or folder as given; else the shipped bundle of that name."""
    if Path(text).exists():
        return Path(text)
    return bundle_argument(text)


def _roi(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(size) for size in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or H,W[,D] integers, got {text!r}") from None
    if len(sizes) > 3:
        raise argparse.ArgumentTypeError(f"at most 3 sizes, got {text!r}")
    return sizes
