"""Loading a model for inference: a MONAI bundle folder, a TorchScript file, or a checkpoint plus a network name.

Each comes with the inference settings it knows. A bundle's come from its own configs, where each
hyper-parameter is written once: ``configs/inference.yaml`` (plus overlays and overrides) defines
``network_def`` and ``inference_settings``, an :class:`InferenceSettings` built from the shared top-level ids
(``roi_size``, ``sw_overlap``, ``sw_batch_size``, ``normalization``, ``tta``, ``threshold``,
``preprocessing``, ...) and from the descriptive facts of ``configs/metadata.json`` (``medseg.fundus``,
``medseg.training_fov_width``), which the config reads as ``@_meta_#...``. The metadata's
``network_data_format`` gives the input and output channels. The other sources know only what their weights
show (input channels, output channels and spatial dimensions).
"""

from __future__ import annotations

import contextlib
import json
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.fundus import equalize_local_contrast
from medseg.inference.settings import InferenceSettings, complete_settings
from medseg.networks import ensemble_override, ensemble_size, get_network
from medseg.resources import read_bundle_config
from medseg.utils import one_line

__all__ = [
    "LoadedModel",
    "bundle_training_images",
    "ensemble_members_in",
    "load_model",
    "network_input",
    "read_state_dict",
    "settings_from_metadata",
]

_CHECKPOINT_KEYS = ("model", "network", "state_dict", "net")
# The id of a bundle's inference config that holds its InferenceSettings.
SETTINGS_ID = "inference_settings"


@dataclass(frozen=True)
class LoadedModel:
    """A network (logits out) with its inference settings, which are completed from the network when the model
    is made (:func:`complete_settings`): what :func:`~medseg.inference.infer_files`, the evaluations and the
    MLflow model take. ``training_images`` lists the photographs the network was trained on (a bundle's training
    split, read only when called): what precision int8 calibrates on."""

    network: torch.nn.Module
    settings: InferenceSettings = field(default_factory=InferenceSettings)
    training_images: Callable[[], Sequence[str | Path]] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", complete_settings(self.network, self.settings))

    def with_settings(self, **changes: Any) -> LoadedModel:
        """The same network with some settings changed (``fov=``, ``precision=``, ...)."""
        return LoadedModel(self.network, replace(self.settings, **changes), self.training_images)


def load_model(
    model: str | Path,
    *,
    network: str | None = None,
    network_kwargs: dict[str, Any] | None = None,
    overlays: Sequence[str | Path] = (),
    overrides: Mapping[str, Any] | None = None,
    checkpoint: str | Path | None = None,
) -> LoadedModel:
    """Load ``model``, a bundle folder, a TorchScript ``.ts`` file, or a checkpoint with ``network``.

    Args:
        model: a folder with ``configs/metadata.json`` and ``configs/inference.yaml`` (network ``network_def``,
            settings ``inference_settings``; weights ``checkpoint``, else ``models/model.pt``, else the
            TorchScript ``models/model.ts``), a ``.ts`` file, or a checkpoint file (a state dict, or a dict
            holding one under ``model``, ``network``, ``state_dict`` or ``net``).
        network: for a checkpoint, the name given to :func:`medseg.networks.get_network`.
        network_kwargs: keyword arguments for :func:`medseg.networks.get_network`.
        overlays: for a bundle, config files merged in order on top of its ``configs/inference.yaml``.
        overrides: for a bundle, ``{config id: value}`` applied last.
        checkpoint: for a bundle, weights to load instead of ``models/model.pt``.
    """
    path = Path(model)
    if path.is_dir():
        # resolved here: the bundle is loaded from inside its folder, where a relative path would point elsewhere
        return _load_bundle(path, overlays, overrides, None if checkpoint is None else Path(checkpoint).resolve())
    if overlays or overrides or checkpoint is not None:
        raise ValueError(f"{path}: config overlays, overrides and a separate checkpoint apply to a bundle folder only")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model (expected a bundle folder, a .ts file or a checkpoint)")
    if path.suffix == ".ts":
        return LoadedModel(torch.jit.load(str(path), map_location="cpu").eval())
    if network is None:
        raise ValueError(f"{path}: a checkpoint needs --network NAME (and --network-kwargs for its arguments)")
    module = get_network(network, **(network_kwargs or {}))
    _load_weights(module, read_state_dict(path), path, f"--network {network}")
    return LoadedModel(module.eval())


def settings_from_metadata(metadata: Mapping[str, Any]) -> InferenceSettings:
    """The descriptive facts of a bundle's ``metadata.json``: channels, spatial dimensions, fundus, FOV width.

    Reads ``network_data_format.inputs.image`` (``num_channels``, ``spatial_shape``),
    ``network_data_format.outputs.pred`` (``num_channels``) and ``medseg`` (``fundus``, ``training_fov_width``,
    ``validation_threshold``: the shipped weights' F1-maximising threshold on the validation images;
    ``resampled_vessel_widening``: theirs, measured on held-out photographs).
    """
    data_format = metadata.get("network_data_format", {})
    image = data_format.get("inputs", {}).get("image", {})
    prediction = data_format.get("outputs", {}).get("pred", {})
    facts = metadata.get("medseg", {})
    spatial_shape = image.get("spatial_shape")
    return InferenceSettings(
        fundus=bool(facts.get("fundus", False)),
        training_fov_width=facts.get("training_fov_width"),
        validation_threshold=facts.get("validation_threshold"),
        resampled_vessel_widening=facts.get("resampled_vessel_widening"),
        in_channels=image.get("num_channels"),
        out_channels=prediction.get("num_channels"),
        spatial_dims=len(spatial_shape) if spatial_shape else None,
    )


def network_input(image: np.ndarray, settings: InferenceSettings, name: str) -> np.ndarray:
    """A channel-first image as the network was trained to see it: its preprocessing, then its input channels,
    without copying where possible.

    ``preprocessing="green"`` keeps channel 1 of a colour image; ``"clahe"`` equalises that channel (a grey image's
    only one) with :func:`medseg.fundus.equalize_local_contrast`, as training does, and returns it as float32 in
    [0, 1] (integer images scaled by their type's maximum). For a network that scales by 255 (``scale255``), an
    image of more than 8 bits is first brought to the 8-bit range by its stored bit depth. Then a grey image is repeated for a colour network and a
    colour image converted to grey (ITU-R 601 luma) for a one-channel network. ``name`` labels errors.
    """
    if settings.preprocessing not in ("rgb", "green", "clahe"):
        raise ValueError(
            f"{name}: file inference supports preprocessing rgb, green or clahe, not {settings.preprocessing!r}"
        )
    if settings.normalization == "scale255" and np.issubdtype(image.dtype, np.integer) and image.itemsize > 1:
        image = _to_8_bit_range(image)
    channels, wanted = image.shape[0], settings.in_channels
    if settings.preprocessing in ("green", "clahe") and channels == 3:
        image, channels = image[1:2], 1
    if settings.preprocessing == "clahe":
        if channels != 1:
            raise ValueError(f"{name}: CLAHE takes a grey or colour image, got {channels} channels")
        scale = np.iinfo(image.dtype).max if np.issubdtype(image.dtype, np.integer) else 1.0
        image = equalize_local_contrast(image[0] / scale)[None].astype(np.float32)
    if wanted is None or channels == wanted:
        return image
    if channels == 1:
        return np.broadcast_to(image, (wanted, *image.shape[1:]))
    if channels == 3 and wanted == 1:
        luma = np.tensordot(np.array([0.299, 0.587, 0.114], dtype=np.float32), image, axes=1)
        return luma[None].round().astype(image.dtype) if image.dtype == np.uint8 else luma[None]
    raise ValueError(f"{name}: the image has {channels} channels but the network expects {wanted}")


def _to_8_bit_range(image: np.ndarray) -> np.ndarray:
    """A wider-than-8-bit integer image as float32 on the 0-255 scale of its stored bit depth: 16 bits (PNG and
    TIFF "I;16", or 32-bit "I" images whose values fit 16 bits), else its type's own range."""
    depth = 16 if image.dtype == np.uint16 or int(image.max(initial=0)) <= 0xFFFF else 8 * image.itemsize
    return image.astype(np.float32) * np.float32(255 / (2**depth - 1))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a checkpoint file (``torch.load(weights_only=True)``): at its top level, or under
    ``model``, ``network``, ``state_dict`` or ``net``. Unreadable files raise ``ValueError`` naming the file."""
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # anything but tensors and plain containers: never unpickled
        raise ValueError(f"{path}: not a readable checkpoint (refused by torch.load(weights_only=True): "
                         f"{_refusal(err)})") from None
    except Exception as err:  # zip and torch errors: report them all as a bad checkpoint
        raise ValueError(f"{path}: not a readable checkpoint ({type(err).__name__}: {one_line(err)})") from None
    for key in _CHECKPOINT_KEYS:
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    if isinstance(checkpoint, dict) and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint
    raise ValueError(f"{path}: no state dict found (expected one at the top or under {', '.join(_CHECKPOINT_KEYS)})")


def _refusal(error: pickle.UnpicklingError) -> str:
    """torch's reason for refusing a file under ``weights_only=True``, e.g. ``Unsupported global: GLOBAL io.open
    was not an allowed global by default``, without its advice to load the file with ``weights_only=False``, which
    would run whatever code the file holds."""
    text = str(error)
    _, found, reason = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (reason if found else text).splitlines() if line.strip()]
    return lines[0].split(". Please use")[0] if lines else type(error).__name__


def _load_weights(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], weights: Path, owner: str) -> None:
    """Load ``state_dict``, read from ``weights``, into ``module``, the network of ``owner`` (a bundle, a network
    name); weights of another network raise ``ValueError`` naming the file, with torch's list of every mismatched
    name and shape on one line."""
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as err:
        raise ValueError(f"{weights}: these weights do not fit the network of {owner} ({one_line(err)})") from None


def ensemble_members_in(path: str | Path, default: int | None = None) -> int:
    """How many networks the checkpoint at ``path`` holds (:func:`medseg.networks.ensemble_size`), or ``default``
    where no file is there yet (``None``: a missing file is an error). A bundle's evaluate and inference configs
    build that many for their ``ckpt_path``, so MONAI's runner loads one trained network's weights as well as the
    shipped ensemble's."""
    if default is not None and not Path(path).exists():
        return default
    return ensemble_size(read_state_dict(path))


def _load_bundle(
    folder: Path, overlays: Sequence[str | Path], overrides: Mapping[str, Any] | None, checkpoint: Path | None
) -> LoadedModel:
    folder = folder.resolve()
    metadata_file, config_file = folder / "configs" / "metadata.json", folder / "configs" / "inference.yaml"
    for required in (metadata_file, config_file):
        if not required.is_file():
            raise ValueError(f"{folder}: not an inference bundle (no configs/{required.name})")
    parser = read_bundle_config(folder, "inference", overlays, overrides)
    if SETTINGS_ID not in parser:
        raise ValueError(f"{config_file}: no {SETTINGS_ID!r} id (the InferenceSettings of the bundle)")
    # the configs share settings with %configs/train.yaml#... macros, which MONAI reads from the working directory
    with contextlib.chdir(folder):
        settings = parser.get_parsed_content(SETTINGS_ID)
        described = settings_from_metadata(json.loads(metadata_file.read_text()))
        # inference.yaml reads the widening for MONAI's runner; configs that predate the key leave it to metadata
        widening = settings.resampled_vessel_widening
        widening = described.resampled_vessel_widening if widening is None else widening
        settings = replace(
            settings,
            in_channels=settings.in_channels or described.in_channels,
            out_channels=settings.out_channels or described.out_channels,
            spatial_dims=settings.spatial_dims or described.spatial_dims,
            # facts of the shipped weights only
            validation_threshold=described.validation_threshold if checkpoint is None else None,
            resampled_vessel_widening=widening if checkpoint is None else None,
        )
        weights = checkpoint or folder / "models" / "model.pt"
        scripted = folder / "models" / "model.ts"
        if checkpoint is None and not weights.is_file() and scripted.is_file():
            return LoadedModel(torch.jit.load(str(scripted), map_location="cpu").eval(), settings,
                               partial(bundle_training_images, folder, overlays))
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: no such checkpoint (give one with --checkpoint)")
        state_dict = read_state_dict(weights)
        parser.update(ensemble_override(parser, state_dict, str(weights), folder))
        module = parser.get_parsed_content("network_def")
    _load_weights(module, state_dict, weights, str(folder))
    return LoadedModel(module.eval(), settings, partial(bundle_training_images, folder, overlays))


def bundle_training_images(folder: str | Path, overlays: Sequence[str | Path] = ()) -> list[str]:
    """The photographs of a bundle's training split: the ``calibration_images`` id of its ``configs/train.yaml``
    (with ``overlays``), never the validation or test images."""
    folder = Path(folder).resolve()
    parser = read_bundle_config(folder, "train", overlays)
    if "calibration_images" not in parser:
        raise ValueError(f"{folder / 'configs' / 'train.yaml'}: no 'calibration_images' id (its training photographs)")
    with contextlib.chdir(folder):  # the config's paths are relative to the bundle
        return [str(path) for path in parser.get_parsed_content("calibration_images")]
