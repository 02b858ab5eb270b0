"""Do vessels come out as wide as their labels at every scale? The width check of the label convention.

medseg has one label convention (DRIVE's: a pixel is vessel when a vessel touches it, at the label's grid;
`medseg.fundus.resample_vessel_label`), and the erosion of probabilities resampled back up from a shrunk photograph
follows from it (`medseg.fundus.upsampled_edge_radius`). This script measures, on validation photographs only,
how wide the predicted vessels are against their labels:

- DRIVE enlarged: each of the bundle's validation photographs (its train.yaml's held-out DRIVE training
  photographs) enlarged by ``1 / f`` (bilinear), its label drawn at the enlarged size by the convention and its FOV
  mask enlarged with it; `--scale auto` brings it back by about ``f`` to the training width, so that every
  factor from 0.15 to 1 is a photograph of the same eye at another resolution.
- LES-AV `training/` (11) at its own size (a factor of about 0.37), for bundles that never trained on LES-AV.

Each photograph runs once through `medseg.inference.predict_image` (the path of `medseg infer`, float32, the FOV
mask given) with the erosion off, and its probabilities are then eroded as `medseg infer` erodes them
(`medseg.fundus.upsampled_edge_radius` at the factor the photograph was shrunk by) for each widening of WIDENINGS:
how much wider than the convention networks mark vessels on a resampled photograph. Where every disc of the erosion
lies inside the FOV, that is the map `medseg infer` writes; pixels nearer the FOV's edge are not counted. A vessel's
width is read along its label's centre line: every pixel of the label and of a mask within reach of a centre line
point that all masks detect (the label's local half width plus ``1 / f`` pixels, more than any erosion removes) is
counted to its nearest centre line point, and a width is that area over the centre line's length, pooled over the
photographs. The widening chosen is the one with the least mean error of width in network pixels (error x f: the
widening is a width on the network's grid, where every factor weighs the same) over the resampled rows (f < 1, every
bundle): `medseg.fundus.RESAMPLED_VESSEL_WIDENING` is set to it, the widening of every bundle that has none of its
own. A bundle shipped from weights fine-tuned on a folder has its own: `medseg bundle ship --new-bundle` measures it
on the folder's held-out photographs with the same masks and widths (`medseg.engines.width`), but another estimate:
where the pooled signed error crosses zero on a grid of 0 to 0.8 (one camera), not the least mean absolute error
over rows of several factors.

    python bench/vessel_width.py bundles/drive_vessel_unet
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from PIL import Image

from medseg.data import LES_AV_LABEL_POSITIVE, drive_records, les_av_records, split_validation
from medseg.data.files import read_pixels
from medseg.engines.width import eroded_masks
from medseg.fundus import RESAMPLED_VESSEL_WIDENING, resample, resample_vessel_label
from medseg.inference import load_model, read_image
from medseg.metrics.width import vessel_width_sums

from common import DATA, RESULTS, machine_line, markdown_table, shown

RESULT = RESULTS / "vessel_width.md"
FACTORS = (0.15, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0)
# a width check passes when predicted and labelled widths differ by at most this many photograph pixels
TOLERANCE = 0.5
# the widenings compared (network pixels over both edges), RESAMPLED_VESSEL_WIDENING among them
WIDENINGS = (0.0, 0.25, 0.35, 0.45, 0.55, 0.65)


def binary(path: str, positive: tuple[int, ...] | None = None) -> np.ndarray:
    """A label or mask file as an (H, W) bool array: its ``positive`` values, else greyscale >= 128."""
    values = read_pixels(Path(path), mode="L" if positive is None else None)
    return np.isin(values, positive) if positive else values >= 128


def enlarged(record: dict, factor: float, folder: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """The photograph of ``record`` enlarged by ``1 / factor`` (a PNG in ``folder``), its label drawn at that size
    by the convention and its FOV mask enlarged with it (both (H, W) bool)."""
    photo = torch.as_tensor(read_pixels(Path(record["image"]), mode="RGB")).permute(2, 0, 1).float()
    size = [round(side / factor) for side in photo.shape[1:]]
    label = torch.as_tensor(binary(record["label"]))[None].float()
    mask = torch.as_tensor(binary(record["mask"]))[None].float()
    path = folder / f"{record['id']}_{factor}.png"
    pixels = resample(photo, size).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(pixels).save(path)
    return path, resample_vessel_label(label, size)[0].numpy() > 0, resample(mask, size)[0].numpy() >= 0.5


def measured(model, cases: list[tuple[Path, np.ndarray, np.ndarray]], factor: float) -> list[float]:
    """The widths of ``cases`` (photograph, label, FOV) where every mask detects the vessel: the label's, then for
    the erosion off and each of WIDENINGS the mask's minus the label's (photograph pixels)."""
    totals = np.zeros(len(WIDENINGS) + 3)
    for path, label, fov in cases:
        image, meta = read_image(path)
        masks, inside, _ = eroded_masks(model.network, image, meta, model.settings, fov, WIDENINGS)
        totals += vessel_width_sums(masks, label, inside, 1.0 / factor)
    return [totals[0] / totals[-1], *((totals[k] - totals[0]) / totals[-1] for k in range(1, len(WIDENINGS) + 2))]


def validation_drive(bundle: Path) -> list[dict]:
    """The DRIVE training photographs ``bundle``'s train.yaml holds out for validation."""
    train = ConfigParser()
    train.read_config(str(bundle / "configs" / "train.yaml"))
    return split_validation(drive_records(DATA / "DRIVE", "training"), n_val=train["val_images"],
                            seed=train.get_parsed_content("split_seed"))[1]


Row = tuple[str, str, str, float, list[float]]  # bundle, photographs, factor shown, factor, measured()


def bundle_rows(bundle: Path) -> list[Row]:
    model, rows = load_model(bundle), []
    drive = validation_drive(bundle)
    with tempfile.TemporaryDirectory() as work:
        for factor in FACTORS:
            cases = [enlarged(record, factor, Path(work)) for record in drive]
            rows.append((f"`{bundle.name}`", f"DRIVE val ({len(drive)}) enlarged by 1/{factor}", f"{factor}", factor,
                         measured(model, cases, factor)))
            print(*rows[-1], flush=True)
    if "val_images_les_av" in ConfigParser.load_config_file(str(bundle / "configs" / "train.yaml")):
        return rows  # trained on LES-AV training photographs: none of them is a photograph it never saw
    les_av = les_av_records(DATA / "LES-AV", "training")
    cases = [(Path(r["image"]), binary(r["label"], LES_AV_LABEL_POSITIVE), binary(r["mask"])) for r in les_av]
    rows.append((f"`{bundle.name}`", f"LES-AV training ({len(les_av)}), own size", "about 0.37", 0.37,
                 measured(model, cases, 0.37)))
    print(*rows[-1], flush=True)
    return rows


def chosen_widening(rows: list[Row]) -> float:
    """The widening of WIDENINGS with the least mean absolute width error in network pixels (the error in
    photograph pixels times f) over the resampled rows (f < 1)."""
    resampled = [(factor, values) for *_, factor, values in rows if factor < 1]
    error = [np.mean([abs(values[2 + k]) * factor for factor, values in resampled]) for k in range(len(WIDENINGS))]
    return WIDENINGS[int(np.argmin(error))]


def table(rows: list[Row]) -> list[str]:
    library = WIDENINGS.index(RESAMPLED_VESSEL_WIDENING)
    header = ["bundle", "photographs", "factor f", "label width", "predicted - label, erosion off",
              *(f"eroded, widening {widening}" for widening in WIDENINGS),
              f"widening {RESAMPLED_VESSEL_WIDENING}, network pixels (x f)", f"within {TOLERANCE} px"]
    body = [[name, photographs, shown_factor, f"{values[0]:.2f}", *(f"{value:+.2f}" for value in values[1:]),
             f"{values[2 + library] * factor:+.2f}", "yes" if abs(values[2 + library]) <= TOLERANCE else "no"]
            for name, photographs, shown_factor, factor, values in rows]
    return markdown_table(header, body, text_columns=(0, 1, 2, len(header) - 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=RESULT, help=f"the results file (default: {shown(RESULT)})")
    args = parser.parse_args()
    bundles = args.bundles
    rows = [row for bundle in bundles for row in bundle_rows(bundle.resolve())]
    chosen = chosen_widening(rows)
    args.out.write_text("\n".join([
        "# Vessel widths at every scale: the label convention and the erosion that follows from it",
        "",
        f"- Date: {datetime.date.today()}. Machine: {machine_line()}.",
        f"- Command: `python bench/vessel_width.py {' '.join(str(b) for b in bundles)}"
        f"{'' if args.out == RESULT else ' --out ' + shown(args.out)}`",
        "- Widths in photograph pixels, read along the label's centre line where every mask (threshold 0.5) detects "
        "it, pooled over the photographs (the script's docstring says how). Validation photographs only: no test "
        "photograph is scored here. Each \"eroded\" column erodes the probabilities resampled up by "
        "`medseg.fundus.upsampled_edge_radius` for a network that marks vessels that many of its pixels wider on a "
        "resampled photograph than the label convention; a network's own error of width, in its pixels, is "
        "multiplied by 1 / f in the photograph's.",
        f"- **Chosen**: widening {chosen}, the one with the least mean absolute error in network pixels over the "
        "resampled rows (f < 1). "
        f"`medseg.fundus.RESAMPLED_VESSEL_WIDENING`, what `medseg infer` erodes by: {RESAMPLED_VESSEL_WIDENING}"
        f"{'' if chosen == RESAMPLED_VESSEL_WIDENING else ' (not the chosen one)'}.",
        "",
        *table(rows),
        "",
    ]))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
