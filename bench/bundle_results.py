"""The shipped vessel bundles on DRIVE and LES-AV test photographs, with and without their FOV masks given.

Each figure comes from `medseg evaluate BUNDLE --images DIR --labels DIR [--masks DIR]`
(`medseg.engines.evaluate_vessel_folder`: the bundle's own inference path of `medseg infer`, `--scale auto`, the
FOV given or estimated; pooled F1 at 0.5 and AUC-ROC inside that FOV). The script writes its table to
`bench/results/bundle_cameras.md` and into the block between `<!-- camera-results -->` and
`<!-- /camera-results -->` of the README and of each bundle's `docs/README.md`, so no figure there is copied by
hand.

    python bench/bundle_results.py bundles/drive_vessel_unet bundles/fundus_vessel_unet
"""

from __future__ import annotations

import argparse
import datetime
import platform
import re
import tempfile
import time
from pathlib import Path

import torch

from medseg.data import LES_AV_LABEL_POSITIVE, drive_records, les_av_records
from medseg.engines.evaluation import evaluate_vessel_folder
from medseg.inference import load_model

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "bench" / "results" / "bundle_cameras.md"
BLOCK = re.compile(r"<!-- camera-results -->.*?<!-- /camera-results -->", re.S)
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


def table(bundles: list[Path]) -> str:
    header = "| bundle | " + " | ".join(f"{name}: F1 / AUC-ROC" for name, _, _ in scored_sets()) + " | trained on |"
    lines = [header, "|---|" + "---:|" * 4 + "---|"]
    for bundle in bundles:
        cells, seconds = bundle_rows(bundle)
        lines.append(f"| `{bundle.name}` | " + " | ".join(cells) + f" | {TRAINED_ON.get(bundle.name, '?')} |")
        print(f"{bundle.name}: {seconds:.0f} s", flush=True)
    return "\n".join([
        f"Scored on {datetime.date.today()} ({platform.machine()}, torch {torch.__version__}) by "
        "`python bench/bundle_results.py " + " ".join(str(b.relative_to(REPO)) for b in bundles) + "`, each cell "
        "`medseg evaluate BUNDLE --images DIR --labels DIR [--masks DIR]` (LES-AV labels: `--label-positive 1 2 3 "
        "4`): the shipped weights through the inference path of `medseg infer` (`--scale auto`), pooled inside "
        "the given or the estimated FOV, threshold 0.5. No test photograph of either dataset was trained on.",
        "",
        *lines,
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", type=Path)
    args = parser.parse_args()
    bundles = [bundle.resolve() for bundle in args.bundles]
    block = table(bundles)
    RESULTS.write_text("# Shipped vessel bundles on two cameras' test photographs\n\n" + block + "\n")
    for docs in [REPO / "README.md", *(bundle / "docs" / "README.md" for bundle in bundles)]:
        text = docs.read_text()
        if not BLOCK.search(text):
            raise SystemExit(f"{docs}: no <!-- camera-results --> block to fill")
        docs.write_text(BLOCK.sub(lambda _: f"<!-- camera-results -->\n{block}\n<!-- /camera-results -->", text))
    print(block)


if __name__ == "__main__":
    main()
