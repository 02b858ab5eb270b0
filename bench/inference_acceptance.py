"""Benchmark: ``medseg infer`` with a bundle's inference defaults against the defaults before the windows were chosen
by quality (PyTorch, 96 x 96 at overlap 0.5, forced by flags), in one run on this host.

Every row is one ``python -m medseg infer BUNDLE INPUTS -o DIR`` process with one intra-op thread
(``OMP_NUM_THREADS=1``; OpenVINO takes PyTorch's thread budget), its methods' flags:

- ``float32``: ``--runtime torch --precision float32 --roi 96 --sw-overlap 0.5 --sw-batch-size 4``, the reference
  of the answers (run on the cases that are scored);
- ``before``: ``--runtime torch --precision auto --roi 96 --sw-overlap 0.5 --sw-batch-size 4``, the defaults before
  (bf16 where the CPU computes it);
- ``defaults``: no flags: the bundle's ``configs/inference.yaml`` as shipped.

Cases: DRIVE test (20 photographs), LES-AV test (11), one 3504 x 2336 photograph (DRIVE's 01_test enlarged 4x on
black) and one 8192 x 8192 photograph (01_test tiled; ``--fov none``), made as ``bench/inference.py`` makes them (its
docstring says why the mosaic has no FOV). Inference time is what ``medseg infer`` reports (reading, predicting,
writing; the network prepared before it, OpenVINO's conversion read from its cache, which one untimed run on one
photograph fills first); wall is the whole process, start-up and loading included; peak RSS is the process's.

DRIVE and LES-AV test also write probabilities (``--save-prob uint16``), scored against their labels (FOV-pooled F1
and AUC-ROC at 0.5 inside each dataset's FOV masks) and compared with ``float32``'s: the answers are the same when
F1 and AUC-ROC are within ``SAME_SCORE`` and at least ``SAME_MASK`` of the FOV pixels keep their mask (the owner's
criterion, issue #37). Nothing here chose a setting: the windows were chosen on validation photographs
(``bench/inference_windows.py``); these test figures only check them.

    python bench/inference_acceptance.py bundles/drive_vessel_unet

writes ``bench/results/inference_acceptance_<bundle>_<instructions>.md`` (e.g. ``_avx2``, ``_avx512-bf16``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

from medseg.inference import native_bfloat16
from medseg.tracking import cpu_instructions

import common
from common import DATA, RESULTS, machine_line, markdown_table, shown
from inference import make_inputs
from inference_windows import SAME_MASK, SAME_SCORE

TARGET_SPEED_UP = 3.0
TARGET_PEAK_RSS_MIB = 3 * 1024
BEFORE = ["--runtime", "torch", "--roi", "96", "--sw-overlap", "0.5", "--sw-batch-size", "4"]
METHODS = {
    "float32": [*BEFORE, "--precision", "float32"],
    "before": [*BEFORE, "--precision", "auto"],
    "defaults": [],
}
SCORED = ("drive", "les_av")
CASES = {
    "drive": "DRIVE test, 20 photographs 565 x 584",
    "les_av": "LES-AV test, 11 photographs 1620 x 1444",
    "photo3504": "one photograph 3504 x 2336",
    "photo8192": "one photograph 8192 x 8192 (--fov none)",
}


def case_inputs(case: str, data: Path, folder: Path) -> tuple[list[Path], list[str]]:
    """The inputs of ``case`` (the large photographs of ``bench/inference.py``, written once under ``folder``) and
    the case's extra flags."""
    if case == "les_av":
        return [data / "LES-AV" / "test" / "images"], []
    return make_inputs(case, data / "DRIVE", folder), (["--fov", "none"] if case == "photo8192" else [])


def run_infer(bundle: Path, inputs: list[Path], out: Path, flags: list[str]) -> dict:
    """One ``medseg infer`` process of one thread: its reported inference time, wall time and peak RSS (from the
    kernel's accounting of that process, reaped by ``os.wait4``)."""
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "medseg", "infer", str(bundle), *map(str, inputs), "-o", str(out), *flags]
    log = out.parent / f"{out.name}.log"
    with log.open("w") as stream:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    printed = log.read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{printed[-3000:]}")
    reported = re.search(r"medseg infer: .* in ([0-9.]+) s", printed)
    return {"inference_s": float(reported.group(1)), "wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024}


def scored_records(case: str, data: Path) -> tuple[list[dict[str, str]], tuple[int, ...] | None]:
    """The test records of a scored case (each with its FOV mask) and the label values that mean vessel."""
    from medseg.data import LES_AV_LABEL_POSITIVE, drive_records, les_av_records

    if case == "drive":
        return drive_records(data / "DRIVE", "test"), None
    return les_av_records(data / "LES-AV", "test"), LES_AV_LABEL_POSITIVE


def read_output(folder: Path, image: Path, kind: str) -> np.ndarray:
    """What ``medseg infer`` wrote for ``image``: its probabilities (``kind`` "prob", in [0, 1]) or its mask."""
    from medseg.data.files import read_pixels

    stored = read_pixels(folder / f"{image.name.split('.')[0]}_{kind}.png")
    return stored.astype(np.float32) / 65535 if kind == "prob" else stored > 0


def scores(case: str, data: Path, folder: Path) -> dict[str, float]:
    """FOV-pooled F1 and AUC-ROC at 0.5 of the probabilities in ``folder`` against the case's labels."""
    from medseg.engines import pooled_vessel_metrics

    records, positive = scored_records(case, data)
    probabilities = {record["id"]: read_output(folder, Path(record["image"]), "prob") for record in records}
    computed = pooled_vessel_metrics(probabilities, records, 0.5, label_positive=positive)
    return {"f1": computed["f1"], "auc_roc": computed["auc_roc"]}


def same_mask(case: str, data: Path, folder: Path, reference: Path) -> float:
    """The share of pixels (inside the FOV masks for a scored case, else all) whose mask is the reference's."""
    from medseg.data import read_binary

    if case in SCORED:
        records, _ = scored_records(case, data)
        named = [(Path(r["image"]), read_binary(r["mask"]).astype(bool)) for r in records]
    else:
        named = [(Path(path.name.removesuffix("_mask.png")), None) for path in sorted(reference.glob("*_mask.png"))]
    pairs = []
    for image, inside in named:
        ours, theirs = read_output(folder, image, "mask"), read_output(reference, image, "mask")
        pairs.append((ours, theirs, np.ones(theirs.shape, bool) if inside is None else inside))
    return common.same_mask_share(pairs)


def measure(bundle: Path, cases: list[str], data: Path) -> dict[str, dict[str, dict]]:
    """Each case with each method (``float32`` only where it is scored), after one untimed run per method."""
    work = common.WORK / "inference_acceptance" / bundle.name
    warm_up = [data / "DRIVE" / "test" / "images" / "01_test.tif"]
    for method, flags in METHODS.items():  # fills OpenVINO's cache and the page cache before any clock runs
        run_infer(bundle, warm_up, work / "warm_up" / method, flags)
    rows: dict[str, dict[str, dict]] = {}
    for case in cases:
        inputs, flags = case_inputs(case, data, work / "inputs")
        rows[case] = {}
        for method, method_flags in METHODS.items():
            if method == "float32" and case not in SCORED:
                continue
            folder = work / case / method
            scored = ["--save-prob", "uint16"] if case in SCORED else []  # what AUC-ROC needs
            row = run_infer(bundle, inputs, folder, [*method_flags, *flags, *scored])
            rows[case][method] = row | {"folder": folder}
            if case in SCORED:
                rows[case][method]["scores"] = scores(case, data, folder)
            print(case, method, {k: v for k, v in rows[case][method].items() if k != "folder"}, flush=True)
        for method, row in rows[case].items():
            reference = rows[case]["float32" if case in SCORED else "before"]
            row["same_mask"] = same_mask(case, data, row["folder"], reference["folder"])
    return rows


def verdicts(rows: dict[str, dict[str, dict]]) -> list[str]:
    """The acceptance points, each with what this run measured."""
    lines = []
    for case in ("drive", "photo3504", "photo8192"):
        if case not in rows:
            continue
        defaults, before = rows[case]["defaults"], rows[case]["before"]
        speed_up = before["inference_s"] / defaults["inference_s"]
        memory = "" if case == "drive" else f", peak RSS {defaults['peak_rss_mib']:.0f} MiB"
        met = speed_up >= TARGET_SPEED_UP and (case == "drive" or defaults["peak_rss_mib"] <= TARGET_PEAK_RSS_MIB)
        lines.append(f"- {CASES[case]}: {speed_up:.2f}x faster than before{memory} "
                     f"(target {TARGET_SPEED_UP:.0f}x{'' if case == 'drive' else ' within 3 GiB'}): "
                     f"**{'met' if met else 'not met'}**.")
    for case in SCORED:
        if case not in rows:
            continue
        reference, defaults = rows[case]["float32"]["scores"], rows[case]["defaults"]
        gaps = {key: abs(defaults["scores"][key] - reference[key]) for key in reference}
        met = max(gaps.values()) <= SAME_SCORE and defaults["same_mask"] >= SAME_MASK
        lines.append(f"- {CASES[case]}: F1 {gaps['f1']:.4f} and AUC-ROC {gaps['auc_roc']:.4f} from float32's, "
                     f"{defaults['same_mask']:.3%} of FOV pixels with its mask (targets {SAME_SCORE}, "
                     f"{SAME_MASK:.1%}): **{'the same answers' if met else 'not the same answers'}**.")
    return lines


def report(bundle: Path, rows: dict[str, dict[str, dict]], command: str) -> str:
    header = ["case", "method", "inference (s)", "wall (s)", "peak RSS (MiB)", "speed vs before (inference)",
              "(wall)", "F1", "AUC-ROC", "same mask as reference"]
    table = []
    for case, methods in rows.items():
        for method, row in methods.items():
            before = methods["before"]
            quality = ([f"{row['scores']['f1']:.4f}", f"{row['scores']['auc_roc']:.4f}"] if "scores" in row
                       else ["-", "-"])
            table.append([CASES[case], method, f"{row['inference_s']:.1f}", f"{row['wall_s']:.1f}",
                          f"{row['peak_rss_mib']:.0f}", f"{before['inference_s'] / row['inference_s']:.2f}x",
                          f"{before['wall_s'] / row['wall_s']:.2f}x", *quality, f"{row['same_mask']:.3%}"])
    flags = "; ".join(f"`{method}`: `{' '.join(flags) or '(none)'}`" for method, flags in METHODS.items())
    lines = [
        f"# `medseg infer` with `{bundle.name}`'s defaults against the defaults before", "",
        f"- Date: {date.today().isoformat()}. Machine: {machine_line()}; native bf16: "
        f"{native_bfloat16('cpu') or 'none (precision auto is float32)'}.",
        f"- Command: `{command}`",
        f"- Every row: one `python -m medseg infer {bundle.name} INPUTS -o DIR` process, one intra-op thread "
        f"(`--save-prob uint16` on DRIVE and LES-AV test, whose AUC-ROC needs them). Methods' flags: {flags}.",
        "- Inference: the time `medseg infer` reports (reading, predicting, writing); wall: the whole process. The "
        "reference of `same mask` is `float32` on DRIVE and LES-AV test (inside their FOV masks), `before` on the "
        "large photographs (every pixel). Test figures check settings chosen on validation photographs "
        "(`bench/inference_windows.py`); nothing here chose one.",
        "", "## Acceptance (issue #37)", "", *verdicts(rows), "",
        *markdown_table(header, table, text_columns=2), "",
    ]
    return "\n".join(lines)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--data", type=Path, default=DATA, help="the folder holding DRIVE/ and LES-AV/")
    parser.add_argument("--out", type=Path,
                        help="default: bench/results/inference_acceptance_<bundle>_<instructions>.md, one per kind of "
                             "CPU (e.g. _avx2, _avx512-bf16: precision auto is bfloat16 on some)")
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    rows = measure(args.bundle.resolve(), args.cases, args.data)
    command = "python bench/inference_acceptance.py " + " ".join([shown(args.bundle.resolve()), *sys.argv[2:]])
    kind = (cpu_instructions() or "cpu").lower()
    out = args.out or RESULTS / f"inference_acceptance_{args.bundle.resolve().name}_{kind}.md"
    out.write_text(report(args.bundle, rows, command))
    print(out.read_text())


if __name__ == "__main__":
    main()
