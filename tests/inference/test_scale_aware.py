"""Scale-aware fundus inference with the shipped DRIVE weights: a photograph at 4x DRIVE's resolution is
resampled to the training scale, so its probabilities match those of the native-size image.

The enlarged photographs are scored against DRIVE's own labels, drawn on the native grid, so the bundle's erosion
of upsampled edges (for labels drawn at a photograph's own resolution) is left off here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medseg.cli import main
from medseg.data import drive_records
from medseg.engines import pooled_vessel_metrics

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "drive_vessel_unet"
IDS = ("01", "02", "03", "04", "05")


def _pooled(probability_maps: dict[str, np.ndarray], drive_root: Path) -> dict[str, float]:
    return pooled_vessel_metrics(probability_maps, drive_records(drive_root, "test"))


def _infer(images: Path, masks: Path, out: Path, scale: str) -> dict[str, np.ndarray]:
    argv = ["infer", str(BUNDLE), str(images), "--output", str(out), "--fov", str(masks), "--scale", scale,
            "--save-prob", "float16", "--no-upsampled-edge-erosion"]
    assert main(argv) == 0
    return {i: np.load(out / f"{i}_test_prob.npy").astype(np.float32)[0] for i in IDS}


def _downsample(probs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(probs).resize(size, Image.BILINEAR))


@pytest.mark.skipif(not (BUNDLE / "models" / "model.pt").is_file(), reason="the bundle ships no weights")
def test_auto_scale_scores_a_4x_photograph_like_the_native_one(drive_root, tmp_path):
    big_images, big_masks = tmp_path / "big_images", tmp_path / "big_masks"
    big_images.mkdir(), big_masks.mkdir()
    for image_id in IDS:
        image = Image.open(drive_root / "test" / "images" / f"{image_id}_test.tif")
        size = (image.width * 4, image.height * 4)  # 2260 x 2336
        image.resize(size, Image.BILINEAR).save(big_images / f"{image_id}_test.png")
        mask = Image.open(drive_root / "test" / "mask" / f"{image_id}_test_mask.gif").convert("L")
        mask.resize(size, Image.NEAREST).save(big_masks / f"{image_id}_test_mask.png")
    native_images = tmp_path / "native_images"
    native_images.mkdir()
    for image_id in IDS:
        (native_images / f"{image_id}_test.tif").symlink_to(drive_root / "test" / "images" / f"{image_id}_test.tif")

    native = _pooled(_infer(native_images, drive_root / "test" / "mask", tmp_path / "native", "auto"), drive_root)
    big = _infer(big_images, big_masks, tmp_path / "big", "auto")
    scaled = _pooled({i: _downsample(p, (565, 584)) for i, p in big.items()}, drive_root)
    assert abs(scaled["f1"] - native["f1"]) <= 0.01
    assert abs(scaled["auc_roc"] - native["auc_roc"]) <= 0.005
