"""Shared fixtures: where the real datasets live, and how their absence is reported.

Real data is found through ``MEDSEG_DATA_ROOT`` (default ``../shared/data`` beside the repository).
Outside CI a missing dataset skips the tests that need it, with the reason; in CI (``CI=true``) it fails them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.data.synthetic import write_synthetic_drive
from medseg.networks import UNet

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("MEDSEG_DATA_ROOT", REPO_ROOT.parent / "shared" / "data")).resolve()
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# under pytest-xdist (the README's `-n auto`) each worker computes on its share of the cores, as do the processes
# its tests start, so the workers do not oversubscribe the machine
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _CORE_SHARE = max(1, (os.cpu_count() or 1) // _WORKERS)
    torch.set_num_threads(_CORE_SHARE)
    os.environ.setdefault("OMP_NUM_THREADS", str(_CORE_SHARE))


def _dataset(name: str) -> Path:
    path = DATA_ROOT / name
    if not path.is_dir():
        reason = f"real dataset {name} not found at {path} (set MEDSEG_DATA_ROOT)"
        if IN_CI:
            pytest.fail(f"{reason}; CI=true requires the real data")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def drive_root() -> Path:
    return _dataset("DRIVE")


@pytest.fixture(scope="session")
def les_av_root() -> Path:
    return _dataset("LES-AV")


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    return _dataset("CamVid")


@pytest.fixture(scope="session")
def monai_meta_schema() -> Path:
    """Offline copy of the MONAI bundle metadata schema, beside the data (``$MEDSEG_DATA_ROOT/../monai``)."""
    path = DATA_ROOT.parent / "monai" / "meta_schema_20240725.json"
    if not path.is_file():
        reason = f"MONAI metadata schema not found at {path} (set MEDSEG_DATA_ROOT)"
        if IN_CI:
            pytest.fail(f"{reason}; CI=true requires it")
        pytest.skip(reason)
    return path


def _vessel_samples(count: int, seed: int) -> list[dict]:
    """``count`` tiny vessel samples: (1, 16, 16) image, label where the image exceeds 0.7, a square FOV mask."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    samples = []
    for index in range(count):
        image = torch.rand(1, 16, 16, generator=generator)
        mask = torch.zeros(1, 16, 16)
        mask[:, 2:-2, 2:-2] = 1
        samples.append({"image": image, "label": (image > 0.7).float(), "mask": mask, "id": f"img{index}"})
    return samples


@pytest.fixture
def vessel_samples():
    """Factory of tiny in-memory vessel samples for engine and handler tests: ``vessel_samples(count, seed)``."""
    return _vessel_samples


@pytest.fixture(scope="session")
def synthetic_drive_template(tmp_path_factory) -> Path:
    """A DRIVE-layout folder with 2 training (ids 02, 03) and 1 test (id 01) synthetic retinas; do not modify."""
    return write_synthetic_drive(tmp_path_factory.mktemp("template") / "drive", n_training=2, n_test=1, seed=3)


@pytest.fixture
def synthetic_drive(synthetic_drive_template, tmp_path) -> Path:
    """A private, modifiable copy of the synthetic DRIVE folder."""
    return Path(shutil.copytree(synthetic_drive_template, tmp_path / "drive"))


@pytest.fixture
def net2d() -> torch.nn.Module:
    """A small random 2D U-Net, RGB in, one logit channel out (the inference and fundus tests' network)."""
    torch.manual_seed(0)
    return UNet(spatial_dims=2, in_channels=3, out_channels=1, features=(4, 8, 16)).eval()


@pytest.fixture
def image() -> np.ndarray:
    """A (3, 70, 90) uint8 image of uniform noise."""
    return np.random.default_rng(0).integers(0, 256, (3, 70, 90), dtype=np.uint8)
