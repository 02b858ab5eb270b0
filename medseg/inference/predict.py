"""The generic inference path: sliding-window probabilities for 2D images and 3D volumes of any size.

:func:`predict` is MONAI's :func:`~monai.inferers.sliding_window_inference` with four additions:

- the image stays in its stored dtype (uint8 for photographs) and each batch of windows is cut from it,
  converted to float and normalised only when the network needs it, so a 8192 x 8192 RGB photograph costs
  192 MB instead of 768 MB as float32. MONAI sizes its output and count maps from the dtype of the tensor it
  slides over, so it slides over a one-channel float placeholder (MONAI makes it contiguous, so it costs one
  more single-channel map) and passes the window coordinates to the predictor (``with_coord=True``), which
  reads the real pixels;
- a 2D network over a 3D volume runs slice by slice: the window is one slice thick along ``slice_axis`` and
  each batch of windows is a batch of slices;
- test-time augmentation (flips, the dihedral group) inside each window's forward pass;
- an image smaller than the window is padded only to what the network's pooling needs, and cropped back.

Windows are turned into probabilities (sigmoid or softmax) before stitching, so the stitched map is a weighted
mean of probabilities and can be accumulated in float16 without overflow. Domain steps wrap this function
(:class:`medseg.fundus.FundusSteps`: a photograph's scale and FOV); it knows nothing of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference

from medseg.inference.runtime import InferenceNetwork, Precision
from medseg.inference.settings import InferenceSettings

__all__ = ["NORMALIZATIONS", "predict"]

Normalization = Literal["scale255", "standardize", "standardize_channelwise", "minmax", "none"]
NORMALIZATIONS: tuple[str, ...] = ("scale255", "standardize", "standardize_channelwise", "minmax", "none")
Activation = Literal["sigmoid", "softmax", "none"]
TestTimeAugmentation = bool | Literal["none", "flips", "dihedral"]
TTA_MODES = ("none", "flips", "dihedral")

# An image smaller than the window is padded to a multiple of this (at most): the deepest network medseg ships,
# U2-Net, pools five times.
_POOLING_MULTIPLE = 32
# Intensity statistics are summed over chunks of about this many elements, so a large uint8 image is never
# converted to float64 whole.
_STATISTICS_CHUNK = 1 << 22


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
        roi_size: window size, one entry per spatial dimension of the network (non-positive: the image's size).
            Along an axis where the image is smaller, the window shrinks to the image's size rounded up to a
            multiple of 32, or of the largest power of two dividing the window if smaller (what the network's
            poolings need), the image zero-padded to it and the result cropped back.
        sw_overlap: fraction of a window shared with its neighbour (along the slice axis, none).
        sw_batch_size: windows (or slices) per forward pass; ``None``: 4 on a GPU, 1 on the CPU, where larger
            batches were measured to gain no speed while multiplying the activations' memory (bench/inference.py).
        mode: ``"gaussian"`` weights window centres more when stitching; ``"constant"`` weighs all equally.
        normalization: as at training: ``"scale255"`` (x / 255, as ``ScaleIntensityRange(0, 255, 0, 1)`` in
            :func:`medseg.data.vessel_transforms`); from the whole image, ``"standardize"`` ((x - mean) / std, as
            MONAI's NormalizeIntensity), ``"standardize_channelwise"`` (per channel), ``"minmax"`` (to [0, 1], as
            MONAI's ScaleIntensity), ``"none"``; or a callable applied to each float window batch (N, C, *roi) on
            ``device`` (:meth:`medseg.fundus.FundusSteps.before` gives one for ``standardize_fov``).
        activation: ``"sigmoid"`` (independent channels), ``"softmax"`` (over channels) or ``"none"``.
        tta: test-time augmentation, probabilities averaged over views of each window: ``True`` or ``"flips"``,
            the window and its flip along each spatial axis (1 + D views); ``"dihedral"`` (2D), the 8 rotations
            and reflections (flips of the window and of its transpose); ``False`` or ``"none"``, the window only.
        device: where the network runs; the image, stitching and result stay on the CPU.
        precision: ``"auto"`` (:func:`~medseg.inference.resolve_precision`: bfloat16 where the device computes it
            natively, else float32), ``"float32"`` or ``"bfloat16"`` (weights and windows in bf16; on DRIVE test
            99.96 % of the FOV pixels keep their float32 mask).
        slice_axis: for a 2D network over a volume, the spatial axis (0, 1, 2 or negative) sliced along.
        accumulate_dtype: dtype of the stitched probabilities (float16 halves the memory of huge outputs).
        progress: show a progress bar over the batches of windows.

    Returns:
        (K, *spatial) probabilities on the CPU in ``accumulate_dtype``, spatial shape equal to the input's.
    """
    image = torch.as_tensor(image)
    roi_size = tuple(int(r) for r in roi_size)
    sliced = _is_sliced(image, len(roi_size))
    device = torch.device(device)
    network = InferenceNetwork.of(model, device, precision, len(roi_size))
    normalize = normalization if callable(normalization) else _whole_image_normalizer(normalization, image, device)
    if sliced:
        image = image.movedim(1 + slice_axis % 3, -1)
    window_roi, window_overlap = _window(roi_size, image.shape[1:]), sw_overlap
    if sliced:
        window_roi, window_overlap = (*window_roi, 1), (sw_overlap, sw_overlap, 0.0)
    image, crop = _pad_to(image, window_roi)
    predictor = _WindowPredictor(network, image, normalize, activation, tta, len(roi_size), device, sliced)
    # A one-channel float placeholder with the image's spatial shape: MONAI allocates its output and count maps
    # in the placeholder's dtype while the predictor reads the real pixels at the coordinates MONAI passes.
    placeholder = torch.zeros((), dtype=accumulate_dtype).expand(1, 1, *image.shape[1:])
    with torch.no_grad():  # not inference_mode: the caller may edit the result in place
        probs = sliding_window_inference(
            placeholder, window_roi, sw_batch_size or (1 if device.type == "cpu" else 4), predictor,
            overlap=window_overlap, mode=mode, sw_device=device, device="cpu", progress=progress, with_coord=True,
        )[0]
    probs = probs[(slice(None), *crop)]
    if sliced:
        probs = probs.movedim(-1, 1 + slice_axis % 3)
    return probs.contiguous()


def _is_sliced(image: torch.Tensor, network_dims: int) -> bool:
    """Whether a (C, *spatial) ``image`` is a volume for a 2D network to run slice by slice; raises when its
    dimensions fit the network's neither way."""
    image_dims = image.ndim - 1
    sliced = image_dims == network_dims + 1 and network_dims == 2
    if image_dims != network_dims and not sliced:
        raise ValueError(
            f"a {network_dims}D roi_size needs a channel-first image with {network_dims} spatial "
            f"dimensions{' (or 3 for slice by slice)' if network_dims == 2 else ''}, got shape {tuple(image.shape)}"
        )
    return sliced


def _window(roi_size: Sequence[int], spatial: Sequence[int]) -> tuple[int, ...]:
    """The window over an image of ``spatial`` size: ``roi_size``, or along a smaller axis the image's size rounded
    up to what the network's poolings need: a multiple of the largest power of two dividing that side of
    ``roi_size``, at most ``_POOLING_MULTIPLE`` (a fully convolutional network needs no larger window, but a
    15-pixel side pooled four times leaves no pixel for a 3 x 3 convolution)."""
    return tuple(
        side if roi <= 0 else roi if side >= roi else min(roi, _round_up(side, min(roi & -roi, _POOLING_MULTIPLE)))
        for roi, side in zip(roi_size, spatial)
    )


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


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
        fundus = " (a fundus step: medseg.fundus.FundusSteps)" if normalization == "standardize_fov" else ""
        raise ValueError(
            f"normalization must be a callable or one of {', '.join(NORMALIZATIONS)}, got {normalization!r}{fundus}"
        )
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


def _pad_to(image: torch.Tensor, roi_size: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad (C, *spatial) symmetrically up to ``roi_size``, as MONAI does, and the slices that undo it."""
    pads = [max(r - s, 0) for r, s in zip(roi_size, image.shape[1:])]
    crop = tuple(slice(p // 2, p // 2 + s) for p, s in zip(pads, image.shape[1:]))
    if not any(pads):
        return image, crop
    flat_pads = [amount for p in reversed(pads) for amount in (p // 2, p - p // 2)]
    return F.pad(image, flat_pads), crop
