"""Training-step speed, peak memory and FLOPs of the medseg networks next to MONAI's BasicUNet and UNet.

Every configuration (network x patch size x precision) runs in its own forked process: it builds the network
and a random batch, resets the process's peak resident set size (``/proc/self/clear_refs``), runs one warm-up
and a few timed forward+backward steps, and reports

- patches/s: batch size x timed steps / wall time of the timed steps,
- peak memory: ``VmHWM`` after the steps minus ``VmRSS`` before them (activations, gradients, workspaces;
  CPU has no allocator statistics, so the kernel's resident-set high-water mark is the measure, with glibc
  told to mmap large blocks so that the resident set follows the live tensors),
- GFLOPs per patch: one forward at batch 1 under ``torch.utils.flop_counter.FlopCounterMode`` (2 per MAC).

bf16 runs use ``torch.autocast("cpu", dtype=torch.bfloat16)``. A second table compares UNet with and without
activation checkpointing. Widths are CPU-sized (the same order of parameters for every network) so that the
whole run stays within minutes on two cores; ``--paper`` uses the published widths instead.

    python bench/networks.py --out bench/results/networks.md   # medseg installed, or PYTHONPATH=. in the repo
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import multiprocessing as mp
import os
import re
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import monai
import torch
import torch.nn as nn
from monai.networks.nets import BasicUNet
from monai.networks.nets import UNet as MonaiUNet
from torch.utils.flop_counter import FlopCounterMode

from medseg.networks import BackboneUNet, U2Net, U2NetLite, UNet

from common import RESULTS, machine_line, markdown_table

REFERENCE = "MONAI BasicUNet"
# (height, width) -> batch size, timed steps
SIZES: dict[tuple[int, int], tuple[int, int]] = {(64, 64): (4, 3), (256, 256): (1, 2), (584, 565): (1, 2)}
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def networks(paper: bool) -> dict[str, Callable[[], nn.Module]]:
    """Name -> builder; CPU-sized widths (1-3 M parameters each) unless ``paper``."""
    widths = (64, 128, 256, 512, 1024) if paper else (16, 32, 64, 128, 256)
    factor = 1.0 if paper else 0.25
    return {
        f"medseg UNet {widths}": lambda: UNet(2, 3, 1, features=widths),
        f"medseg BackboneUNet vgg16 x{factor}": lambda: BackboneUNet("vgg16", 3, 1, width_factor=factor),
        f"medseg BackboneUNet resnet50 x{factor}": lambda: BackboneUNet("resnet50", 3, 1, width_factor=factor),
        f"medseg U2Net x{factor}": lambda: U2Net(2, 3, 1, width_factor=factor),
        "medseg U2NetLite (published)": lambda: U2NetLite(2, 3, 1),
        REFERENCE: lambda: BasicUNet(2, 3, 1, features=(*widths, widths[0])),
        "MONAI UNet (2 res units)": lambda: MonaiUNet(2, 3, 1, channels=widths, strides=(2, 2, 2, 2), num_res_units=2),
    }


def serve_large_blocks_by_mmap() -> None:
    """Make glibc serve every block over 64 KiB with its own mmap, returned to the kernel on free.

    By default glibc raises that threshold up to 32 MiB at run time, after which freed activations stay in the
    heap and the resident set reports fragmentation instead of the live tensors; inherited by forked children.
    """
    if ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 64 * 1024) != 1:
        raise RuntimeError("mallopt(M_MMAP_THRESHOLD) failed; peak-memory readings would be unreliable")


def _proc_status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(match.group(1))


def _loss(output: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    outputs = output if isinstance(output, (list, tuple)) else [output]
    return sum(out.float().square().mean() for out in outputs)


def _measure(build: Callable[[], nn.Module], size: tuple[int, int], batch: int, steps: int, bf16: bool,
             count_flops: bool, checkpointing: bool) -> dict:  # fmt: skip
    torch.manual_seed(0)
    net = build().train()
    if checkpointing:
        net.checkpointing = True
    x = torch.randn(batch, 3, *size)

    def step() -> None:
        net.zero_grad(set_to_none=False)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = _loss(net(x))
        loss.backward()

    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark to the current RSS
    baseline = _proc_status_kib("VmRSS")
    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = time.perf_counter() - start
    result = {
        "patches_per_s": batch * steps / elapsed,
        "peak_mib": (_proc_status_kib("VmHWM") - baseline) / 1024,
        "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
    }
    if count_flops:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(x[:1])
        result["gflops"] = counter.get_total_flops() / 1e9
    return result


def _child(queue: mp.Queue, *args) -> None:
    try:
        queue.put(_measure(*args))
    except Exception as error:  # reported in the table, e.g. a network that rejects the size
        queue.put({"error": f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"})


def run_isolated(*args) -> dict:
    """Run :func:`_measure` in a forked process so that each peak-memory reading starts from a fresh heap."""
    queue = mp.get_context("fork").Queue()
    process = mp.get_context("fork").Process(target=_child, args=(queue, *args))
    process.start()
    result = queue.get()
    process.join()
    return result


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def speed_table(paper: bool) -> list[str]:
    rows = []
    builders = networks(paper)
    for size, (batch, steps) in SIZES.items():
        results = {}
        for name, build in builders.items():
            fp32 = run_isolated(build, size, batch, steps, False, True, False)
            bf16 = run_isolated(build, size, batch, steps, True, False, False)
            results[name] = (fp32, bf16)
            print(f"{size} {name}: fp32 {fp32} bf16 {bf16}", flush=True)
        ref_fp32, ref_bf16 = results[REFERENCE]
        for name, (fp32, bf16) in results.items():
            if "error" in fp32:
                rows.append([name, "", f"{size[0]}x{size[1]}", str(batch), f"fails: {fp32['error']}", *[""] * 6])
                continue
            ratio32 = fp32["patches_per_s"] / ref_fp32["patches_per_s"]
            ratio16 = bf16["patches_per_s"] / ref_bf16["patches_per_s"]
            rows.append([name, f"{fp32['params_m']:.2f}", f"{size[0]}x{size[1]}", str(batch), f"{fp32['gflops']:.2f}",
                         _fmt(fp32["patches_per_s"], 2), _fmt(fp32["peak_mib"], 0), _fmt(bf16["patches_per_s"], 2),
                         _fmt(bf16["peak_mib"], 0), f"{ratio32:.2f}", f"{ratio16:.2f}"])
    return markdown_table(["network", "params (M)", "patch", "batch", "GFLOPs/patch (fwd)", "fp32 patches/s",
                           "fp32 peak MiB", "bf16 patches/s", "bf16 peak MiB", f"fp32 speed vs {REFERENCE}",
                           f"bf16 speed vs {REFERENCE}"], rows)


def checkpointing_table() -> list[str]:
    rows = []
    cases = [
        ("medseg UNet (16, 32, 64, 128, 256)", (16, 32, 64, 128, 256), (584, 565), 1),
        ("medseg UNet (64, 128, 256, 512, 1024)", (64, 128, 256, 512, 1024), (256, 256), 1),
    ]
    for name, widths, size, batch in cases:
        build = lambda widths=widths: UNet(2, 3, 1, features=widths)  # noqa: E731
        plain = run_isolated(build, size, batch, 2, False, False, False)
        ckpt = run_isolated(build, size, batch, 2, False, False, True)
        print(f"checkpointing {name} {size}: plain {plain} checkpointed {ckpt}", flush=True)
        for label, result in (("off", plain), ("on", ckpt)):
            rows.append([name, f"{size[0]}x{size[1]}", str(batch), label, f"{result['patches_per_s']:.2f}",
                         f"{result['peak_mib']:.0f}", f"{result['peak_mib'] / plain['peak_mib']:.2f}",
                         f"{result['patches_per_s'] / plain['patches_per_s']:.2f}"])
    return markdown_table(["network", "patch", "batch", "checkpointing", "patches/s", "peak MiB", "peak vs plain",
                           "speed vs plain"], rows, text_columns=4)


def command() -> str:
    prefix = f"PYTHONPATH={os.environ['PYTHONPATH']} " if os.environ.get("PYTHONPATH") else ""
    return prefix + "python " + " ".join(shlex.quote(a) for a in sys.argv)


def machine() -> str:
    return f"{machine_line()}, MONAI {monai.__version__} ({torch.get_num_threads()} torch threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "networks.md")
    parser.add_argument("--paper", action="store_true", help="published widths instead of CPU-sized ones")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    serve_large_blocks_by_mmap()
    started = time.perf_counter()
    speed = speed_table(args.paper)
    memory = checkpointing_table()
    lines = [
        "# Network training-step benchmark",
        "",
        f"- Command: `{command()}`",
        f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- Machine: {machine()}",
        f"- Run time: {time.perf_counter() - started:.0f} s",
        "- Each cell: one forked process, 1 warm-up + N timed forward+backward steps (loss: mean square of all",
        "  outputs; U2Net in training mode returns 7). Timed steps: 3 at 64x64, 2 at 256x256 and 584x565.",
        "- Peak MiB: kernel resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs) minus",
        "  the resident set after building network and batch; covers activations, gradients and workspaces.",
        "  glibc is set to mmap every block over 64 KiB, so freed tensors leave the resident set at once.",
        "- GFLOPs/patch: one forward at batch 1 counted by torch.utils.flop_counter.FlopCounterMode.",
        f"- Speed ratios: patches/s divided by {REFERENCE} at the same patch size and precision, same run.",
        "- The machine is shared with other work, so absolute speeds vary between runs; ratios within a row",
        "  group are the comparison to read. MONAI UNet needs sizes divisible by 16 and fails at 584x565.",
        "",
        "## Speed, memory and FLOPs",
        "",
        *speed,
        "",
        "## Activation checkpointing (fp32)",
        "",
        *memory,
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.out.with_suffix(".md.tmp")
    temporary.write_text("\n".join(lines))
    os.replace(temporary, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
