"""Fine-tuning `drive_vessel_unet` on another camera's labelled photographs: choices on validation data only.

Every row runs the command a user runs (`medseg train drive_vessel_unet --images ... --labels ... --init-from
drive_vessel_unet --config finetune`, the two members of the ensemble at once, one per core) on LES-AV's
`training/` photographs, with one setting changed: the learning rate, the CPU budget (at most 15 minutes), the
ratio of DRIVE photographs mixed in (`--keep-bundle-data`), the FOV width. LES-AV `training/` is split once (seed 0): 8
photographs to train on, 3 held out for validation (given as `--val-images`), so that every row validates on the
same 3. Rows are compared on validation data only: those 3 LES-AV photographs and, for the forgetting, DRIVE's 4
held-out training photographs (the bundle's own validation split), each scored through the inference path of `medseg
evaluate --images` (`medseg.engines.evaluate_vessel_folder`, no masks: the FOV estimated, as a user without masks
gets it), with the erosion of edges resampled up by the weights' own widening, measured on the 3 held-out LES-AV
photographs as `medseg bundle ship --new-bundle` measures it (`medseg.engines.width`). The row `shipped` scores the
shipped weights as they are (`run shipped` trains nothing): the reference that the fine-tuned rows gain on (LES-AV)
and forget against (DRIVE). Test photographs (LES-AV `test/`, DRIVE `test/`) are scored only by `score ROW --test`,
which refuses a row the validation columns did not choose. Once chosen, the schedule `configs/finetune.yaml` holds
is refit on all 11 photographs (`refit_every`), as the final model of a study is trained on all its data.

    python bench/fine_tune.py run lr_3e-4            # trains (the row's budget), then scores validation
    python bench/fine_tune.py score lr_3e-4 --test   # a chosen row only
    python bench/fine_tune.py table > bench/results/fine_tune.md

`--minutes M` replaces every row's budget and `--work DIR` the working folder: a quick try of the script
(`--minutes 0.3 --work /tmp/fine_tune_try`); its scores are not measurements, and `table` says which budget they had.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import yaml

from medseg.data import LES_AV_LABEL_POSITIVE, drive_records, les_av_records, split_validation
from medseg.engines.ensemble import join_checkpoints, joined_checkpoint
from medseg.engines.evaluation import evaluate_vessel_folder
from medseg.engines.finetune import trained_fov_width
from medseg.engines.width import measure_widening
from medseg.inference import load_model

from common import DATA, REPO, WORK, commands_section, machine_line, markdown_table, shown

BUNDLE = "drive_vessel_unet"
WORK = WORK / "fine_tune"
# LES-AV training/ photographs held out for validation, and of the rest those of the 3-photograph variant
VAL_PHOTOGRAPHS, FEW_PHOTOGRAPHS, SPLIT_SEED = 3, 3, 0


@dataclass(frozen=True)
class Row:
    """One candidate: what it changes, its learning rate and budget (every row states both, so that no row depends
    on what ``configs/finetune.yaml`` held when it ran), its folder ("all": 8 photographs, "few": 3), the ratio of
    the bundle's own photographs mixed in (``--keep-bundle-data``, none when ``None``), its group, and the FOV
    width its photographs are brought to (``training_fov_width``; the bundle's own when ``None``) and its loss's
    Dice weight."""

    change: str
    learning_rate: float
    minutes: float = 10
    folder: str = "all"
    keep_ratio: float | None = None
    group: str = "schedule"  # rows are chosen within their group
    fov_width: float | None = None
    dice_weight: float | None = None  # the loss's Dice share against BCE (the bundle's 0.5 when None)

    def sets(self, minutes: float | None = None) -> tuple[str, ...]:
        """The row's ``--set`` overrides; ``minutes`` replaces its budget (a quick try of the script)."""
        keep = (f"keep_bundle_data_ratio={self.keep_ratio}",) if self.keep_ratio is not None else ()
        fov = (f"training_fov_width={self.fov_width:g}",) if self.fov_width is not None else ()
        dice = (f"dice_weight={self.dice_weight:g}",) if self.dice_weight is not None else ()
        return (f"learning_rate={self.learning_rate}", f"time_budget_minutes={minutes or self.minutes:g}", *keep, *fov,
                *dice)


ROWS: dict[str, Row] = {
    "shipped": Row("none: the shipped weights, not fine-tuned (the reference; scored, never trained or chosen)", 0,
                   0, group="reference"),
    "lr_3e-4": Row("learning rate 3e-4, 10 minutes", 3e-4),
    "lr_1e-3": Row("learning rate 1e-3 (the from-scratch rate), 10 minutes", 1e-3),
    "lr_1e-3_5min": Row("learning rate 1e-3, 5 minutes", 1e-3, 5),
    "lr_1e-3_15min": Row("learning rate 1e-3, 15 minutes", 1e-3, 15),
    "fov_810_15min": Row("photographs brought to a 810-pixel FOV width (the bundle's 540 times 1.5: finer vessels "
                         "for the network to see), learning rate 1e-3, 15 minutes", 1e-3, 15, fov_width=810),
    "dice_0.8": Row("Dice weighted 0.8 against BCE (the bundle's 0.5), learning rate 1e-3, 10 minutes", 1e-3,
                    dice_weight=0.8),
    "refit_every": Row("the configured schedule (learning rate 1e-3, 10 minutes) refit on all 11 photographs once "
                       "chosen: validates on 3 it trains on, chooses nothing", 1e-3, folder="every", group="refit"),
    "few_lr_3e-4": Row("3 photographs, learning rate 3e-4, 10 minutes", 3e-4, folder="few", group="few"),
    "keep_0.5": Row("--keep-bundle-data, 0.5 DRIVE photographs per LES-AV one, learning rate 1e-3, 10 minutes",
                    1e-3, keep_ratio=0.5, group="keep"),
    "keep_1": Row("--keep-bundle-data, 1 DRIVE photograph per LES-AV one, learning rate 1e-3, 10 minutes", 1e-3,
                  keep_ratio=1.0, group="keep"),
    "keep_2": Row("--keep-bundle-data, 2 DRIVE photographs per LES-AV one, learning rate 1e-3, 10 minutes", 1e-3,
                  keep_ratio=2.0, group="keep"),
}
# (column title, scored set, validation?)
SETS = (("LES-AV val (3)", "les_av_val", True), ("DRIVE val (4)", "drive_val", True),
        ("LES-AV test (11), no masks", "les_av_test", False), ("DRIVE test (20), no masks", "drive_test", False))


def linked_folders(work: Path) -> dict[str, Path]:
    """LES-AV training/ as plain labelled folders of symbolic links (the data is never copied): "all" (8 to train
    on), "few" (3 of those), "val" (the 3 held out, split seed 0) and "every" (all 11, for the refit)."""
    train, val = split_validation(les_av_records(DATA / "LES-AV", "training"), n_val=VAL_PHOTOGRAPHS, seed=SPLIT_SEED)
    parts = {"all": train, "few": train[:FEW_PHOTOGRAPHS], "val": val, "every": train + val}
    for name, records in parts.items():
        for key, folder in (("image", "images"), ("label", "labels"), ("mask", "masks")):
            (work / "folders" / name / folder).mkdir(parents=True, exist_ok=True)
            for record in records:
                link = work / "folders" / name / folder / Path(record[key]).name
                if not link.is_symlink():
                    link.symlink_to(record[key])
    return {name: work / "folders" / name for name in parts}


def train_args(name: str, work: Path, minutes: float | None) -> list[str]:
    """The ``medseg train`` arguments of row ``name``: no masks given (the FOV estimated, as for most users)."""
    row, folders = ROWS[name], linked_folders(work)
    return ["train", BUNDLE, "--images", str(folders[row.folder] / "images"), "--labels",
            str(folders[row.folder] / "labels"), "--val-images", str(folders["val"] / "images"), "--val-labels",
            str(folders["val"] / "labels"), "--label-positive", *map(str, LES_AV_LABEL_POSITIVE),
            "--init-from", BUNDLE, "--config", "finetune", *[arg for s in row.sets(minutes) for arg in ("--set", s)],
            *(["--keep-bundle-data"] if row.keep_ratio is not None else []), "--quiet", "--output-dir",
            str(work / name), "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}"]


def records(split: str, work: Path) -> tuple[list[dict], tuple[int, ...] | None]:
    """The records of one scored set, without masks (the FOV estimated), and their label's vessel values."""
    strip = lambda rs: [{k: r[k] for k in ("id", "image", "label")} for r in rs]  # noqa: E731
    if split == "drive_val":
        return strip(split_validation(drive_records(DATA / "DRIVE", "training"), n_val=4, seed=0)[1]), None
    if split == "drive_test":
        return strip(drive_records(DATA / "DRIVE", "test")), None
    if split == "les_av_val":
        held_out = split_validation(les_av_records(DATA / "LES-AV", "training"), n_val=VAL_PHOTOGRAPHS,
                                    seed=SPLIT_SEED)[1]
        return strip(held_out), LES_AV_LABEL_POSITIVE
    return strip(les_av_records(DATA / "LES-AV", "test")), LES_AV_LABEL_POSITIVE


def chosen_rows(scores: dict[str, dict]) -> set[str]:
    """Per group, the row with the highest validation score: LES-AV val F1 for the schedule and the 3-photograph
    variant; for the mixing ratio, the mean F1 of LES-AV val and DRIVE val (the new camera and the forgetting)."""
    chosen = {name for name in scores if ROWS[name].group == "refit"}  # a refit of the chosen schedule
    for group in {row.group for row in ROWS.values()} - {"reference", "refit"}:
        names = [name for name in scores if ROWS[name].group == group and "les_av_val" in scores[name]]
        weight = (lambda s: (s["les_av_val"]["f1"] + s["drive_val"]["f1"]) / 2) if group == "keep" else \
            (lambda s: s["les_av_val"]["f1"])
        if names:
            chosen.add(max(names, key=lambda name: weight(scores[name])))
    return chosen


def recorded(work: Path) -> dict[str, dict]:
    return {path.parent.name: json.loads(path.read_text()) for path in work.glob("*/scores.json")}


def score(name: str, work: Path, test: bool) -> dict:
    """Score row ``name``'s ensemble (its two members' final weights) on the validation sets, and with ``test``
    the test sets, refused unless the validation columns chose the row."""
    if test and name not in chosen_rows(recorded(work)):
        raise SystemExit(f"{name}: not chosen on validation data ({sorted(chosen_rows(recorded(work)))} are); "
                         "its test photographs stay unscored")
    results_file = work / name / "scores.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    (work / name).mkdir(parents=True, exist_ok=True)
    members = sorted((work / name).glob("member*/checkpoints/model.pt"))
    with joined_checkpoint(join_checkpoints(members)) if members else nullcontext() as checkpoint:
        model = load_model(REPO / "bundles" / BUNDLE, checkpoint=checkpoint)  # no members: the shipped weights
        fov_width = trained_fov_width(members) if members else None  # as `bundle ship --new-bundle` reads it
        if fov_width is not None:  # inferred at the FOV width it was fine-tuned at
            model = model.with_settings(training_fov_width=fov_width)
        if members:  # their own widening, measured as `medseg bundle ship --new-bundle` measures it
            if "widening" not in results:  # scores of another widening (the library's) are scored again
                held_out, positive = records("les_av_val", work)
                measured = measure_widening(model, held_out, label_positive=positive)
                results = {"widening": measured.widening if measured else None}
                results_file.write_text(json.dumps(results, indent=2))
            model = model.with_settings(resampled_vessel_widening=results["widening"])
        for _, split, validation in SETS:
            if (validation or test) and split not in results:  # a score cut short keeps the sets it finished
                chosen, positive = records(split, work)
                report = evaluate_vessel_folder(model, chosen, work / name / f"{split}.json", label_positive=positive)
                results[split] = {metric: report["threshold_0.5"][metric] for metric in ("f1", "auc_roc")}
                results_file.write_text(json.dumps(results, indent=2))
    return results


def configured_row() -> str | None:
    """The row whose schedule ``configs/finetune.yaml`` holds (its learning rate and budget, 8 photographs, the
    bundle's FOV width and loss, nothing mixed in); ``None`` when no row does."""
    overlay = yaml.safe_load((REPO / "configs" / "finetune.yaml").read_text())
    return next((name for name, row in ROWS.items() if row.group == "schedule" and row.fov_width is None
                 and row.dice_weight is None and row.learning_rate == overlay["learning_rate"]
                 and row.minutes == overlay["time_budget_minutes"]), None)


def configured_note(scores: dict[str, dict], chosen: set[str]) -> list[str]:
    """A line saying by how much the schedule group's winner leads the recipe ``configs/finetune.yaml`` holds, on
    each validation set, where they differ."""
    configured = configured_row()
    (winner,) = [name for name in chosen if ROWS[name].group == "schedule"] or [configured]
    if configured is None or winner == configured or configured not in scores:
        return []
    leads = ", ".join(f"{title} F1 by {scores[winner][split]['f1'] - scores[configured][split]['f1']:+.4f}"
                      for title, split, validation in SETS if validation)
    return [f"- `configs/finetune.yaml` holds the schedule of `{configured}`; the schedule group's winner "
            f"`{winner}` leads it on {leads}: not taken over, as the overlay says why."]


def table(work: Path) -> str:
    scores, facts = recorded(work), json.loads((work / "facts.json").read_text()) if (work / "facts.json").is_file() else {}
    chosen = chosen_rows(scores)
    header = ["row", "change", "budget (min)", "trained in (s)", "widening (LES-AV val)",
              *(f"{t} F1 / AUC" for t, _, _ in SETS), "chosen"]
    rows = []
    for name in [name for name in ROWS if name in scores]:
        cells = [f"{scores[name][split]['f1']:.4f} / {scores[name][split]['auc_roc']:.4f}" if split in scores[name]
                 else "-" for _, split, _ in SETS]
        fact = facts.get(name, {})
        widening = scores[name].get("widening", "-")
        rows.append([name, ROWS[name].change, str(fact.get("budget", "-")), str(fact.get("seconds", "-")),
                     "the library's" if widening is None else str(widening), *cells,
                     "refit (chooses nothing)" if ROWS[name].group == "refit" else "**chosen**" if name in chosen else ""])
    lines = markdown_table(header, rows, text_columns=(0, 1, len(header) - 1))
    missing = [name for name in ROWS if name not in scores and ROWS[name].group in {ROWS[n].group for n in scores}]
    earlier = [name for name in scores if name not in chosen and any(split in scores[name] for _, split, v in SETS
                                                                     if not v)]
    partial = ([f"- Test columns of {', '.join(f'`{name}`' for name in earlier)}: scored while the row was chosen, "
                "before a later row of its group won on validation."] if earlier else [])
    partial += ([f"- Not run in this folder: {', '.join(f'`{name}`' for name in missing)}; a row is chosen among the "
                "rows of its group that were."] if missing else [])
    folder = "" if work == WORK.resolve() else f" --work {shown(work)}"
    commands = [f"- `{name}`: `{shlex.join(['medseg', *train_args(name, Path(shown(work)), None)])}`"
                for name in ROWS if ROWS[name].group != "reference"]
    return "\n".join([
        "# Fine-tuning drive_vessel_unet on another camera (LES-AV), chosen on validation data",
        "",
        f"- Written on {machine_line()}, {datetime.date.today().isoformat()}, by `python bench/fine_tune.py{folder} "
        f"table`; each row by `python bench/fine_tune.py{folder} run ROW` (the command below), test columns by "
        "`score ROW --test`.",
        "- Every row fine-tunes both members of the shipped ensemble (one per core) from their own weights on 8 of "
        "LES-AV's 11 training photographs (3 in the `few_` rows) and validates on the other 3 (split seed 0); "
        "`refit_every` trains the schedule `configs/finetune.yaml` holds on all 11 once the choices were made (as "
        "nnU-Net's final fold on all data): its LES-AV val column and its widening come from photographs it trained "
        "on, so it chooses nothing and its test columns are those of the recipe refit.",
        "- Each row's weights are scored with the edges of probabilities resampled up eroded by their own widening "
        "(network pixels), measured on the 3 LES-AV validation photographs as `medseg bundle ship --new-bundle` "
        "measures it (`medseg.engines.width`): what the bundle shipped from them would erode by.",
        "- **Chosen on validation only**: per group, the highest LES-AV val F1 (the mixing ratio: the highest mean "
        "of LES-AV val and DRIVE val F1). The test columns are scored for the chosen rows and the refit alone and "
        "chose nothing.",
        *partial,
        *configured_note(scores, chosen),
        "",
        *lines,
        "",
        *commands_section("Commands (from the repository root):", commands),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=WORK, help=f"working folder (default: {WORK})")
    sub = parser.add_subparsers(dest="action", required=True)
    for action in ("run", "score"):
        command = sub.add_parser(action)
        command.add_argument("row", choices=list(ROWS))
        command.add_argument("--test", action="store_true", help="also score the test sets (chosen rows only)")
        command.add_argument("--minutes", type=float, help="replace the row's budget (a quick try of the script)")
    sub.add_parser("table")
    args = parser.parse_args()
    work = args.work.resolve()
    if args.action == "table":
        print(table(work))
        return
    if args.action == "run" and ROWS[args.row].group != "reference":
        (work / args.row / "scores.json").unlink(missing_ok=True)  # a new run: new scores
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "medseg", *train_args(args.row, work, args.minutes)], cwd=REPO,
                       check=True)
        facts_file = work / "facts.json"
        facts = json.loads(facts_file.read_text()) if facts_file.is_file() else {}
        facts[args.row] = {"budget": args.minutes or ROWS[args.row].minutes,
                           "seconds": round(time.perf_counter() - start)}
        facts_file.write_text(json.dumps(facts, indent=2))
    print(json.dumps(score(args.row, work, args.test), indent=2))


if __name__ == "__main__":
    main()
