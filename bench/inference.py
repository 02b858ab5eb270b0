"""Benchmark: medseg.inference.predict against a plain MONAI sliding_window_inference call.

Cases: a 4096 x 4096 and a 8192 x 8192 RGB uint8 image (2D U-Net, roi 256) and a 512 x 512 x 256 int16 volume
(3D U-Net, roi 96). Each (case, method) runs in a fresh subprocess, so its peak RSS (ru_maxrss) is its own:

- ``monai``: the plain call a user would write: the image as a float32 tensor scaled to [0, 1], then
  ``sliding_window_inference(x, roi, 1, net)`` with MONAI's defaults (sw_batch_size=1, overlap 0.25,
  constant blending) under ``torch.no_grad()``, then a sigmoid;
- ``predict``: ``predict(net, image, roi_size=roi)`` with its defaults (uint8/int16 input, sw_batch_size 1 on
  the CPU, gaussian blending, float32, channels-last for 2D);
- ``predict-bf16``: the same with ``precision="bfloat16"``.

Agreement with ``monai`` (mean |p - p_monai| and mask agreement at 0.5) is measured on every 8th pixel.
Each measurement is repeated ``--repeats`` times, methods alternating; the table keeps the fastest wall time
and the largest peak RSS (the CPU is shared, so the fastest run is the least disturbed one).

Usage: ``python bench/inference.py [--cases rgb4096 rgb8192 volume] [--repeats 2] [--out FILE.md]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

CASES = {
    "rgb4096": {"shape": (3, 4096, 4096), "roi": (256, 256), "label": "RGB 4096 x 4096"},
    "rgb8192": {"shape": (3, 8192, 8192), "roi": (256, 256), "label": "RGB 8192 x 8192"},
    "volume": {"shape": (1, 512, 512, 256), "roi": (96, 96, 96), "label": "volume 512 x 512 x 256"},
}
METHODS = ("monai", "predict", "predict-bf16")
WORK = Path(__file__).resolve().parent / "work"
SUBSAMPLE = 8


def network(spatial_dims: int) -> torch.nn.Module:
    from medseg.networks import UNet

    torch.manual_seed(0)
    features = (4, 8, 16, 32) if spatial_dims == 2 else (4, 8, 16)
    return UNet(spatial_dims=spatial_dims, in_channels=3 if spatial_dims == 2 else 1, features=features).eval()


def make_input(case: dict) -> np.ndarray:
    rng = np.random.default_rng(0)
    if len(case["shape"]) == 3:
        return rng.integers(0, 256, case["shape"], dtype=np.uint8)
    return rng.integers(0, 1000, case["shape"], dtype=np.int16)


def child(case_name: str, method: str, threads: int) -> None:
    """Run one case with one method; print a JSON line with wall time, CPU time and peak RSS."""
    from monai.inferers import sliding_window_inference

    from medseg.inference import predict

    torch.set_num_threads(threads)

    case = CASES[case_name]
    net = network(len(case["roi"]))
    image = make_input(case)
    scale = 255.0 if image.dtype == np.uint8 else 1000.0
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    if method == "monai":
        inputs = torch.from_numpy(image)[None].float() / scale
        with torch.no_grad():
            probs = torch.sigmoid(sliding_window_inference(inputs, case["roi"], 1, net))[0]
    else:
        probs = predict(
            net,
            image,
            roi_size=case["roi"],
            normalization=lambda windows: windows / scale,
            precision="bfloat16" if method == "predict-bf16" else "float32",
        )
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    sample = probs[(slice(None), *[slice(None, None, SUBSAMPLE)] * (probs.ndim - 1))].float().numpy()
    WORK.mkdir(exist_ok=True)
    np.save(WORK / f"{case_name}_{method}.npy", sample)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "peak_rss_mib": peak_mib}))


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(case_name: str, method: str, threads: int) -> dict:
    command = [sys.executable, __file__, "--child", case_name, method, "--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def baseline_rss_mib() -> float:
    """Peak RSS of a process that only imports torch, MONAI and medseg (the floor under every case)."""
    code = "import resource, torch, monai, medseg.inference; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout) / 1024


def agreement(case_name: str, method: str) -> tuple[float, float]:
    reference = np.load(WORK / f"{case_name}_monai.npy")
    ours = np.load(WORK / f"{case_name}_{method}.npy")
    return float(np.abs(ours - reference).mean()), float(((ours >= 0.5) == (reference >= 0.5)).mean())


def report(rows: list[dict], command: str) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    lines = [
        "# Sliding-window inference benchmark",
        "",
        f"- Date: {date.today().isoformat()}",
        f"- Machine: {cpu}, {os.cpu_count()} cores (shared with other jobs), torch {torch.__version__}, "
        f"{rows[0]['threads']} intra-op thread(s) per run, Python {platform.python_version()}",
        "- Why one thread: on this shared 2-core machine a 2-thread run stalls at every OpenMP barrier when "
        "another job holds a core (repeated 2-thread runs varied up to 17x); one thread keeps wall times "
        "comparable. CPU seconds are reported too; the speed ratios below use wall time.",
        f"- Command: `{command}`",
        "- Networks: medseg UNet, 2D features (4, 8, 16, 32), roi 256 x 256; 3D features (4, 8, 16), roi 96^3 "
        "(small, so that the run fits on a shared 2-core CPU)",
        f"- Import-only process peak RSS (floor under every row): {rows[0]['floor_mib']:.0f} MiB",
        "- `monai`: float32 input in [0, 1], `sliding_window_inference(x, roi, 1, net)` with MONAI's defaults "
        "(sw_batch_size 1, overlap 0.25, constant blending), no_grad, sigmoid after stitching.",
        "- `predict`: `medseg.inference.predict` defaults (stored-dtype input, sw_batch_size 1 on the CPU, "
        "overlap 0.25, gaussian blending, sigmoid per window, float32, channels-last for 2D); "
        "`predict-bf16` adds `precision=\"bfloat16\"`.",
        f"- Best of {rows[0]['repeats']} runs per row (methods alternating): fastest wall time, largest peak RSS; "
        f"load average when the run ended: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.",
        "- Agreement with `monai` on every 8th pixel: mean |p - p_monai|, and fraction of equal masks at 0.5.",
        "",
        "| Case | Method | Wall (s) | CPU (s) | Mpx or Mvox / s | Peak RSS (MiB) | Speed vs monai | "
        "CPU-time speed vs monai | RSS vs monai | mean abs diff | mask agreement |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['label']} | {row['method']} | {row['wall_s']:.1f} | {row['cpu_s']:.1f} | {row['throughput']:.2f} | "
            f"{row['peak_rss_mib']:.0f} | {row['speedup']:.2f}x | {row['cpu_speedup']:.2f}x | {row['rss_ratio']:.2f}x | "
            f"{row['diff']:.4f} | {100 * row['agree']:.2f}% |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "inference.md")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--threads", type=int, default=1, help="intra-op threads per run (1: immune to OpenMP oversubscription)"
    )
    parser.add_argument("--child", nargs=2, metavar=("CASE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.threads)
        return
    floor = baseline_rss_mib()
    rows = []
    for case_name in args.cases:
        case = CASES[case_name]
        runs: dict[str, list[dict]] = {method: [] for method in METHODS}
        for _ in range(args.repeats):
            for method in METHODS:
                runs[method].append(measure(case_name, method, args.threads))
                print(case_name, method, runs[method][-1], flush=True)
        results = {
            method: {
                "wall_s": min(r["wall_s"] for r in measured),
                "cpu_s": min(r["cpu_s"] for r in measured),
                "peak_rss_mib": max(r["peak_rss_mib"] for r in measured),
            }
            for method, measured in runs.items()
        }
        reference = results["monai"]
        for method in METHODS:
            result = results[method]
            diff, agree = agreement(case_name, method)
            rows.append({
                "label": case["label"], "method": method, **result, "floor_mib": floor, "repeats": args.repeats, "threads": args.threads,
                "throughput": np.prod(case["shape"][1:]) / 1e6 / result["wall_s"],
                "speedup": reference["wall_s"] / result["wall_s"],
                "cpu_speedup": reference["cpu_s"] / result["cpu_s"],
                "rss_ratio": result["peak_rss_mib"] / reference["peak_rss_mib"],
                "diff": diff, "agree": agree,
            })
    command = "python bench/inference.py " + " ".join(sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(rows, command.strip()))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
