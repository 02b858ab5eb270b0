"""``medseg infer``: sliding-window inference over files, folders and globs, each input on its own.

A failing input (corrupt, unsupported, output already there) is reported by name and the others still run;
the exit code is 1 when anything failed, after a summary.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from medseg.cli import CLIError
from medseg.inference import (
    InferenceSettings,
    ImageMeta,
    estimate_fov,
    is_supported,
    load_model,
    match_channels,
    output_paths,
    predict,
    read_image,
    write_mask,
    write_overlay,
    write_probabilities,
)
from medseg.inference.io import suffix_of

# Inputs with more windows than this get a progress bar over their batches of windows.
_WINDOWS_FOR_PROGRESS = 64


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "infer",
        help="sliding-window inference on 2D images and NIfTI volumes",
        description="Predict masks for images (TIFF, PNG, JPEG, GIF, PPM) and NIfTI volumes (.nii, .nii.gz). "
        "Options left out come from the bundle's metadata, else from the defaults shown.",
    )
    parser.add_argument("model", help="bundle folder, TorchScript .ts file, or checkpoint (with --network)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    parser.add_argument("--output", "-o", required=True, type=Path, help="folder for the outputs")
    parser.add_argument("--network", help="network name for a checkpoint (medseg.networks.get_network)")
    parser.add_argument("--network-kwargs", type=json.loads, default={}, help="JSON keyword arguments for it")
    parser.add_argument(
        "--roi", type=_roi, help="window size: N for every axis, or H,W[,D] (default 256 in 2D, 96 in 3D)"
    )
    parser.add_argument("--overlap", type=float, help="window overlap fraction (default 0.25)")
    parser.add_argument("--sw-batch-size", type=int, help="windows per forward pass (default 4 on a GPU, 1 on the CPU)")
    parser.add_argument("--mode", choices=("gaussian", "constant"), help="window blending (default gaussian)")
    parser.add_argument("--threshold", type=float, help="probability threshold of the mask (default 0.5)")
    parser.add_argument(
        "--normalization",
        help="scale255 | standardize | standardize_channelwise | minmax | none "
        "(default scale255 for 8-bit images, standardize otherwise)",
    )
    parser.add_argument("--tta", action="store_true", help="average over flips along each spatial axis")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument(
        "--save-prob",
        nargs="?",
        const="uint8",
        choices=("uint8", "float16"),
        help="also write probabilities: uint8 (PNG / scaled NIfTI) or float16 (.npy; float32 NIfTI)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--slice-axis", type=int, default=2, help="axis a 2D network slices a volume along")
    parser.add_argument(
        "--fov",
        default=None,
        help="2D field of view: auto (fundus estimate) | none | a folder of masks NAME.* or NAME_mask.* "
        "(default auto for fundus models, none otherwise); predictions outside it are zeroed",
    )
    parser.add_argument(
        "--scale",
        default="auto",
        help="fundus models: auto (to the training FOV width) | none | a resampling FACTOR; "
        "other models are never rescaled",
    )
    parser.add_argument(
        "--fundus-width",
        type=float,
        help="treat the model as a fundus model trained at this median FOV width in pixels (bundles say it)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        loaded = load_model(args.model, network=args.network, network_kwargs=args.network_kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise CLIError(str(err)) from None
    settings = _settings(loaded.settings, args)
    if args.scale not in ("auto", "none"):
        if not settings.fundus:
            raise CLIError("--scale applies to fundus models only (a bundle with medseg.fundus, or --fundus-width)")
        try:
            args.scale = float(args.scale)
        except ValueError:
            raise CLIError(f"--scale must be auto, none or a number, got {args.scale!r}") from None
    inputs, failures = _expand(args.inputs)
    input_paths = {path.resolve() for path in inputs}
    claimed: set[Path] = set()  # outputs of this run, so that two inputs named alike cannot share one
    written = 0
    for path in tqdm(inputs, unit="file", disable=len(inputs) < 2, file=sys.stderr):
        try:
            _infer_one(loaded.network, path, settings, args, input_paths, claimed)
            written += 1
        except Exception as err:  # one bad input must not stop the others; it is reported by name below
            message = str(err)
            failures.append(message if str(path) in message else f"{path}: {message}")
    print(f"medseg infer: {written} input(s) written to {args.output}, {len(failures)} failed")
    for failure in failures:
        print(f"  failed: {failure}", file=sys.stderr)
    return 1 if failures else 0


def _settings(settings: InferenceSettings, args: argparse.Namespace) -> InferenceSettings:
    """The model's settings with the command line's overrides and the defaults for what is still open."""
    overrides = {
        name: value
        for name, value in (
            ("overlap", args.overlap),
            ("sw_batch_size", args.sw_batch_size),
            ("mode", args.mode),
            ("threshold", args.threshold),
            ("normalization", args.normalization),
        )
        if value is not None
    }
    if args.fundus_width is not None:
        overrides.update(fundus=True, training_fov_width=args.fundus_width)
    settings = replace(settings, **overrides)
    if args.roi is not None and len(args.roi) > 1:
        settings = replace(settings, roi_size=args.roi)
    spatial_dims = len(settings.roi_size) if settings.roi_size else settings.spatial_dims or 2
    if args.roi is not None and len(args.roi) == 1:
        settings = replace(settings, roi_size=args.roi * spatial_dims)
    activation = settings.activation or ("softmax" if (settings.out_channels or 1) > 1 else "sigmoid")
    roi = settings.roi_size or ((256, 256) if spatial_dims == 2 else (96, 96, 96))
    if len(roi) != spatial_dims:
        raise CLIError(f"--roi has {len(roi)} sizes but the network is {spatial_dims}D")
    return replace(settings, roi_size=roi, spatial_dims=spatial_dims, activation=activation)


def _roi(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(size) for size in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or H,W[,D] integers, got {text!r}") from None
    if len(sizes) > 3:
        raise argparse.ArgumentTypeError(f"at most 3 sizes, got {text!r}")
    return sizes


def _expand(patterns: list[str]) -> tuple[list[Path], list[str]]:
    """Files named, inside named folders (recursively) or matching globs; unmatched patterns are failures."""
    files: list[Path] = []
    failures: list[str] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_supported(p))
        elif path.exists():
            found = [path]  # named explicitly: an unsupported type is reported by the reader
        else:
            found = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not found:
            failures.append(f"{pattern}: no such file, or no supported image in it")
        files.extend(p for p in found if p not in files)
    return files, failures


def _infer_one(
    network: torch.nn.Module,
    path: Path,
    settings: InferenceSettings,
    args: argparse.Namespace,
    inputs: set[Path],
    claimed: set[Path],
) -> None:
    outputs = output_paths(path, args.output, args.save_prob)
    for output in outputs.values():
        if output.resolve() in inputs:
            raise ValueError(f"{path}: output {output} would overwrite an input")
        if output.resolve() in claimed:
            raise ValueError(f"{path}: output {output} belongs to another input of the same name in this run")
        if output.exists() and not args.overwrite:
            raise ValueError(f"{path}: output {output} exists (use --overwrite to replace it)")
    claimed.update(output.resolve() for output in outputs.values())
    image, meta = read_image(path)
    fundus = settings.fundus and not meta.is_volume
    # fundus models estimate their FOV unless told otherwise; any other 2D model uses one only when given --fov
    fov_choice = args.fov if args.fov is not None else ("auto" if fundus else "none")
    fov_mask = None if meta.is_volume else _fov_mask(path, image, fov_choice)
    scale = None
    if fundus and args.scale != "none":
        scale = args.scale
    network_input = match_channels(image, settings, str(path))
    windows = np.prod(network_input.shape[1:]) / np.prod(settings.roi_size)
    probabilities = predict(
        network,
        network_input,
        roi_size=settings.roi_size,
        overlap=settings.overlap,
        sw_batch_size=settings.sw_batch_size,
        mode=settings.mode,
        normalization=settings.normalization or ("scale255" if image.dtype == np.uint8 else "standardize"),
        activation=settings.activation,
        tta=args.tta,
        device=args.device,
        precision=args.precision,
        slice_axis=args.slice_axis,
        scale=scale,
        training_fov_width=settings.training_fov_width,
        fov_mask=fov_mask,
        progress=windows > _WINDOWS_FOR_PROGRESS,
    )
    mask = _mask(probabilities, settings.threshold, meta)
    write_mask(outputs["mask"], mask, meta)
    if args.save_prob:
        write_probabilities(outputs["probabilities"], probabilities, meta, args.save_prob)
    if "overlay" in outputs:
        write_overlay(outputs["overlay"], image, mask)


def _mask(probabilities: torch.Tensor, threshold: float, meta: ImageMeta) -> np.ndarray:
    """uint8 labels: one channel thresholded to {0, 255} for 2D images, {0, 1} for volumes; else the argmax."""
    if probabilities.shape[0] > 1:
        return probabilities.argmax(0).to(torch.uint8).numpy()
    foreground = 1 if meta.is_volume else 255
    return ((probabilities[0] >= threshold).to(torch.uint8) * foreground).numpy()


def _fov_mask(path: Path, image: np.ndarray, fov: str) -> np.ndarray | None:
    """The FOV to zero predictions outside: estimated, read from a mask folder, or none."""
    if fov == "none":
        return None
    if fov == "auto":
        return estimate_fov(image.transpose(1, 2, 0) if image.shape[0] > 1 else image[0])
    folder = Path(fov)
    stem = path.name[: len(path.name) - len(suffix_of(path))]
    candidates = sorted(p for name in (stem, f"{stem}_mask") for p in folder.glob(f"{name}.*") if is_supported(p))
    if not candidates:
        raise ValueError(f"{path}: no FOV mask {stem}.* or {stem}_mask.* in {folder}")
    mask, _ = read_image(candidates[0])
    if mask.shape[1:] != image.shape[1:]:
        raise ValueError(f"{candidates[0]}: FOV mask shape {mask.shape[1:]} differs from the image's {image.shape[1:]}")
    return mask.max(0) > 127
