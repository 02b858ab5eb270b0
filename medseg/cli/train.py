"""``medseg train BUNDLE``: run the bundle's ``configs/train.yaml`` with MLflow tracking.

The same workflow as ``python -m monai.bundle run --config_file configs/train.yaml --tracking mlflow`` from the
bundle folder: this command makes paths absolute and fills in the tracking store.

A bundle that ships an ensemble (``ensemble_members`` N > 1 in its train.yaml) needs N trained networks, which
MONAI's runner cannot start: for it this command runs N of the workflows above, one per member, each as
``--set ensemble_members=1``. Member k trains with seed ``seed + 10 k`` on the validation split of ``seed``
(``split_seed``) into ``OUTPUT_DIR/member<k>``, its own MLflow run. On CPU the members train at the same time,
each pinned to its own share of the cores, so a preset's budget is wall-clock time on the whole machine; with a
GPU or fewer cores than members they train one after another, each taking the whole budget.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from monai.bundle import ConfigParser

from medseg.cli import CLIError, add_overlay_argument, bundle_argument
from medseg.engines.workflow import (
    MLFLOW_TRACKING,
    ConfigError,
    bundle_config_files,
    parse_overrides,
    run_bundle_config,
    working_directory,
)
from medseg.tracking import check_tracking_server, default_tracking_uri, prepare_tracking_store

# member k of an ensemble trains with seed + MEMBER_SEED_STEP * k, so the members of the ensembles of seeds 0..9
# never share an initialisation
MEMBER_SEED_STEP = 10


def add_bundle_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=bundle_argument,
                        help="bundle folder, or the name of a shipped bundle, e.g. drive_vessel_unet")
    add_overlay_argument(parser, "the bundle's config")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config id, value parsed as YAML (repeatable), e.g. --set max_epochs=5",
    )
    parser.add_argument("--data-root", type=Path, help="dataset folder (the bundle's dataset_dir)")
    parser.add_argument(
        "--output-dir", type=Path, help="where checkpoints and reports go (default: outputs/<bundle name>)"
    )


def output_dir(args: argparse.Namespace) -> Path:
    return (args.output_dir or Path("outputs") / args.bundle.resolve().name).resolve()


def bundle_overrides(args: argparse.Namespace) -> dict:
    """Config overrides from the shared bundle arguments, paths made absolute."""
    try:
        overrides = parse_overrides(args.overrides)
    except ValueError as err:
        raise CLIError(str(err)) from None
    # an expression, as in the bundle: MONAI's tracking patch appends to it to name the exported config file
    overrides["output_dir"] = f"${str(output_dir(args))!r}"
    if args.data_root is not None:
        if not args.data_root.is_dir():
            raise CLIError(f"{args.data_root}: --data-root is not a folder")
        overrides["dataset_dir"] = str(args.data_root.resolve())
    return overrides


@dataclass(frozen=True)
class EnsemblePlan:
    """How many networks ``medseg train`` makes, and the seeds member k trains with: ``seed + 10 k`` on the
    validation split of ``split_seed``."""

    members: int
    seed: int
    split_seed: int

    def member_seed(self, k: int) -> int:
        return self.seed + MEMBER_SEED_STEP * k


def check_ensemble_support(bundle: Path, members: int) -> None:
    """Fail unless ``bundle`` can build an ensemble of ``members`` networks: one whose train.yaml has an
    ``ensemble_members`` id, which its evaluate and inference configs follow."""
    own = bundle.resolve() / "configs" / "train.yaml"
    if members > 1 and "ensemble_members" not in (yaml.safe_load(own.read_text()) or {}):
        raise CLIError(f"{own}: no ensemble_members; {bundle} builds one network, not an ensemble of {members}")


def ensemble_plan(args: argparse.Namespace) -> EnsemblePlan:
    """The bundle's ``ensemble_members`` (1 for a bundle whose configs build a single network), ``seed`` and
    ``split_seed`` (default: ``seed``) as the overlays and ``--set`` leave its train.yaml, read without building
    the workflow."""
    parser = ConfigParser()
    try:
        parser.read_config(bundle_config_files(args.bundle, "train", args.overlays))
    except FileNotFoundError as err:
        raise CLIError(str(err)) from None
    parser.update(bundle_overrides(args))
    with working_directory(args.bundle.resolve()):  # where the bundle's %macros resolve
        members = parser.get_parsed_content("ensemble_members", default=1)
        seed = parser.get_parsed_content("seed", default=0)
        split_seed = parser.get_parsed_content("split_seed", default=seed)
    if not isinstance(members, int) or isinstance(members, bool) or members < 1:
        raise CLIError(f"ensemble_members must be a whole number >= 1, got {members!r}")
    check_ensemble_support(args.bundle, members)
    return EnsemblePlan(members, seed, split_seed)


def passed_arguments(args: argparse.Namespace) -> list[str]:
    """The bundle arguments this command was given (overlays, ``--set``, ``--data-root``), paths made absolute."""
    passed = [arg for overlay in args.overlays for arg in ("--config", str(Path(overlay).resolve()))]
    passed += [arg for pair in args.overrides for arg in ("--set", pair)]
    return passed + (["--data-root", str(args.data_root.resolve())] if args.data_root is not None else [])


def core_shares(members: int) -> list[set[int]] | None:
    """One set of CPU cores per member, or ``None`` when the members should train one after another (a GPU,
    fewer cores than members, or no way to pin a process to cores)."""
    if torch.cuda.is_available() or not hasattr(os, "sched_getaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < members:
        return None
    return [set(cores[k::members]) for k in range(members)]


def member_folder(output: Path, k: int) -> Path:
    """The folder member ``k`` of an ensemble trained into ``output`` writes to."""
    return output / f"member{k}"


def member_plan(folder: Path, resume: bool) -> str:
    """``"train"``, ``"resume"`` or ``"done"`` for the member trained in ``folder``."""
    if not resume:
        return "train"
    checkpoints = folder / "checkpoints"
    if (checkpoints / "model.pt").is_file():
        return "done"  # the final weights are written once, when the member's training has ended
    if any(checkpoints.glob("latest_*=*.pt")):
        return "resume"
    raise CLIError(f"{folder}: no checkpoint of ensemble member {folder.name} to resume from (an output folder of "
                   "a single network resumes with --set ensemble_members=1)")


def start_member(command: list[str], log: Path, cores: set[int] | None, echo_prefix: str | None) -> subprocess.Popen:
    """Start a member's training; its output goes to ``log`` and, unless ``echo_prefix`` is ``None``, its
    progress lines (one per epoch) also to the console after that prefix."""
    env = dict(os.environ)
    if cores is not None:
        # one thread per core of the member's share: more would compete with the other members
        env["OMP_NUM_THREADS"] = str(len(cores))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                               errors="replace")
    if cores is not None:
        os.sched_setaffinity(process.pid, cores)
    threading.Thread(target=_tee, args=(process, log, "--resume" in command, echo_prefix), daemon=True).start()
    return process


def _tee(process: subprocess.Popen, log: Path, append: bool, echo_prefix: str | None) -> None:
    with log.open("a" if append else "w") as out:
        for line in process.stdout:
            out.write(line)
            out.flush()
            if echo_prefix is not None and line.startswith("epoch "):
                print(f"{echo_prefix}{line}", end="", flush=True)


def wait_for_members(runs: dict[int, subprocess.Popen], logs: list[Path]) -> None:
    """Wait until every member has ended; on the first failure stop the others and fail naming its log. The
    members never outlive this process, which a SIGTERM ends as an interrupt does."""
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        while runs:
            for k, run in list(runs.items()):
                code = run.poll()
                if code is None:
                    continue
                del runs[k]
                if code != 0:
                    raise CLIError(f"training failed: member {k} (exit code {code}, see {logs[k]})")
            time.sleep(1.0)
    finally:
        for run in runs.values():
            run.terminate()
        for run in runs.values():
            run.wait()
        signal.signal(signal.SIGTERM, previous)


def train_ensemble(args: argparse.Namespace, plan: EnsemblePlan, tracking_uri: str) -> int:
    folders = [member_folder(output_dir(args), k) for k in range(plan.members)]
    plans = [member_plan(folder, args.resume) for folder in folders]
    shares = core_shares(plan.members)
    prepare_tracking_store(tracking_uri)
    logs, runs = [folder / "train.log" for folder in folders], {}
    for k, folder in enumerate(folders):
        folder.mkdir(parents=True, exist_ok=True)
        where = f"on cores {sorted(shares[k])}" if shares else "in turn (each with the whole budget)"
        print(f"member {k}: seed {plan.member_seed(k)}, {plans[k]}, {where}, log {logs[k]}", flush=True)
    for k, folder in enumerate(folders):
        if plans[k] == "done":
            continue
        command = [sys.executable, "-m", "medseg", "train", str(args.bundle.resolve()), *passed_arguments(args),
                   "--set", "ensemble_members=1", "--set", f"seed={plan.member_seed(k)}",
                   "--set", f"split_seed={plan.split_seed}", "--output-dir", str(folder), "--tracking-uri", tracking_uri]
        runs[k] = start_member(command + (["--resume"] if plans[k] == "resume" else []), logs[k],
                               shares[k] if shares else None, None if args.quiet else f"member {k}: ")
        if shares is None:
            wait_for_members({k: runs.pop(k)}, logs)
    wait_for_members(runs, logs)
    weights = [str(folder / "checkpoints" / "model.pt") for folder in folders]
    again = passed_arguments(args)
    checkpoints = [arg for weight in weights for arg in ("--checkpoint", weight)]
    print("evaluate the ensemble: " + shlex.join(["medseg", "evaluate", str(args.bundle), *again, *checkpoints]))
    print("ship it: " + shlex.join(["medseg", "bundle", "ship", str(args.bundle), *weights, *again]))
    print(f"review the runs: mlflow ui --backend-store-uri {tracking_uri}")
    return 0


def _train(args: argparse.Namespace) -> int:
    overrides = bundle_overrides(args)
    tracking_uri = args.tracking_uri or default_tracking_uri()
    check_tracking_server(tracking_uri)
    plan = ensemble_plan(args)
    if plan.members > 1:
        return train_ensemble(args, plan, tracking_uri)
    overrides["tracking_uri"] = tracking_uri
    if args.quiet:
        overrides["quiet"] = True
    if args.resume:
        overrides["resume"] = True
    try:
        run_bundle_config(
            args.bundle,
            "train",
            overlays=args.overlays,
            overrides=overrides,
            tracking=str(MLFLOW_TRACKING),
            workflow_type="train",
        )
    except (FileNotFoundError, ConfigError) as err:
        raise CLIError(str(err)) from None
    print(f"checkpoints in {output_dir(args) / 'checkpoints'}")
    print(f"review the run: mlflow ui --backend-store-uri {tracking_uri}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a bundle (MONAI ConfigWorkflow) with MLflow tracking",
        description="Run BUNDLE/configs/train.yaml (plus overlays and overrides) as MONAI's bundle runner does, "
        "logging the run to MLflow. Same code path as `python -m monai.bundle run --tracking mlflow`.",
    )
    add_bundle_arguments(parser)
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlflow.db in the working directory)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in the output folder"
    )
    parser.add_argument(
        "--quiet", action="store_true",
        help="no progress bar and no per-epoch lines (an ensemble's members still write them to their logs)",
    )
    parser.set_defaults(func=_train)
