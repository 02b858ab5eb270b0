"""The automatic FOV estimate against each dataset's own FOV masks, on every DRIVE and LES-AV photograph.

For each photograph: the fraction of the true FOV's pixels left outside the estimate (cut retina), the estimate's
width against the true one, and the fraction of the estimate outside the true FOV (black surround kept, harmless:
predictions there are scored nowhere). The acceptance bounds are at most 0.5 percent cut and the width within
2 percent; `tests/fundus/test_fov.py` checks the same on every photograph. Each dataset's training and test
photographs are shown apart: the estimate's constants were set while all 62 were checked (`INFORMED_BY`).

    python bench/fov_estimate.py > bench/results/fov_estimate.md
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import numpy as np
from PIL import Image

from medseg.fundus import estimate_fov, fov_width

from common import DATA, machine_line, markdown_table, shown

# Which photographs the estimate's constants (the dark fraction, the noise sigmas, the circle fit's outline and
# misfit bounds, the least background) were set on: they were tuned while this script and tests/fundus/test_fov.py
# scored every photograph of both datasets, test splits included (2026-12-02 and 2026-12-03).
INFORMED_BY = ("all 62 photographs, the training and test splits of DRIVE and LES-AV alike: no photograph here is "
               "unseen by the choice of the constants")


def photographs(data: Path) -> dict[tuple[str, str], list[tuple[Path, Path]]]:
    """(dataset, split) -> (photograph, its FOV mask) of every photograph of DRIVE and LES-AV."""
    sets: dict[tuple[str, str], list[tuple[Path, Path]]] = {}
    for split in ("training", "test"):
        sets["DRIVE", split] = [(image, data / "DRIVE" / split / "mask" / image.name.replace(".tif", "_mask.gif"))
                                for image in sorted((data / "DRIVE" / split / "images").glob("*.tif"))]
        sets["LES-AV", split] = [(image, data / "LES-AV" / split / "mask" / image.name)
                                 for image in sorted((data / "LES-AV" / split / "images").glob("*.png"))]
    return dict(sorted(sets.items(), key=lambda item: (item[0][1] != "training", item[0][0])))


# How the photographs are framed: as taken, or with the disc clipped by the frame as other cameras clip it (80
# percent of the disc's height, width or both left in the frame, about its centre).
FRAMINGS = {"as taken": (False, False), "clipped top and bottom": (True, False),
            "clipped left and right": (False, True), "clipped on all four sides": (True, True)}


def framed(truth: np.ndarray, rows_clipped: bool, columns_clipped: bool) -> tuple[slice, slice]:
    """The part of the frame that a camera clipping the disc of FOV mask ``truth`` would record."""
    half = int(0.4 * fov_width(truth))
    rows, columns = np.flatnonzero(truth.any(axis=1)), np.flatnonzero(truth.any(axis=0))
    middle_y, middle_x = (rows[0] + rows[-1]) // 2, (columns[0] + columns[-1]) // 2
    return (slice(middle_y - half, middle_y + half) if rows_clipped else slice(None),
            slice(middle_x - half, middle_x + half) if columns_clipped else slice(None))


def measure(image_path: Path, mask_path: Path, framing: str) -> tuple[float, float, float, float]:
    image = np.asarray(Image.open(image_path).convert("RGB"))
    truth = np.asarray(Image.open(mask_path).convert("L")) > 127
    true_width = fov_width(truth)
    window = framed(truth, *FRAMINGS[framing])
    image, truth = image[window], truth[window]
    start = time.perf_counter()
    estimate = estimate_fov(image)
    seconds = time.perf_counter() - start
    return (float((truth & ~estimate).sum() / truth.sum()), fov_width(estimate) / true_width,
            float((estimate & ~truth).sum() / truth.sum()), seconds)


def table_rows(data: Path) -> list[list[str]]:
    """One row per framing and set of photographs: the training photographs first, then the test photographs."""
    rows = []
    sets = photographs(data)
    for (name, split), pairs in sets.items():
        for framing in FRAMINGS:
            cut, width, kept, seconds = np.array([measure(*pair, framing) for pair in pairs]).T
            rows.append([f"{name} {split}", framing, str(len(pairs)), f"{100 * cut.max():.2f}",
                         f"{100 * cut.mean():.3f}", f"{width.min():.4f} to {width.max():.4f}",
                         f"{100 * np.abs(width - 1).max():.2f}", f"{100 * kept.mean():.1f}",
                         f"{1000 * seconds.mean():.0f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    rows = table_rows(args.data)
    command = "python bench/fov_estimate.py" + (f" --data {shown(args.data)}" if args.data != DATA else "")
    print("\n".join([
        "# Automatic FOV estimate against the datasets' own FOV masks",
        "",
        f"- Date: {datetime.date.today()}. Machine: {machine_line()}.",
        f"- Command: `{command} > bench/results/fov_estimate.md`",
        "- Method (`medseg.fundus.estimate_fov`): on a thumbnail of the brightest channel, the pixels above the "
        "dark background's own level (its median plus 5 robust standard deviations, at most a tenth of the "
        "retina's brightness), the largest component, holes filled, closed to its convex hull, grown by one "
        "thumbnail pixel. Its width is the horizontal extent, or, for a disc clipped at the left or right of the frame, "
        "the diameter of the circle fitted to its outline inside the frame. An image without a dark background keeps "
        "the whole frame and says so in the log.",
        "- Clipped framings: each photograph cut about its disc's centre to 80 % of the disc's width (its height, "
        "its width or both), scored against its own mask cut alike; the width against the whole disc's.",
        "- Acceptance: at most 0.5 % of the true FOV cut, width within 2 %.",
        f"- **Which photographs informed the constants**: {INFORMED_BY}. The training photographs' rows come first, "
        "apart from the test photographs'; neither is a check on photographs the constants never saw.",
        "",
        *markdown_table(["photographs", "framing", "images", "worst cut %", "mean cut %", "width / true width",
                         "worst width error %", "surround kept, % of FOV", "ms per image"], rows, text_columns=2),
        "",
    ]))


if __name__ == "__main__":
    main()
