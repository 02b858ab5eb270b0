"""Benchmark: ``fundus_vessel_unet`` retrained under medseg's one label convention (issue #36) against the weights
it ships, on the bundle's validation photographs only: does the retrained ensemble replace them?

The shipped weights learned LES-AV's labels shrunk to the training FOV width by thresholding their coverage at one
half, and run with the erosion of upsampled edges off. The retrained ones learned every label under the convention
(``medseg.fundus.resample_vessel_label``: a pixel is vessel when a vessel touches it at that grid), from which the
erosion follows: on. Each is also scored with the other erosion setting, to show what the convention changes.

The photographs: the DRIVE and LES-AV training photographs the bundle holds out for validation (its train.yaml's
``val_images``, ``val_images_les_av``, ``split_seed``), each with its own FOV mask, through
``medseg.engines.evaluate_vessel_folder`` (what ``medseg evaluate BUNDLE --images --labels --masks`` runs: float32,
``--scale auto``, pooled, threshold 0.5). No test photograph is scored here.

The choice (written before the retrained weights were scored): the retrained ensemble, erosion on, replaces the
shipped one when its F1 on neither validation set is lower than the shipped weights' as shipped by more than
``SAME_RECIPE_SPREAD``, the F1 spread of the shipped recipe's two seeds on DRIVE's validation photographs
(``bench/results/camera_transfer.md``): the convention is chosen for widths right on every camera, which two
cameras' held-out photographs cannot show, so they are asked only not to get worse beyond seed noise.

    python bench/fundus_retrain.py OUTPUT_DIR/member0/checkpoints/model.pt OUTPUT_DIR/member1/checkpoints/model.pt

writes ``bench/results/fundus_retrain.md``.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
from pathlib import Path

import torch

from medseg.data import LES_AV_LABEL_POSITIVE
from medseg.engines.ensemble import join_checkpoints
from medseg.engines.evaluation import evaluate_vessel_folder
from medseg.inference import LoadedModel, load_model
from medseg.tracking import training_record

import inference_windows
import upsampled_edges
from common import DATA, REPO, RESULTS, machine_line, markdown_table, shown

BUNDLE = REPO / "bundles" / "fundus_vessel_unet"
RESULT = RESULTS / "fundus_retrain.md"
# F1 of the shipped recipe's seeds 0 and 10 on DRIVE's 4 validation photographs: 0.7957 and 0.8024
SAME_RECIPE_SPREAD = 0.0067
SETS = ("DRIVE validation", "LES-AV validation")
METRICS = ("f1", "auc_roc", "sensitivity", "precision")


def validation_sets(data: Path = DATA) -> dict[str, tuple[list[dict], tuple[int, ...] | None]]:
    """The training photographs of each dataset that the bundle holds out (its train.yaml split, as the window
    choice and the erosion bench read it), with their FOV masks, and the label values that mean vessel."""
    drive, _ = inference_windows.validation_sets(BUNDLE, data)["DRIVE validation"]
    _, les_av = upsampled_edges.validation_photographs(BUNDLE, data)
    keys = ("id", "image", "label", "mask")
    return {SETS[0]: ([{key: record[key] for key in keys} for record in drive], None),
            SETS[1]: ([{key: record[key] for key in keys} for record in les_av], LES_AV_LABEL_POSITIVE)}


def scores(model: LoadedModel, sets: dict, work: Path) -> dict[str, dict[str, float]]:
    """Pooled scores at 0.5 of ``model`` on each validation set."""
    scored = {}
    for name, (records, positive) in sets.items():
        report = evaluate_vessel_folder(model, records, work / "report.json", label_positive=positive)
        scored[name] = {metric: report["threshold_0.5"][metric] for metric in METRICS}
    return scored


def candidates(checkpoints: list[Path], work: Path) -> list[tuple[str, bool, LoadedModel]]:
    """(name, erosion, model): the shipped ensemble and the retrained one, each with the erosion off and on, then
    each retrained member alone with the erosion on."""
    shipped = load_model(BUNDLE)
    joined = work / "retrained.pt"
    torch.save(join_checkpoints(checkpoints), joined)
    retrained = load_model(BUNDLE, checkpoint=joined)
    rows = [(name, erosion, model) for name, model in (("shipped", shipped), ("retrained", retrained))
            for erosion in (False, True)]
    return rows + [(f"retrained member {k} alone", True,
                    load_model(BUNDLE, overrides={"ensemble_members": 1}, checkpoint=checkpoint))
                   for k, checkpoint in enumerate(checkpoints)]


def choice(results: dict[tuple[str, bool], dict]) -> tuple[bool, str]:
    """Whether the retrained ensemble (erosion on) replaces the shipped one (erosion off), and why."""
    shipped, retrained = results[("shipped", False)], results[("retrained", True)]
    drops = {name: shipped[name]["f1"] - retrained[name]["f1"] for name in SETS}
    replaces = all(drop <= SAME_RECIPE_SPREAD for drop in drops.values())
    said = "; ".join(f"{name}: F1 {retrained[name]['f1']:.4f} against {shipped[name]['f1']:.4f}" for name in SETS)
    verdict = "replaces the shipped weights" if replaces else "does not replace the shipped weights"
    return replaces, f"the retrained ensemble (erosion on) {verdict} ({said}; allowed drop {SAME_RECIPE_SPREAD})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", type=Path, nargs="+", help="the retrained members' model.pt, in order")
    args = parser.parse_args()
    sets = validation_sets()
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for name, erosion, model in candidates(args.checkpoints, Path(work)):
            results[(name, erosion)] = scores(model.with_settings(upsampled_edge_erosion=erosion), sets, Path(work))
            print(name, "erosion", erosion, results[(name, erosion)], flush=True)
    _, chosen = choice(results)
    record = training_record(args.checkpoints, f"sqlite:///{REPO / 'mlflow.db'}")
    write(results, chosen, record, sets, args.checkpoints)
    print(RESULT.read_text())


def training_line(record: dict | None) -> str:
    """How the weights of an MLflow training record (``medseg.tracking.training_record``) were trained, in words."""
    if record is None:
        return "not recorded"
    steps = ", ".join(f"{count:,}" for count in record["steps"])
    return (f"`{record['command']}` on {record['date']} ({record['machine']}), {record['wall_minutes']} minutes, "
            f"{steps} steps (its MLflow run)")


def write(results: dict, chosen: str, record: dict | None, sets: dict, checkpoints: list[Path]) -> None:
    header = ["weights", "labels learned", "upsampled_edge_erosion",
              *(f"{name} ({len(sets[name][0])}) F1 / AUC-ROC" for name in SETS), "LES-AV validation Se / precision"]
    rows = [[name, "half coverage" if name == "shipped" else "the convention", "on" if erosion else "off",
             *(f"{scored[s]['f1']:.4f} / {scored[s]['auc_roc']:.4f}" for s in SETS),
             f"{scored[SETS[1]]['sensitivity']:.3f} / {scored[SETS[1]]['precision']:.3f}"]
            for (name, erosion), scored in results.items()]
    trained = training_line(record)
    ids = {name: ", ".join(record["id"] for record in sets[name][0]) for name in SETS}
    RESULT.write_text("\n".join([
        "# `fundus_vessel_unet` retrained under the label convention, against its shipped weights",
        "",
        f"- Date: {datetime.date.today()}. Machine: {machine_line()}.",
        f"- Command: `python bench/fundus_retrain.py {' '.join(shown(c) for c in checkpoints)}`",
        f"- Retrained: {trained}.",
        f"- Photographs (validation only, each with its FOV mask): DRIVE training {ids[SETS[0]]}; LES-AV training "
        f"{ids[SETS[1]]}. Each row `medseg.engines.evaluate_vessel_folder` (float32, `--scale auto`), pooled, "
        "threshold 0.5. No test photograph is scored here.",
        f"- **Chosen on these photographs**: {chosen}.",
        "",
        *markdown_table(header, rows, text_columns=3),
        "",
    ]))


if __name__ == "__main__":
    main()
