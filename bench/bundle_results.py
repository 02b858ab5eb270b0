"""The shipped bundles' results: each on its own test split, and the vessel bundles on two cameras' test photographs.

Every figure is measured here, from the shipped weights, when the script runs:

- `bench/results/bundles.md` and the block between `<!-- test-results -->` and `<!-- /test-results -->` of each
  bundle's `docs/README.md`: `medseg evaluate BUNDLE --split test` (`medseg.engines.evaluate_checkpoints`, the
  bundle's own evaluate.yaml), beside the training record of the shipped weights (``medseg.training`` of the
  bundle's `configs/metadata.json`: command, date, machine, wall time, steps per network).
- `bench/results/bundle_cameras.md` and the block between `<!-- camera-results -->` and `<!-- /camera-results -->`
  of the README and of each fundus bundle's `docs/README.md`: `medseg evaluate BUNDLE --images DIR --labels DIR
  [--masks DIR]` (`medseg.engines.evaluate_vessel_folder`: the bundle's own inference path of `medseg infer`,
  `--scale auto`, the FOV given or estimated; pooled F1 at 0.5 and AUC-ROC inside that FOV) of every fundus bundle.

    python bench/bundle_results.py bundles/camvid_unet bundles/drive_vessel_u2net bundles/drive_vessel_unet \
        bundles/fundus_vessel_unet
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import tempfile
import time
from pathlib import Path

import torch

from medseg.data import LES_AV_LABEL_POSITIVE, drive_records, les_av_records
from medseg.engines.ensemble import evaluate_checkpoints
from medseg.engines.evaluation import evaluate_vessel_folder
from medseg.inference import load_model

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CAMERA_RESULTS = REPO / "bench" / "results" / "bundle_cameras.md"
TEST_RESULTS = REPO / "bench" / "results" / "bundles.md"
CAMERA_BLOCK = "camera-results"
TEST_BLOCK = "test-results"
VESSEL_METRICS = ("f1", "auc_roc", "auc_pr", "accuracy", "sensitivity", "specificity", "precision")
# what each bundle saw in training, for the table's last column
TRAINED_ON = {
    "drive_vessel_unet": "DRIVE training (16; 4 validation)",
    "drive_vessel_u2net": "DRIVE training (16; 4 validation)",
    "fundus_vessel_unet": "DRIVE training (16; 4 validation) and LES-AV training (9; 2 validation)",
}


def scored_sets() -> list[tuple[str, list[dict], tuple[int, ...] | None]]:
    drive = drive_records(DATA / "DRIVE", "test")
    les_av = les_av_records(DATA / "LES-AV", "test")
    without_masks = lambda records: [{k: r[k] for k in ("id", "image", "label")} for r in records]  # noqa: E731
    return [
        ("DRIVE test (20), masks given", [{k: r[k] for k in ("id", "image", "label", "mask")} for r in drive], None),
        ("DRIVE test, no masks", without_masks(drive), None),
        ("LES-AV test (11), masks given", les_av, LES_AV_LABEL_POSITIVE),
        ("LES-AV test, no masks", without_masks(les_av), LES_AV_LABEL_POSITIVE),
    ]


def bundle_rows(bundle: Path) -> tuple[list[str], float]:
    model = load_model(bundle)
    start, cells = time.perf_counter(), []
    with tempfile.TemporaryDirectory() as work:
        for index, (_, records, positive) in enumerate(scored_sets()):
            report = evaluate_vessel_folder(model, records, Path(work) / f"{index}.json", label_positive=positive)
            cells.append(f"{report['threshold_0.5']['f1']:.4f} / {report['threshold_0.5']['auc_roc']:.4f}")
    return cells, time.perf_counter() - start


def camera_table(bundles: list[Path]) -> str:
    header = "| bundle | " + " | ".join(f"{name}: F1 / AUC-ROC" for name, _, _ in scored_sets()) + " | trained on |"
    lines = [header, "|---|" + "---:|" * 4 + "---|"]
    for bundle in bundles:
        cells, seconds = bundle_rows(bundle)
        lines.append(f"| `{bundle.name}` | " + " | ".join(cells) + f" | {TRAINED_ON.get(bundle.name, '?')} |")
        print(f"{bundle.name}: {seconds:.0f} s", flush=True)
    return "\n".join([
        f"Scored on {datetime.date.today()} ({platform.machine()}, torch {torch.__version__}) by "
        "`python bench/bundle_results.py`, each cell "
        "`medseg evaluate BUNDLE --images DIR --labels DIR [--masks DIR]` (LES-AV labels: `--label-positive 1 2 3 "
        "4`): the shipped weights through the inference path of `medseg infer` (`--scale auto`; probabilities of a "
        "shrunk photograph resampled back with their edges eroded where the bundle's `upsampled_edge_erosion` is "
        "on: the DRIVE bundles), pooled inside the given or the estimated FOV, threshold 0.5. No test photograph of "
        "either dataset was trained on.",
        "",
        *lines,
    ])


def test_report(bundle: Path) -> dict:
    """The report of ``medseg evaluate BUNDLE --split test`` on the shipped weights (its metrics JSON)."""
    with tempfile.TemporaryDirectory() as work:
        report = Path(work) / "metrics_test.json"
        evaluate_checkpoints(bundle, overrides={"split": "test", "metrics_file": str(report), "output_dir": work})
        return json.loads(report.read_text())


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1),
            *("| " + " | ".join(row) + " |" for row in rows)]


def report_lines(report: dict) -> list[str]:
    """A test report as a markdown table: DRIVE protocol (thresholds, second observer) or CamVid (IoU)."""
    figure = lambda value: "-" if value is None else f"{value:.4f}"  # noqa: E731
    if "threshold_0.5" in report:
        sections = [("threshold 0.5", report["threshold_0.5"]),
                    (f"validation-chosen threshold ({report['threshold_val']['threshold']:.3f})", report["threshold_val"])]
        if report.get("second_observer"):
            sections.append(("second observer (human reference)", report["second_observer"]))
        rows = [[name, *(figure(values.get(metric)) for metric in VESSEL_METRICS)] for name, values in sections]
        return markdown_table(["setting", *VESSEL_METRICS], rows)
    values = report["test"]
    classes = [key.removeprefix("iou_") for key in values if key.startswith("iou_")]
    return markdown_table(["mIoU", "pixel accuracy", *classes],
                          [[figure(values["miou"]), figure(values["pixel_accuracy"]),
                            *(figure(values[f"iou_{name}"]) for name in classes)]])


def metadata(bundle: Path) -> dict:
    return json.loads((bundle / "configs" / "metadata.json").read_text())


def training_line(bundle: Path) -> str:
    """The training record of the shipped weights, from the bundle's metadata."""
    meta = metadata(bundle)
    record = meta["medseg"].get("training")
    if record is None:
        return (f"Shipped weights (version {meta['version']}): no training record (`medseg bundle ship` found no "
                "MLflow run of them).")
    steps = " and ".join(f"{steps:,}" for steps in record["steps"])
    networks = len(record["steps"])
    return (f"Shipped weights (version {meta['version']}): `{record['command']}` on {record['date']} "
            f"({record['machine']}), {record['wall_minutes']:.1f} minutes, {steps} steps "
            f"({'one network' if networks == 1 else f'{networks} networks'}; `medseg.training` of "
            "`configs/metadata.json`).")


def test_section(bundle: Path) -> str:
    start = time.perf_counter()
    report = test_report(bundle)
    print(f"{bundle.name} test split: {time.perf_counter() - start:.0f} s", flush=True)
    return "\n".join([
        f"`medseg evaluate {bundle.relative_to(REPO)} --split test` ({report['images']} test images), scored on "
        f"{datetime.date.today()} ({platform.machine()}, torch {torch.__version__}) by `python "
        "bench/bundle_results.py`.",
        "",
        *report_lines(report),
        "",
        training_line(bundle),
    ])


def fill_block(docs: Path, name: str, block: str) -> None:
    """Replace what lies between ``<!-- name -->`` and ``<!-- /name -->`` of ``docs`` by ``block``."""
    pattern = re.compile(rf"<!-- {name} -->.*?<!-- /{name} -->", re.S)
    text = docs.read_text()
    if not pattern.search(text):
        raise SystemExit(f"{docs}: no <!-- {name} --> block to fill")
    docs.write_text(pattern.sub(lambda _: f"<!-- {name} -->\n{block}\n<!-- /{name} -->", text))


def is_fundus(bundle: Path) -> bool:
    return metadata(bundle).get("medseg", {}).get("fundus", False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", type=Path)
    args = parser.parse_args()
    bundles = [bundle.resolve() for bundle in args.bundles]
    sections = {bundle: test_section(bundle) for bundle in bundles}
    TEST_RESULTS.write_text("# Shipped bundles on their test splits\n\n" + "\n\n".join(
        f"## `bundles/{bundle.name}`\n\n{section}" for bundle, section in sections.items()) + "\n")
    for bundle, section in sections.items():
        fill_block(bundle / "docs" / "README.md", TEST_BLOCK, section)
    fundus = [bundle for bundle in bundles if is_fundus(bundle)]
    if fundus:
        block = camera_table(fundus)
        CAMERA_RESULTS.write_text("# Shipped vessel bundles on two cameras' test photographs\n\n" + block + "\n")
        for docs in [REPO / "README.md", *(bundle / "docs" / "README.md" for bundle in fundus)]:
            fill_block(docs, CAMERA_BLOCK, block)
    print(TEST_RESULTS.read_text())


if __name__ == "__main__":
    main()
