"""Benchmark: the shipped bundles' inference against the previous defaults, plain MONAI and the CPU's matmul peak.

Cases, each ``medseg.inference.infer_files`` over files (what ``medseg infer`` runs) with a shipped bundle:

- ``drive``: the 20 DRIVE test photographs (``bundles/drive_vessel_unet``), probabilities saved as 16-bit PNGs
  and scored from the files (FOV-pooled F1 and AUC-ROC against 1st_manual, DRIVE's FOV masks);
- ``photo3504``: one 3504 x 2336 photograph (DRIVE's 01_test enlarged 4x, centred on black: a high-resolution
  camera; ``--scale auto`` brings it to the training FOV width);
- ``photo8192``: one 8192 x 8192 photograph (01_test tiled: the network runs over all of it; a mosaic has no one
  field of view, so this case runs with ``fov: none`` and its masks are compared over every pixel);
- ``volume``: one 512 x 512 x 256 uint8 NIfTI volume (tiles of DRIVE's grey test images), the 2D network slice
  by slice along the last axis.

Methods, each case and method in its own process (its peak RSS is its own), one intra-op thread:

- ``previous``: the defaults before this benchmark's change: float32 on PyTorch, the layers as trained (no folding
  or fusion), the bundle's validation window, overlap and ``sw_batch_size`` (96 x 96, 0.5, 16);
- ``medseg``: the bundle's inference settings (``configs/inference.yaml``: its window, overlap, ``sw_batch_size``
  and precision) on PyTorch, BN folded, conv + ReLU fused, 2x max pooling as strided maxima (its runtime ``auto``
  is the ``openvino_bf16`` row on a CPU with bf16, where OpenVINO is installed);
- ``openvino_bf16`` / ``openvino_int8``: the bundle's defaults on the OpenVINO runtime (``runtime: openvino``) at
  precision bfloat16 (OpenVINO's ``bf16`` hint) or int8 (NNCF, calibrated on windows of the bundle's training
  photographs); conversion and calibration happen before the clock starts (they are cached once per weights);
- ``monai``: the call a MONAI user writes with the same network: the image as float32, standardised as at
  training, ``sliding_window_inference(x, roi, sw_batch_size=16, network)`` with MONAI's defaults (overlap
  0.25, constant blending, no TTA), sigmoid, masks written as PNGs (fundus scale and FOV not applied).

Every forward pass is counted (pixels through the network) and multiplied by the network's FLOPs per pixel at
the window size (``torch.utils.flop_counter``, 2 per multiply-add), giving achieved GFLOP/s, compared with the
1-thread fp32 and bf16 matmul peaks (2048 x 2048, best of 10) measured in the same run (those of every core as
well, printed only: a peak quoted for the whole machine is not the one a 1-thread row can reach). Each row's
ceiling is the speed-up over ``previous`` its FLOPs would give at the 1-thread bf16 peak. ``--train-step`` adds
the training step of the CPU preset (``configs/cpu_budget.yaml``: the bundle's U-Net, 16 patches of 96 x 96,
bf16 autocast, Dice + BCE, AdamW) against MONAI's BasicUNet baseline (``bench/drive_baseline``, float32, the
same batch), in patches/s and GFLOP/s (forward and backward counted). ``--processes`` compares one process of
one thread with ``torchrun --nproc_per_node 2`` of one thread each on the DRIVE photographs, each launch timed
``PROCESS_REPEATS`` times in turns, their medians compared.

``--cohort N`` adds the cohort row: N DRIVE-sized photographs (the test photographs repeated) through ``medseg infer
--runtime auto`` with every core in use, as one process of every core's threads and as ``torchrun`` processes of one
thread each, the faster launch giving photographs per hour. The windows chosen on the validation photographs are
``bench/inference_windows.py``'s; the run against the defaults before them, ``bench/inference_acceptance.py``'s.

    python bench/inference.py --out bench/results/inference.md
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import torch

import common
from common import DATA, REPO, RESULTS, machine_line, markdown_table

WORK = common.WORK / "inference"
BUNDLE = REPO / "bundles" / "drive_vessel_unet"
CASES = {
    "drive": "DRIVE test, 20 photographs 565 x 584",
    "photo3504": "one photograph 3504 x 2336",
    "photo8192": "one photograph 8192 x 8192",
    "volume": "one volume 512 x 512 x 256, slice by slice",
}
METHODS = ("previous", "medseg", "openvino_bf16", "openvino_int8", "monai")
# the OpenVINO methods: their precision, on the bundle's other settings
OPENVINO_METHODS = {"openvino_bf16": "bfloat16", "openvino_int8": "int8"}
PREVIOUS_SW_BATCH_SIZE = 16
# the window and overlap before they were chosen on validation photographs (bench/inference_windows.py)
PREVIOUS_WINDOW = ((96, 96), 0.5)
# two processes on a 2-core host are at the mercy of what else runs there: each launch is timed this many times
PROCESS_REPEATS = 3
# what the plain MONAI call runs with (the settings of the bundle do not apply to it)
MONAI_SETTINGS = {"precision": "float32", "sw_batch_size": 16}


def matmul_peak(dtype: torch.dtype, threads: int = 1, size: int = 2048, repeats: int = 10) -> float:
    """Best GFLOP/s of a ``size``-square matmul in ``dtype`` on ``threads`` intra-op threads."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        for _ in range(3):
            a @ b
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous_threads)
    return 2 * size**3 / best / 1e9


def matmul_peaks() -> dict[str, float]:
    """The fp32 and bf16 peaks of one thread (what every row runs on), and of every core."""
    cores = os.cpu_count() or 1
    return {
        "float32": matmul_peak(torch.float32),
        "bfloat16": matmul_peak(torch.bfloat16),
        "float32_all_cores": matmul_peak(torch.float32, cores),
        "bfloat16_all_cores": matmul_peak(torch.bfloat16, cores),
    }


def ceiling_vs_previous(result: dict, previous: dict, peaks: dict) -> float:
    """The speed-up over ``previous`` that ``result``'s FLOPs would give if every one ran at the bf16 peak."""
    return previous["wall_s"] / (result["gflop"] / peaks["bfloat16"])


def make_inputs(case: str, drive: Path, folder: Path) -> list[Path]:
    """The case's input files, written once into ``folder``."""
    from PIL import Image

    if case == "drive":
        return [drive / "test" / "images"]
    folder.mkdir(parents=True, exist_ok=True)
    photo = np.asarray(Image.open(drive / "test" / "images" / "01_test.tif").convert("RGB"))
    if case == "photo3504":
        path = folder / "photo3504.png"
        if not path.exists():
            enlarged = np.asarray(Image.fromarray(photo).resize((565 * 4, 584 * 4), Image.BICUBIC))[:2336]
            canvas = np.zeros((2336, 3504, 3), np.uint8)
            left = (3504 - enlarged.shape[1]) // 2
            canvas[:, left : left + enlarged.shape[1]] = enlarged
            Image.fromarray(canvas).save(path)
        return [path]
    if case == "photo8192":
        path = folder / "photo8192.png"
        if not path.exists():
            Image.fromarray(np.tile(photo, (15, 15, 1))[:8192, :8192]).save(path)
        return [path]
    path = folder / "volume.nii.gz"
    if not path.exists():
        import nibabel as nib

        greys = [np.asarray(Image.open(p).convert("L")) for p in sorted((drive / "test" / "images").glob("*.tif"))]
        slices = [np.tile(greys[k % len(greys)], (2, 2))[:512, :512] for k in range(256)]
        nib.save(nib.Nifti1Image(np.stack(slices, axis=-1), np.eye(4)), path)
    return [path]


class PixelCounter:
    """Counts the pixels (batch x spatial) of every forward pass of the module it is attached to."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.pixels = 0
        module.register_forward_pre_hook(self._count)

    def _count(self, module: torch.nn.Module, args: tuple) -> None:
        x = args[0]
        self.pixels += x.shape[0] * int(np.prod(x.shape[2:]))


def flops_per_pixel(network: torch.nn.Module, roi: tuple[int, ...]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network(torch.zeros(1, 3, *roi))
    return counter.get_total_flops() / float(np.prod(roi))


def child(case: str, method: str, drive: Path, out: Path) -> dict:
    """One case with one method, in this process; returns wall time, FLOPs, peak RSS."""
    from monai.inferers import sliding_window_inference

    from medseg.inference import (
        InferenceNetwork,
        LoadedModel,
        infer_files,
        load_model,
        prepare_network,
        read_image,
        write_mask,
    )

    torch.set_num_threads(1)
    inputs = make_inputs(case, drive, WORK / "inputs")
    model = load_model(BUNDLE)
    settings = model.settings
    if case == "photo8192":  # the FOV estimate would keep one of the mosaic's 225 discs and zero the rest
        settings = replace(settings, fov="none")
    if method == "previous":
        settings = replace(settings, precision="float32", sw_batch_size=PREVIOUS_SW_BATCH_SIZE, runtime="torch",
                           roi_size=PREVIOUS_WINDOW[0], sw_overlap=PREVIOUS_WINDOW[1])
    if method in OPENVINO_METHODS:
        settings = replace(settings, runtime="openvino", precision=OPENVINO_METHODS[method])
    if method.startswith("medseg@"):  # the sweep: the bundle's defaults at another sw_batch_size
        settings = replace(settings, sw_batch_size=int(method.split("@")[1]))
    if method.startswith("window@"):  # the window candidates: the bundle's defaults at another window and overlap
        roi, overlap = method.split("@")[1].split(",")
        settings = replace(settings, roi_size=(int(roi), int(roi)), sw_overlap=float(overlap))
    per_pixel = flops_per_pixel(model.network, settings.roi_size)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if method == "monai":
        counter = PixelCounter(model.network)
        files = sorted(p for path in inputs for p in (path.glob("*.tif") if path.is_dir() else [path]))
        for path in files:
            image, meta = read_image(path)
            x = torch.from_numpy(np.ascontiguousarray(image)).float()
            if meta.is_volume:  # the 2D network over each slice: slices as a batch of grey images, repeated to RGB
                x = x[0].movedim(-1, 0)[:, None].expand(-1, 3, -1, -1)
            else:
                x = x[None]
            x = (x - x.mean()) / x.std()
            with torch.no_grad():
                probs = torch.cat([
                    torch.sigmoid(sliding_window_inference(part, settings.roi_size, 16, model.network))
                    for part in x.split(16)
                ])
            mask = (probs[:, 0] >= 0.5).to(torch.uint8).numpy()
            mask = mask.transpose(1, 2, 0) if meta.is_volume else mask[0] * 255
            write_mask(out / f"{path.name.split('.')[0]}_mask{'.nii.gz' if meta.is_volume else '.png'}", mask, meta)
    else:
        if method in OPENVINO_METHODS:  # converted (and calibrated) before the clock starts, as the cache would be
            network = prepare_network(LoadedModel(model.network, settings, model.training_images))
            start = time.perf_counter()
        else:
            network = InferenceNetwork(model.network, "cpu", settings.precision, 2, fuse=method != "previous")
        counter = PixelCounter(network)
        infer_files(LoadedModel(network, settings), inputs, out, save_prob="uint16", progress=False).raise_for_failures()
    wall = time.perf_counter() - start
    return {
        "wall_s": wall,
        "gflop": counter.pixels * per_pixel / 1e9,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **(MONAI_SETTINGS if method == "monai" else {"precision": settings.precision,
                                                     "sw_batch_size": settings.sw_batch_size}),
    }


def measure(case: str, method: str, drive: Path) -> dict:
    command = [sys.executable, __file__, "--child", case, method, "--drive", str(drive)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{case} {method} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def read_probabilities(folder: Path, stem: str) -> np.ndarray:
    from PIL import Image

    stored = np.asarray(Image.open(folder / f"{stem}_prob.png"))
    return stored.astype(np.float32) / 65535


def read_masks(folder: Path) -> dict[str, np.ndarray]:
    import nibabel as nib
    from PIL import Image

    masks = {}
    for path in sorted(folder.glob("*_mask.*")):
        data = np.asanyarray(nib.load(path).dataobj) if path.name.endswith(".nii.gz") else np.asarray(Image.open(path))
        masks[path.name.split("_mask")[0]] = data > 0
    return masks


def drive_quality(folder: Path, drive: Path) -> dict[str, float]:
    from medseg.data import drive_records
    from medseg.engines import pooled_vessel_metrics

    records = drive_records(drive, "test")
    probabilities = {Path(r["image"]).name.split("_")[0]: read_probabilities(folder, Path(r["image"]).stem)
                     for r in records}
    return pooled_vessel_metrics(probabilities, records, 0.5)


def mask_agreement(folder: Path, reference: Path, drive: Path, case: str) -> float:
    """Fraction of pixels (DRIVE: inside the FOV masks) with the same mask as in ``reference``."""
    from medseg.data.drive import read_binary

    ours, theirs = read_masks(folder), read_masks(reference)
    pairs = []
    for stem, mask in theirs.items():
        inside = np.ones(mask.shape, bool)
        if case == "drive":
            inside = read_binary(drive / "test" / "mask" / f"{stem}_mask.gif").astype(bool)
        pairs.append((ours[stem], mask, inside))
    return common.same_mask_share(pairs)


def train_steps(network: str, seconds: float = 20.0) -> dict:
    """Patches/s and GFLOP/s of the CPU preset's training step for ``network`` ("medseg" or "monai")."""
    from monai.bundle import ConfigParser
    from monai.losses import DiceCELoss
    from torch.utils.flop_counter import FlopCounterMode

    from medseg.engines import AutocastInferer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    parser = ConfigParser()
    if network == "medseg":
        parser.read_config([str(BUNDLE / "configs" / "train.yaml"), str(REPO / "configs" / "cpu_budget.yaml")])
    else:
        parser.read_config([str(BUNDLE / "configs" / "train.yaml"), str(REPO / "bench" / "drive_baseline" / "baseline.yaml")])
    parser.update({"bundle_root": str(BUNDLE), "ensemble_members": 1})
    model = parser.get_parsed_content("network_def", instantiate=True).train()
    batch = int(parser["batch_images"]) * int(parser["patches_per_image"])
    # the preset's setting as the trainer resolves it on this CPU ("auto": bfloat16 only where it is native)
    resolved = AutocastInferer(parser.get("autocast_dtype")).dtype_for(torch.device("cpu"))
    dtype = str(resolved).removeprefix("torch.") if resolved is not None else None
    x = torch.randn(batch, 3, 96, 96).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, 1, 96, 96) > 0.85).float()
    model = model.to(memory_format=torch.channels_last)
    loss_function = DiceCELoss(sigmoid=True)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            logits = model(x)
        logits = logits[0] if isinstance(logits, (list, tuple)) else logits
        loss_function(logits.float(), y).backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        step()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    wall = time.perf_counter() - start
    return {"patches_per_s": steps * batch / wall, "gflop_per_s": counter.get_total_flops() * steps / wall / 1e9,
            "batch": batch, "precision": dtype or "float32"}


def processes_comparison(drive: Path, photographs: int, repeats: int = PROCESS_REPEATS) -> dict:
    """Wall and inference times of one process of one thread and of two torchrun processes of one thread each:
    ``repeats`` runs of each, the two launches taking turns so that a slower spell of a shared host falls on both."""
    folder = WORK / "processes_inputs"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for path in sorted((drive / "test" / "images").glob("*.tif"))[:photographs]:
        shutil.copy(path, folder / path.name)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = ["-m", "medseg", "infer", str(BUNDLE), str(folder), "--overwrite"]
    launchers = {"1 process": [sys.executable],
                 "torchrun, 2 processes": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                           "--nproc_per_node", "2"]}
    runs: dict[str, list[dict]] = {name: [] for name in launchers}
    for _ in range(repeats):
        for name, launcher in launchers.items():
            with tempfile.TemporaryDirectory() as out:
                start = time.perf_counter()
                result = subprocess.run([*launcher, *base, "-o", out], check=True, env=env, capture_output=True,
                                        text=True)
                wall = time.perf_counter() - start
            # the summary's time: reading, predicting and writing (the slowest rank), without start-up and loading
            runs[name].append({"wall": wall, "inference": float(re.search(r"in (\d+\.\d+) s", result.stdout).group(1))})
    return {name: {key: float(np.median([run[key] for run in launched])) for key in ("wall", "inference")}
            | {"inference_runs": [run["inference"] for run in launched]} for name, launched in runs.items()}


def cohort(drive: Path, photographs: int) -> dict:
    """Photographs per hour for ``photographs`` DRIVE-sized photographs through ``medseg infer --runtime auto`` with
    every core: one process of every core's threads, and ``torchrun`` with one process of one thread per core."""
    cores = os.cpu_count() or 1
    folder = WORK / "cohort_inputs"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    tests = sorted((drive / "test" / "images").glob("*.tif"))
    for index in range(photographs):
        shutil.copy(tests[index % len(tests)], folder / f"{index:03d}_{tests[index % len(tests)].name}")
    base = ["-m", "medseg", "infer", str(BUNDLE), str(folder), "--runtime", "auto"]
    launches = {f"1 process, {cores} threads": ([sys.executable], cores),
                f"torchrun, {cores} processes of 1 thread": ([sys.executable, "-m", "torch.distributed.run",
                                                             "--standalone", "--nproc_per_node", str(cores)], 1)}
    walls = {}
    for name, (launcher, threads) in launches.items():
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            subprocess.run([*launcher, *base, "-o", out], check=True, capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            walls[name] = time.perf_counter() - start
        print("cohort", name, walls[name], flush=True)
    fastest = min(walls, key=walls.get)
    return {"photographs": photographs, "walls": walls, "fastest": fastest,
            "per_hour": photographs / walls[fastest] * 3600}


def cohort_report(cohort_row: dict | None) -> str:
    """The cohort row as Markdown (nothing when it was not asked for)."""
    if not cohort_row:
        return ""
    launches = ", ".join(f"{name}: {wall:.1f} s" for name, wall in cohort_row["walls"].items())
    return ("\n## Cohort\n\n"
            f"{cohort_row['photographs']} DRIVE-sized photographs through `medseg infer --runtime auto` with every core "
            f"in use ({launches}): **{cohort_row['per_hour']:.0f} photographs per hour** ({cohort_row['fastest']}).\n")


def read_log(path: Path) -> tuple[dict, dict[str, dict[str, dict]], dict[int, dict]]:
    """The peaks, case rows and sweep rows that a run printed: ``peaks {...}``, ``CASE METHOD {...}`` (or ``row CASE
    METHOD {...}``) and ``sweep B {...}`` lines, each dict as JSON or as Python prints it."""
    peaks, measured, sweep = {}, {}, {}
    for line in path.read_text().splitlines():
        words = line.removeprefix("row ").split(" ", 2)
        if words[0] == "peaks":
            peaks = ast.literal_eval(line.split(" ", 1)[1])
        elif words[0] in CASES and len(words) == 3 and words[2].startswith("{"):
            values = ast.literal_eval(words[2])
            # a log written before the monai rows said their own settings held the bundle's instead
            measured.setdefault(words[0], {})[words[1]] = {**values, **MONAI_SETTINGS} if words[1] == "monai" else values
        elif words[0] == "sweep" and len(words) == 3:
            sweep[int(words[1])] = ast.literal_eval(words[2])
    return peaks, measured, sweep


def read_command(path: Path) -> str:
    return next(line.partition(" ")[2] for line in path.read_text().splitlines() if line.startswith("command "))


def _ratio(value: float | None) -> str:
    """``1.23x``, or ``-`` where the reference was not measured in the run."""
    return "-" if value is None or math.isnan(value) else f"{value:.2f}x"


def _all_cores(peaks: dict) -> str:
    if "bfloat16_all_cores" not in peaks:  # logs of runs that measured one thread only
        return ""
    return (f" ({os.cpu_count()} threads: fp32 {peaks['float32_all_cores']:.0f}, "
            f"bf16 {peaks['bfloat16_all_cores']:.0f})")


def _seconds(launch: dict) -> str:
    return ", ".join(f"{t:.1f}" for t in launch["inference_runs"]) + " s"


def _row_cells(row: dict, peaks: dict) -> list[str]:
    """One measured row of the main table, as its cells."""
    quality = row.get("quality")
    return [CASES[row["case"]], row["method"], row["precision"], str(row["sw_batch_size"]), f"{row['wall_s']:.1f}",
            f"{row['peak_rss_mib']:.0f}", f"{row['gflop']:.0f}", f"{row['gflop'] / row['wall_s']:.0f}",
            f"{100 * row['gflop'] / row['wall_s'] / peaks['bfloat16']:.1f}", _ratio(row["vs_previous"]),
            _ratio(row.get("ceiling")), _ratio(row["vs_monai"]), f"{100 * row['agreement']:.3f}%",
            *((f"{quality['f1']:.4f}", f"{quality['auc_roc']:.4f}") if quality else ("-", "-"))]


def report(
    rows: list[dict],
    peaks: dict,
    sweep: dict[int, dict],
    train: list[dict],
    processes: dict | None,
    command: str,
    windows: dict[str, dict] | None = None,
    source: str | None = None,
) -> str:
    from medseg.inference import native_bfloat16

    lines = [
        "# Inference benchmark: the shipped bundles against the previous defaults, plain MONAI and the matmul peak",
        "",
        f"- Date: {date.today().isoformat()}. Machine: {machine_line()}; native bf16: "
        f"{native_bfloat16('cpu') or 'none'}.",
        f"- Command: `{command}`",
        *([f"- {source}"] if source else []),
        "- Every row: one process, one intra-op thread (`OMP_NUM_THREADS=1`), `medseg.inference.infer_files` with "
        "`bundles/drive_vessel_unet` (ensemble of 2 U-Nets, flip TTA: 3 views; `previous` at 96 x 96 windows and "
        "overlap 0.5, the others at the bundle's), except `monai` (see the script's docstring).",
        f"- Matmul peak of this run (1 thread, 2048^2): fp32 {peaks['float32']:.0f} GFLOP/s, "
        f"bf16 {peaks['bfloat16']:.0f} GFLOP/s{_all_cores(peaks)}. GFLOP: network FLOPs of every forward pass "
        "(2 per multiply-add).",
        "- Ceiling: the speed-up over `previous` that a row's FLOPs would give if all of them ran at the 1-thread "
        "bf16 peak; a row with the FLOPs of `previous` cannot be faster than that.",
        "- `previous`: float32, layers as trained, sw_batch_size 16 (the defaults before this change). `medseg`: "
        "the bundle's window, overlap, sw_batch_size and precision (auto) on PyTorch (BN folded, conv + ReLU fused, 2x "
        "max pooling as strided maxima); its runtime auto is the `openvino_bf16` row on a CPU with bf16.",
        f"- Load average when the run ended: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.",
    ]
    if rows:
        lines += ["", *markdown_table(
            ["case", "method", "precision", "sw batch", "wall (s)", "peak RSS (MiB)", "GFLOP", "GFLOP/s",
             "% of bf16 peak", "speed vs previous", "ceiling vs previous", "speed vs monai", "same mask as previous",
             "F1", "AUC-ROC"], [_row_cells(row, peaks) for row in rows], text_columns=3)]
    if sweep:
        fastest = min(result["wall_s"] for result in sweep.values())
        lines += [
            "",
            f"## sw_batch_size sweep: {CASES['drive']}, the bundle's defaults otherwise",
            "",
            *markdown_table(["sw_batch_size (windows x 3 TTA views per forward)", "wall (s)", "vs fastest",
                             "peak RSS (MiB)"],
                            [[str(batch), f"{result['wall_s']:.1f}", f"{result['wall_s'] / fastest:.2f}x",
                              f"{result['peak_rss_mib']:.0f}"] for batch, result in sweep.items()], text_columns=0),
        ]
    if windows:
        lines += [
            "",
            f"## Window candidates: {CASES['drive']}, the bundle's defaults otherwise (bf16 where native)",
            "",
            "The criterion: at least 99.9 % of the FOV pixels with the mask of the previous float32 defaults "
            "(96 x 96 at overlap 0.5), F1 and AUC-ROC within 0.0005 of theirs.",
            "",
            *markdown_table(
                ["window, overlap", "wall (s)", "GFLOP", "ceiling vs previous", "same mask as previous", "F1", "AUC-ROC"],
                [[f"{candidate.split(',')[0]} x {candidate.split(',')[0]}, overlap {candidate.split(',')[1]}",
                  f"{result['wall_s']:.1f}", f"{result['gflop']:.0f}", _ratio(result.get("ceiling")),
                  f"{100 * result['agreement']:.3f}%", f"{result['quality']['f1']:.4f}",
                  f"{result['quality']['auc_roc']:.4f}"] for candidate, result in windows.items()]),
        ]
    if train:
        lines += [
            "",
            "## Training step of the CPU preset (`configs/cpu_budget.yaml`)",
            "",
        ]
        reference = train[-1]["patches_per_s"]
        lines += markdown_table(
            ["network", "precision", "batch", "patches/s", "GFLOP/s (fwd + bwd)", "% of bf16 peak",
             "patches/s vs MONAI baseline"],
            [[name, row["precision"], str(row["batch"]), f"{row['patches_per_s']:.1f}", f"{row['gflop_per_s']:.0f}",
              f"{100 * row['gflop_per_s'] / peaks['bfloat16']:.1f}", f"{row['patches_per_s'] / reference:.2f}x"]
             for name, row in zip(("medseg U-Net member (preset)", "MONAI BasicUNet (baseline)"), train)], 2)
    if processes:
        one, two = processes["1 process"], processes["torchrun, 2 processes"]
        lines += [
            "",
            f"## More than one process: `medseg infer bundles/drive_vessel_unet` on {processes['photographs']} DRIVE "
            "photographs",
            "",
            "Inference time: what `medseg infer` reports (reading, predicting, writing; the slowest rank), without "
            "the interpreter's start-up and the model's loading, which the wall time includes. Each launch ran "
            f"{len(one['inference_runs'])} times, the two taking turns; the table gives the medians "
            f"(every run's inference time: 1 process {_seconds(one)}, 2 processes {_seconds(two)}).",
            "",
            *markdown_table(["launch", "wall (s)", "inference (s)", "throughput vs 1 process (inference)", "(wall)"], [
                ["`python -m medseg infer`, 1 thread", f"{one['wall']:.1f}", f"{one['inference']:.1f}", "1.00x", "1.00x"],
                ["`torchrun --standalone --nproc_per_node 2 -m medseg infer`, 1 thread each", f"{two['wall']:.1f}",
                 f"{two['inference']:.1f}", f"{one['inference'] / two['inference']:.2f}x",
                 f"{one['wall'] / two['wall']:.2f}x"]]),
        ]
    return "\n".join(lines) + "\n"


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--drive", type=Path, default=DATA / "DRIVE")
    parser.add_argument("--train-step", action="store_true", help="add the training-step table")
    parser.add_argument("--batch-sweep", type=int, nargs="*", default=[], metavar="B",
                        help="add a table of the drive case at these sw_batch_size values (defaults otherwise)")
    parser.add_argument("--windows", nargs="*", default=[], metavar="ROI,OVERLAP",
                        help="add a table of the drive case at these windows (e.g. 192,0.25), against the masks "
                        "of the previous defaults that a --cases drive run left in bench/work")
    parser.add_argument("--processes", type=int, default=0, metavar="N",
                        help="add the 1-process vs 2-process comparison on N DRIVE photographs")
    parser.add_argument("--out", type=Path, default=RESULTS / "inference.md")
    parser.add_argument("--render-log", type=Path, metavar="LOG",
                        help="take the cases and the sweep from the log of an earlier run (its stdout) instead of "
                        "measuring them again; agreement and quality are computed from its files in bench/work")
    parser.add_argument("--cohort", type=int, default=0, metavar="N",
                        help="add the cohort row: photographs per hour for N DRIVE-sized photographs, every core")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "METHOD"), help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    if args.child:
        case, method = args.child
        print(json.dumps(child(case, method, args.drive, WORK / "outputs" / case / method)))
        return
    torch.set_num_threads(1)
    measured: dict[str, dict[str, dict]] = {}
    sweep: dict[int, dict] = {}
    if args.render_log:  # a long run's measurements, from its log; its output files are still in bench/work
        peaks, measured, sweep = read_log(args.render_log)
        for batch in args.batch_sweep:  # measured again when asked
            shutil.rmtree(WORK / "outputs" / "drive" / f"medseg@{batch}", ignore_errors=True)
            sweep[batch] = measure("drive", f"medseg@{batch}", args.drive)
            print("sweep", batch, json.dumps(sweep[batch]), flush=True)
    else:
        peaks = matmul_peaks()
        print("command python bench/inference.py " + " ".join(sys.argv[1:]), flush=True)
        print("peaks", json.dumps(peaks), flush=True)
        for case in args.cases:
            shutil.rmtree(WORK / "outputs" / case, ignore_errors=True)
            measured[case] = {}
            for method in args.methods:
                measured[case][method] = measure(case, method, args.drive)
                print("row", case, method, json.dumps(measured[case][method]), flush=True)
        for batch in args.batch_sweep:
            sweep[batch] = measure("drive", f"medseg@{batch}", args.drive)
            print("sweep", batch, json.dumps(sweep[batch]), flush=True)
    rows = []
    for case, results in measured.items():
        for method, result in results.items():
            folder = WORK / "outputs" / case / method
            result.update(case=case, method=method,
                          vs_previous=results["previous"]["wall_s"] / result["wall_s"] if "previous" in results else float("nan"),
                          vs_monai=results["monai"]["wall_s"] / result["wall_s"] if "monai" in results else float("nan"),
                          ceiling=ceiling_vs_previous(result, results["previous"], peaks)
                          if "previous" in results else float("nan"),
                          agreement=mask_agreement(folder, WORK / "outputs" / case / "previous", args.drive, case)
                          if "previous" in results else float("nan"))
            if case == "drive" and method != "monai":
                result["quality"] = drive_quality(folder, args.drive)
            rows.append(result)
    windows = {}
    for candidate in args.windows:
        method = f"window@{candidate}"
        shutil.rmtree(WORK / "outputs" / "drive" / method, ignore_errors=True)
        windows[candidate] = measure("drive", method, args.drive)
        folder = WORK / "outputs" / "drive" / method
        windows[candidate].update(quality=drive_quality(folder, args.drive),
                                  ceiling=ceiling_vs_previous(windows[candidate], measured["drive"]["previous"], peaks)
                                  if "previous" in measured.get("drive", {}) else float("nan"),
                                  agreement=mask_agreement(folder, WORK / "outputs" / "drive" / "previous", args.drive,
                                                           "drive"))
        print("window", candidate, windows[candidate], flush=True)
    train = [train_steps("medseg"), train_steps("monai")] if args.train_step else []
    processes = None
    if args.processes:
        processes = {**processes_comparison(args.drive, args.processes), "photographs": args.processes}
    command = "python bench/inference.py " + " ".join(sys.argv[1:])
    source = None
    if args.render_log:
        source = (f"The cases table: measured by `{read_command(args.render_log)}` (its log: "
                  f"`{args.render_log.relative_to(REPO) if args.render_log.is_absolute() else args.render_log}`), "
                  "rendered by the command above, which measured the other tables.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cohort_row = cohort(args.drive, args.cohort) if args.cohort else None
    args.out.write_text(report(rows, peaks, sweep, train, processes, command.strip(), windows, source)
                        + cohort_report(cohort_row))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
