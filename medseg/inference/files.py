"""Inference over files: what ``medseg infer`` and a bundle's ``configs/inference.yaml`` both run.

:func:`infer_files` expands files, folders and globs, predicts each input on its own with
:func:`~medseg.inference.predict` and writes its mask, overlay and (optionally) probabilities. A failing input
(corrupt, unsupported, output already there) is recorded by name and the others still run; the returned
:class:`InferenceSummary` lists what was written and what failed.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from medseg.fundus import FundusSteps, find_fov, fov_from_alpha, fov_width
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
from medseg.utils import atomic_path, atomic_write_text, full_suffix
from medseg.inference.prepare import prepare_network

logger = logging.getLogger(__name__)

__all__ = [
    "ImagePrediction", "InferenceFailed", "InferenceSummary", "expand_inputs", "fov_for", "infer_files", "predict_image"
]

# Inputs with more windows than this get a progress bar over their batches of windows.
_WINDOWS_FOR_PROGRESS = 64
# The run's record, in the output folder, of the scale and FOV each input was predicted with.
GEOMETRY_FILE = "medseg_infer.json"


class InferenceFailed(RuntimeError):
    """Raised by :meth:`InferenceSummary.raise_for_failures`; the message names every failed input."""


@dataclass
class InferenceSummary:
    """What :func:`infer_files` did: ``written`` maps each finished input to its outputs (``mask``,
    ``overlay``, ``probabilities`` where written) and ``geometry`` the scale, FOV width and erosion each was
    predicted with (also written to ``GEOMETRY_FILE`` in the output folder); ``failures`` holds one message per
    failed input or pattern, each naming it; ``seconds`` is the time spent reading, predicting and writing them."""

    output_dir: Path
    written: dict[Path, dict[str, Path]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    geometry: dict[Path, dict[str, float | None]] = field(default_factory=dict)

    def __str__(self) -> str:
        return (f"{len(self.written)} input(s) written to {self.output_dir}, {len(self.failures)} failed, "
                f"in {self.seconds:.1f} s")

    def raise_for_failures(self) -> InferenceSummary:
        """Raise :class:`InferenceFailed` naming the failed inputs, if any; else return the summary."""
        if self.failures:
            raise InferenceFailed("\n  ".join([f"{self}:", *self.failures]))
        return self

    def exit_on_failures(self) -> InferenceSummary:
        """For MONAI's runner (a bundle's ``run`` list): print each failure on one line of stderr, as ``medseg
        infer`` does, and exit with status 1, since an exception would reach the user as a traceback through the
        runner; else return the summary."""
        for failure in self.failures:
            print(f"  failed: {failure}", file=sys.stderr)
        if self.failures:
            raise SystemExit(1)
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
    # the split of MONAI's partition_dataset (inputs rank, rank + world_size, ...), which refuses fewer inputs than ranks
    for index, path in enumerate(files):
        try:
            outputs = writer.claim(path)
        except ValueError as err:
            if index % world_size == rank:
                summary.failures.append(_failure(path, err, shard))
            continue
        if index % world_size == rank:
            claimed.append((path, outputs))
    # each photograph's log lines (its scale, its FOV) print above the progress bar instead of into it
    with logging_redirect_tqdm(loggers=[logging.getLogger("medseg")]):
        for path, outputs in tqdm(claimed, unit="file", disable=not progress or len(claimed) < 2, file=sys.stderr):
            try:
                image, meta = read_image(path)
                fov_mask = None if meta.is_volume else fov_for(path, image, settings.fov, settings.fundus, meta.alpha)
                prediction = predict_image(network, image, meta, settings, fov_mask, device=device, progress=progress)
                probabilities = prediction.probabilities
                writer.write(outputs, image, meta, _mask(probabilities, settings.threshold, meta), probabilities)
                summary.written[path] = outputs
                summary.geometry[path] = _geometry(prediction.steps)
            except Exception as err:  # one bad input must not stop the others; it is reported by name
                summary.failures.append(_failure(path, err, shard))
    summary.seconds = time.perf_counter() - start
    if summary.geometry:
        _write_geometry(summary, shard)
    return summary


def _geometry(steps: FundusSteps | None) -> dict[str, float | None]:
    """What the fundus steps did to one input: its scale factor, FOV width (pixels; ``None``: no FOV) and erosion."""
    if steps is None:
        return {"scale": 1.0, "fov_width": None, "edge_erosion": 0.0}
    width = fov_width(steps.fov) if steps.fov is not None else None
    return {"scale": steps.factor, "fov_width": width, "edge_erosion": steps.erosion_radius}


def _write_geometry(summary: InferenceSummary, shard: tuple[int, int]) -> None:
    """``GEOMETRY_FILE`` (``.rankR`` before its suffix under torchrun) in the output folder: per written input, the
    scale, FOV width and erosion it was predicted with, added to the records of earlier runs into the folder."""
    path = summary.output_dir / (GEOMETRY_FILE if shard[1] == 1 else GEOMETRY_FILE.replace(".json", f".rank{shard[0]}.json"))
    try:
        records = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        records = {}  # a record that cannot be read is replaced, not added to
    records.update({str(input_path): facts for input_path, facts in summary.geometry.items()})
    atomic_write_text(path, json.dumps(records, indent=2) + "\n")


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
        """Write all of an input's outputs or none: each goes to a temporary name first, and they are renamed into
        place only once every one is written, so a full disk leaves no mask without its overlay and no earlier
        output replaced."""
        with contextlib.ExitStack() as stack:
            staged = {kind: stack.enter_context(atomic_path(path)) for kind, path in outputs.items()}
            write_mask(staged["mask"], mask, meta)
            if self.save_prob:
                write_probabilities(staged["probabilities"], probs, meta, self.save_prob)
            if "overlay" in staged:
                write_overlay(staged["overlay"], image, mask)


class ImagePrediction(NamedTuple):
    """:func:`predict_image`'s result: (K, *spatial) ``probabilities`` of the image, and the fundus ``steps`` taken
    around the window pass (``None`` for a volume)."""

    probabilities: torch.Tensor
    steps: FundusSteps | None


def predict_image(
    network: torch.nn.Module,
    image: np.ndarray,
    meta: ImageMeta,
    settings: InferenceSettings,
    fov_mask: np.ndarray | None,
    *,
    device: str | torch.device = "cpu",
    progress: bool = False,
    at_network_scale: bool = False,
) -> ImagePrediction:
    """The probabilities of one image read by :func:`~medseg.inference.read_image`, with the model's completed
    ``settings`` (:attr:`LoadedModel.settings <medseg.inference.LoadedModel>`): what ``medseg infer`` writes and
    ``medseg evaluate --images`` scores. A 2D image passes through :class:`~medseg.fundus.FundusSteps` around the
    window pass: ``fov_mask`` (:func:`fov_for`) zeroes the outside and, for fundus models, sets the scale.

    With ``at_network_scale`` the probabilities are those of the window pass, before the steps'
    :meth:`~medseg.fundus.FundusSteps.after` (resampled back, edges eroded, zero outside the FOV; it may write into
    them): the steps of other erosion settings (:meth:`~medseg.fundus.FundusSteps.eroding_as`) turn one pass into
    the map of each."""
    if settings.fundus and meta.is_volume:  # slice by slice only for 2D networks that were not trained on photographs
        raise ValueError(f"{meta.path}: a 3D volume, but the model segments 2D fundus photographs")
    inputs = torch.as_tensor(network_input(image, settings, str(meta.path)))
    normalization = settings.normalization or ("scale255" if inputs.dtype == torch.uint8 else "standardize")
    steps = None if meta.is_volume else FundusSteps.plan(inputs, settings, fov_mask, str(meta.path))
    if steps is not None:
        inputs, normalization = steps.before(inputs, normalization)
    windows = np.prod(inputs.shape[1:]) / np.prod(settings.roi_size)
    probabilities = predict(
        network,
        inputs,
        roi_size=settings.roi_size,
        sw_overlap=settings.sw_overlap,
        sw_batch_size=settings.sw_batch_size,
        mode=settings.mode,
        normalization=normalization,
        activation=settings.activation,
        tta=settings.tta,
        device=device,
        precision=settings.precision,
        slice_axis=settings.slice_axis,
        progress=progress and windows > _WINDOWS_FOR_PROGRESS,
    )
    if steps is None or at_network_scale:
        return ImagePrediction(probabilities, steps)
    return ImagePrediction(steps.after(probabilities), steps)


def _mask(probabilities: torch.Tensor, threshold: float, meta: ImageMeta) -> np.ndarray:
    """uint8 labels: one channel thresholded to {0, 255} for 2D images, {0, 1} for volumes; else the argmax."""
    if probabilities.shape[0] > 1:
        return probabilities.argmax(0).to(torch.uint8).numpy()
    foreground = 1 if meta.is_volume else 255
    return ((probabilities[0] >= threshold).to(torch.uint8) * foreground).numpy()


def fov_for(path: Path, image: np.ndarray, fov: str | Path | None, fundus: bool,
            alpha: np.ndarray | None = None) -> np.ndarray | None:
    """The (H, W) FOV of the (C, H, W) ``image`` read from ``path``, or ``None`` for none.

    ``fov``: ``"auto"`` takes the image's ``alpha`` channel where it is a mask (:func:`medseg.fundus.fov_from_alpha`),
    else the estimate (:func:`medseg.fundus.find_fov`; ``None`` where no dark surround shows); a folder gives the
    mask ``NAME.*`` or ``NAME_mask.*`` in it; ``"none"`` none; ``None`` is auto for a fundus model, else none.
    """
    fov = str(fov) if fov is not None else ("auto" if fundus else "none")
    if fov == "none":
        return None
    if fov == "auto":
        return _automatic_fov(path, image, alpha, say_none=not fundus)
    folder = Path(fov)
    stem = path.name[: len(path.name) - len(full_suffix(path))]
    candidates = sorted(p for name in (stem, f"{stem}_mask") for p in folder.glob(f"{name}.*") if is_supported(p))
    if not candidates:
        raise ValueError(f"{path}: no FOV mask {stem}.* or {stem}_mask.* in {folder}")
    mask, _ = read_image(candidates[0])
    if mask.shape[1:] != image.shape[1:]:
        raise ValueError(f"{candidates[0]}: FOV mask shape {mask.shape[1:]} differs from the image's {image.shape[1:]}")
    return mask.max(0) > 127


def _automatic_fov(path: Path, image: np.ndarray, alpha: np.ndarray | None, say_none: bool) -> np.ndarray | None:
    """The FOV the alpha marks, else the estimate; ``say_none``: log a photograph without one (a fundus model's
    steps log it with its scale instead)."""
    from_alpha = fov_from_alpha(alpha) if alpha is not None else None
    if from_alpha is not None:
        logger.info("%s: its alpha channel marks the FOV", path)
        return from_alpha
    found = find_fov(image.transpose(1, 2, 0) if image.shape[0] > 1 else image[0])
    if found is None and say_none:
        logger.info("%s: no dark background around the retina, so no FOV: every pixel is predicted", path)
    return found
