"""Scale-aware fundus inference: DRIVE test images upscaled x2 and x4, scored with and without resampling.

For each factor, the first N DRIVE test images and their FOV masks are resized (bilinear / nearest), run through
`medseg infer` with `--scale auto` and `--scale none`, the probability maps are resized back to 565x584, and the
pooled FOV metrics against 1st_manual are compared with the native-size run of the same weights.

    python bench/scale_aware.py --bundle bundles/drive_vessel_unet --drive ../shared/data/DRIVE --out bench/results/scale_aware.md
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
from medseg.inference import LoadedModel, infer_files, load_model

from common import DATA, RESULTS, machine_line, markdown_table, shown


def run(model: LoadedModel, images: Path, masks: Path, out: Path, scale: str, ids: list[str]) -> tuple[dict, float]:
    """Probabilities of ``model`` on ``images`` through medseg's inference path at ``scale``, resized back to
    DRIVE's 565x584, and the wall time."""
    start = time.perf_counter()
    infer_files(model.with_settings(fov=str(masks), scale=scale), [images], out, save_prob="float16",
                progress=False).raise_for_failures()
    probs = {}
    for i in ids:
        p = np.load(out / f"{i}_test_prob.npy").astype(np.float32)[0]
        probs[i] = np.asarray(Image.fromarray(p).resize((565, 584), Image.BILINEAR))
    return probs, time.perf_counter() - start


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("bundles/drive_vessel_unet"))
    parser.add_argument("--drive", type=Path, default=DATA / "DRIVE")
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "scale_aware.md")
    args = parser.parse_args()
    test_records = drive_records(args.drive, "test")
    ids = [f"{i:02d}" for i in range(1, args.images + 1)]
    version = json.loads((args.bundle / "configs" / "metadata.json").read_text())["version"]
    model = load_model(args.bundle)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        native_dir = tmp / "native"
        native_dir.mkdir()
        for i in ids:
            (native_dir / f"{i}_test.tif").symlink_to((args.drive / "test" / "images" / f"{i}_test.tif").resolve())
        probs, seconds = run(model, native_dir, args.drive / "test" / "mask", tmp / "out_native", "auto", ids)
        reference = pooled_vessel_metrics(probs, test_records)
        rows.append(("1 (native 565x584)", "-", reference, seconds))
        for factor in (2, 4):
            images, masks = tmp / f"x{factor}_images", tmp / f"x{factor}_masks"
            images.mkdir(), masks.mkdir()
            for i in ids:
                image = Image.open(args.drive / "test" / "images" / f"{i}_test.tif")
                size = (image.width * factor, image.height * factor)
                image.resize(size, Image.BILINEAR).save(images / f"{i}_test.png")
                mask = Image.open(args.drive / "test" / "mask" / f"{i}_test_mask.gif").convert("L")
                mask.resize(size, Image.NEAREST).save(masks / f"{i}_test_mask.png")
            for scale in ("auto", "none"):
                probs, seconds = run(model, images, masks, tmp / f"out_x{factor}_{scale}", scale, ids)
                rows.append((f"{factor} ({565 * factor}x{584 * factor})", scale, pooled_vessel_metrics(probs, test_records), seconds))
    lines = [
        "# Scale-aware fundus inference",
        "",
        f"- Date: {datetime.date.today()}",
        f"- Machine: {machine_line()}, {torch.get_num_threads()} torch thread(s)",
        f"- Command: `python bench/scale_aware.py --bundle {args.bundle} --drive {shown(args.drive)} "
        f"--images {args.images}`",
        f"- Weights: `{args.bundle}/models/model.pt` of bundle version {version}; DRIVE test images {ids[0]}-{ids[-1]} "
        "upscaled (bilinear, masks "
        "nearest), probabilities resized back to 565x584, FOV-pooled metrics at threshold 0.5 against 1st_manual.",
        "",
        *markdown_table(["upscale", "--scale", "F1", "AUC-ROC", "Se", "Sp", "dF1 vs native", "dAUC vs native", "wall s"],
                        [[upscale, scale, *(f"{m[key]:.4f}" for key in ("f1", "auc_roc", "sensitivity", "specificity")),
                          f"{m['f1'] - reference['f1']:+.4f}", f"{m['auc_roc'] - reference['auc_roc']:+.4f}",
                          f"{seconds:.0f}"] for upscale, scale, m, seconds in rows], text_columns=2),
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main_bench()
