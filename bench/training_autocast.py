"""Training-step speed of the vessel bundles' recipe under each autocast setting, on this machine's CPU.

What ``autocast_dtype: auto`` (the CPU presets, ``configs/finetune.yaml``) is for: bf16 autocast doubles a step's
speed where the CPU computes bfloat16 natively (AMX, AVX512-BF16) and is far slower where oneDNN emulates it. Each
setting trains ``drive_vessel_unet``'s network (features 16-256) on random 96 x 96 batches of 16 patches (the
presets' 4 photographs x 4 patches), through ``medseg.engines.AutocastInferer`` (channels-last, as the trainer
runs it), Dice + BCE and Adam, in one process on one thread: ``WARM_UP`` steps, then ``STEPS`` timed ones. The
ratio is each setting's steps per second over float32's, measured in the same run.

    OMP_NUM_THREADS=1 taskset -c 0 python bench/training_autocast.py
"""

from __future__ import annotations

import datetime
import time

import torch
from monai.losses import DiceCELoss

from medseg.engines import AutocastInferer
from medseg.inference import native_bfloat16
from medseg.networks import UNet

from common import RESULTS, machine_line, markdown_table

RESULT = RESULTS / "training_autocast.md"
SETTINGS = (None, "bfloat16", "auto")
WARM_UP, STEPS = 3, 10
BATCH, PATCH = 16, 96


def steps_per_second(dtype: str | None) -> float:
    """Training steps per second of the recipe's network under ``AutocastInferer(dtype)``."""
    torch.manual_seed(0)
    network = UNet(spatial_dims=2, in_channels=3, out_channels=1, features=[16, 32, 64, 128, 256])
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    loss_function, inferer = DiceCELoss(sigmoid=True, lambda_dice=0.5), AutocastInferer(dtype)
    images = torch.randn(BATCH, 3, PATCH, PATCH)
    labels = (torch.rand(BATCH, 1, PATCH, PATCH) > 0.9).float()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_function(inferer(images, network), labels).backward()
        optimizer.step()

    for _ in range(WARM_UP):
        step()
    start = time.perf_counter()
    for _ in range(STEPS):
        step()
    return STEPS / (time.perf_counter() - start)


def main() -> None:
    torch.set_num_threads(1)
    speeds = {}
    for dtype in SETTINGS:
        speeds[dtype] = steps_per_second(dtype)
        print(dtype, f"{speeds[dtype]:.3f} steps/s", flush=True)
    auto = "bfloat16 autocast" if native_bfloat16("cpu") else "float32"
    names = {None: "null (float32)", "bfloat16": "bfloat16 (autocast everywhere)",
             "auto": f"auto (chose {auto}: {native_bfloat16('cpu') or 'no native bfloat16'})"}
    rows = [[names[dtype], f"{speeds[dtype]:.3f}", f"{speeds[dtype] / speeds[None]:.2f}x"] for dtype in SETTINGS]
    RESULT.write_text("\n".join([
        "# Training-step speed under each autocast setting",
        "",
        f"- Date: {datetime.date.today()}. Machine: {machine_line()}, 1 torch thread.",
        "- Command: `OMP_NUM_THREADS=1 taskset -c 0 python bench/training_autocast.py`",
        f"- `drive_vessel_unet`'s network, random {PATCH} x {PATCH} batches of {BATCH} patches, "
        f"`medseg.engines.AutocastInferer`, Dice + BCE, Adam: {WARM_UP} warm-up steps, {STEPS} timed.",
        "",
        *markdown_table(["autocast_dtype", "steps/s", "against float32, same run"], rows),
        "",
        *([f"`auto` chose {auto} here, the same steps as the `{'bfloat16' if native_bfloat16('cpu') else 'null'}` "
           "row: the difference between those two rows is the run's noise.", ""]),
    ]))
    print(RESULT.read_text())


if __name__ == "__main__":
    main()
