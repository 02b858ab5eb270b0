"""Second-epoch iteration time of the DRIVE training pipeline: CacheDataset + ThreadDataLoader vs Dataset + DataLoader.

All loaders run in one process on the same records and transform chain (``vessel_transforms("train")``), one after
the other. The first epoch of a cached dataset pays for filling the cache (here: while building the dataset), so
the figure compared is the time to iterate the whole second epoch, the steady state of training (plus the median
over epochs 2..N, which is steadier on a shared machine). DataLoader workers are not persistent, so each of its
epochs includes starting them, as in a default training loop.

    python bench/data_loading.py --root ../shared/data/DRIVE --out bench/results/data_loading.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

import monai
import numpy as np
import psutil
import torch
from monai.data import DataLoader, Dataset, ThreadDataLoader

from medseg.data import cached_dataset, drive_records, vessel_transforms

from common import DATA, machine_line, markdown_table


def epoch_seconds(loader, epochs: int) -> list[float]:
    """Wall time of each full pass over ``loader``."""
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for batch in loader:
            batch["image"].sum()  # touch the batch, as a training step would
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=DATA / "DRIVE", help="DRIVE folder")
    parser.add_argument("--out", help="markdown file to write the results table to")
    parser.add_argument("--batch-size", type=int, default=4, help="images per batch (each gives --num-samples patches)")
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=5, help="epochs per setup (the median covers epochs 2..N)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="DataLoader worker processes")
    args = parser.parse_args()

    torch.set_num_threads(1)  # the loaders, not intra-op threading, are being compared
    records = drive_records(args.root, "training")
    transform = vessel_transforms("train", patch_size=(96, 96), num_samples=args.num_samples)
    setups = {
        f"Dataset + DataLoader(num_workers={args.workers}) (reference)": lambda: DataLoader(
            Dataset(records, transform), batch_size=args.batch_size, shuffle=True, num_workers=args.workers
        ),
        f"CacheDataset + DataLoader(num_workers={args.workers})": lambda: DataLoader(
            cached_dataset(records, transform), batch_size=args.batch_size, shuffle=True, num_workers=args.workers
        ),
        "CacheDataset + ThreadDataLoader(num_workers=0)": lambda: ThreadDataLoader(
            cached_dataset(records, transform), batch_size=args.batch_size, shuffle=True, num_workers=0
        ),
    }
    results = []
    for name, build in setups.items():
        monai.utils.set_determinism(seed=0)
        start = time.perf_counter()
        loader = build()
        build_seconds = time.perf_counter() - start
        first, second, *later = epoch_seconds(loader, epochs=max(2, args.epochs))
        steady = float(np.median([second, *later]))
        results.append((name, build_seconds, first, second, steady))
        print(f"{name}: build {build_seconds:.2f} s, epoch 1 {first:.2f} s, epoch 2 {second:.2f} s", flush=True)

    _, _, _, reference, reference_steady = results[0]
    rows = [[name, f"{build:.2f}", f"{first:.2f}", f"{second:.2f}", f"{reference / second:.1f}x", f"{steady:.2f}",
             f"{reference_steady / steady:.1f}x"] for name, build, first, second, steady in results]
    pythonpath = f"PYTHONPATH={os.environ['PYTHONPATH']} " if os.environ.get("PYTHONPATH") else ""
    command = f"{pythonpath}python " + " ".join(sys.argv)
    report = "\n".join(
        [
            "# DRIVE data loading: second-epoch iteration time",
            "",
            f"- Date: {datetime.date.today().isoformat()}",
            f"- Machine: {machine_line()}, MONAI {monai.__version__}; {psutil.virtual_memory().total / 2**30:.0f} GiB "
            f"RAM, load average at the end {os.getloadavg()[0]:.1f} (shared machine)",
            f"- Command: `{command}`",
            f"- Workload: {len(records)} DRIVE training images, `vessel_transforms('train')` (96x96 patches, "
            f"{args.num_samples} per image), batch size {args.batch_size} images",
            "",
            *markdown_table(["Setup", "build s (cache fill)", "epoch 1 s", "epoch 2 s", "epoch-2 speed-up vs reference",
                             f"median epoch 2-{max(2, args.epochs)} s", "median speed-up"], rows),
            "",
        ]
    )
    print(report)
    if args.out:
        tmp = f"{args.out}.tmp"
        with open(tmp, "w") as handle:
            handle.write(report)
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
