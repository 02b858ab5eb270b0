"""How DRIVE-trained vessel networks travel to another camera: candidates compared on validation data only.

Every row trains `bundles/drive_vessel_unet` as one network (`ensemble_members=1`) for the 55-minute preset's
budget (`configs/cpu_budget.yaml`) on DRIVE's training photographs, with one change at a time. Rows are compared
on **validation data only**: DRIVE's 4 held-out training photographs (the split of seed 0, the one every row
validates on) and LES-AV's `training/` split (11 photographs, never trained on), each scored through
`medseg evaluate BUNDLE --images ... --labels ...` (`medseg.engines.evaluate_vessel_folder`: the inference path
of `medseg infer`, `--scale auto`, the FOV estimated since no mask is given). A row is chosen by its mean over
seeds, against the shipped recipe retrained beside it with about as many steps (`choose`). Test images (DRIVE
`test/`, LES-AV `test/`) are scored only with `score --test`, which refuses a row that was not chosen.

    OMP_NUM_THREADS=1 taskset -c 0 python bench/camera_transfer.py run fov_norm --seed 0
    python bench/camera_transfer.py score fov_norm --seed 0 [--test]
    python bench/camera_transfer.py table > bench/results/camera_transfer.md

Row `preset` is the shipped recipe: a member of the shipped `drive_vessel_unet` ensemble taken out of
`models/model.pt`, `--seed 0` member 0 and `--seed 10` member 1 (its two seeds), each trained for the same budget
on one core while the other trained on the other core. The budget is wall-clock time, so a row's steps depend on
the machine and on what shared it: row `preset_retrained` trains the shipped recipe again on one core while a
candidate trains on the other, the fair reference for that candidate: a day's candidates are chosen from only when
it trained that day too.

    OMP_NUM_THREADS=1 taskset -c 0 python bench/camera_transfer.py run preset_retrained --seed 0 &
    OMP_NUM_THREADS=1 taskset -c 1 python bench/camera_transfer.py run all_jitter --seed 0
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

import yaml

from medseg.data import LES_AV_LABEL_POSITIVE, drive_records, les_av_records, split_validation
from medseg.engines.ensemble import MEMBER_SEED_STEP
from medseg.engines.evaluation import evaluate_vessel_folder
from medseg.inference import LoadedModel, load_model
from medseg.tracking import training_record

import common
from common import DATA, REPO, RESULTS, commands_section, machine_line, markdown_table, save_member

BUNDLE = REPO / "bundles" / "drive_vessel_unet"
PRESET = "configs/cpu_budget.yaml"
WORK = common.WORK / "camera_transfer"
# every row's scores, kept with the results (bench/work/ holds the weights and is not kept)
RECORD = RESULTS / "camera_transfer.json"
MINUTES = 55
# the reference every candidate is compared with: the shipped recipe, trained beside the candidates
REFERENCE = "preset_retrained"
# a wall-clock budget buys steps by the machine and what shared it: rows whose mean steps differ from the
# reference's by more than this fraction trained under other conditions and are not compared with it
STEP_TOLERANCE = 0.25


@dataclass(frozen=True)
class Row:
    """One candidate: what it changes, and the ``--set`` overrides it trains and infers with."""

    change: str
    sets: tuple[str, ...] = ()
    shipped: bool = False  # the weights are a member of the shipped ensemble: the one trained with the run's seed


ROWS: dict[str, Row] = {
    "preset": Row("the shipped recipe (the member of the shipped ensemble trained with the row's seed)", shipped=True),
    "preset_retrained": Row("the shipped recipe, retrained beside a candidate (same machine, same hours)"),
    "fov_norm": Row("+ intensity statistics inside the FOV only, the outside set to 0",
                    ("normalization=standardize_fov",)),
    "fov_norm_jitter": Row("+ FOV statistics, blur and sensor noise, scale jitter 0.15",
                           ("normalization=standardize_fov", "acquisition_jitter=true", "scale_jitter=0.15")),
    "camera_jitter": Row("+ per-channel gain and offset, smooth illumination fields (camera jitter)",
                         ("camera_jitter=true",)),
    "all_jitter": Row("+ camera jitter, blur and sensor noise, scale jitter 0.15",
                      ("camera_jitter=true", "acquisition_jitter=true", "scale_jitter=0.15")),
    # fundus cameras span 30 to 60 degree fields: at one FOV width their vessels differ up to 1.5x in width
    "all_jitter_wide_scale": Row("+ camera jitter, blur and sensor noise, scale jitter 0.5 (zooms 0.67 to 1.5)",
                                 ("camera_jitter=true", "acquisition_jitter=true", "scale_jitter=0.5")),
    # the green channel holds the vessel contrast of every fundus camera, and none of its colour balance
    "green_all_jitter": Row("+ camera jitter, blur and sensor noise, scale jitter 0.15, on the green channel only",
                            ("preprocessing=green", "camera_jitter=true", "acquisition_jitter=true",
                             "scale_jitter=0.15")),
    # CLAHE equalises each region's contrast, which differs between cameras' optics, exposure and illumination
    "clahe": Row("+ green channel equalised with CLAHE (contrast-limited adaptive histogram equalisation)",
                 ("preprocessing=clahe",)),
    # the shipped weights over-segment LES-AV (sensitivity 0.87 against precision 0.74): the Dice term rewards
    # recall, the plain BCE of every pixel does not
    "bce_loss": Row("+ BCE alone, no soft Dice term (dice_weight 0)", ("dice_weight=0.0",)),
    # style randomisation: another colour mix and local texture on every other patch, not one camera's statistics
    "random_convolution": Row("+ half of the patches blended with a random 1x1 or 3x3 convolution (RandConv)",
                              ("random_convolution=true",)),
}

# (name, split scored, is it validation data?)
SETS = (("DRIVE val (4)", "drive_val", True), ("LES-AV training (11)", "les_av_training", True),
        ("DRIVE test (20)", "drive_test", False), ("LES-AV test (11)", "les_av_test", False))
VALIDATION = tuple(split for _, split, validation in SETS if validation)
TEST = tuple(split for _, split, validation in SETS if not validation)

INTRODUCTION = """\
# DRIVE-trained vessel networks on another camera, compared on validation data

- Written on {machine}; rows scored on {dates}, each trained on the machine its column names ("not recorded": \
runs scored before the record kept it). Written by `python bench/camera_transfer.py table`.
- Every row: one U-Net (features 16-256) trained on DRIVE's training photographs for the 55-minute preset \
(`configs/cpu_budget.yaml`, one core), validated on the 4 DRIVE photographs of split seed 0.
- Scored with `medseg.engines.evaluate_vessel_folder` (`medseg evaluate --images --labels`): the bundle's own \
inference path, `--scale auto`, the FOV estimated (no masks given), F1 at 0.5 and AUC-ROC pooled inside the \
estimated FOV; the erosion of upsampled edges off, as when the first rows were scored (an inference choice, \
measured apart: `bench/results/upsampled_edges.md`).
- **Chosen on**: the two validation columns (DRIVE val, LES-AV training). The test columns are scored only for \
rows already chosen and chose nothing.
- Rows `preset` (seeds 0 and 10) are the two members of the shipped ensemble, the shipped recipe's two seeds; \
with the erosion of upsampled edges, the inference choice measured apart on the same LES-AV photographs (with \
their own FOV masks there), they are the final row: `bench/results/upsampled_edges.md`.
- "Recorded by": "the script" for scores this script wrote into `bench/results/camera_transfer.json`, "by hand" \
for scores typed into it (listed under the table)."""


def row_dir(name: str, seed: int) -> Path:
    return WORK / f"{name}_seed{seed}"


def train_args(name: str, seed: int) -> list[str]:
    sets = [*ROWS[name].sets, "ensemble_members=1", f"time_budget_minutes={MINUTES}", f"seed={seed}", "split_seed=0"]
    out = row_dir(name, seed)
    return ["train", str(BUNDLE.relative_to(REPO)), "--config", PRESET, *(a for s in sets for a in ("--set", s)),
            "--output-dir", str(out.relative_to(REPO)), "--tracking-uri", f"sqlite:///{(out / 'mlflow.db').relative_to(REPO)}"]


def weights(name: str, seed: int) -> Path:
    row = ROWS[name]
    if not row.shipped:
        return row_dir(name, seed) / "checkpoints" / "model.pt"
    return save_member(BUNDLE, shipped_member(seed), row_dir(name, seed) / "member.pt")


def shipped_member(seed: int) -> int:
    """The member of the shipped ensemble trained with ``seed``: member k trained with seed ``MEMBER_SEED_STEP k``
    (the bundle's seed is 0)."""
    member, rest = divmod(seed, MEMBER_SEED_STEP)
    if rest or seed < 0:
        raise SystemExit(f"no member of the shipped ensemble trained with seed {seed}: member k has seed "
                         f"{MEMBER_SEED_STEP} k")
    return member


def records(split: str) -> tuple[list[dict], tuple[int, ...] | None]:
    """The records of one scored set (no masks: the FOV is estimated) and their label's vessel values."""
    strip = lambda rs: [{k: r[k] for k in ("id", "image", "label")} for r in rs]  # noqa: E731
    if split == "drive_val":
        return strip(split_validation(drive_records(DATA / "DRIVE", "training"), n_val=4, seed=0)[1]), None
    if split == "drive_test":
        return strip(drive_records(DATA / "DRIVE", "test")), None
    return strip(les_av_records(DATA / "LES-AV", split.removeprefix("les_av_"))), LES_AV_LABEL_POSITIVE


# what makes two runs one: a row trained again on another day or machine is another run
RUN_FIELDS = ("row", "seed", "trained", "machine")


def same_run(a: dict, b: dict) -> bool:
    return all(a.get(field) == b.get(field) for field in RUN_FIELDS)


def recorded_runs() -> list[dict]:
    """Every run scored ({"row", "seed", "trained", "machine", "steps", split: scores}): the record kept with the
    results, updated by the scores a run left in ``bench/work`` (a ``run`` started before its row was recorded)."""
    runs = json.loads(RECORD.read_text()) if RECORD.is_file() else []
    for path in WORK.glob("*_seed*/scores.json"):
        runs = with_run(runs, json.loads(path.read_text()))
    return runs


def with_run(runs: list[dict], run: dict) -> list[dict]:
    return [other for other in runs if not same_run(other, run)] + [run]


def score(name: str, seed: int, test: bool) -> dict:
    """Score a run on the validation sets (kept when only the test sets are asked for and they are scored already),
    then, with ``test``, on the test sets: only a row the validation sets chose (:func:`choices`)."""
    results_file = row_dir(name, seed) / "scores.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else training_facts(name, seed)
    model = None
    if not (test and all(split in results for split in VALIDATION)):
        model = scoring_model(name, seed)
        results = scored(model, name, seed, results, VALIDATION)
        keep(results_file, results)
    if test:
        refuse_unchosen(results)
        results = scored(model or scoring_model(name, seed), name, seed, results, TEST)
        keep(results_file, results)
    return results


def scoring_model(name: str, seed: int) -> LoadedModel:
    overrides = {key: yaml.safe_load(value) for key, value in (s.split("=", 1) for s in ROWS[name].sets)}
    model = load_model(BUNDLE, overrides={**overrides, "ensemble_members": 1}, checkpoint=weights(name, seed))
    # training recipes are compared under the inference they were all scored with; the erosion of upsampled
    # edges, an inference choice, is measured apart (bench/upsampled_edges.py)
    return model.with_settings(upsampled_edge_erosion=False)


def scored(model: LoadedModel, name: str, seed: int, results: dict, splits: tuple[str, ...]) -> dict:
    """``results`` with the pooled scores of ``model`` on each of ``splits``."""
    results = dict(results)
    for split in splits:
        chosen, positive = records(split)
        report = evaluate_vessel_folder(model, chosen, row_dir(name, seed) / f"{split}.json", label_positive=positive)
        pooled = report["threshold_0.5"]
        results[split] = {**{metric: pooled[metric] for metric in ("f1", "auc_roc", "sensitivity", "precision")},
                          "date": datetime.date.today().isoformat()}
    return results


def keep(results_file: Path, results: dict) -> None:
    results_file.write_text(json.dumps(results, indent=2))
    RECORD.write_text(json.dumps(with_run(recorded_runs(), results), indent=2, sort_keys=True) + "\n")


def refuse_unchosen(run: dict) -> None:
    """Exit, naming the choice, unless the validation sets chose ``run``'s row among the rows trained beside it."""
    choice = next(choice for choice in choices(recorded_runs()) if choice.group == (run["trained"], run["machine"]))
    if choice.chosen != run["row"]:
        raise SystemExit(f"{run['row']} (seed {run['seed']}): not chosen on the validation sets, so its test sets "
                         f"are not scored; the choice: {choice.text}")


def training_facts(name: str, seed: int) -> dict:
    """Which run this is (row, seed, the day and machine it trained on) and its steps: the training record of its
    MLflow run (:func:`medseg.tracking.training_record`), the shipped members' from the bundle's metadata."""
    if ROWS[name].shipped:
        training = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["medseg"]["training"]
        steps = training["steps"][shipped_member(seed)]
    else:
        out = row_dir(name, seed)
        training = training_record([weights(name, seed)], f"sqlite:///{out / 'mlflow.db'}")
        if training is None:
            raise SystemExit(f"{out}: no MLflow run of the training that wrote {weights(name, seed)}")
        (steps,) = training["steps"]
    return {"row": name, "seed": seed, "steps": f"{steps:,}", "trained": training["date"],
            "machine": training["machine"]}


@dataclass(frozen=True)
class Choice:
    """What the rows trained on one day on one machine chose on the validation sets, and why."""

    group: tuple[str, str]  # (day trained, machine)
    chosen: str | None
    text: str


def steps(run: dict) -> int:
    return int(str(run["steps"]).replace(",", ""))


def validation_f1(run: dict) -> float:
    """The mean F1 of a run's validation columns."""
    return mean(run[split]["f1"] for split in VALIDATION)


def choices(runs: list[dict]) -> list[Choice]:
    """Each day's and machine's choice among its runs scored on the validation sets."""
    groups: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for run in runs:
        if all(split in run for split in VALIDATION):
            groups.setdefault((run["trained"], run["machine"]), {}).setdefault(run["row"], []).append(run)
    return [choose(group, by_row) for group, by_row in sorted(groups.items())]


def choose(group: tuple[str, str], by_row: dict[str, list[dict]]) -> Choice:
    """The row of the highest validation F1, as a mean over the seeds that every compared row has, among the rows
    whose mean steps lie within ``STEP_TOLERANCE`` of the reference's trained beside them."""
    where = f"{group[0]} ({group[1]})"
    if REFERENCE not in by_row:
        return Choice(group, None, f"{where}: nothing (no {REFERENCE} beside {', '.join(sorted(by_row))})")
    mean_steps = {row: mean(steps(run) for run in runs) for row, runs in by_row.items()}
    far = sorted(row for row in by_row if abs(mean_steps[row] / mean_steps[REFERENCE] - 1) > STEP_TOLERANCE)
    compared = {row: runs for row, runs in by_row.items() if row not in far}
    seeds = sorted(set.intersection(*({run["seed"] for run in runs} for runs in compared.values())))
    outside = (f"; not compared, their mean steps outside {STEP_TOLERANCE:.0%} of {REFERENCE}'s "
               f"{mean_steps[REFERENCE]:,.0f}: " + ", ".join(f"{row} {mean_steps[row]:,.0f}" for row in far)
               if far else "")
    if len(compared) < 2 or not seeds:
        return Choice(group, None, f"{where}: nothing (no candidate with {REFERENCE}'s steps and seeds{outside})")
    scores = {row: mean(validation_f1(run) for run in runs if run["seed"] in seeds) for row, runs in compared.items()}
    ranked = sorted(scores, key=scores.get, reverse=True)
    over = f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
    return Choice(group, ranked[0], f"{where}: **{ranked[0]}** (mean validation F1 over {over}: "
                  + ", ".join(f"{row} {scores[row]:.4f}" for row in ranked) + f"{outside})")


def table_rows(runs: list[dict]) -> list[list[str]]:
    """One row of cells per run: what it is, its steps, its scores on each set, and who recorded them."""
    rows = []
    for run in sorted(runs, key=lambda run: (list(ROWS).index(run["row"]), run["seed"], run["trained"])):
        cells = [f"{run[split]['f1']:.4f} / {run[split]['auc_roc']:.4f}" if split in run else "-"
                 for _, split, _ in SETS]
        # over- or under-segmenting the other camera's labels (runs scored before 2026-12-04 did not keep them)
        other_camera = run.get(SETS[1][1], {})
        cells.append(f"{other_camera['sensitivity']:.3f} / {other_camera['precision']:.3f}"
                     if "precision" in other_camera else "-")
        rows.append([run["row"], ROWS[run["row"]].change, str(run["seed"]), run["trained"], run["machine"],
                     "by hand" if "recorded" in run else "the script", f"{steps(run):,}", *cells])
    return rows


def table() -> str:
    runs = recorded_runs()
    header = ["row", "change", "seed", "trained", "machine", "recorded by", "steps",
              *(f"{title} F1 / AUC" for title, _, _ in SETS), f"{SETS[1][0]} Se / precision"]
    lines = markdown_table(header, table_rows(runs), text_columns=6)
    dates = sorted({scores["date"] for run in runs for scores in run.values() if isinstance(scores, dict)})
    by_hand = [f"- {run['row']} (seed {run['seed']}, trained {run['trained']}): {run['recorded']}"
               for run in runs if "recorded" in run]
    commands = [f"- `{name}`: " + ("weights: member k of `bundles/drive_vessel_unet/models/model.pt` (0.3.0 weights), "
                                   f"the one trained with seed {MEMBER_SEED_STEP} k" if row.shipped else
                                   f"`OMP_NUM_THREADS=1 taskset -c 0 {' '.join(['medseg', *train_args(name, 0)])}`")
                for name, row in ROWS.items()]
    return "\n".join([
        *INTRODUCTION.format(machine=machine_line(), dates=", ".join(dates)).splitlines(),
        "",
        *lines,
        "",
        *(["Rows recorded by hand, not by this script (the figures it wrote before it kept a record):", "",
           *by_hand, ""] if by_hand else []),
        f"Chosen on validation: among the rows trained on the same day on the same machine beside `{REFERENCE}`, "
        f"the reference, and whose mean steps lie within {STEP_TOLERANCE:.0%} of its own (the budget is wall-clock "
        "time, so its steps depend on the machine and on what shared it), the highest mean over seeds of the mean F1 "
        "of the two validation columns, over the seeds every compared row has; a day without the reference chooses "
        "nothing, and `score ROW --test` refuses a row that was not chosen:",
        "",
        *(f"- {choice.text}" for choice in choices(runs)),
        "",
        *commands_section("Commands (from the repository root; `python bench/camera_transfer.py score ROW --seed S "
                          "[--test]` scores):", commands),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    for action in ("run", "score"):
        command = sub.add_parser(action)
        command.add_argument("row", choices=list(ROWS))
        command.add_argument("--seed", type=int, default=0)
        command.add_argument("--test", action="store_true", help="also score the test sets (chosen rows only)")
    sub.add_parser("table")
    args = parser.parse_args()
    if args.action == "table":
        print(table())
        return
    if args.action == "run" and not ROWS[args.row].shipped:
        (row_dir(args.row, args.seed) / "scores.json").unlink(missing_ok=True)  # a new run: new facts, new scores
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "medseg", *train_args(args.row, args.seed)], cwd=REPO, check=True)
        print(f"trained in {time.perf_counter() - start:.0f} s")
    print(json.dumps(score(args.row, args.seed, args.test), indent=2))


if __name__ == "__main__":
    main()
