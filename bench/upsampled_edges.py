"""Validation of `upsampled_edge_erosion`: each fundus bundle with and without it, on LES-AV photographs it never
trained on and that are no test photographs.

LES-AV's field of view is 2.7 times DRIVE's width, so `--scale auto` shrinks its photographs by about 0.37 and the
probabilities are resampled back up to them. Labels that mark every pixel a vessel touches put an edge up to one
pixel of their own grid outside the vessel: a network trained on DRIVE's native labels paints vessels about
``1 / f - 1`` photograph pixels too wide once resampled up by ``1 / f``, which the erosion removes
(`medseg.inference.predict`). A network trained on labels shrunk by thresholding at half coverage (the LES-AV part
of `fundus_vessel_unet` 0.1.0, before medseg had one label convention) has no such excess to remove; its weights
retrained under the convention (0.2.0) against those: `bench/fundus_retrain.py`.

The photographs: LES-AV `training/` (11) for bundles trained on DRIVE alone, the LES-AV photographs a bundle held
out for validation for one that trained on LES-AV (its train.yaml's `val_images_les_av`, `split_seed`). Each row is
`medseg.engines.evaluate_vessel_folder` (what `medseg evaluate BUNDLE --images DIR --labels DIR --masks DIR` runs:
float32, LES-AV's own FOV masks, pooled, threshold 0.5), the bundle's settings with the erosion off and on: for the
shipped weights, and for each member of a shipped ensemble alone (the recipe's seeds). DRIVE's own photographs are
not rescaled (their FOV is within `AUTO_SCALE_TOLERANCE` of the training width), so the erosion leaves every DRIVE
score as it was.

    python bench/upsampled_edges.py bundles/drive_vessel_unet bundles/drive_vessel_u2net bundles/fundus_vessel_unet
"""

from __future__ import annotations

import datetime
import tempfile
import time
from pathlib import Path

from monai.bundle import ConfigParser

from medseg.data import LES_AV_LABEL_POSITIVE, les_av_records, multi_camera_records
from medseg.engines.ensemble import MEMBER_SEED_STEP
from medseg.engines.evaluation import evaluate_vessel_folder
from medseg.inference import LoadedModel, load_model, read_state_dict
from medseg.networks import ensemble_size

from common import DATA, RESULTS, bundle_arguments, machine_line, markdown_table, save_member

RESULT = RESULTS / "upsampled_edges.md"
METRICS = ("f1", "auc_roc", "sensitivity", "precision")


def validation_photographs(bundle: Path, data: Path = DATA) -> tuple[str, list[dict]]:
    """The LES-AV photographs under ``data`` that ``bundle`` never trained on, outside their test split, and what
    they are."""
    train = ConfigParser()
    train.read_config(str(bundle / "configs" / "train.yaml"))
    if "val_images_les_av" not in train.config:
        return "LES-AV training (11): never trained on", les_av_records(data / "LES-AV", "training")
    _, validation = multi_camera_records(
        data / "DRIVE", data / "LES-AV", val_drive=train["val_images"], val_les_av=train["val_images_les_av"],
        seed=train.get_parsed_content("split_seed"),
    )
    held_out = [{**record, "id": record["id"].removeprefix("les-av-")} for record in validation
                if record["id"].startswith("les-av-")]
    ids = ", ".join(record["id"] for record in held_out)
    return f"LES-AV training {ids}: its validation photographs", held_out


def shipped_networks(bundle: Path, work: Path) -> list[tuple[str, LoadedModel]]:
    """The shipped weights, then each member of a shipped ensemble alone (member k trained with seed
    ``seed + MEMBER_SEED_STEP k``): the same recipe's seeds, each judged on its own."""
    weights = read_state_dict(bundle / "models" / "model.pt")
    networks = [(f"`{bundle.name}`", load_model(bundle))]
    seed = ConfigParser.load_config_file(str(bundle / "configs" / "train.yaml"))["seed"]
    members = ensemble_size(weights)
    for k in range(members if members > 1 else 0):
        path = save_member(bundle, k, work / f"member{k}.pt")
        model = load_model(bundle, overrides={"ensemble_members": 1}, checkpoint=path)
        networks.append((f"`{bundle.name}` member {k} alone (seed {seed + MEMBER_SEED_STEP * k})", model))
    return networks


def bundle_rows(bundle: Path) -> list[list[str]]:
    described, records = validation_photographs(bundle)
    records = [{key: record[key] for key in ("id", "image", "label", "mask")} for record in records]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name, model in shipped_networks(bundle, Path(work)):
            for erosion in (False, True):
                start = time.perf_counter()
                report = evaluate_vessel_folder(model.with_settings(upsampled_edge_erosion=erosion), records,
                                                Path(work) / "report.json", label_positive=LES_AV_LABEL_POSITIVE)
                scores = report["threshold_0.5"]
                bundles = " (the bundle's)" if erosion == model.settings.upsampled_edge_erosion else ""
                rows.append([name, described, ("on" if erosion else "off") + bundles,
                             *(f"{scores[metric]:.4f}" for metric in METRICS)])
                print(f"{name}, erosion {erosion}: {time.perf_counter() - start:.0f} s", flush=True)
    return rows


def main() -> None:
    bundles = bundle_arguments(__doc__)
    rows = [row for bundle in bundles for row in bundle_rows(bundle.resolve())]
    header = ["bundle", "photographs", "upsampled_edge_erosion", "F1", "AUC-ROC", "sensitivity", "precision"]
    RESULT.write_text("\n".join([
        "# Eroding the edges of upsampled probabilities: validation photographs only",
        "",
        f"- Date: {datetime.date.today()}. Machine: {machine_line()}.",
        f"- Command: `python bench/upsampled_edges.py {' '.join(str(b) for b in bundles)}`",
        "- Each row: the shipped weights, or one member of the shipped ensemble alone, through "
        "`medseg.engines.evaluate_vessel_folder` (float32, `--scale auto`, LES-AV's own FOV masks), pooled over the "
        "photographs, threshold 0.5; \"the bundle's\": the setting of its `configs/inference.yaml`. No test "
        "photograph is scored here.",
        "",
        *markdown_table(header, rows, text_columns=3),
        "",
    ]))
    print(RESULT.read_text())


if __name__ == "__main__":
    main()
