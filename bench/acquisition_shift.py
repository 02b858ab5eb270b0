"""The shipped DRIVE weights on DRIVE test images changed the way other cameras and their settings change them.

Each condition alters the 20 DRIVE test photographs (exposure, contrast, colour balance, focus, compression,
sensor noise) and runs them through `medseg infer` with the bundle's own settings; the probability maps are
pooled inside the FOV masks against 1st_manual and compared with the unaltered images scored in the same run.
It measures how far the weights rely on DRIVE's own look; resolution is covered by `bench/scale_aware.py`.

    python bench/acquisition_shift.py --bundle bundles/drive_vessel_unet --drive ../shared/data/DRIVE \
        --out bench/results/acquisition_shift.md

`--checkpoint FILE [FILE ...]` scores other weights with the bundle's settings (several files: their ensemble).
"""

from __future__ import annotations

import argparse
import datetime
import io
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from medseg.data import drive_records
from medseg.engines import pooled_vessel_metrics
from medseg.engines.ensemble import join_checkpoints
from medseg.inference import LoadedModel, infer_files, load_model

from common import DATA, RESULTS, machine_line, markdown_table, shown


def gamma(value: float) -> Callable[[Image.Image], Image.Image]:
    def apply(image: Image.Image) -> Image.Image:
        return Image.fromarray((255 * (np.asarray(image) / 255.0) ** value).round().astype(np.uint8))
    return apply


def contrast(factor: float) -> Callable[[Image.Image], Image.Image]:
    def apply(image: Image.Image) -> Image.Image:
        pixels = np.asarray(image, dtype=np.float32)
        return Image.fromarray(np.clip(pixels.mean() + factor * (pixels - pixels.mean()), 0, 255).round().astype(np.uint8))
    return apply


def colour_balance(gains: tuple[float, float, float]) -> Callable[[Image.Image], Image.Image]:
    def apply(image: Image.Image) -> Image.Image:
        pixels = np.asarray(image, dtype=np.float32) * np.asarray(gains, dtype=np.float32)
        return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))
    return apply


def blur(radius: float) -> Callable[[Image.Image], Image.Image]:
    return lambda image: image.filter(ImageFilter.GaussianBlur(radius))


def jpeg(quality: int) -> Callable[[Image.Image], Image.Image]:
    def apply(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return apply


def noise(sigma: float, seed: int = 0) -> Callable[[Image.Image], Image.Image]:
    generator = np.random.default_rng(seed)

    def apply(image: Image.Image) -> Image.Image:
        pixels = np.asarray(image, dtype=np.float32) + generator.normal(0.0, sigma, size=np.asarray(image).shape)
        return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))
    return apply


CONDITIONS: dict[str, tuple[str, Callable[[Image.Image], Image.Image]]] = {
    "unaltered": ("DRIVE's own images", lambda image: image),
    "darker": ("gamma 1.8 (under-exposed)", gamma(1.8)),
    "brighter": ("gamma 0.55 (over-exposed)", gamma(0.55)),
    "low_contrast": ("contrast x0.5 about the mean", contrast(0.5)),
    "colour_cast": ("channel gains R 1.15, G 0.9, B 0.7", colour_balance((1.15, 0.9, 0.7))),
    "defocus": ("Gaussian blur, radius 1 pixel", blur(1.0)),
    "jpeg_q90": ("JPEG quality 90 (a camera's usual setting)", jpeg(90)),
    "jpeg_q75": ("JPEG quality 75", jpeg(75)),
    "jpeg_q40": ("JPEG quality 40 (heavy compression)", jpeg(40)),
    "sensor_noise": ("Gaussian noise, sigma 6 grey levels", noise(6.0)),
}
METRICS = ("f1", "auc_roc", "sensitivity", "specificity")


def score(model: LoadedModel, images: Path, masks: Path, out: Path,
          records: list[dict]) -> tuple[dict[str, float], float]:
    """Pooled FOV metrics of ``model`` on ``images`` through medseg's inference path, and its wall time."""
    start = time.perf_counter()
    infer_files(model.with_settings(fov=str(masks)), [images], out, save_prob="float16",
                progress=False).raise_for_failures()
    seconds = time.perf_counter() - start
    probabilities = {r["id"]: np.load(out / f"{r['id']}_test_prob.npy").astype(np.float32) for r in records}
    return pooled_vessel_metrics(probabilities, records), seconds


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("bundles/drive_vessel_unet"))
    parser.add_argument("--drive", type=Path, default=DATA / "DRIVE")
    parser.add_argument("--out", type=Path, default=RESULTS / "acquisition_shift.md")
    parser.add_argument("--checkpoint", type=Path, nargs="+", default=[],
                        help="other weights scored beside the bundle's models/model.pt (several: their ensemble)")
    args = parser.parse_args()
    records = drive_records(args.drive, "test")
    command = f"python bench/acquisition_shift.py --bundle {args.bundle} --drive {shown(args.drive)}"
    weights = {f"`{args.bundle}/models/model.pt`": load_model(args.bundle)}
    rows: dict[tuple[str, str], tuple[dict[str, float], float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint:
            command += " --checkpoint " + " ".join(map(str, args.checkpoint))
            joined = Path(tmp) / "weights.pt"
            torch.save(join_checkpoints(args.checkpoint), joined)
            weights[" + ".join(f"`{path}`" for path in args.checkpoint)] = load_model(args.bundle, checkpoint=joined)
        for name, (_, alter) in CONDITIONS.items():
            images = Path(tmp) / name
            images.mkdir()
            for record in records:
                alter(Image.open(record["image"]).convert("RGB")).save(images / f"{record['id']}_test.png")
            for k, (label, model) in enumerate(weights.items()):
                out = Path(tmp) / f"{name}_out{k}"
                rows[name, label] = score(model, images, args.drive / "test" / "mask", out, records)
                print(name, label, {m: round(rows[name, label][0][m], 4) for m in METRICS}, flush=True)
    lines = [
        "# DRIVE test images altered as other cameras alter them",
        "",
        f"- Date: {datetime.date.today()}. Machine: {machine_line()}, {torch.get_num_threads()} torch thread(s).",
        f"- Command: `{command}`",
        f"- The {len(records)} test images through `medseg infer` with the bundle's inference settings, FOV-pooled "
        "against 1st_manual, threshold 0.5. Deltas are against the unaltered images, same weights, same run.",
    ]
    for label in weights:
        reference = rows["unaltered", label][0]
        table = []
        for name, (change, _) in CONDITIONS.items():
            metrics, seconds = rows[name, label]
            delta_f1, delta_auc = metrics["f1"] - reference["f1"], metrics["auc_roc"] - reference["auc_roc"]
            table.append([name, change, *(f"{metrics[m]:.4f}" for m in METRICS), f"{delta_f1:+.4f}",
                          f"{delta_auc:+.4f}", f"{seconds:.0f}"])
        lines += ["", f"Weights: {label}", "",
                  *markdown_table(["condition", "change", *METRICS, "ΔF1", "ΔAUC-ROC", "infer s"], table, 2)]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main_bench()
