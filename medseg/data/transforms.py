"""MONAI transform chains for the vessel (DRIVE / synthetic) and CamVid datasets.

Each chain is one ``Compose`` whose deterministic transforms come first: ``CacheDataset`` caches the output of
everything before the first random transform (``monai.data.CacheDataset._pre_transform``), so loading, intensity
scaling, binarisation, preprocessing and the foreground/background index maps are computed once, while patch
sampling, flips, rotations and intensity jitter run on every epoch.

Arrays are channel-first with spatial axes (H, W): the PIL reader is built with ``reverse_indexing=False``
(MONAI's default would give (W, H)), so tensors match the files' H x W and numpy/PIL conventions.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import CacheDataset, PILReader
from monai.transforms import (
    AsDiscreted,
    CastToTyped,
    Compose,
    DeleteItemsd,
    EnsureChannelFirstd,
    FgBgToIndicesd,
    Lambda,
    Lambdad,
    LoadImaged,
    MapLabelValued,
    MapTransform,
    NormalizeIntensityd,
    RandAdjustContrastd,
    RandBiasFieldd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropd,
    RandomizableTransform,
    ResizeWithPadOrCrop,
    ScaleIntensityRanged,
)
from monai.utils import convert_to_dst_type, convert_to_tensor
from PIL import Image

from medseg.data.camvid import IGNORE_INDEX
from medseg.data.files import as_stored_image
from medseg.data.vessel_folders import LABEL_POSITIVE
from medseg.fundus import equalize_local_contrast, fundus_scale, resample, resample_vessel_label, standardize_inside_fov

PHASES = ("train", "eval")
PREPROCESSING = ("rgb", "green", "clahe")
NORMALIZATIONS = ("none", "standardize", "standardize_fov")
VESSEL_KEYS = ("image", "label", "mask")
FG_INDICES, BG_INDICES = "label_fg_indices", "label_bg_indices"
# the largest noise std of acquisition jitter, per normalization: about 6 grey levels of 255 either way (a fundus
# photograph's intensities spread about 0.25 of the [0, 1] range)
ACQUISITION_NOISE_STD = {"standardize": 0.1, "standardize_fov": 0.1, "none": 0.025}
# a channel's shift in camera jitter: a quarter of a standardised image's spread, about 15 grey levels in [0, 1]
CAMERA_SHIFT = {"standardize": 0.25, "standardize_fov": 0.25, "none": 0.06}


def to_greyscale(image: Image.Image) -> Image.Image:
    """PIL converter for labels and masks: DRIVE's palette GIFs (2nd_manual) become greyscale {3, 253}."""
    return image.convert("L")


def pil_reader(content: str = "image") -> PILReader:
    """The reader every 2D chain uses, (H, W[, C]) arrays: ``"image"`` decoded as inference decodes it
    (:func:`medseg.data.files.as_stored_image`), ``"greyscale"`` (labels and masks), ``"indices"`` (the stored
    values of a label map, palette indices included)."""
    converters = {"image": as_stored_image, "greyscale": to_greyscale, "indices": None}
    if content not in converters:
        raise ValueError(f"pil_reader content must be one of {sorted(converters)}, got {content!r}")
    return PILReader(converter=converters[content], reverse_indexing=False)


def green_channel(image: torch.Tensor) -> torch.Tensor:
    """Keep the green channel of a (3, H, W) fundus image, where vessels have the most contrast: (1, H, W)."""
    return image[1:2]


def clahe_green(image: torch.Tensor) -> torch.Tensor:
    """Green channel equalised with CLAHE (:func:`equalize_local_contrast`) for a (3, H, W) image in [0, 1]:
    (1, H, W) in [0, 1]."""
    green = green_channel(image).clone()
    green[0] = torch.as_tensor(equalize_local_contrast(np.asarray(green[0])), dtype=green.dtype)
    return green


def standardize_record_inside_fov(record: dict) -> dict:
    """``record["image"]`` (C, H, W) standardised inside ``record["mask"]`` (1, H, W), 0 outside
    (:func:`medseg.fundus.standardize_inside_fov`, what inference does with ``normalization="standardize_fov"``).

    MONAI's ``MaskIntensityd`` + ``NormalizeIntensityd(nonzero=True)`` lack the mask: they take the statistics of
    the nonzero pixels, which a black retina pixel leaves out and a bright surround (text, a rim) adds to."""
    inside = torch.as_tensor(record["mask"][0]) > 0.5
    if not bool(inside.any()):
        raise ValueError(f"{record.get('mask_path', 'the FOV mask')}: the FOV mask is empty")
    record["image"] = standardize_inside_fov(record["image"], inside)
    return record


def binarize_vessel_label(record: dict) -> dict:
    """``record["label"]`` (1, H, W) as {0, 1}: the values in ``record["label_positive"]`` (popped, so batches
    do not carry it) for an index map, else greyscale >= 128 as DRIVE's binary files.

    MONAI's ``LabelToMaskd`` takes one set of labels for every record; records of several cameras name their own."""
    label, positive = record["label"], record.pop(LABEL_POSITIVE, None)
    vessel = torch.isin(label, torch.as_tensor(positive, dtype=label.dtype)) if positive else label >= 128
    record["label"] = vessel.to(torch.float32)
    return record


def resample_to_fov_width(record: dict, fov_width: float) -> dict:
    """Resample ``record``'s image, label and mask (C, H, W) so that the FOV mask is ``fov_width`` pixels wide,
    by the factor ``medseg infer --scale auto`` gives the photograph (:func:`medseg.fundus.fundus_scale`, 1 within
    its tolerance). The image is resampled bilinearly (anti-aliased when shrinking), the label under the one label
    convention of every source (:func:`medseg.fundus.resample_vessel_label`), the FOV mask bilinearly then
    thresholded at 0.5."""
    mask = np.asarray(record["mask"][0]) > 0.5
    if not mask.any():
        raise ValueError(f"{record.get('mask_path', 'the FOV mask')}: the FOV mask is empty")
    factor = fundus_scale(mask, fov_width)
    if factor == 1.0:
        return record
    size = [round(side * factor) for side in record["image"].shape[1:]]
    label = torch.as_tensor(record["label"])
    record["image"] = resample(torch.as_tensor(record["image"]), size)
    record["label"] = resample_vessel_label(label, size)
    record["mask"] = (resample(torch.as_tensor(record["mask"]), size) >= 0.5).float()
    return record


class RandConvolutiond(RandomizableTransform, MapTransform):
    """Random convolution (RandConv, Xu et al., ICLR 2021): a style randomisation of image patches.

    With probability ``prob`` each (C, H, W) image is convolved with a random C x C x k x k kernel (k drawn from
    ``kernel_sizes``, weights from N(0, 1 / (C k^2)), reflected borders): another mix of colour channels and
    another local texture filter, as another camera's optics and processing give. Each output channel keeps the
    mean and spread of its input channel, and the result is blended with the image, ``a * image + (1 - a) *
    convolved`` with ``a`` uniform in ``image_weight`` ([0, 1] by default), so shapes stay where they were and labels
    stay as drawn.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        kernel_sizes: Sequence[int] = (1, 3),
        image_weight: tuple[float, float] = (0.0, 1.0),
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if not kernel_sizes or any(k < 1 or k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"kernel_sizes must be odd and positive, got {tuple(kernel_sizes)}")
        if not 0.0 <= image_weight[0] <= image_weight[1] <= 1.0:
            raise ValueError(f"image_weight must be a range within [0, 1], got {tuple(image_weight)}")
        self.kernel_sizes = tuple(int(k) for k in kernel_sizes)
        self.image_weight = image_weight

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            d[key] = self._convolve(d[key])
        return d

    def _convolve(self, image: torch.Tensor) -> torch.Tensor:
        channels, size = image.shape[0], int(self.R.choice(self.kernel_sizes))
        kernel = self.R.normal(0.0, (channels * size * size) ** -0.5, (channels, channels, size, size))
        blend = float(self.R.uniform(*self.image_weight))
        plain = convert_to_tensor(image, dtype=torch.float32, track_meta=False)
        padded = F.pad(plain[None], [size // 2] * 4, mode="reflect") if size > 1 else plain[None]
        convolved = F.conv2d(padded, torch.as_tensor(kernel, dtype=plain.dtype))[0]
        # each channel keeps its mean and spread: another style of the patch, not another brightness or contrast
        mean, spread = plain.mean(dim=(1, 2), keepdim=True), plain.std(dim=(1, 2), keepdim=True)
        centred = convolved - convolved.mean(dim=(1, 2), keepdim=True)
        restyled = centred / (centred.std(dim=(1, 2), keepdim=True) + 1e-6) * spread + mean
        result = blend * plain + (1.0 - blend) * restyled
        return convert_to_dst_type(result, image)[0]


class RandVesselZoomd(RandomizableTransform):
    """Zoom a patch's image, vessel label and FOV mask by one random factor, keeping the patch size (centre crop,
    or reflected borders), the label under the one label convention (:func:`medseg.fundus.resample_vessel_label`).

    MONAI's ``RandZoomd`` zooms a label by nearest neighbour, which keeps a vessel's label width ``t + 1`` in
    proportion, ``(t + 1) z``, where the convention that labels every other scale asks ``t z + 1``.

    Args:
        prob: probability of zooming a patch.
        min_zoom, max_zoom: the factor is uniform in ``[min_zoom, max_zoom]``.
    """

    def __init__(self, prob: float = 0.5, min_zoom: float = 1.0, max_zoom: float = 1.0) -> None:
        RandomizableTransform.__init__(self, prob)
        if not 0.0 < min_zoom <= max_zoom:
            raise ValueError(f"zoom range must satisfy 0 < min_zoom <= max_zoom, got [{min_zoom}, {max_zoom}]")
        self.min_zoom, self.max_zoom = min_zoom, max_zoom

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        return zoom_vessel_patch(d, float(self.R.uniform(self.min_zoom, self.max_zoom)))


def zoom_vessel_patch(record: dict, factor: float) -> dict:
    """``record``'s (C, H, W) "image" (bilinear, anti-aliased when shrinking), "label" (the label convention) and
    "mask" (bilinear, then >= 0.5) zoomed by ``factor`` about the patch centre, at their size (H, W)."""
    size = tuple(record["image"].shape[1:])
    zoomed = [round(side * factor) for side in size]
    fit = ResizeWithPadOrCrop(spatial_size=size, mode="reflect")
    resized = {
        "image": resample(convert_to_tensor(record["image"], track_meta=False), zoomed),
        "label": resample_vessel_label(convert_to_tensor(record["label"], track_meta=False), zoomed),
        "mask": (resample(convert_to_tensor(record["mask"], track_meta=False), zoomed) >= 0.5).float(),
    }
    # plain tensors into convert_to_dst_type, so that each takes its record's meta data (a MetaTensor keeps its own)
    fitted = {key: convert_to_tensor(fit(value), track_meta=False) for key, value in resized.items()}
    return {**record, **{key: convert_to_dst_type(value, record[key])[0] for key, value in fitted.items()}}


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def vessel_transforms(
    phase: str = "train",
    patch_size: Sequence[int] = (96, 96),
    num_samples: int = 4,
    pos_fraction: float = 0.5,
    preprocessing: str = "rgb",
    normalization: str = "none",
    intensity_jitter: bool = True,
    scale_jitter: float = 0.0,
    acquisition_jitter: bool = False,
    camera_jitter: bool = False,
    random_convolution: bool = False,
    fov_width: float | None = None,
) -> Compose:
    """Transforms for DRIVE-layout records {"image", "label", "mask"} (paths) -> tensors.

    Output: "image" float32 (C, H, W) in [0, 1] with C = 3 ("rgb") or 1 ("green", "clahe"); "label" and "mask"
    float32 (1, H, W) in {0, 1}. "eval" keeps whole images (with the FOV mask for masked metrics). "train"
    yields ``num_samples`` patches of ``patch_size`` per image, centred on a vessel pixel with probability
    ``pos_fraction`` and otherwise on a background pixel inside the FOV, then random flips, 90-degree rotations
    and, with ``intensity_jitter``, a random gamma, scale and shift of the image intensities. ``scale_jitter``
    s > 0 zooms half of the patches by a random factor in [1 / (1 + s), 1 + s] (same patch size, reflected
    borders, labels under the one label convention: :class:`RandVesselZoomd`), so that vessels are seen at
    widths other than DRIVE's own.
    ``acquisition_jitter`` blurs a fifth of the image patches (Gaussian, sigma 0.25 to 1 pixel: focus) and adds
    Gaussian noise to half of them (std up to about 6 grey levels, 0.1 of a standardised image's spread: a sensor),
    as cameras other than DRIVE's do; labels stay as drawn. ``camera_jitter`` scales and shifts each colour channel
    of half of the image patches on its own (another white balance and sensor response) and multiplies half of them
    by a smooth random field (MONAI's bias field, degree 3, log-gain up to 0.3: uneven illumination and vignetting
    across the patch). ``random_convolution`` gives half of the image patches another style: a random convolution
    blended with the patch (:class:`RandConvolutiond`), after the other jitters.

    Records may come from several cameras: a record's ``label_positive`` names the vessel values of an index-map
    label (LES-AV's), and ``fov_width`` brings every image to that FOV width first
    (:func:`resample_to_fov_width`, labels under the one label convention), the scale ``medseg infer --scale auto`` gives
    photographs at inference.

    ``normalization="standardize"`` then standardises each whole image to zero mean and unit variance (MONAI's
    ``NormalizeIntensityd``) before any patch is cut (``"standardize_fov"``: each channel with the statistics of
    its pixels inside the FOV mask, the outside set to 0, :func:`standardize_inside_fov`), which is what
    :func:`medseg.inference.predict` does with the same ``normalization``: train with it, and evaluate on "eval"
    images left in [0, 1] through ``predict`` (or a ``PredictInferer``), so training and inference see the same
    intensities.
    """
    _check_choice("phase", phase, PHASES)
    _check_choice("preprocessing", preprocessing, PREPROCESSING)
    _check_choice("normalization", normalization, NORMALIZATIONS)
    if not 0.0 <= pos_fraction <= 1.0:
        raise ValueError(f"pos_fraction must be in [0, 1], got {pos_fraction}")
    if scale_jitter < 0.0:
        raise ValueError(f"scale_jitter must be >= 0, got {scale_jitter}")
    deterministic = _vessel_loading(preprocessing, normalization, fov_width)
    if phase == "eval":
        return Compose(deterministic)
    # Index maps of vessel pixels and of background pixels inside the FOV: computed once, cached with the rest.
    deterministic.append(FgBgToIndicesd(keys="label", image_key="mask", image_threshold=0.5))
    patches = _vessel_patches(patch_size, num_samples, pos_fraction, scale_jitter)
    jitters = _vessel_jitters(normalization, intensity_jitter, acquisition_jitter, camera_jitter, random_convolution)
    return Compose(deterministic + patches + jitters)


def _vessel_loading(preprocessing: str, normalization: str, fov_width: float | None) -> list:
    """The deterministic head of :func:`vessel_transforms`: read, scale to [0, 1], binarise, bring to the FOV
    width, preprocess, normalise."""
    deterministic = [
        LoadImaged(keys="image", reader=pil_reader()),
        LoadImaged(keys=["label", "mask"], reader=pil_reader("greyscale")),
        EnsureChannelFirstd(keys=list(VESSEL_KEYS)),
        ScaleIntensityRanged(keys="image", a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0),
        AsDiscreted(keys="mask", threshold=128),  # greyscale > 127, as the DRIVE validation does
        Lambda(func=binarize_vessel_label),
    ]
    if fov_width is not None:
        deterministic.append(Lambda(func=partial(resample_to_fov_width, fov_width=fov_width)))
    if preprocessing == "green":
        deterministic.append(Lambdad(keys="image", func=green_channel))
    elif preprocessing == "clahe":
        deterministic.append(Lambdad(keys="image", func=clahe_green))
    if normalization == "standardize":
        deterministic.append(NormalizeIntensityd(keys="image"))
    elif normalization == "standardize_fov":
        deterministic.append(Lambda(func=standardize_record_inside_fov))
    return deterministic


def _vessel_patches(patch_size: Sequence[int], num_samples: int, pos_fraction: float, scale_jitter: float) -> list:
    """The random patches of :func:`vessel_transforms`: crops centred on vessels or FOV background, flips,
    rotations and, with ``scale_jitter``, zooms."""
    keys = list(VESSEL_KEYS)
    patches = [
        RandCropByPosNegLabeld(
            keys=keys,
            label_key="label",
            spatial_size=patch_size,
            pos=pos_fraction,
            neg=1.0 - pos_fraction,
            num_samples=num_samples,
            fg_indices_key=FG_INDICES,
            bg_indices_key=BG_INDICES,
        ),
        DeleteItemsd(keys=[FG_INDICES, BG_INDICES]),  # their lengths differ between images, so they cannot batch
        RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
        RandRotate90d(keys=keys, prob=0.5, max_k=3, spatial_axes=(0, 1)),
    ]
    if scale_jitter > 0.0:
        patches.append(RandVesselZoomd(prob=0.5, min_zoom=1.0 / (1.0 + scale_jitter), max_zoom=1.0 + scale_jitter))
    return patches


def _vessel_jitters(
    normalization: str, intensity: bool, acquisition: bool, camera: bool, random_convolution: bool
) -> list:
    """The random appearance changes of :func:`vessel_transforms`' image patches."""
    jitters = []
    if intensity:
        jitters += [
            RandAdjustContrastd(keys="image", prob=0.3, gamma=(0.7, 1.5)),
            RandScaleIntensityd(keys="image", prob=0.5, factors=0.1),
            RandShiftIntensityd(keys="image", prob=0.5, offsets=0.05),
        ]
    if acquisition:
        jitters += [
            RandGaussianSmoothd(keys="image", prob=0.2, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0)),
            RandGaussianNoised(keys="image", prob=0.5, std=ACQUISITION_NOISE_STD[normalization]),
        ]
    if camera:
        jitters += [
            RandScaleIntensityd(keys="image", prob=0.5, factors=0.15, channel_wise=True),
            RandShiftIntensityd(keys="image", prob=0.5, offsets=CAMERA_SHIFT[normalization], channel_wise=True),
            RandBiasFieldd(keys="image", prob=0.5, degree=3, coeff_range=(0.0, 0.3)),
        ]
    if random_convolution:
        jitters.append(RandConvolutiond(keys="image", prob=0.5))
    return jitters


def camvid_transforms(
    phase: str = "train", crop_size: Sequence[int] | None = (256, 256), normalization: str = "none",
    void_value: int = IGNORE_INDEX,
) -> Compose:
    """Transforms for CamVid records {"image", "label"} (paths) -> tensors.

    Output: "image" float32 (3, H, W) in [0, 1]; "label" int64 (1, H, W) with classes 0-10 and 11 = void
    (``medseg.data.camvid.IGNORE_INDEX``), a label's ``void_value`` (a folder's own, e.g. 255) mapped to 11.
    "eval" keeps whole frames (CamVid's are 360x480). "train" takes a random
    ``crop_size`` crop (whole frame if None), a horizontal flip (road scenes are not flipped upside down) and
    intensity jitter on the image.

    ``normalization="standardize"`` then standardises each whole frame before any crop, as in
    :func:`vessel_transforms`: train with it, and evaluate "eval" frames left in [0, 1] through
    :func:`medseg.inference.predict` with ``normalization="standardize"`` (or a ``PredictInferer``).
    """
    _check_choice("phase", phase, PHASES)
    _check_choice("normalization", normalization, NORMALIZATIONS)
    deterministic = [
        LoadImaged(keys="image", reader=pil_reader()),
        LoadImaged(keys="label", reader=pil_reader("indices")),
        EnsureChannelFirstd(keys=["image", "label"]),
        ScaleIntensityRanged(keys="image", a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0),
        *([MapLabelValued(keys="label", orig_labels=[void_value], target_labels=[IGNORE_INDEX], dtype=np.uint8)]
          if void_value != IGNORE_INDEX else []),
        CastToTyped(keys="label", dtype=torch.int64),
    ]
    if normalization == "standardize":
        deterministic.append(NormalizeIntensityd(keys="image"))
    if phase == "eval":
        return Compose(deterministic)
    random = [RandSpatialCropd(keys=["image", "label"], roi_size=crop_size, random_size=False)] if crop_size else []
    random += [
        RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=1),
        RandScaleIntensityd(keys="image", prob=0.5, factors=0.1),
        RandShiftIntensityd(keys="image", prob=0.5, offsets=0.05),
    ]
    return Compose(deterministic + random)


def cached_dataset(
    records: Sequence[dict], transform: Compose, cache_rate: float = 1.0, num_workers: int | None = None
) -> CacheDataset:
    """A ``CacheDataset`` holding the deterministic part of ``transform`` for ``cache_rate`` of ``records``."""
    return CacheDataset(
        data=list(records), transform=transform, cache_rate=cache_rate, num_workers=num_workers, progress=False
    )
