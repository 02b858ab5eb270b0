"""Calibration windows for int8: what the network sees of a bundle's training photographs.

NNCF sets the int8 ranges of :class:`~medseg.inference.openvino_runtime.OpenVINONetwork` from windows exactly as
:func:`~medseg.inference.predict` cuts them (preprocessing, fundus scale, FOV, normalisation), so the ranges fit
what inference feeds the network. The windows come from the training split only (never validation or test
photographs, on which int8 is judged): :func:`calibration_windows` runs the usual inference path over a few
training photographs with a :class:`_WindowRecorder` in place of the network.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from medseg.inference.files import fov_for, predict_image
from medseg.inference.io import read_image
from medseg.inference.loading import LoadedModel
from medseg.inference.runtime import PreparedNetwork

__all__ = ["CALIBRATION_PHOTOGRAPHS", "CALIBRATION_WINDOWS", "calibration_windows"]

# Photographs spread evenly over the sorted training split, and windows drawn from all of theirs: NNCF's default
# subset is 300 samples; a few photographs cover the range of a camera's intensities.
CALIBRATION_PHOTOGRAPHS = 4
CALIBRATION_WINDOWS = 256


class _WindowRecorder(PreparedNetwork):
    """Keeps every window batch (N, C_in, *S) it is given and returns zero logits (N, C_out, *S): the windows are
    what is wanted, the probabilities of this pass are thrown away."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.precision = "float32"
        self.out_channels = out_channels
        self.windows: list[np.ndarray] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.windows.extend(window[None].float().numpy().copy() for window in x)
        return torch.zeros(x.shape[0], self.out_channels, *x.shape[2:])


def calibration_windows(
    model: LoadedModel, photographs: int = CALIBRATION_PHOTOGRAPHS, windows: int = CALIBRATION_WINDOWS
) -> list[np.ndarray]:
    """Up to ``windows`` float32 windows (1, C_in, *roi) of ``photographs`` of the model's training photographs
    (:attr:`LoadedModel.training_images`), as the network sees them (no TTA), drawn with a fixed seed."""
    if model.training_images is None:
        raise ValueError("precision int8 calibrates on a bundle's training photographs; this model comes from no bundle")
    paths = sorted(Path(path) for path in model.training_images())
    if not paths:
        raise ValueError("precision int8: the bundle lists no training photographs to calibrate on")
    chosen = sorted({paths[round(i * (len(paths) - 1) / max(photographs - 1, 1))] for i in range(photographs)})
    settings = replace(model.settings, tta=False)
    recorder = _WindowRecorder(settings.out_channels or 1)
    for path in chosen:
        image, meta = read_image(path)
        fov = None if meta.is_volume else fov_for(path, image, None, settings.fundus)
        predict_image(recorder, image, meta, settings, fov)
    picks = np.random.default_rng(0).permutation(len(recorder.windows))[:windows]
    return [recorder.windows[index] for index in sorted(picks)]
