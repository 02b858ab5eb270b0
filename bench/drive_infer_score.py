"""The shipped DRIVE weights scored through `medseg infer --save-prob`, beside the numbers `medseg evaluate` recorded.

Runs `medseg infer BUNDLE DRIVE/test/images --fov DRIVE/test/mask --save-prob float16` (the bundle's own settings:
window, overlap, TTA, scale), pools every pixel inside the 20 FOV masks against `1st_manual`, and compares the
result with the `eval_metrics` of the bundle's metadata.json (written by `medseg bundle ship`, which runs
`medseg evaluate`). The probabilities pass through float16 files here, so the two agree to about 1e-4.

    python bench/drive_infer_score.py --bundle bundles/drive_vessel_unet --out bench/results/drive_infer_score.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medseg.cli import main
from medseg.data import drive_records
from medseg.engines import pooled_vessel_metrics

METRICS = ("f1", "auc_roc", "auc_pr", "sensitivity", "specificity", "accuracy")


def score_infer_outputs(bundle: Path, drive: Path, threshold: float) -> tuple[dict[str, float], float]:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        code = main(["infer", str(bundle), str(drive / "test" / "images"), "--fov", str(drive / "test" / "mask"),
                     "--output", out, "--save-prob", "float16"])
        seconds = time.perf_counter() - start
        if code != 0:
            raise SystemExit(f"medseg infer {bundle} failed")
        ids = [image.name.split("_")[0] for image in sorted((drive / "test" / "images").glob("*_test.tif"))]
        probabilities = {i: np.load(Path(out) / f"{i}_test_prob.npy").astype(np.float32) for i in ids}
    return pooled_vessel_metrics(probabilities, drive_records(drive, "test"), threshold), seconds


def cells(metrics: dict[str, float]) -> str:
    return " | ".join(f"{metrics[m]:.4f}" for m in METRICS)


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("bundles/drive_vessel_unet"))
    parser.add_argument("--drive", type=Path, default=Path("../shared/data/DRIVE"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/drive_infer_score.md"))
    args = parser.parse_args()
    recorded = json.loads((args.bundle / "configs" / "metadata.json").read_text())["eval_metrics"]
    scored, seconds = score_infer_outputs(args.bundle, args.drive, threshold=0.5)
    lines = [
        "# DRIVE test set scored through `medseg infer --save-prob`",
        "",
        f"- Date: {datetime.date.today()}. Machine: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}; infer took {seconds:.0f} s.",
        f"- Command: `python bench/drive_infer_score.py --bundle {args.bundle} --drive {args.drive}`",
        f"- Weights: `{args.bundle}/models/model.pt`; the 20 test images, FOV-pooled against 1st_manual, threshold 0.5.",
        "- `medseg evaluate`: the `eval_metrics` recorded in the bundle's metadata.json by `medseg bundle ship`.",
        "",
        f"| scored from | {' | '.join(METRICS)} |",
        f"|---|{'---:|' * len(METRICS)}",
        f"| `medseg infer --save-prob float16` | {cells(scored)} |",
        f"| `medseg evaluate` (metadata.json) | {cells({m: recorded['test_' + m] for m in METRICS})} |",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main_bench()
