"""Benchmark: a change to ``fundus_vessel_unet``'s recipe, retrained with two seeds, against the weights it ships,
on the bundle's validation photographs only: does the candidate replace them?

The photographs: the DRIVE and LES-AV training photographs the bundle holds out for validation (its train.yaml's
split, as ``bench/fundus_retrain.py`` reads them), each with its own FOV mask, through
``medseg.engines.evaluate_vessel_folder`` (``medseg evaluate BUNDLE --images --labels --masks``: float32,
``--scale auto``, the bundle's erosion of upsampled edges, pooled, threshold 0.5). No test photograph is scored.

Widths, for the issue's "widths right on every camera": each ensemble's vessel width against its label
(``bench/vessel_width.py``'s measure) on the DRIVE validation photographs enlarged by ``1 / WIDTH_FACTOR``, the
scale of a high-resolution camera, in the network's pixels. They are reported, not part of the choice.

The choice (written before the candidate was scored): the candidate replaces the shipped weights when its mean F1
over the two validation sets is higher than theirs and its F1 on neither set is lower than theirs by more than
``SAME_RECIPE_SPREAD`` (the F1 spread of the shipped recipe's two seeds, ``bench/fundus_retrain.py``).

    python bench/fundus_candidate.py "scale jitter 0.5" OUT/member0/checkpoints/model.pt OUT/member1/... \\
        --out bench/results/fundus_scale_jitter.md
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
from pathlib import Path

import numpy as np
import torch

from medseg.engines.ensemble import join_checkpoints
from medseg.inference import LoadedModel, load_model, predict_image, read_image
from medseg.tracking import training_record

import vessel_width
from common import REPO, machine_line, markdown_table, shown
from fundus_retrain import BUNDLE, SAME_RECIPE_SPREAD, SETS, scores, training_line, validation_sets

WIDTH_FACTOR = 0.3


def width_error(model: LoadedModel, records: list[dict], work: Path) -> float:
    """Predicted minus label vessel width (erosion as the model's settings say), in the network's pixels, on
    ``records`` enlarged by ``1 / WIDTH_FACTOR``."""
    cases = [vessel_width.enlarged(record, WIDTH_FACTOR, work) for record in records]
    totals = np.zeros(3)
    for path, label, fov in cases:
        image, meta = read_image(path)
        mask = predict_image(model.network, image, meta, model.settings, fov).probabilities[0].numpy()
        totals += vessel_width.widths([mask >= 0.5], label, fov, 1.0 / WIDTH_FACTOR)
    return float((totals[1] - totals[0]) / totals[2] * WIDTH_FACTOR)


def ensembles(checkpoints: list[Path], work: Path) -> list[tuple[str, LoadedModel]]:
    """The shipped ensemble, the candidate's, then each candidate member alone: all with the bundle's settings."""
    joined = work / "candidate.pt"
    torch.save(join_checkpoints(checkpoints), joined)
    members = [(f"candidate member {k} alone", load_model(BUNDLE, overrides={"ensemble_members": 1}, checkpoint=c))
               for k, c in enumerate(checkpoints)]
    return [("shipped", load_model(BUNDLE)), ("candidate", load_model(BUNDLE, checkpoint=joined)), *members]


def choice(results: dict[str, dict]) -> tuple[bool, str]:
    """Whether the candidate ensemble replaces the shipped one, and why."""
    shipped, candidate = results["shipped"], results["candidate"]
    mean = {name: float(np.mean([scored[s]["f1"] for s in SETS])) for name, scored in (("shipped", shipped),
                                                                                        ("candidate", candidate))}
    within = all(shipped[s]["f1"] - candidate[s]["f1"] <= SAME_RECIPE_SPREAD for s in SETS)
    replaces = mean["candidate"] > mean["shipped"] and within
    said = "; ".join(f"{s}: F1 {candidate[s]['f1']:.4f} against {shipped[s]['f1']:.4f}" for s in SETS)
    verdict = "replaces the shipped weights" if replaces else "does not replace the shipped weights"
    return replaces, (f"the candidate {verdict} (mean F1 {mean['candidate']:.4f} against {mean['shipped']:.4f}; "
                      f"{said}; allowed drop on one set {SAME_RECIPE_SPREAD})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("change", help="what the candidate's recipe changes, in words")
    parser.add_argument("checkpoints", type=Path, nargs="+", help="the candidate members' model.pt, in order")
    parser.add_argument("--out", type=Path, required=True, help="the results file")
    args = parser.parse_args()
    sets = validation_sets()
    results, widths = {}, {}
    with tempfile.TemporaryDirectory() as work:
        for name, model in ensembles(args.checkpoints, Path(work)):
            results[name] = scores(model, sets, Path(work))
            if not name.endswith("alone"):
                widths[name] = width_error(model, sets[SETS[0]][0], Path(work))
            print(name, results[name], widths.get(name), flush=True)
    _, chosen = choice(results)
    record = training_record(args.checkpoints, f"sqlite:///{REPO / 'mlflow.db'}")
    write(args, results, widths, chosen, record, sets)
    print(args.out.read_text())


def write(args: argparse.Namespace, results: dict, widths: dict, chosen: str, record: dict | None, sets: dict) -> None:
    header = ["weights", *(f"{name} ({len(sets[name][0])}) F1 / AUC-ROC" for name in SETS),
              "LES-AV validation Se / precision", f"width error at f = {WIDTH_FACTOR} (network px)"]
    rows = [[name, *(f"{scored[s]['f1']:.4f} / {scored[s]['auc_roc']:.4f}" for s in SETS),
             f"{scored[SETS[1]]['sensitivity']:.3f} / {scored[SETS[1]]['precision']:.3f}",
             f"{widths[name]:+.2f}" if name in widths else "-"] for name, scored in results.items()]
    trained = training_line(record)
    ids = {name: ", ".join(r["id"] for r in sets[name][0]) for name in SETS}
    args.out.write_text("\n".join([
        f"# `fundus_vessel_unet` with {args.change}, against its shipped weights",
        "",
        f"- Date: {datetime.date.today()}. Machine: {machine_line()}.",
        f"- Command: `python bench/fundus_candidate.py \"{args.change}\" "
        f"{' '.join(shown(c) for c in args.checkpoints)} --out {shown(args.out)}`",
        f"- Candidate trained: {trained}.",
        f"- Photographs (validation only, each with its FOV mask): DRIVE training {ids[SETS[0]]}; LES-AV training "
        f"{ids[SETS[1]]}. Each row `medseg.engines.evaluate_vessel_folder` (float32, `--scale auto`, the bundle's "
        f"erosion), pooled, threshold 0.5; the width error on the DRIVE photographs enlarged by 1/{WIDTH_FACTOR} "
        "(`bench/vessel_width.py`'s measure, reported, not chosen on). No test photograph is scored here.",
        f"- **Chosen on these photographs**: {chosen}.",
        "",
        *markdown_table(header, rows, text_columns=1),
        "",
    ]))


if __name__ == "__main__":
    main()
