"""Benchmark: a vessel bundle's inference window, overlap, batch, runtime and precision, chosen by quality on the
validation photographs only.

The photographs: DRIVE's training photographs the bundle holds out for validation (its ``train.yaml`` split) and
LES-AV ``training/`` (11), never a test photograph. Each candidate ``ROI,OVERLAP,BATCH,RUNTIME,PRECISION`` runs the
bundle's inference path (``medseg.inference.predict_image``, what ``medseg infer`` runs: scale, FOV, TTA and
stitching as the bundle says, each set's own FOV masks) in its own process on one thread, and is compared with the
reference, float32 on PyTorch at 96 x 96 and overlap 0.5 (the windows the bundles had before this choice).

A candidate passes when its F1 and AUC-ROC (FOV-pooled, threshold 0.5) are within ``SAME_SCORE`` of the
reference's on each set and at least ``SAME_MASK`` of all FOV pixels keep the reference's mask (the owner's
criterion, issue #37). Of the passing candidates the fastest (wall time predicting only) is chosen, and of those as
fast within run-to-run noise the one that does the least work on larger photographs; its settings go to the bundle's
``configs/inference.yaml`` (runtime ``openvino`` as ``auto``, which falls back to PyTorch where OpenVINO is missing).

Precision ``auto`` is bfloat16 on some CPUs and float32 on others, so the answers of a candidate depend on the CPU:
each kind (its widest matrix instructions, :func:`medseg.tracking.cpu_instructions`) has its own table, and a
candidate that another kind's table failed is not chosen, so the one setting a bundle ships keeps float32's answers
on every kind measured.

    python bench/inference_windows.py bundles/drive_vessel_unet

writes ``bench/results/inference_windows_<bundle>_<instructions>.md`` (e.g. ``_avx2``, ``_avx512-bf16``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from medseg.inference import native_bfloat16
from medseg.tracking import cpu_instructions

import common
from common import DATA, RESULTS, machine_line, markdown_table, shown

# the owner's criterion: scores within this of the float32 reference's, and this share of the FOV pixels with the
# reference's mask
SAME_SCORE = 0.001
SAME_MASK = 0.995
# the windows before this choice (train.yaml's validation window), in float32 on PyTorch
REFERENCE = "96,0.5,16,torch,float32"
# candidates within this share of the fastest one's wall time are as fast (run-to-run noise on this CPU)
AS_FAST = 0.05
# what is tried: the windows of before on each runtime, less overlap, larger windows, up to one window over a
# photograph at the training FOV width (DRIVE 565 x 584, LES-AV shrunk to about 625 x 557), and a window that covers a
# wider photograph's (a 3:2 one shrunk to that FOV width) in one pass; precision auto (bf16 where the CPU computes it,
# else float32) and int8
CANDIDATES = (
    "96,0.5,4,torch,auto",
    "96,0.5,4,openvino,auto",
    "96,0.25,4,openvino,auto",
    "192,0.25,4,openvino,auto",
    "384,0.25,1,openvino,auto",
    "640,0.25,1,torch,auto",
    "640,0.25,1,openvino,auto",
    "640,0.125,1,openvino,auto",
    "1024,0.125,1,openvino,auto",
    "96,0.5,4,openvino,int8",
    "640,0.25,1,openvino,int8",
)


def validation_sets(bundle: Path, data: Path) -> dict[str, tuple[list[dict[str, str]], tuple[int, ...] | None]]:
    """DRIVE's photographs that ``bundle`` holds out (its train.yaml split) and LES-AV ``training/``, each with the
    label values that mean vessel."""
    from medseg.data import LES_AV_LABEL_POSITIVE, les_av_records
    from medseg.resources import read_bundle_config

    parser = read_bundle_config(bundle, "train", (), {"dataset_dir": str(data / "DRIVE")})
    held_out = [record for record in parser.get_parsed_content("records")[1]
                if not record["id"].startswith("les-av-")]  # the fundus bundle also holds out LES-AV photographs
    return {"DRIVE validation": (held_out, None),
            "LES-AV training": (les_av_records(data / "LES-AV", "training"), LES_AV_LABEL_POSITIVE)}


def run_candidate(bundle: Path, candidate: str, data: Path, out: Path) -> dict:
    """One candidate over the validation sets, in this process: wall time (predicting only), FOV-pooled F1 and
    AUC-ROC at 0.5 per set; each photograph's mask and FOV are left in ``out`` for the agreement."""
    from medseg.data.files import read_pixels
    from medseg.engines import pooled_vessel_metrics
    from medseg.inference import load_model, predict_image, prepare_network, read_image

    torch.set_num_threads(1)
    roi, overlap, batch, runtime, precision = candidate.split(",")
    model = load_model(bundle).with_settings(roi_size=(int(roi), int(roi)), sw_overlap=float(overlap),
                                             sw_batch_size=int(batch), runtime=runtime, precision=precision)
    network = prepare_network(model)  # OpenVINO: converted (and calibrated) before the clock starts, as cached
    scores, wall = {}, 0.0
    out.mkdir(parents=True, exist_ok=True)
    for name, (records, positive) in validation_sets(bundle, data).items():
        probabilities = {}
        for record in records:
            image, meta = read_image(Path(record["image"]))
            fov = read_pixels(Path(record["mask"]), mode="L") > 127
            start = time.perf_counter()
            probabilities[record["id"]] = predict_image(network, image, meta, model.settings, fov).probabilities[0]
            wall += time.perf_counter() - start
            np.savez_compressed(out / f"{record['id']}.npz", mask=probabilities[record["id"]].numpy() >= 0.5, fov=fov)
        pooled = pooled_vessel_metrics(probabilities, records, 0.5, label_positive=positive)
        scores[name] = {key: pooled[key] for key in ("f1", "auc_roc")}
    return {"wall_s": wall, "scores": scores}


def agreement(folder: Path, reference: Path) -> float:
    """The share of all FOV pixels whose mask in ``folder`` is the reference's."""
    pairs = []
    for path in sorted(reference.glob("*.npz")):
        ours, theirs = np.load(folder / path.name), np.load(path)
        pairs.append((ours["mask"], theirs["mask"], theirs["fov"]))
    return common.same_mask_share(pairs)


def judge(results: dict[str, dict]) -> None:
    """Each result's agreement with the reference, its score differences, and whether it passes (in place)."""
    reference = results[REFERENCE]
    for result in results.values():
        result["agreement"] = agreement(result["folder"], reference["folder"])
        result["differences"] = {
            name: {key: abs(value - reference["scores"][name][key]) for key, value in scores.items()}
            for name, scores in result["scores"].items()}
        result["passes"] = result["agreement"] >= SAME_MASK and all(
            difference <= SAME_SCORE for differences in result["differences"].values()
            for difference in differences.values())


def measure(bundle: Path, candidates: list[str], data: Path) -> dict[str, dict]:
    """The reference and each candidate, each in its own process of one thread, judged against the reference."""
    results = {}
    for candidate in dict.fromkeys([REFERENCE, *candidates]):
        folder = common.WORK / "inference_windows" / bundle.name / candidate.replace(",", "_")
        shutil.rmtree(folder, ignore_errors=True)
        command = [sys.executable, __file__, str(bundle), "--data", str(data), "--child", candidate]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if done.returncode != 0:
            raise RuntimeError(f"{bundle.name} {candidate} failed:\n{done.stderr[-3000:]}")
        results[candidate] = json.loads(done.stdout.strip().splitlines()[-1]) | {"folder": folder}
        print(candidate, json.dumps(results[candidate], default=str), flush=True)
    judge(results)
    return results


def results_path(bundle_name: str, instructions: str | None) -> Path:
    """The table of ``bundle_name``'s windows on CPUs of ``instructions`` (``"AVX512-BF16"``; ``None``: none named)."""
    return RESULTS / f"inference_windows_{bundle_name}_{(instructions or 'cpu').lower()}.md"


def verdicts_elsewhere(bundle_name: str, here: Path) -> dict[str, dict[str, bool]]:
    """Each other CPU kind's table of ``bundle_name`` (besides ``here``): whether each candidate it measured
    passed, by the kind's name in its file name."""
    tables = {}
    for path in sorted(RESULTS.glob(f"inference_windows_{bundle_name}_*.md")):
        if path != here:
            rows = re.findall(r"^\| `([^`]+)`.*\| (yes|no) \|$", path.read_text(), flags=re.MULTILINE)
            kind = path.stem.removeprefix(f"inference_windows_{bundle_name}_").upper()
            tables[kind] = {name: verdict == "yes" for name, verdict in rows}
    return tables


def chosen(results: dict[str, dict], elsewhere: dict[str, dict[str, bool]] | None = None) -> str | None:
    """The fastest candidate (the reference is none) that passes here and that no other CPU kind's table failed;
    of those within ``AS_FAST`` of its wall time, the one with the least overlap, then the largest window: they do
    the least work on photographs larger than these."""
    passing = {name: result for name, result in results.items() if result["passes"] and name != REFERENCE
               and all(table.get(name, True) for table in (elsewhere or {}).values())}
    if not passing:
        return None
    fastest = min(result["wall_s"] for result in passing.values())
    as_fast = [name for name, result in passing.items() if result["wall_s"] <= fastest * (1 + AS_FAST)]
    return min(as_fast, key=lambda name: (float(name.split(",")[1]), -int(name.split(",")[0]),
                                          passing[name]["wall_s"]))


def report(bundle: Path, results: dict[str, dict], command: str, elsewhere: dict[str, dict[str, bool]]) -> str:
    names = list(results[REFERENCE]["scores"])
    choice = chosen(results, elsewhere)
    header = ["candidate (window, overlap, batch, runtime, precision)", "wall (s)", "vs reference",
              *(f"{name} F1 / AUC-ROC" for name in names), "same mask (FOV)", "passes on other CPUs", "passes"]
    rows = [[f"`{name}`" + (" (reference)" if name == REFERENCE else "") + (" **chosen**" if name == choice else ""),
             f"{result['wall_s']:.1f}", f"{results[REFERENCE]['wall_s'] / result['wall_s']:.2f}x",
             *(f"{result['scores'][set_name]['f1']:.4f} / {result['scores'][set_name]['auc_roc']:.4f}"
               for set_name in names),
             f"{result['agreement']:.3%}", _elsewhere(name, elsewhere), "yes" if result["passes"] else "no"]
            for name, result in results.items()]
    sets = validation_sets(bundle, DATA)
    lines = [
        f"# Inference windows of `{bundle.name}`, chosen on validation photographs", "",
        f"- Date: {date.today().isoformat()}. Machine: {machine_line()}; native bf16: "
        f"{native_bfloat16('cpu') or 'none (precision auto is float32)'}.",
        f"- Command: `{command}`",
        "- Photographs (validation only): " + "; ".join(f"{name} ({len(records)})" for name, (records, _) in
                                                        sets.items()) + ". No test photograph chose anything.",
        f"- Reference: `{REFERENCE}`. A candidate passes when F1 and AUC-ROC (FOV-pooled, threshold 0.5, each set's "
        f"FOV masks) are within {SAME_SCORE} of the reference's on every set and at least {SAME_MASK:.1%} of all FOV "
        "pixels keep the reference's mask. Wall: predicting only, one thread, each candidate in its own process "
        "(OpenVINO's conversion and int8 calibration, cached once per weights, before the clock).",
        f"- Chosen: of the candidates that pass here and that no other CPU kind's table failed "
        f"({', '.join(f'`{results_path(bundle.name, kind).name}`' for kind in elsewhere) or 'none yet'}), the one "
        f"with the least wall time; of those within {AS_FAST:.0%} of it, the one with the least overlap, then the "
        "largest window (the least work on larger photographs)"
        + (f": **`{choice}`**, {results[REFERENCE]['wall_s'] / results[choice]['wall_s']:.1f}x the reference's speed."
           if choice else ": none passes."),
        "", *markdown_table(header, rows, text_columns=(0, len(header) - 2, len(header) - 1)), "",
    ]
    return "\n".join(lines)


def _elsewhere(name: str, elsewhere: dict[str, dict[str, bool]]) -> str:
    """``"AVX2: yes"``: each other CPU kind's verdict on ``name`` (``-``: not measured there)."""
    verdicts = {kind: {True: "yes", False: "no"}.get(table.get(name), "-") for kind, table in elsewhere.items()}
    return ", ".join(f"{kind}: {verdict}" for kind, verdict in verdicts.items()) or "-"


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES),
                        metavar="ROI,OVERLAP,BATCH,RUNTIME,PRECISION")
    parser.add_argument("--data", type=Path, default=DATA, help="the folder holding DRIVE/ and LES-AV/")
    parser.add_argument("--child", metavar="CANDIDATE", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    if args.child:
        folder = common.WORK / "inference_windows" / args.bundle.name / args.child.replace(",", "_")
        print(json.dumps(run_candidate(args.bundle, args.child, args.data, folder)))
        return
    results = measure(args.bundle, args.candidates, args.data)
    command = "python bench/inference_windows.py " + " ".join(
        [shown(args.bundle.resolve()), *sys.argv[2:]])
    out = results_path(args.bundle.resolve().name, cpu_instructions())
    out.write_text(report(args.bundle, results, command, verdicts_elsewhere(args.bundle.resolve().name, out)))
    print(out.read_text())


if __name__ == "__main__":
    main()
