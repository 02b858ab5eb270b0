"""The one inference path: sliding-window probabilities for 2D images and 3D volumes of any size.

:func:`predict` is what the CLI, the evaluators and the bundles' ``inference.yaml`` call. It is MONAI's
:func:`~monai.inferers.sliding_window_inference` with three additions:

- the image stays in its stored dtype (uint8 for photographs) and each batch of windows is cut from it,
  converted to float and normalised only when the network needs it, so a 8192 x 8192 RGB photograph costs
  192 MB instead of 768 MB as float32. MONAI sizes its output and count maps from the dtype of the tensor it
  slides over, so it slides over a one-channel float placeholder (MONAI makes it contiguous, so it costs one
  more single-channel map) and passes the window coordinates to the predictor (``with_coord=True``), which
  reads the real pixels;
- a 2D network over a 3D volume runs slice by slice: the window is one slice thick along ``slice_axis`` and
  each batch of windows is a batch of slices;
- fundus photographs can be resampled to the scale the network was trained at (the width of the field of
  view) and the probabilities resampled back (their edges optionally eroded to the photograph's finer pixels),
  and predictions outside the FOV are zeroed.

Windows are turned into probabilities (sigmoid or softmax) before stitching, so the stitched map is a weighted
mean of probabilities and can be accumulated in float16 without overflow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference

from medseg.inference.fov import estimate_fov, fov_width
from medseg.inference.runtime import InferenceNetwork, Precision
from medseg.inference.settings import InferenceSettings

__all__ = ["AUTO_SCALE_TOLERANCE", "NORMALIZATIONS", "erode", "fundus_scale", "predict"]

Normalization = Literal["scale255", "standardize", "standardize_channelwise", "standardize_fov", "minmax", "none"]
NORMALIZATIONS: tuple[str, ...] = (
    "scale255", "standardize", "standardize_channelwise", "standardize_fov", "minmax", "none"
)
Activation = Literal["sigmoid", "softmax", "none"]
TestTimeAugmentation = bool | Literal["none", "flips", "dihedral"]
TTA_MODES = ("none", "flips", "dihedral")

# A fundus photograph whose FOV is within 10% of the training width is left at its own scale: resampling it
# would blur vessels for no gain (DRIVE's own FOV widths are 535-541 pixels against a median of 540).
AUTO_SCALE_TOLERANCE = 0.1

# The erosion of upsampled edges samples its disc's circle in this many directions: an edge between two of them
# moves by at least cos(22.5 degrees) = 0.92 of the radius.
_EROSION_DIRECTIONS = 8
# ... and works through the map in strips of this many rows: besides its padded copy and its result, it holds
# temporaries of one strip only.
_EROSION_ROWS = 1024

# Intensity statistics are summed over chunks of about this many elements, so a large uint8 image is never
# converted to float64 whole.
_STATISTICS_CHUNK = 1 << 22


def fundus_scale(fov_mask: np.ndarray, training_fov_width: float, tolerance: float = AUTO_SCALE_TOLERANCE) -> float:
    """Resampling factor that brings a fundus photograph to its network's training scale.

    Args:
        fov_mask: (H, W) bool FOV of the photograph.
        training_fov_width: median FOV width, in pixels, of the network's training images.
        tolerance: factors within ``1 ± tolerance`` return exactly 1 (no resampling).
    """
    width = fov_width(fov_mask)
    if width == 0:
        raise ValueError("the FOV mask is empty, so the image's scale cannot be measured")
    factor = training_fov_width / width
    return 1.0 if abs(factor - 1.0) <= tolerance else factor


def predict(
    model: torch.nn.Module,
    image: np.ndarray | torch.Tensor,
    *,
    roi_size: Sequence[int],
    sw_overlap: float = InferenceSettings.sw_overlap,
    sw_batch_size: int | None = None,
    mode: Literal["gaussian", "constant"] = InferenceSettings.mode,
    normalization: Normalization | Callable[[torch.Tensor], torch.Tensor] = "standardize",
    activation: Activation = "sigmoid",
    tta: TestTimeAugmentation = False,
    device: str | torch.device = "cpu",
    precision: Precision = InferenceSettings.precision,
    slice_axis: int = InferenceSettings.slice_axis,
    scale: float | Literal["auto"] | None = None,
    training_fov_width: float | None = None,
    upsampled_edge_erosion: bool = InferenceSettings.upsampled_edge_erosion,
    fov_mask: np.ndarray | None = None,
    accumulate_dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> torch.Tensor:
    """Sliding-window probabilities of ``model`` over one image or volume.

    Args:
        model: network returning logits of shape (N, K, *roi) for windows (N, C, *roi); a deep-supervised
            network's list output contributes its first element. It runs as an
            :class:`~medseg.inference.InferenceNetwork` (a copy with batch norms folded, channels-last, on
            ``device`` at ``precision``); pass one to prepare it once for many images (it keeps its own device
            and precision).
        image: channel-first (C, *spatial) array or tensor in its stored dtype (uint8 stays uint8). With a
            2D ``roi_size`` it is (C, H, W), or (C, X, Y, Z) to run the 2D network slice by slice.
        roi_size: window size, one entry per spatial dimension of the network; along an axis where the image
            is smaller, the window is the image's size (one pass, no padding).
        sw_overlap: fraction of a window shared with its neighbour (along the slice axis, none).
        sw_batch_size: windows (or slices) per forward pass; ``None``: 4 on a GPU, 1 on the CPU, where larger
            batches were measured to gain no speed while multiplying the activations' memory (bench/inference.py).
        mode: ``"gaussian"`` weights window centres more when stitching; ``"constant"`` weighs all equally.
        normalization: as at training: ``"scale255"`` (x / 255, as ``ScaleIntensityRange(0, 255, 0, 1)`` in
            :func:`medseg.data.vessel_transforms`); from the whole (resampled) image, ``"standardize"``
            ((x - mean) / std, as MONAI's NormalizeIntensity), ``"standardize_channelwise"`` (per channel),
            ``"minmax"`` (to [0, 1], as MONAI's ScaleIntensity), ``"none"``; ``"standardize_fov"`` (2D: per
            channel, from the pixels inside the FOV, given or estimated, the outside set to 0, as
            :func:`medseg.data.transforms.standardize_inside_fov`); or a callable applied to each
            float window batch (N, C, *roi) on ``device``.
        activation: ``"sigmoid"`` (independent channels), ``"softmax"`` (over channels) or ``"none"``.
        tta: test-time augmentation, probabilities averaged over views of each window: ``True`` or ``"flips"``,
            the window and its flip along each spatial axis (1 + D views); ``"dihedral"`` (2D), the 8 rotations
            and reflections (flips of the window and of its transpose); ``False`` or ``"none"``, the window only.
        device: where the network runs; the image, stitching and result stay on the CPU.
        precision: ``"auto"`` (:func:`~medseg.inference.resolve_precision`: bfloat16 where the device computes it
            natively, else float32), ``"float32"`` or ``"bfloat16"`` (weights and windows in bf16; on DRIVE test
            99.96 % of the FOV pixels keep their float32 mask).
        slice_axis: for a 2D network over a volume, the spatial axis (0, 1, 2 or negative) sliced along.
        scale: resample the image by this factor before inference and the probabilities back afterwards;
            ``"auto"`` (2D fundus only) uses :func:`fundus_scale` with ``training_fov_width`` and the FOV
            (``fov_mask``, else :func:`~medseg.inference.fov.estimate_fov`, used only to measure the width);
            ``None`` or 1 leaves the image as is.
        training_fov_width: FOV width in pixels of the training images, for ``scale="auto"``.
        upsampled_edge_erosion: when ``scale`` shrank the image by a factor ``f < 1``, erode the sigmoid
            probabilities resampled back to it by ``(1 / f - 1) / 2`` of its pixels (:func:`erode`). A network whose
            training labels mark every pixel a vessel touches puts an edge up to a pixel of its own grid outside
            the vessel, half a pixel on average: ``1 / (2 f)`` pixels of the photograph, where labels drawn at the
            photograph's resolution put it half a pixel out. Without it, vessels come out about ``1 / f - 1``
            pixels too wide (LES-AV at ``f = 0.37``: about 1.7).
        fov_mask: (H, W) bool; probabilities outside it are set to 0 (2D only).
        accumulate_dtype: dtype of the stitched probabilities (float16 halves the memory of huge outputs).
        progress: show a progress bar over the batches of windows.

    Returns:
        (K, *spatial) probabilities on the CPU in ``accumulate_dtype``, spatial shape equal to the input's.
    """
    image = torch.as_tensor(image)
    roi_size = tuple(int(r) for r in roi_size)
    network_dims = len(roi_size)
    image_dims = image.ndim - 1
    sliced = image_dims == network_dims + 1 and network_dims == 2
    if image_dims != network_dims and not sliced:
        raise ValueError(
            f"a {network_dims}D roi_size {roi_size} needs a channel-first image with {network_dims} spatial "
            f"dimensions{' (or 3 for slice by slice)' if network_dims == 2 else ''}, got shape {tuple(image.shape)}"
        )
    spatial_shape = tuple(image.shape[1:])
    if fov_mask is not None and tuple(fov_mask.shape) != spatial_shape:
        raise ValueError(f"fov_mask shape {tuple(fov_mask.shape)} differs from the image's {spatial_shape}")

    needs_fov = scale == "auto" or normalization == "standardize_fov"
    fov = fov_mask
    if fov is None and needs_fov and image.ndim == 3 and not sliced:
        fov = _estimated_fov(image)  # once, for the scale and the FOV statistics
    factor = _resolve_scale(image, scale, training_fov_width, fov)
    erode_edges = upsampled_edge_erosion and factor < 1.0
    if erode_edges and (activation != "sigmoid" or image.ndim != 3):
        raise ValueError("upsampled_edge_erosion erodes the sigmoid probabilities of 2D images, "
                         f"not {activation} outputs of shape {tuple(image.shape)}")
    if factor != 1.0:
        image = _resample(image.to(torch.float32), [round(s * factor) for s in spatial_shape])
    if normalization == "standardize_fov":
        image, normalization = _fill_outside_fov(image, fov, sliced or network_dims != 2)

    device = torch.device(device)
    if sw_batch_size is None:
        sw_batch_size = 1 if device.type == "cpu" else 4
    network = InferenceNetwork.of(model, device, precision, network_dims)
    normalize = normalization if callable(normalization) else _whole_image_normalizer(normalization, image, device)

    if sliced:
        image = image.movedim(1 + slice_axis % 3, -1)
    # a fully convolutional network needs no window larger than the image: one pass at the image's own size
    window_roi, window_overlap = tuple(min(r, s) for r, s in zip(roi_size, image.shape[1:])), sw_overlap
    if sliced:
        window_roi, window_overlap = (*window_roi, 1), (sw_overlap, sw_overlap, 0.0)
    image, crop = _pad_to(image, window_roi)

    predictor = _WindowPredictor(network, image, normalize, activation, tta, network_dims, device, sliced)
    # A one-channel float placeholder with the image's spatial shape: MONAI allocates its output and count maps
    # in the placeholder's dtype while the predictor reads the real pixels at the coordinates MONAI passes.
    placeholder = torch.zeros((), dtype=accumulate_dtype).expand(1, 1, *image.shape[1:])
    with torch.no_grad():  # not inference_mode: the caller may edit the result in place
        probs = sliding_window_inference(
            placeholder,
            window_roi,
            sw_batch_size,
            predictor,
            overlap=window_overlap,
            mode=mode,
            sw_device=device,
            device="cpu",
            progress=progress,
            with_coord=True,
        )[0]
    probs = probs[(slice(None), *crop)]
    if sliced:
        probs = probs.movedim(-1, 1 + slice_axis % 3)
    if factor != 1.0:
        probs = _resample(probs, list(spatial_shape))
        if erode_edges:
            probs = erode(probs, (1.0 / factor - 1.0) / 2)
        probs = probs.to(accumulate_dtype)
    if fov_mask is not None:
        probs[:, ~torch.as_tensor(np.asarray(fov_mask, dtype=bool))] = 0
    return probs.contiguous()


class _WindowPredictor:
    """MONAI's predictor: cuts each batch of windows from the stored image and returns their probabilities.

    Called as ``predictor(placeholder_windows, coords)``; ``coords`` holds one ``[batch, channel, *spatial]``
    list of slices per window. Windows are converted to float and normalised on ``device``; with TTA the
    augmented copies (flipped, transposed) ride in the same forward pass and are mapped back before averaging.
    """

    def __init__(
        self,
        network: InferenceNetwork,
        image: torch.Tensor,
        normalize: Callable[[torch.Tensor], torch.Tensor],
        activation: Activation,
        tta: TestTimeAugmentation,
        network_dims: int,
        device: torch.device,
        sliced: bool,
    ) -> None:
        if activation not in ("sigmoid", "softmax", "none"):
            raise ValueError(f"activation must be sigmoid, softmax or none, got {activation!r}")
        self.network = network
        self.image = image
        self.normalize = normalize
        self.activation = activation
        self.views = _tta_views(tta, network_dims)
        self.device = device
        self.sliced = sliced

    def __call__(self, placeholder: torch.Tensor, coords: list[list[slice]]) -> torch.Tensor:
        windows = torch.stack([self.image[(slice(None), *window[2:])] for window in coords])
        windows = self.normalize(windows.to(self.device, torch.float32))
        if self.sliced:
            windows = windows.squeeze(-1)
        probs = self._view_averaged_probabilities(windows)
        return probs.unsqueeze(-1) if self.sliced else probs

    def _view_averaged_probabilities(self, windows: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(())
        # the views of one transpose flag have one shape (a transposed non-square window has another): one forward
        for transpose in dict.fromkeys(transpose for transpose, _ in self.views):
            flip_sets = [flips for swapped, flips in self.views if swapped == transpose]
            batch = torch.cat([_view(windows, transpose, flips) for flips in flip_sets])
            for flips, probs in zip(flip_sets, self._probabilities(batch).chunk(len(flip_sets))):
                total = total + _unview(probs, transpose, flips)
        return total / len(self.views)

    def _probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        return _activate(self.network(batch), self.activation)


View = tuple[bool, tuple[int, ...]]  # (swap the two spatial axes first?, then flip these axes)


def _tta_views(tta: TestTimeAugmentation, network_dims: int) -> list[View]:
    mode = ("flips" if tta else "none") if isinstance(tta, bool) else tta
    if mode not in TTA_MODES:
        raise ValueError(f"tta must be a bool or one of {', '.join(TTA_MODES)}, got {tta!r}")
    spatial_axes = tuple(range(2, 2 + network_dims))
    if mode == "none":
        return [(False, ())]
    if mode == "flips":
        return [(False, ()), *((False, (axis,)) for axis in spatial_axes)]
    if network_dims != 2:
        raise ValueError(f"tta='dihedral' needs a 2D network, got a {network_dims}D roi_size")
    flip_sets = [(), (2,), (3,), (2, 3)]
    return [(transpose, flips) for transpose in (False, True) for flips in flip_sets]


def _view(windows: torch.Tensor, transpose: bool, flips: tuple[int, ...]) -> torch.Tensor:
    windows = windows.transpose(2, 3) if transpose else windows
    return windows.flip(flips) if flips else windows


def _unview(probs: torch.Tensor, transpose: bool, flips: tuple[int, ...]) -> torch.Tensor:
    probs = probs.flip(flips) if flips else probs
    return probs.transpose(2, 3) if transpose else probs


def _activate(logits: torch.Tensor, activation: Activation) -> torch.Tensor:
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    if activation == "softmax":
        return torch.softmax(logits, dim=1)
    return logits


def _whole_image_normalizer(
    normalization: str, image: torch.Tensor, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``(x - shift) / divisor`` with the shift and divisor of the named mode, from the whole image."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be a callable or one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
    if normalization == "none":
        return lambda windows: windows
    if normalization == "scale255":
        return lambda windows: windows / 255.0
    count, total, squares, low, high = _intensity_sums(image)
    spatial_ones = (1,) * (image.ndim - 1)
    if normalization == "minmax":
        shift, divisor = low.min(), high.max() - low.min()
    elif normalization == "standardize":
        shift = total.sum() / (count * image.shape[0])
        divisor = (squares.sum() / (count * image.shape[0]) - shift**2).clamp(min=0).sqrt()
    else:
        shift = total / count
        divisor = (squares / count - shift**2).clamp(min=0).sqrt()
    divisor = torch.where(divisor > 0, divisor, torch.ones_like(divisor))  # a flat image is only shifted
    shift = shift.to(device, torch.float32).reshape(-1, *spatial_ones)
    divisor = divisor.to(device, torch.float32).reshape(-1, *spatial_ones)
    return lambda windows: (windows - shift) / divisor


def _fill_outside_fov(
    image: torch.Tensor, fov: np.ndarray | None, not_2d: bool
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor] | str]:
    """For ``"standardize_fov"``: (C, H, W) ``image`` with every pixel outside ``fov`` set to its channel's mean
    inside, and the normaliser ``(x - mean) / std`` of the pixels inside, so the outside becomes 0."""
    if not_2d:
        raise ValueError("normalization='standardize_fov' needs a 2D (C, H, W) image")
    inside = torch.as_tensor(np.asarray(fov, dtype=bool))
    if tuple(inside.shape) != tuple(image.shape[1:]):
        inside = F.interpolate(inside[None, None].float(), size=image.shape[1:], mode="nearest")[0, 0] > 0.5
    if not bool(inside.any()):
        raise ValueError("the FOV mask is empty, so normalization='standardize_fov' has no pixels to measure")
    channels = image.shape[0]
    count, total, squares = 0, torch.zeros(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64)
    rows = max(1, _STATISTICS_CHUNK // max(1, image[0, 0].numel() * image.shape[0]))
    for chunk, chunk_inside in zip(image.split(rows, dim=1), inside.split(rows, dim=0)):
        values = chunk[:, chunk_inside].to(torch.float64)  # in chunks: a float64 copy of a huge image would not fit
        count, total, squares = count + values.shape[1], total + values.sum(1), squares + values.square().sum(1)
    mean = total / count
    # the unbiased spread, as torch.std in medseg.data.transforms.standardize_inside_fov at training
    std = ((squares - count * mean**2).clamp(min=0) / max(count - 1, 1)).sqrt().clamp(min=1e-6)
    fill = mean.round() if not image.is_floating_point() else mean
    image = image.clone()
    image[:, ~inside] = fill[:, None].to(image.dtype)
    shift, divisor = mean.float().reshape(-1, 1, 1), std.float().reshape(-1, 1, 1)
    return image, lambda windows: (windows - shift.to(windows.device)) / divisor.to(windows.device)


def _intensity_sums(image: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per channel: voxel count, sum, sum of squares (float64), minimum and maximum, summed chunk by chunk."""
    channels = image.shape[0]
    rows_per_chunk = max(1, _STATISTICS_CHUNK // max(1, image[0, 0].numel() * channels))
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    low = torch.full((channels,), float("inf"), dtype=torch.float64)
    high = torch.full((channels,), float("-inf"), dtype=torch.float64)
    for chunk in image.split(rows_per_chunk, dim=1):
        values = chunk.to(torch.float64).reshape(channels, -1)
        total += values.sum(1)
        squares += values.square().sum(1)
        low = torch.minimum(low, values.amin(1))
        high = torch.maximum(high, values.amax(1))
    return image[0].numel(), total, squares, low, high


def _resolve_scale(
    image: torch.Tensor,
    scale: float | Literal["auto"] | None,
    training_fov_width: float | None,
    fov_mask: np.ndarray | None,
) -> float:
    if scale is None:
        return 1.0
    if scale != "auto":
        if float(scale) <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        return float(scale)
    if image.ndim != 3 or training_fov_width is None:
        raise ValueError("scale='auto' needs a 2D (C, H, W) fundus image and training_fov_width")
    return fundus_scale(fov_mask if fov_mask is not None else _estimated_fov(image), training_fov_width)


def _estimated_fov(image: torch.Tensor) -> np.ndarray:
    """:func:`estimate_fov` of a channel-first (C, H, W) image."""
    return estimate_fov(image.movedim(0, -1).numpy() if image.shape[0] > 1 else image[0].numpy())


def _resample(image: torch.Tensor, size: list[int]) -> torch.Tensor:
    """Resize a float (C, *spatial) tensor (bilinear / trilinear, anti-aliased when shrinking 2D)."""
    linear = "bilinear" if len(size) == 2 else "trilinear"
    shrinking = any(new < old for new, old in zip(size, image.shape[1:]))
    antialias = shrinking and len(size) == 2
    return F.interpolate(image[None].float(), size=size, mode=linear, align_corners=False, antialias=antialias)[0]


def erode(probs: torch.Tensor, radius: float) -> torch.Tensor:
    """Grey-scale erosion of a smooth (C, H, W) probability map by a disc of ``radius`` pixels (any real > 0).

    Each pixel takes the least of its own value and the values at ``radius`` from it in 8 directions, read
    bilinearly (the border replicated). Where the map falls steadily across the disc, as it does across a vessel's
    edge on a map resampled from a coarser grid, the least value over the disc lies on its circle, so each edge
    moves inward by the radius (by at least 0.92 of it between two of the directions); no value rises.

    Returns:
        a new float32 (C, H, W) tensor.
    """
    if not radius > 0:
        raise ValueError(f"the erosion radius must be positive, got {radius}")
    probs = probs.to(torch.float32)
    height, width = probs.shape[-2:]
    reach = math.ceil(radius) + 1
    padded = F.pad(probs[None], [reach] * 4, mode="replicate")[0]
    eroded = probs.clone()
    for angle in (2 * math.pi * k / _EROSION_DIRECTIONS for k in range(_EROSION_DIRECTIONS)):
        dy, dx = radius * math.sin(angle), radius * math.cos(angle)
        top, left = math.floor(dy), math.floor(dx)
        wy, wx = dy - top, dx - left
        corners = ((top, left, (1 - wy) * (1 - wx)), (top, left + 1, (1 - wy) * wx),
                   (top + 1, left, wy * (1 - wx)), (top + 1, left + 1, wy * wx))
        for row in range(0, height, _EROSION_ROWS):
            rows = min(_EROSION_ROWS, height - row)
            sample = sum(
                weight * padded[:, reach + row + oy : reach + row + oy + rows, reach + ox : reach + ox + width]
                for oy, ox, weight in corners
            )
            torch.minimum(eroded[:, row : row + rows], sample, out=eroded[:, row : row + rows])
    return eroded


def _pad_to(image: torch.Tensor, roi_size: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad (C, *spatial) symmetrically up to ``roi_size``, as MONAI does, and the slices that undo it."""
    pads = [max(r - s, 0) for r, s in zip(roi_size, image.shape[1:])]
    crop = tuple(slice(p // 2, p // 2 + s) for p, s in zip(pads, image.shape[1:]))
    if not any(pads):
        return image, crop
    flat_pads = [amount for p in reversed(pads) for amount in (p // 2, p - p // 2)]
    return F.pad(image, flat_pads), crop
