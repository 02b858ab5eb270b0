"""Why do vessels come out 0.3 to 0.5 of a network pixel too wide on resampled photographs?

``bench/results/vessel_width.md`` shows it (widening 0): under the label convention and its erosion, a vessel's
predicted width matches its label's at a photograph's own scale (f = 1: +0.06 network pixels) but not once the
photograph is resampled to the network's scale (about +0.3 to +0.5 network pixels at every f <= 0.8, on DRIVE
enlarged and on LES-AV).
This script probes three causes with ``drive_vessel_unet`` (trained on DRIVE alone, at DRIVE's own scale) on
validation photographs only (the bundle's 4 held-out DRIVE training photographs; LES-AV ``training/``, which it
never saw), each width by ``bench/vessel_width.py``'s measure (the convention's erosion alone, widening 0),
in the network's pixels:

1. **blur**: the DRIVE photographs at their own size, blurred first by the separable kernel ``[w, 1 - 2w, w]``
   (w = 1/8 is about what enlarging bilinearly and averaging back gives). Does a sharpness lost widen vessels?
2. **soft edges**: the probabilities thresholded at 0.5 on the network's grid first, then resampled back and
   eroded. Does the 0.5 crossing of soft edges, read between pixel centres, move them out?
3. **the shrinking filter**: photographs shrunk by the exact box average of each new pixel's footprint (what a
   sensor with pixels that size records) instead of ``medseg.fundus.resample``'s anti-aliased bilinear, whose
   triangle filter spans two new pixels.

    python bench/width_residual.py
"""

from __future__ import annotations

import contextlib
import datetime
import tempfile
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

import medseg.fundus.steps as fundus_steps
from medseg.data import LES_AV_LABEL_POSITIVE, les_av_records
from medseg.data.files import read_pixels
from medseg.fundus import resample
from medseg.inference import LoadedModel, load_model

import vessel_width
from common import DATA, REPO, RESULTS, machine_line, markdown_table

BUNDLE = REPO / "bundles" / "drive_vessel_unet"
RESULT = RESULTS / "width_residual.md"
BLURS = (0.0, 1 / 8, 1 / 6)
FACTOR = 0.3
LES_AV_FACTOR = 0.37  # about: LES-AV's FOV width against DRIVE's


def box_average(image: torch.Tensor, size: list[int] | tuple[int, ...]) -> torch.Tensor:
    """A (C, H, W) image shrunk to ``size`` by the mean over each new pixel's footprint (exact fractional
    overlaps: the cumulative sum read linearly at the footprint's edges); any other resampling as medseg's."""
    if len(size) != 2 or any(new > old for new, old in zip(size, image.shape[1:])):
        return resample(image, size)
    values = image.to(torch.float64)
    for axis, target in ((1, size[0]), (2, size[1])):
        source = values.shape[axis]
        integral = torch.cat([torch.zeros_like(values.narrow(axis, 0, 1)), values.cumsum(axis)], axis)
        edges = torch.arange(target + 1, dtype=torch.float64) * (source / target)
        low = edges.floor().long().clamp(max=source - 1)
        weight = (edges - low).view([-1 if a == axis else 1 for a in range(3)])
        at_edges = integral.index_select(axis, low) * (1 - weight) + integral.index_select(axis, low + 1) * weight
        values = at_edges.diff(dim=axis) * (target / source)
    return values.to(torch.float32)


@contextlib.contextmanager
def thresholded_before_resampling_back() -> Iterator[None]:
    """Within the block, the fundus steps threshold probabilities at 0.5 on the network's grid before resampling
    them back and eroding."""
    after = fundus_steps.FundusSteps.after

    def binary_after(self: fundus_steps.FundusSteps, probs: torch.Tensor) -> torch.Tensor:
        return after(self, (probs >= 0.5).to(probs.dtype) if self.factor != 1.0 else probs)

    with mock.patch.object(fundus_steps.FundusSteps, "after", binary_after):
        yield


def blurred_drive(records: list[dict], weight: float, folder: Path) -> list[tuple[Path, np.ndarray, np.ndarray]]:
    """The DRIVE photographs of ``records`` blurred by ``[w, 1 - 2w, w]`` along both axes (PNGs in ``folder``),
    with their labels and FOV masks."""
    kernel = np.array([weight, 1 - 2 * weight, weight])
    cases = []
    for record in records:
        photo = read_pixels(Path(record["image"]), mode="RGB").astype(np.float64)
        for axis in (0, 1):
            photo = ndimage.convolve1d(photo, kernel, axis=axis, mode="nearest")
        path = folder / f"{record['id']}_blur{weight:.3f}.png"
        Image.fromarray(photo.round().clip(0, 255).astype(np.uint8)).save(path)
        cases.append((path, vessel_width.binary(record["label"]), vessel_width.binary(record["mask"])))
    return cases


def network_pixels(model: LoadedModel, cases: list[tuple[Path, np.ndarray, np.ndarray]], factor: float) -> str:
    """The width error with the convention's erosion alone (widening 0: the residual this script probes), in network
    pixels."""
    error = vessel_width.measured(model, cases, factor)[2 + vessel_width.WIDENINGS.index(0.0)]
    return f"{error * factor:+.2f}"


def rows(work: Path) -> list[list[str]]:
    """The table's rows: each probe's variant on each set of photographs, blurred or enlarged copies in ``work``."""
    model = load_model(BUNDLE)
    drive = vessel_width.validation_drive(BUNDLE)
    table = [["1 blur", f"DRIVE val ({len(drive)}), own size, blurred by [{w:.3g}, {1 - 2 * w:.3g}, {w:.3g}]", "1",
              network_pixels(model, blurred_drive(drive, w, work), 1.0)] for w in BLURS]
    print(*table, sep="\n", flush=True)
    enlarged = [vessel_width.enlarged(record, FACTOR, work) for record in drive]
    les_av = [(Path(r["image"]), vessel_width.binary(r["label"], LES_AV_LABEL_POSITIVE), vessel_width.binary(r["mask"]))
              for r in les_av_records(DATA / "LES-AV", "training")]
    cases = ((f"DRIVE val ({len(drive)}) enlarged by 1/{FACTOR}", enlarged, FACTOR),
             (f"LES-AV training ({len(les_av)}), own size", les_av, LES_AV_FACTOR))
    variants = (("the convention's erosion alone", contextlib.nullcontext),
                ("2 soft edges: thresholded on the network's grid first", thresholded_before_resampling_back),
                ("3 shrinking filter: box average", lambda: mock.patch.object(fundus_steps, "resample", box_average)))
    for variant, patch in variants:
        for described, photographs, factor in cases:
            with patch():
                table.append([variant, described, f"{'about ' if factor == LES_AV_FACTOR else ''}{factor}",
                              network_pixels(model, photographs, factor)])
            print(table[-1], flush=True)
    return table


def main() -> None:
    with tempfile.TemporaryDirectory() as work:
        table = rows(Path(work))
    header = ["probe", "photographs", "factor f",
              "predicted - label width, the convention's erosion alone (network px)"]
    RESULT.write_text("\n".join([
        "# Why vessels come out wider on resampled photographs: three probes",
        "",
        f"- Date: {datetime.date.today()}. Machine: {machine_line()}.",
        "- Command: `python bench/width_residual.py`",
        "- `drive_vessel_unet` (as shipped, float32, eroded as the label convention alone calls for: widening 0), "
        "validation photographs only, widths by "
        "`bench/vessel_width.py`'s measure in the network's pixels. The script's docstring says what each probe "
        "changes.",
        "",
        *markdown_table(header, table, text_columns=(0, 1, 2)),
        "",
    ]))
    print(RESULT.read_text())


if __name__ == "__main__":
    main()
