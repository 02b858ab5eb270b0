"""Inference over files: what ``medseg infer`` and a bundle's ``configs/inference.yaml`` both run.

:func:`infer_files` expands files, folders and globs, predicts each input on its own with
:func:`~medseg.inference.predict` and writes its mask, overlay and (optionally) probabilities. A failing input
(corrupt, unsupported, output already there) is recorded by name and the others still run; the returned
:class:`InferenceSummary` lists what was written and what failed.
"""

from __future__ import annotations

import glob
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from medseg.inference.fov import estimate_fov
from medseg.inference.io import (
    ImageMeta,
    ProbabilityDtype,
    is_supported,
    output_paths,
    read_image,
    write_mask,
    write_overlay,
    write_probabilities,
)
from medseg.inference.loading import LoadedModel, network_input
from medseg.inference.settings import InferenceSettings
from medseg.inference.predict import predict
from medseg.utils import full_suffix
from medseg.inference.prepare import prepare_network

logger = logging.getLogger(__name__)

__all__ = ["InferenceFailed", "InferenceSummary", "expand_inputs", "fov_for", "infer_files", "predict_image"]

# Inputs with more windows than this get a progress bar over their batches of windows.
_WINDOWS_FOR_PROGRESS = 64


class InferenceFailed(RuntimeError):
    """Raised by :meth:`InferenceSummary.raise_for_failures`; the message names every failed input."""


@dataclass
class InferenceSummary:
    """What :func:`infer_files` did: ``written`` maps each finished input to its outputs (``mask``,
    ``overlay``, ``probabilities`` where written); ``failures`` holds one message per failed input or pattern,
    each naming it; ``seconds`` is the time spent reading, predicting and writing them."""

    output_dir: Path
    written: dict[Path, dict[str, Path]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def __str__(self) -> str:
        return (f"{len(self.written)} input(s) written to {self.output_dir}, {len(self.failures)} failed, "
                f"in {self.seconds:.1f} s")

    def raise_for_failures(self) -> InferenceSummary:
        """Raise :class:`InferenceFailed` naming the failed inputs, if any; else return the summary."""
        if self.failures:
            raise InferenceFailed("\n  ".join([f"{self}:", *self.failures]))
        return self


def expand_inputs(patterns: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Files named, inside named folders (recursively, supported types only) or matching globs, each once,
    and one failure message per pattern that matched nothing."""
    files: list[Path] = []
    failures: list[str] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_supported(p))
        elif path.exists():
            found = [path]  # named explicitly: an unsupported type is reported by the reader
        else:
            found = sorted(Path(p) for p in glob.glob(str(pattern), recursive=True) if Path(p).is_file())
        if not found:
            failures.append(f"{pattern}: no such file, or no supported image in it")
        files.extend(p for p in found if p not in files)
    return files, failures


def infer_files(
    model: LoadedModel,
    inputs: Sequence[str | Path],
    output_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    save_prob: ProbabilityDtype | None = None,
    overwrite: bool = False,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
) -> InferenceSummary:
    """Predict and write the outputs of every input; one failing input does not stop the others.

    Args:
        model: the network (logits out) and every inference setting (window, normalisation, activation,
            threshold, TTA, precision, FOV, scale, slice axis, channels and fundus facts), from
            :func:`~medseg.inference.load_model` or ``LoadedModel(network, settings)``.
        inputs: image files (2D images, NIfTI volumes), folders (searched recursively) or glob patterns.
        output_dir: folder for ``NAME_mask``, ``NAME_overlay`` (2D) and ``NAME_prob`` files
            (:func:`~medseg.inference.output_paths`).
        device: where the network runs.
        save_prob: also write probabilities, as ``"uint16"``, ``"uint8"`` or ``"float16"``.
        overwrite: replace existing outputs (an input is never overwritten, and two inputs named alike never
            share an output).
        progress: progress bars over the files and, for large inputs, over the windows.
        shard: ``(rank, world_size)``: this process predicts inputs ``rank``, ``rank + world_size``, ... of the
            expanded list (:func:`~medseg.inference.distributed.infer_files_distributed` under torchrun). Every
            rank checks every input's outputs in the same order, so a clash between two inputs is found alike
            on all ranks and reported once, by the input's own rank (failures then start with ``rank R:``).

    Returns:
        the :class:`InferenceSummary`; call :meth:`~InferenceSummary.raise_for_failures` to fail on failures.
    """
    settings = model.settings
    output_dir = Path(output_dir)
    network = prepare_network(model, device)  # once, on the model's runtime
    rank, world_size = shard
    start = time.perf_counter()
    files, failures = expand_inputs(inputs)
    summary = InferenceSummary(output_dir, failures=failures if rank == 0 else [])
    writer = _FileWriter(output_dir, save_prob, overwrite, {path.resolve() for path in files})
    claimed: list[tuple[Path, dict[str, Path]]] = []
    for index, path in enumerate(files):
        try:
            outputs = writer.claim(path)
        except ValueError as err:
            if index % world_size == rank:
                summary.failures.append(_failure(path, err, shard))
            continue
        if index % world_size == rank:
            claimed.append((path, outputs))
    for path, outputs in tqdm(claimed, unit="file", disable=not progress or len(claimed) < 2, file=sys.stderr):
        try:
            image, meta = read_image(path)
            fov_mask = None if meta.is_volume else fov_for(path, image, settings.fov, settings.fundus)
            probabilities = predict_image(network, image, meta, settings, fov_mask, device=device, progress=progress)
            writer.write(outputs, image, meta, _mask(probabilities, settings.threshold, meta), probabilities)
            summary.written[path] = outputs
        except Exception as err:  # one bad input must not stop the others; it is reported by name
            summary.failures.append(_failure(path, err, shard))
    summary.seconds = time.perf_counter() - start
    return summary


def _failure(path: Path, err: Exception, shard: tuple[int, int]) -> str:
    message = str(err) if str(path) in str(err) else f"{path}: {err}"
    return f"rank {shard[0]}: {message}" if shard[1] > 1 else message


@dataclass
class _FileWriter:
    """Output paths and their protection: an input is never overwritten, existing outputs only with
    ``overwrite``, and no two inputs of one run share an output."""

    output_dir: Path
    save_prob: ProbabilityDtype | None
    overwrite: bool
    inputs: set[Path]
    claimed: set[Path] = field(default_factory=set)

    def claim(self, path: Path) -> dict[str, Path]:
        outputs = output_paths(path, self.output_dir, self.save_prob)
        for output in outputs.values():
            if output.resolve() in self.inputs:
                raise ValueError(f"{path}: output {output} would overwrite an input")
            if output.resolve() in self.claimed:
                raise ValueError(f"{path}: output {output} belongs to another input of the same name in this run")
            if output.exists() and not self.overwrite:
                raise ValueError(f"{path}: output {output} exists (use --overwrite to replace it)")
        self.claimed.update(output.resolve() for output in outputs.values())
        return outputs

    def write(
        self, outputs: dict[str, Path], image: np.ndarray, meta: ImageMeta, mask: np.ndarray, probs: torch.Tensor
    ) -> None:
        write_mask(outputs["mask"], mask, meta)
        if self.save_prob:
            write_probabilities(outputs["probabilities"], probs, meta, self.save_prob)
        if "overlay" in outputs:
            write_overlay(outputs["overlay"], image, mask)


def predict_image(
    network: torch.nn.Module,
    image: np.ndarray,
    meta: ImageMeta,
    settings: InferenceSettings,
    fov_mask: np.ndarray | None,
    *,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """(K, *spatial) probabilities of one image read by :func:`~medseg.inference.read_image`, with the model's
    completed ``settings`` (:attr:`LoadedModel.settings <medseg.inference.LoadedModel>`): what ``medseg infer`` writes and
    ``medseg evaluate --images`` scores. ``fov_mask`` (:func:`fov_for`) zeroes the outside and, for fundus
    models, sets the scale and the FOV normalisation."""
    fundus = settings.fundus and not meta.is_volume
    inputs = network_input(image, settings, str(meta.path))
    windows = np.prod(inputs.shape[1:]) / np.prod(settings.roi_size)
    return predict(
        network,
        inputs,
        roi_size=settings.roi_size,
        sw_overlap=settings.sw_overlap,
        sw_batch_size=settings.sw_batch_size,
        mode=settings.mode,
        normalization=settings.normalization or ("scale255" if inputs.dtype == np.uint8 else "standardize"),
        activation=settings.activation,
        tta=settings.tta,
        device=device,
        precision=settings.precision,
        slice_axis=settings.slice_axis,
        scale=settings.scale if fundus and settings.scale != "none" else None,
        training_fov_width=settings.training_fov_width,
        upsampled_edge_erosion=settings.upsampled_edge_erosion,
        fov_mask=fov_mask,
        progress=progress and windows > _WINDOWS_FOR_PROGRESS,
    )


def _mask(probabilities: torch.Tensor, threshold: float, meta: ImageMeta) -> np.ndarray:
    """uint8 labels: one channel thresholded to {0, 255} for 2D images, {0, 1} for volumes; else the argmax."""
    if probabilities.shape[0] > 1:
        return probabilities.argmax(0).to(torch.uint8).numpy()
    foreground = 1 if meta.is_volume else 255
    return ((probabilities[0] >= threshold).to(torch.uint8) * foreground).numpy()


def fov_for(path: Path, image: np.ndarray, fov: str | Path | None, fundus: bool) -> np.ndarray | None:
    """The (H, W) FOV of the (C, H, W) ``image`` read from ``path``: ``"auto"`` estimates it
    (:func:`~medseg.inference.estimate_fov`), a folder gives the mask ``NAME.*`` or ``NAME_mask.*`` in it,
    ``"none"`` none; ``None`` is auto for a fundus model and none for any other."""
    fov = str(fov) if fov is not None else ("auto" if fundus else "none")
    if fov == "none":
        return None
    if fov == "auto":
        return estimate_fov(image.transpose(1, 2, 0) if image.shape[0] > 1 else image[0], name=str(path))
    folder = Path(fov)
    stem = path.name[: len(path.name) - len(full_suffix(path))]
    candidates = sorted(p for name in (stem, f"{stem}_mask") for p in folder.glob(f"{name}.*") if is_supported(p))
    if not candidates:
        raise ValueError(f"{path}: no FOV mask {stem}.* or {stem}_mask.* in {folder}")
    mask, _ = read_image(candidates[0])
    if mask.shape[1:] != image.shape[1:]:
        raise ValueError(f"{candidates[0]}: FOV mask shape {mask.shape[1:]} differs from the image's {image.shape[1:]}")
    return mask.max(0) > 127
