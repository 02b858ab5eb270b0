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

What needs no scoring is rendered from what is stored, also alone (`python bench/bundle_results.py --stored`): the
headline table between `<!-- headline-results -->` and `<!-- /headline-results -->` of the README (each bundle's
`eval_metrics`, which `medseg bundle ship` measured), the note on what chose the DRIVE recipe beside every DRIVE
test figure (`<!-- drive-test-note -->` blocks) and each bundle's training record (`<!-- training-record -->`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import tempfile
import time
from pathlib import Path

from medseg.data import LES_AV_LABEL_POSITIVE, drive_records, les_av_records
from medseg.engines.ensemble import evaluate_checkpoints
from medseg.engines.evaluation import evaluate_vessel_folder
from medseg.inference import load_model

from common import DATA, REPO, RESULTS, machine_line, markdown_table

CAMERA_RESULTS = RESULTS / "bundle_cameras.md"
TEST_RESULTS = RESULTS / "bundles.md"
README = REPO / "README.md"
BUNDLES = sorted(path.parent.parent for path in (REPO / "bundles").glob("*/configs/metadata.json"))
CAMERA_BLOCK = "camera-results"
TEST_BLOCK = "test-results"
HEADLINE_BLOCK = "headline-results"
NOTE_BLOCK = "drive-test-note"
TRAINING_BLOCK = "training-record"
# the bundles whose training recipe (the CPU preset) DRIVE's test photographs helped choose
CHOSEN_WITH_DRIVE_TEST = ("drive_vessel_unet", "drive_vessel_u2net", "fundus_vessel_unet")
DRIVE_TEST_NOTE = (
    "**What chose the recipe**: the training recipe of `drive_vessel_unet`, `drive_vessel_u2net` and "
    "`fundus_vessel_unet` (the CPU preset, `configs/cpu_budget.yaml`) was chosen with DRIVE test feedback before "
    "2026-12-02 (`bench/results/drive_ablation.md`), so their DRIVE test figures are optimistic. The LES-AV test "
    "figures of `drive_vessel_unet` and `drive_vessel_u2net` (`bench/results/bundle_cameras.md`) are the ones no "
    "choice ever saw."
)
TEST_SPLIT = {"camvid_unet": "CamVid test"}  # the others: DRIVE test
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
    rows = []
    for bundle in bundles:
        cells, seconds = bundle_rows(bundle)
        rows.append([f"`{bundle.name}`", *cells, TRAINED_ON.get(bundle.name, "?")])
        print(f"{bundle.name}: {seconds:.0f} s", flush=True)
    header = ["bundle", *(f"{name}: F1 / AUC-ROC" for name, _, _ in scored_sets()), "trained on"]
    table = markdown_table(header, rows, text_columns=(0, len(header) - 1))
    return camera_block(f"Scored on {datetime.date.today()} ({machine_line()})", table)


def camera_block(scored: str, table: list[str]) -> str:
    """The camera results as the README and the fundus bundles' docs quote them: how they were scored, the note on
    what chose the recipes, the table."""
    return "\n".join([
        f"{scored} by `python bench/bundle_results.py`, each cell "
        "`medseg evaluate BUNDLE --images DIR --labels DIR [--masks DIR]` (LES-AV labels: `--label-positive 1 2 3 "
        "4`): the shipped weights through the inference path of `medseg infer` (`--scale auto`; probabilities of a "
        "shrunk photograph resampled back with their edges eroded, as the label convention every vessel bundle "
        "learned calls for: `upsampled_edge_erosion`), pooled inside the given or the estimated FOV, threshold 0.5. No test photograph of "
        "either dataset was trained on.",
        "",
        block(NOTE_BLOCK, DRIVE_TEST_NOTE),
        "",
        *table,
    ])


def test_report(bundle: Path) -> dict:
    """The report of ``medseg evaluate BUNDLE --split test`` on the shipped weights (its metrics JSON)."""
    with tempfile.TemporaryDirectory() as work:
        report = Path(work) / "metrics_test.json"
        evaluate_checkpoints(bundle, overrides={"split": "test", "metrics_file": str(report), "output_dir": work})
        return json.loads(report.read_text())


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
    """The training record of the shipped weights, from the bundle's metadata, and who recorded it."""
    meta = metadata(bundle)
    record = meta["medseg"].get("training")
    if record is None:
        return (f"Shipped weights (version {meta['version']}): no training record (`medseg bundle ship` found no "
                "MLflow run of them).")
    steps = " and ".join(f"{steps:,}" for steps in record["steps"])
    networks = len(record["steps"])
    # a record without a source is the one `medseg bundle ship` wrote from the weights' MLflow run
    source = record.get("source", "written by `medseg bundle ship` from the MLflow run of the weights")
    return (f"Shipped weights (version {meta['version']}): `{record['command']}` on {record['date']} "
            f"({record['machine']}), {record['wall_minutes']:.1f} minutes, {steps} steps "
            f"({'one network' if networks == 1 else f'{networks} networks'}; `medseg.training` of "
            f"`configs/metadata.json`, {source}).")


def test_section(bundle: Path) -> str:
    start = time.perf_counter()
    report = test_report(bundle)
    print(f"{bundle.name} test split: {time.perf_counter() - start:.0f} s", flush=True)
    return section(bundle, f"`medseg evaluate {bundle.relative_to(REPO)} --split test` ({report['images']} test "
                           f"images), scored on {datetime.date.today()} ({machine_line()}) by `python "
                           "bench/bundle_results.py`.", report_lines(report))


def section(bundle: Path, scored: str, table: list[str]) -> str:
    """A bundle's test results as `bundles.md` and its docs hold them: how they were scored, the note on what
    chose the recipe (DRIVE-trained bundles), the table, the training record."""
    note = [block(NOTE_BLOCK, DRIVE_TEST_NOTE), ""] if bundle.name in CHOSEN_WITH_DRIVE_TEST else []
    return "\n".join([scored, "", *note, *table, "", block(TRAINING_BLOCK, training_line(bundle))])


def headline_block(bundles: list[Path]) -> str:
    """The README's headline: each bundle's test figures as `medseg bundle ship` measured them (``eval_metrics``)."""
    rows = []
    for bundle in bundles:
        metrics = metadata(bundle)["eval_metrics"]
        figure = lambda name: f"{metrics[name]:.4f}" if name in metrics else "-"  # noqa: E731
        rows.append([f"`{bundle.name}`", TEST_SPLIT.get(bundle.name, "DRIVE test"), figure("test_f1"),
                     figure("test_auc_roc"), figure("test_miou")])
    return "\n".join([
        "The shipped weights on their test splits: the `eval_metrics` that `medseg bundle ship` measured into each "
        "bundle's `configs/metadata.json` (the whole reports: `bench/results/bundles.md`), rendered by "
        "`python bench/bundle_results.py --stored`.",
        "",
        *markdown_table(["bundle", "test split", "F1 @0.5", "AUC-ROC", "mIoU"], rows, text_columns=2),
        "",
        block(NOTE_BLOCK, DRIVE_TEST_NOTE),
    ])


def block(name: str, text: str) -> str:
    return f"<!-- {name} -->\n{text}\n<!-- /{name} -->"


def filled(text: str, name: str, content: str) -> str:
    """``text`` with what lies between each ``<!-- name -->`` and ``<!-- /name -->`` replaced by ``content``."""
    pattern = re.compile(rf"<!-- {name} -->.*?<!-- /{name} -->", re.S)
    if not pattern.search(text):
        raise ValueError(f"no <!-- {name} --> block to fill")
    return pattern.sub(lambda _: block(name, content), text)


def fill_block(docs: Path, name: str, content: str) -> None:
    """Replace what lies between ``<!-- name -->`` and ``<!-- /name -->`` of ``docs`` by ``content``."""
    try:
        docs.write_text(filled(docs.read_text(), name, content))
    except ValueError as err:
        raise SystemExit(f"{docs}: {err}") from None


def render_stored() -> None:
    """Fill what needs no scoring: the README's headline, the notes on what chose the DRIVE recipe and the training
    records, in the README, the bundles' docs and the results files."""
    fill_block(README, HEADLINE_BLOCK, headline_block(BUNDLES))
    for bundle in BUNDLES:
        docs = bundle / "docs" / "README.md"
        fill_block(docs, TRAINING_BLOCK, training_line(bundle))
        if bundle.name in CHOSEN_WITH_DRIVE_TEST:
            fill_block(docs, NOTE_BLOCK, DRIVE_TEST_NOTE)
    title, *sections = TEST_RESULTS.read_text().split("\n## `bundles/")
    for k, text in enumerate(sections):
        bundle = REPO / "bundles" / text.split("`", 1)[0]
        text = filled(text, TRAINING_BLOCK, training_line(bundle))
        sections[k] = filled(text, NOTE_BLOCK, DRIVE_TEST_NOTE) if bundle.name in CHOSEN_WITH_DRIVE_TEST else text
    TEST_RESULTS.write_text("\n## `bundles/".join([title, *sections]))
    for path in (CAMERA_RESULTS, README):
        fill_block(path, NOTE_BLOCK, DRIVE_TEST_NOTE)


def is_fundus(bundle: Path) -> bool:
    return metadata(bundle).get("medseg", {}).get("fundus", False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="*", type=Path, help="the bundles to score")
    parser.add_argument("--stored", action="store_true", help="score nothing: fill only what is rendered from what is "
                        "stored (the headline, the notes on what chose the DRIVE recipe, the training records)")
    args = parser.parse_args()
    if not args.stored:
        if not args.bundles:
            parser.error("give the bundles to score, or --stored")
        score([bundle.resolve() for bundle in args.bundles])
    render_stored()
    print(TEST_RESULTS.read_text())


def score(bundles: list[Path]) -> None:
    """Score ``bundles`` on their test splits and the fundus bundles on both cameras' test photographs, and write
    the results files and the blocks that quote them."""
    sections = {bundle: test_section(bundle) for bundle in bundles}
    TEST_RESULTS.write_text("# Shipped bundles on their test splits\n\n" + "\n\n".join(
        f"## `bundles/{bundle.name}`\n\n{section}" for bundle, section in sections.items()) + "\n")
    for bundle, section in sections.items():
        fill_block(bundle / "docs" / "README.md", TEST_BLOCK, section)
    fundus = [bundle for bundle in bundles if is_fundus(bundle)]
    if fundus:
        cameras = camera_table(fundus)
        CAMERA_RESULTS.write_text("# Shipped vessel bundles on two cameras' test photographs\n\n" + cameras + "\n")
        for docs in [README, *(bundle / "docs" / "README.md" for bundle in fundus)]:
            fill_block(docs, CAMERA_BLOCK, cameras)


if __name__ == "__main__":
    main()
