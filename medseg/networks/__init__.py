"""medseg networks: U-Net, backbone U-Net, U²-Net and U²-Net-P, all returning logits.

Build one by name with :func:`get_network` (``"unet"``, ``"backbone_unet"``, ``"u2net"``, ``"u2net_lite"``) or use
the classes directly, e.g. as ``_target_: medseg.networks.UNet`` in a MONAI bundle config. :func:`ensemble_of` runs
several trained copies of one network as one (:class:`Ensemble`, the mean of their logits).
"""

from __future__ import annotations

import torch.nn as nn

from medseg.networks.backbone_unet import BackboneUNet
from medseg.networks.ensemble import (
    Ensemble,
    IncompatibleMember,
    ensemble_of,
    ensemble_override,
    ensemble_size,
    ensemble_state_dict,
    member_state_dict,
)
from medseg.networks.u2net import U2Net, U2NetLite
from medseg.networks.unet import UNet

__all__ = [
    "NETWORKS", "BackboneUNet", "Ensemble", "IncompatibleMember", "U2Net", "U2NetLite", "UNet", "ensemble_of",
    "ensemble_override", "ensemble_size", "ensemble_state_dict", "get_network", "member_state_dict",
]

NETWORKS: dict[str, type[nn.Module]] = {
    "unet": UNet,
    "backbone_unet": BackboneUNet,
    "u2net": U2Net,
    "u2net_lite": U2NetLite,
}


def get_network(name: str, **kwargs) -> nn.Module:
    """Build the network registered as ``name`` with the constructor keyword arguments ``kwargs``.

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
    """
    key = name.lower()
    if key not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; choose one of {sorted(NETWORKS)}.")
    return NETWORKS[key](**kwargs)
