"""Loading a model for inference: a MONAI bundle folder, a TorchScript file, or a checkpoint plus a network name.

Each comes with the inference settings it knows: a bundle's from its ``configs/metadata.json``; the others
only what their weights show (input channels and spatial dimensions). Metadata keys read:

- ``network_data_format.inputs.image``: ``num_channels``, ``spatial_shape`` (the roi when it is all integers);
- ``network_data_format.outputs.pred``: ``num_channels`` (1 means sigmoid, more means softmax, unless set);
- ``medseg``: ``roi_size``, ``sw_batch_size``, ``overlap``, ``mode``, ``normalization``, ``activation``,
  ``threshold``, ``preprocessing`` (``"rgb"`` or ``"green"``), ``fundus`` (bool), ``training_fov_width``
  (median FOV width in pixels of the training images).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser

__all__ = ["InferenceSettings", "LoadedModel", "load_model", "match_channels", "settings_from_metadata"]

_CHECKPOINT_KEYS = ("model", "network", "state_dict", "net")


@dataclass(frozen=True)
class InferenceSettings:
    """Defaults for :func:`medseg.inference.predict` that travel with a model (``None``: not known)."""

    roi_size: tuple[int, ...] | None = None
    overlap: float = 0.25
    sw_batch_size: int | None = None  # None: predict()'s device-dependent default
    mode: str = "gaussian"
    normalization: str | None = None
    activation: str | None = None
    threshold: float = 0.5
    preprocessing: str = "rgb"
    fundus: bool = False
    training_fov_width: float | None = None
    in_channels: int | None = None
    out_channels: int | None = None
    spatial_dims: int | None = None


@dataclass
class LoadedModel:
    network: torch.nn.Module
    settings: InferenceSettings = field(default_factory=InferenceSettings)


def load_model(
    model: str | Path, *, network: str | None = None, network_kwargs: dict[str, Any] | None = None
) -> LoadedModel:
    """Load ``model``, a bundle folder, a TorchScript ``.ts`` file, or a checkpoint with ``network``.

    Args:
        model: a folder with ``configs/metadata.json`` (network from ``network_def`` in
            ``configs/inference.*``, else ``configs/train.*``; weights ``models/model.pt``, else
            ``models/model.ts``), a ``.ts`` file, or a checkpoint file (a state dict, or a dict holding one under
            ``model``, ``network``, ``state_dict`` or ``net``).
        network: for a checkpoint, the name given to :func:`medseg.networks.get_network`.
        network_kwargs: keyword arguments for :func:`medseg.networks.get_network`.
    """
    path = Path(model)
    if path.is_dir():
        return _load_bundle(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model (expected a bundle folder, a .ts file or a checkpoint)")
    if path.suffix == ".ts":
        return _with_layout(torch.jit.load(str(path), map_location="cpu"), InferenceSettings())
    if network is None:
        raise ValueError(f"{path}: a checkpoint needs --network NAME (and --network-kwargs for its arguments)")
    from medseg.networks import get_network  # imported here: only this path needs the networks package

    module = get_network(network, **(network_kwargs or {}))
    module.load_state_dict(_state_dict(path))
    return _with_layout(module, InferenceSettings())


def settings_from_metadata(metadata: dict[str, Any]) -> InferenceSettings:
    """Inference settings from a bundle's ``metadata.json`` content (keys in the module docstring)."""
    data_format = metadata.get("network_data_format", {})
    image = data_format.get("inputs", {}).get("image", {})
    prediction = data_format.get("outputs", {}).get("pred", {})
    custom = metadata.get("medseg", {})
    spatial_shape = image.get("spatial_shape")
    roi = custom.get("roi_size")
    if roi is None and spatial_shape and all(isinstance(s, int) for s in spatial_shape):
        roi = spatial_shape
    defaults = InferenceSettings()
    return InferenceSettings(
        roi_size=tuple(int(r) for r in roi) if roi else None,
        overlap=float(custom.get("overlap", defaults.overlap)),
        sw_batch_size=custom.get("sw_batch_size", defaults.sw_batch_size),
        mode=custom.get("mode", defaults.mode),
        normalization=custom.get("normalization"),
        activation=custom.get("activation"),
        threshold=float(custom.get("threshold", defaults.threshold)),
        preprocessing=custom.get("preprocessing", defaults.preprocessing),
        fundus=bool(custom.get("fundus", False)),
        training_fov_width=custom.get("training_fov_width"),
        in_channels=image.get("num_channels"),
        out_channels=prediction.get("num_channels"),
        spatial_dims=len(roi) if roi else None,
    )


def match_channels(image: np.ndarray, settings: InferenceSettings, name: str) -> np.ndarray:
    """Adapt a channel-first image to the network's input channels, without copying where possible.

    ``preprocessing="green"`` keeps channel 1 of a colour image; a grey image is repeated for a colour network;
    a colour image is converted to grey (ITU-R 601 luma) for a one-channel network. ``name`` labels errors.
    """
    channels, wanted = image.shape[0], settings.in_channels
    if settings.preprocessing == "green" and channels == 3:
        image, channels = image[1:2], 1
    if wanted is None or channels == wanted:
        return image
    if channels == 1:
        return np.broadcast_to(image, (wanted, *image.shape[1:]))
    if channels == 3 and wanted == 1:
        luma = np.tensordot(np.array([0.299, 0.587, 0.114], dtype=np.float32), image, axes=1)
        return luma[None].round().astype(image.dtype) if image.dtype == np.uint8 else luma[None]
    raise ValueError(f"{name}: the image has {channels} channels but the network expects {wanted}")


def _load_bundle(folder: Path) -> LoadedModel:
    configs = folder / "configs"
    metadata_file = configs / "metadata.json"
    if not metadata_file.is_file():
        raise ValueError(f"{folder}: not a bundle (no configs/metadata.json)")
    settings = settings_from_metadata(json.loads(metadata_file.read_text()))
    weights, scripted = folder / "models" / "model.pt", folder / "models" / "model.ts"
    config_file = _network_config(configs)
    if config_file is None or not weights.is_file():
        if scripted.is_file():
            return _with_layout(torch.jit.load(str(scripted), map_location="cpu"), settings)
        raise ValueError(f"{folder}: needs network_def in configs and models/model.pt, or models/model.ts")
    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser["bundle_root"] = str(folder)  # configs name files relative to their bundle, not to our cwd
    module = parser.get_parsed_content("network_def")
    module.load_state_dict(_state_dict(weights))
    return _with_layout(module, settings)


def _network_config(configs: Path) -> Path | None:
    """The first of configs/inference.*, configs/train.* that defines ``network_def``."""
    for stem in ("inference", "train"):
        for suffix in (".yaml", ".yml", ".json"):
            candidate = configs / f"{stem}{suffix}"
            if candidate.is_file() and "network_def" in ConfigParser.load_config_file(str(candidate)):
                return candidate
    return None


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors: report them all as a bad checkpoint
        raise ValueError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    for key in _CHECKPOINT_KEYS:
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    if isinstance(checkpoint, dict) and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint
    raise ValueError(f"{path}: no state dict found (expected one at the top or under {', '.join(_CHECKPOINT_KEYS)})")


def _with_layout(network: torch.nn.Module, settings: InferenceSettings) -> LoadedModel:
    """Fill the settings the metadata left open from the convolution weights (C_out, C_in, *kernel).

    The first convolution gives the input channels and spatial dimensions, the last the output channels
    (a U-Net's 1x1 output head).
    """
    weights = [p for p in network.parameters() if p.ndim >= 4]
    if not weights:
        return LoadedModel(network.eval(), settings)
    known = {
        "in_channels": settings.in_channels or int(weights[0].shape[1]),
        "out_channels": settings.out_channels or int(weights[-1].shape[0]),
        "spatial_dims": settings.spatial_dims or weights[0].ndim - 2,
    }
    return LoadedModel(network.eval(), replace(settings, **known))
