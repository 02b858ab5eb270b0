"""The shipped DRIVE weights scored through `medseg infer --save-prob`, beside the numbers `medseg evaluate` recorded.

Runs what `medseg infer BUNDLE DRIVE/test/images --save-prob` runs (`medseg.inference.infer_files` with the
bundle's own settings: window, overlap, TTA, scale), twice: with its defaults (the automatic FOV estimate, 16-bit
probability PNGs) and with DRIVE's own FOV masks given and float16 files (`--fov DRIVE/test/mask --save-prob
float16`). Each run's files are read back, every pixel inside the 20 DRIVE FOV masks pooled against `1st_manual`,
and compared with the `eval_metrics` of the bundle's metadata.json (written by `medseg bundle ship`, which runs
`medseg evaluate`).

    python bench/drive_infer_score.py --bundle bundles/drive_vessel_unet --out bench/results/drive_infer_score.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from PIL import Image

from medseg.data import drive_records
from medseg.engines import pooled_vessel_metrics
from medseg.inference import DEFAULT_PROBABILITY_DTYPE, infer_files, load_model

from common import DATA, RESULTS, machine_line, markdown_table, shown

METRICS = ("f1", "auc_roc", "auc_pr", "sensitivity", "specificity", "accuracy")


def read_probabilities(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path).astype(np.float32)
    stored = np.asarray(Image.open(path))
    return stored.astype(np.float32) / (65535 if stored.dtype == np.uint16 else 255)


def score_infer_outputs(
    bundle: Path, drive: Path, threshold: float, fov: str | None, save_prob: str
) -> tuple[dict[str, float], float]:
    model = load_model(bundle)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        summary = infer_files(model.with_settings(fov=fov), [drive / "test" / "images"], out,
                              save_prob=save_prob, progress=False).raise_for_failures()
        seconds = time.perf_counter() - start
        probabilities = {path.name.split("_")[0]: read_probabilities(outputs["probabilities"])
                         for path, outputs in summary.written.items()}
    return pooled_vessel_metrics(probabilities, drive_records(drive, "test"), threshold), seconds


def cells(metrics: dict[str, float]) -> list[str]:
    return [f"{metrics[m]:.4f}" for m in METRICS]


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("bundles/drive_vessel_unet"))
    parser.add_argument("--drive", type=Path, default=DATA / "DRIVE")
    parser.add_argument("--out", type=Path, default=RESULTS / "drive_infer_score.md")
    args = parser.parse_args()
    recorded = json.loads((args.bundle / "configs" / "metadata.json").read_text())["eval_metrics"]
    defaults, seconds = score_infer_outputs(args.bundle, args.drive, 0.5, None, DEFAULT_PROBABILITY_DTYPE)
    masks_given, _ = score_infer_outputs(args.bundle, args.drive, 0.5, str(args.drive / "test" / "mask"), "float16")
    lines = [
        "# DRIVE test set scored through `medseg infer --save-prob`",
        "",
        f"- Date: {datetime.date.today()}. Machine: {machine_line()}, {torch.get_num_threads()} torch thread(s); "
        f"infer with its defaults took {seconds:.0f} s.",
        f"- Command: `python bench/drive_infer_score.py --bundle {args.bundle} --drive {shown(args.drive)}`",
        f"- Weights: `{args.bundle}/models/model.pt`; the 20 test images, FOV-pooled against 1st_manual, threshold 0.5.",
        "- `medseg evaluate`: the `eval_metrics` recorded in the bundle's metadata.json by `medseg bundle ship`.",
        "",
        *markdown_table(["scored from", *METRICS], [
            [f"`medseg infer --save-prob` (defaults: automatic FOV, {DEFAULT_PROBABILITY_DTYPE} PNG)", *cells(defaults)],
            ["`medseg infer --fov DRIVE/test/mask --save-prob float16`", *cells(masks_given)],
            ["`medseg evaluate` (metadata.json)", *cells({m: recorded["test_" + m] for m in METRICS})],
        ]),
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main_bench()
