"""DRIVE ablation: the plain baseline, then one ingredient at a time up to medseg's preset and beyond.

Every row trains `bundles/drive_vessel_unet` (row `u2net_lite`: `bundles/drive_vessel_u2net`) for the same
wall-clock budget through `medseg train` (the baseline is the overlay `bench/drive_baseline/baseline.yaml`, the
preset is `configs/cpu_budget.yaml`), then scores the final weights with `medseg evaluate --split test`: the
20 test images, FOV-masked and pooled, at threshold 0.5 and at the threshold chosen on the validation images.
Rows marked "evaluation only" rescore another row's weights with different inference settings. An ensemble row
is one `medseg train` of a bundle whose `ensemble_members` is 2: it trains the members at the same time, one per
core (member k with seed S + 10 k, all on the validation split of seed S), and the row scores their ensemble.

Its rows are scored on the test images, and the recipes of versions 0.2.0 and 0.3.0 were chosen by this table:
it is a record of how the preset came about, not a place to compare candidates. Compare new candidates on
validation data with `bench/camera_transfer.py`, which scores test images only for rows already chosen.

    OMP_NUM_THREADS=1 taskset -c 0 python bench/drive_ablation.py run baseline --minutes 15 --out bench/work/ablation
    python bench/drive_ablation.py table --out bench/work/ablation > bench/results/drive_ablation.md

Pin each single-network run to one core (an ensemble row takes them all): two runs sharing the cores slow each
other down by an unpredictable factor, and the budget is wall-clock time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from medseg.engines.ensemble import member_folder
from medseg.tracking import training_record

from common import REPO, WORK, machine_line, markdown_table, shown
BUNDLE = "bundles/drive_vessel_unet"
BASELINE = "bench/drive_baseline/baseline.yaml"
PRESET = "configs/cpu_budget.yaml"
# bench/results/drive_ablation.md joins the runner's tables (`table`) with parts written by hand: its summary, the
# table of earlier runs and the prose read from the tables; each of those carries this mark
BY_HAND = ("*Recorded by hand on 2026-11-30, not written by a script: figures copied from the runner's tables or "
           "from the evaluations whose commands are named, means computed by hand.*")


@dataclass(frozen=True)
class Row:
    """One ablation row: what it adds, the config it trains with, and (for evaluation-only rows) whose weights."""

    ingredient: str
    overlay: str
    train_sets: tuple[str, ...] = ()
    eval_sets: tuple[str, ...] = ()
    weights_of: str | None = None
    notes: str = field(default="")
    bundle: str = BUNDLE
    members: int = 1


MEDSEG_UNET = ('network_def="%configs/train.yaml#network_def"', "network_features=[16,32,64,128,256]")
# the preset until 2026-11-30 (features 16 to 256, Dice and BCE weighted equally): the rows screened on it pin it
FLIP_TTA = ("network_features=[16,32,64,128,256]", "dice_weight=1.0")
ROWS: dict[str, Row] = {
    "baseline": Row("plain MONAI baseline (BasicUNet, fp32, batch 1x16, no jitter, no TTA)", BASELINE),
    "unet": Row("+ medseg UNet (batch norm, 1.9 M parameters)", BASELINE, MEDSEG_UNET),
    "bf16": Row("+ bf16 autocast (more steps in the budget)", BASELINE, (*MEDSEG_UNET, "autocast_dtype=bfloat16")),
    "mixed_batches": Row(
        "+ batches of 4 images x 4 patches",
        BASELINE,
        (*MEDSEG_UNET, "autocast_dtype=bfloat16", "batch_images=4", "patches_per_image=4", "val_interval=400"),
    ),
    "intensity_jitter": Row(
        "+ intensity jitter (gamma, scale, shift)", PRESET, FLIP_TTA, eval_sets=("tta=false",), weights_of="flip_tta",
        notes="evaluation only: the flip_tta weights without TTA",
    ),
    "flip_tta": Row("+ flip TTA (the preset until 2026-11-30)", PRESET, FLIP_TTA),
    "ema": Row("flip_tta + EMA of the weights (momentum 0.002)", PRESET, (*FLIP_TTA, "ema_momentum=0.002")),
    "clahe": Row("flip_tta + CLAHE green channel instead of RGB", PRESET, (*FLIP_TTA, "preprocessing=clahe")),
    "patch128": Row("flip_tta + 128x128 patches and windows", PRESET,
                    (*FLIP_TTA, "patch_size=[128,128]", "roi_size=[128,128]")),
    "scale_jitter": Row("flip_tta + scale jitter (zoom 1/1.25 to 1.25)", PRESET, (*FLIP_TTA, "scale_jitter=0.25")),
    "loss_mix": Row("flip_tta + Dice weighted 0.5 against BCE 1 (dice_weight)", PRESET, (*FLIP_TTA, "dice_weight=0.5")),
    "loss_bce": Row("flip_tta + Dice weighted 0.25 against BCE 1", PRESET, (*FLIP_TTA, "dice_weight=0.25")),
    "wide": Row("flip_tta + twice the width (features 32 to 512, 7.8 M parameters)", PRESET,
                (*FLIP_TTA, "network_features=[32,64,128,256,512]")),
    "wide_loss_mix": Row("+ twice the width and Dice weighted 0.5 (the preset of version 0.2.0)", PRESET,
                         ("network_features=[32,64,128,256,512]",)),
    "dihedral_tta": Row("wide_loss_mix + dihedral TTA (8 views instead of 3)", PRESET,
                        ("network_features=[32,64,128,256,512]",), eval_sets=("tta=dihedral",),
                        weights_of="wide_loss_mix", notes="evaluation only: the wide_loss_mix weights with dihedral TTA"),
    "preset": Row("+ Dice weighted 0.5, two networks at the classic width trained at once, their ensemble "
                  "= configs/cpu_budget.yaml", PRESET, members=2),
    "acquisition_jitter": Row("preset + acquisition jitter (blur and sensor noise on some patches)", PRESET,
                              ("acquisition_jitter=true",), members=2),
    "u2net_lite": Row(
        "U²-Net-lite bundle with the preset (fused output scored)", PRESET, ("val_interval=100",),
        bundle="bundles/drive_vessel_u2net",
    ),
}


def medseg_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "medseg", *args]


def member_dirs(row: Row, out: Path) -> list[Path]:
    """Where the row's networks are trained: the row's folder, or one folder per ensemble member in it."""
    return [out] if row.members == 1 else [member_folder(out, k) for k in range(row.members)]


def train_args(row: Row, minutes: float, seed: int, out: Path) -> list[str]:
    # the DRIVE U-Net preset is an ensemble: rows of one network on it say so
    members = [f"ensemble_members={row.members}"] if row.overlay == PRESET and row.bundle == BUNDLE else []
    sets = [*row.train_sets, *members, f"time_budget_minutes={minutes:g}", f"seed={seed}"]
    uri = f"sqlite:///{(out / 'mlflow.db').resolve()}"
    return ["train", row.bundle, "--config", row.overlay, *(a for s in sets for a in ("--set", s)),
            "--output-dir", str(out), "--tracking-uri", uri]


def evaluate_args(row: Row, seed: int, weights: list[Path], out: Path) -> list[str]:
    sets = [*row.train_sets, *row.eval_sets, f"seed={seed}"]
    return ["evaluate", row.bundle, "--config", row.overlay, *(a for s in sets for a in ("--set", s)),
            *(a for w in weights for a in ("--checkpoint", str(w))), "--split", "test",
            "--output-dir", str(out / "eval")]


def shell(args: list[str]) -> str:
    """The command as one would type it in the repository root."""
    line = " ".join(f"'{a}'" if any(c in a for c in ' "[]{}%$@') else a for a in ["medseg", *args])
    return line.replace(f"{REPO}/", "")


def run_row(name: str, minutes: float, seed: int, root: Path) -> dict:
    row = ROWS[name]
    out = root / f"{name}_seed{seed}"
    result: dict = {"row": name, "ingredient": row.ingredient, "notes": row.notes, "minutes": minutes, "seed": seed}
    if row.weights_of is None:
        args = train_args(row, minutes, seed, out)
        start = time.perf_counter()
        subprocess.run(medseg_command(*args), cwd=REPO, check=True)
        weights = [member / "checkpoints" / "model.pt" for member in member_dirs(row, out)]
        # the steps of each network, from the MLflow run that wrote the weights
        training = training_record(weights, f"sqlite:///{(out / 'mlflow.db').resolve()}")
        if training is None:
            raise SystemExit(f"{out}: no MLflow run of the training that wrote {weights[0]}")
        counts = training["steps"]
        result.update(train_command=shell(args), train_wall_s=time.perf_counter() - start,
                      steps=counts[0] if row.members == 1 else counts)
    else:
        source = json.loads((root / f"{row.weights_of}_seed{seed}" / "result.json").read_text())
        result.update(train_command=f"weights of row {row.weights_of}", steps=source["steps"])
        weights = [member / "checkpoints" / "model.pt"
                   for member in member_dirs(ROWS[row.weights_of], root / f"{row.weights_of}_seed{seed}")]
    args = evaluate_args(row, seed, weights, out)
    subprocess.run(medseg_command(*args), cwd=REPO, check=True)
    report = json.loads((out / "eval" / "metrics_test.json").read_text())
    result.update(evaluate_command=shell(args), threshold_half=report["threshold_0.5"],
                  threshold_val=report["threshold_val"], date=datetime.date.today().isoformat())
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return result


def row_commands(result: dict, root: Path) -> str:
    """The row's commands as the current row definitions and configs write them (rows screened on an earlier
    preset pin its values, so they reproduce that run)."""
    name, seed = result["row"], result["seed"]
    row, out = ROWS[name], root / f"{name}_seed{seed}"
    if row.weights_of is None:
        train = f"`{shell(train_args(row, result['minutes'], seed, out))}`"
        weights = [member / "checkpoints" / "model.pt" for member in member_dirs(row, out)]
    else:
        train = f"weights of row `{row.weights_of}`"
        source = ROWS[row.weights_of]
        weights = [member / "checkpoints" / "model.pt"
                   for member in member_dirs(source, root / f"{row.weights_of}_seed{seed}")]
    return f"{train} then `{shell(evaluate_args(row, seed, weights, out))}`"


def steps(result: dict) -> str:
    """Training steps of the row's network, or of each ensemble member."""
    counts = result["steps"] if isinstance(result["steps"], list) else [result["steps"]]
    return " + ".join(f"{count:,}" for count in counts)


def table(root: Path) -> str:
    results = [json.loads(p.read_text()) for p in sorted(root.glob("*/result.json"))]
    order = list(ROWS)
    results.sort(key=lambda r: (r["minutes"], order.index(r["row"]), r["seed"]))
    rows = [[r["row"], ROWS[r["row"]].ingredient, f"{r['minutes']:g}", str(r["seed"]), steps(r),
             *(f"{r['threshold_half'][metric]:.4f}" for metric in ("f1", "auc_roc", "auc_pr", "sensitivity", "specificity")),
             f"{r['threshold_val']['f1']:.4f} ({r['threshold_val']['threshold']:.3f})"] for r in results]
    lines = markdown_table(["row", "ingredient", "budget (min)", "seed", "steps", "F1 @0.5", "AUC-ROC", "AUC-PR", "Se",
                            "Sp", "F1 @val thr (thr)"], rows, text_columns=2)
    commands = [f"- `{r['row']}` (seed {r['seed']}, {r['minutes']:g} min): {row_commands(r, root)}"
                + (f"; {ROWS[r['row']].notes}" if ROWS[r["row"]].notes else "") for r in results]
    written = f"*Written by `python bench/drive_ablation.py table --out {shown(root)}` from the rows' `result.json`.*"
    return "\n".join([written, "", *lines, "", f"Machine: {machine_line()}. Rows run on {sorted({r['date'] for r in results})}.", "",
                      "Commands (run from the repository root, one core per network):", "", *commands, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="train (unless evaluation only) and evaluate rows")
    run.add_argument("rows", nargs="+", choices=list(ROWS))
    run.add_argument("--minutes", type=float, default=50.0, help="wall-clock training budget of each row")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", type=Path, default=WORK / "ablation")
    show = sub.add_parser("table", help="markdown table of the finished rows")
    show.add_argument("--out", type=Path, default=WORK / "ablation")
    args = parser.parse_args()
    if args.action == "table":
        print(table(args.out))
        return
    for name in args.rows:
        result = run_row(name, args.minutes, args.seed, args.out.resolve())
        print(json.dumps({k: result[k] for k in ("row", "steps", "threshold_half")}, indent=2))


if __name__ == "__main__":
    main()
