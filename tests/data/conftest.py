"""Small generated datasets in the real layouts, for tests that must not depend on (or damage) the real data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medseg.data.synthetic import write_synthetic_drive


@pytest.fixture(scope="session")
def synthetic_drive_template(tmp_path_factory) -> Path:
    """A DRIVE-layout folder with 2 training (ids 02, 03) and 1 test (id 01) synthetic retinas; do not modify."""
    return write_synthetic_drive(tmp_path_factory.mktemp("template") / "drive", n_training=2, n_test=1, seed=3)


@pytest.fixture
def synthetic_drive(synthetic_drive_template, tmp_path) -> Path:
    """A private, modifiable copy of the synthetic DRIVE folder."""
    return Path(shutil.copytree(synthetic_drive_template, tmp_path / "drive"))


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
