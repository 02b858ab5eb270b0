"""Small generated datasets in the real layouts, for tests that must not depend on (or damage) the real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image



@pytest.fixture
def tiny_camvid(tmp_path) -> Path:
    """A CamVid-layout folder with 2 random 36x48 frames per split and labels covering 0..11."""
    rng = np.random.default_rng(0)
    root = tmp_path / "camvid"
    for split in ("train", "val", "test"):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for index in range(2):
            name = f"0001TP_{index:06d}.png"
            Image.fromarray(rng.integers(0, 256, (36, 48, 3), dtype=np.uint8)).save(root / split / name)
            label = (np.arange(36 * 48) % 12).reshape(36, 48).astype(np.uint8)
            Image.fromarray(label).save(root / f"{split}annot" / name)
    return root
