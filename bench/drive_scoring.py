"""FOV-pooled vessel metrics of probability maps of DRIVE test images, shared by the DRIVE bench scripts."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from medseg.data import read_binary
from medseg.metrics import FOVVesselMetrics


def pooled_test_metrics(probabilities: Mapping[str, np.ndarray], drive: Path, threshold: float = 0.5) -> dict[str, float]:
    """Metrics over every FOV pixel of the test images ``{image id: (H, W) probabilities}`` against 1st_manual."""
    metric = FOVVesselMetrics()
    for image_id, probs in probabilities.items():
        label = read_binary(drive / "test" / "1st_manual" / f"{image_id}_manual1.gif")
        mask = read_binary(drive / "test" / "mask" / f"{image_id}_test_mask.gif")
        metric.update(*(torch.tensor(a, dtype=torch.float32).reshape(1, 1, *label.shape) for a in (probs, label, mask)))
    return metric.compute(threshold)
