"""Training an ensemble bundle: the plan (members, seeds, split), the member layout, the member trainings
(pinned to their share of the CPU cores, as subprocesses, stopped together on failure) and joining their weights.

A bundle that ships an ensemble has ``ensemble_members`` N > 1 in its train.yaml. MONAI's runner trains one
workflow, one network; an ensemble needs N of them. :func:`train_members` runs N ``medseg train`` workflows,
each as ``--set ensemble_members=1``: member k trains with seed ``seed + 10 k`` on the validation split of
``split_seed`` (default: ``seed``) into ``OUTPUT_DIR/member<k>``, its own MLflow run. On CPU the members train at
the same time, each pinned to its own share of the cores, so a preset's budget is wall-clock time on the whole
machine; with a GPU or fewer cores than members they train one after another, each taking the whole budget.
:func:`join_checkpoints` makes their weights the ensemble's (:class:`medseg.networks.Ensemble`), which the
bundle's evaluate and inference configs load as the number of networks the weights hold.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medseg.engines.workflow import MLFLOW_TRACKING, ConfigError, run_bundle_config
from medseg.inference import read_state_dict
from medseg.networks import IncompatibleMember, ensemble_override, ensemble_state_dict
from medseg.resources import read_bundle_config
from medseg.tracking import (
    ensemble_parent_run,
    evaluation_tags,
    log_ensemble_metrics,
    prepare_tracking_store,
    run_tags,
)

__all__ = [
    "EnsembleError", "EnsemblePlan", "TrainedEnsemble", "core_shares", "evaluate_checkpoints", "evaluate_ensemble",
    "join_checkpoints", "joined_checkpoint", "member_folder", "member_plan", "read_ensemble_plan", "train_ensemble",
    "train_members",
]

# prctl's option that sets the signal a process gets when its parent ends (linux/prctl.h)
PR_SET_PDEATHSIG = 1
# member k of an ensemble trains with seed + MEMBER_SEED_STEP * k, so the members of the ensembles of seeds 0..9
# never share an initialisation
MEMBER_SEED_STEP = 10


class EnsembleError(ValueError):
    """An ensemble that cannot be planned, trained or joined, with the bundle, folder or file at fault named."""


@dataclass(frozen=True)
class EnsemblePlan:
    """How many networks an ensemble bundle trains, and the seeds member k trains with: ``seed + 10 k`` on the
    validation split of ``split_seed``."""

    members: int
    seed: int
    split_seed: int
    experiment_name: str = "medseg"
    dataset_name: str = "-"
    # fine-tuning: member k starts from the weights in member_init[k] (medseg.engines.finetune)
    member_init: tuple[str, ...] = ()

    def member_seed(self, k: int) -> int:
        return self.seed + MEMBER_SEED_STEP * k

    def member_overrides(self, k: int) -> dict[str, int | str]:
        """The config overrides under which member ``k`` trains as a single network."""
        init = {"init_weights": self.member_init[k]} if self.member_init else {}
        return {"ensemble_members": 1, "seed": self.member_seed(k), "split_seed": self.split_seed, **init}


def read_ensemble_plan(
    bundle: Path, overlays: Sequence[str | Path] = (), overrides: Mapping[str, Any] | None = None
) -> EnsemblePlan:
    """The ``ensemble_members`` (1 for a bundle whose configs build a single network), ``seed`` and ``split_seed``
    of ``bundle``'s train.yaml as ``overlays`` and ``overrides`` leave them, read without building the workflow.

    Raises:
        FileNotFoundError: for a missing config or overlay.
        EnsembleError: for a count that is not a whole number >= 1, or N > 1 for a bundle whose configs have no
            ``ensemble_members`` (its evaluate and inference configs build one network).
    """
    parser = read_bundle_config(bundle, "train", overlays)
    builds_ensembles = "ensemble_members" in parser  # before an override adds the id
    parser.update(dict(overrides or {}))
    with contextlib.chdir(bundle.resolve()):  # where the bundle's %macros resolve
        members = parser.get_parsed_content("ensemble_members", default=1)
        seed = parser.get_parsed_content("seed", default=0)
        split_seed = parser.get_parsed_content("split_seed", default=seed)
        names = {key: str(parser.get_parsed_content(key)) for key in ("experiment_name", "dataset_name") if key in parser}
    if not isinstance(members, int) or isinstance(members, bool) or members < 1:
        raise EnsembleError(f"ensemble_members must be a whole number >= 1, got {members!r}")
    if members > 1 and not builds_ensembles:
        raise EnsembleError(f"{bundle.resolve() / 'configs' / 'train.yaml'}: no ensemble_members; {bundle} builds one "
                            f"network, not an ensemble of {members}")
    return EnsemblePlan(members, seed, split_seed, **names)


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
    raise EnsembleError(f"{folder}: no checkpoint of ensemble member {folder.name} to resume from (an output folder "
                        "of a single network resumes with --set ensemble_members=1)")


def train_members(
    bundle: Path,
    plan: EnsemblePlan,
    output: Path,
    tracking_uri: str,
    arguments: Sequence[str] = (),
    resume: bool = False,
    echo: bool = True,
    parent_run: str | None = None,
) -> list[Path]:
    """Train the members of ``plan`` into ``member_folder(output, k)``, each as its own ``medseg train`` process,
    and return the paths of their final weights (``checkpoints/model.pt``).

    Args:
        bundle: the bundle folder.
        plan: from :func:`read_ensemble_plan`.
        output: the ensemble's output folder.
        tracking_uri: the MLflow store of the members' runs.
        arguments: further ``medseg train`` arguments for every member (``--config``, ``--set``, ``--data-root``),
            paths absolute.
        resume: continue interrupted members and skip finished ones (:func:`member_plan`).
        echo: also print each member's per-epoch lines on the console after ``member k: ``.
        parent_run: the MLflow run the members' runs are children of.

    Raises:
        EnsembleError: naming the log of the first member that failed; the others are stopped.
    """
    folders = [member_folder(output, k) for k in range(plan.members)]
    plans = [member_plan(folder, resume) for folder in folders]
    shares = core_shares(plan.members)
    logs, runs = [folder / "train.log" for folder in folders], {}
    for k, folder in enumerate(folders):
        folder.mkdir(parents=True, exist_ok=True)
        where = f"on cores {sorted(shares[k])}" if shares else "in turn (each with the whole budget)"
        print(f"member {k}: seed {plan.member_seed(k)}, {plans[k]}, {where}, log {logs[k]}", flush=True)
    for k, folder in enumerate(folders):
        if plans[k] == "done":
            continue
        sets = [arg for key, value in plan.member_overrides(k).items() for arg in ("--set", f"{key}={value}")]
        if parent_run is not None:
            sets += ["--set", "parent_run_tags=" + json.dumps({"mlflow.parentRunId": parent_run})]
        # --verbose: a member's log keeps the libraries' records too; the console gets its epoch lines only
        command = [sys.executable, "-m", "medseg", "train", str(bundle.resolve()), *arguments, *sets,
                   "--output-dir", str(folder), "--tracking-uri", tracking_uri, "--verbose"]
        runs[k] = _start_member(command + (["--resume"] if plans[k] == "resume" else []), logs[k],
                                shares[k] if shares else None, f"member {k}: " if echo else None)
        if shares is None:
            _wait_for_members({k: runs.pop(k)}, logs)
    _wait_for_members(runs, logs)
    return [folder / "checkpoints" / "model.pt" for folder in folders]


@dataclass(frozen=True)
class TrainedEnsemble:
    """What :func:`train_ensemble` made: the members' final weights, the ensemble's validation report and its
    MLflow run (the parent of the members' runs)."""

    weights: list[Path]
    report: Path
    run_id: str


def train_ensemble(
    bundle: Path,
    plan: EnsemblePlan,
    output: Path,
    tracking_uri: str,
    arguments: Sequence[str] = (),
    overlays: Sequence[str | Path] = (),
    overrides: Mapping[str, Any] | None = None,
    resume: bool = False,
    echo: bool = True,
) -> TrainedEnsemble:
    """Train the members (:func:`train_members`) as child runs of one MLflow run of the ensemble, then evaluate
    the ensemble on the validation images (:func:`evaluate_ensemble`) and log its metrics to that run.

    ``arguments`` are the members' ``medseg train`` arguments, ``overlays`` and ``overrides`` the same settings
    for the ensemble's evaluation. Raises :class:`EnsembleError` (the run then ends as failed).
    """
    prepare_tracking_store(tracking_uri)
    params = {"ensemble_members": plan.members, "seed": plan.seed, "split_seed": plan.split_seed,
              "member_seeds": [plan.member_seed(k) for k in range(plan.members)]}
    run_id = ensemble_parent_run(tracking_uri, plan.experiment_name, output, resume, params,
                                 run_tags(f"Ensemble x{plan.members}", plan.dataset_name, **{"medseg.kind": "ensemble"}))
    try:
        weights = train_members(bundle, plan, output, tracking_uri, arguments, resume, echo, parent_run=run_id)
        report = evaluate_ensemble(bundle, weights, output / "metrics_val.json", overlays, overrides)
    except BaseException:  # a failed member, an interrupt: the run says so
        log_ensemble_metrics(tracking_uri, run_id, output / "metrics_val.json", failed=True)
        raise
    log_ensemble_metrics(tracking_uri, run_id, report)
    return TrainedEnsemble(weights, report, run_id)


def evaluate_ensemble(
    bundle: Path,
    weights: Sequence[Path],
    report: Path,
    overlays: Sequence[str | Path] = (),
    overrides: Mapping[str, Any] | None = None,
) -> Path:
    """Write the validation report of the ensemble of ``weights`` to ``report``: the bundle's evaluate.yaml on the
    validation split of its train config, as ``medseg evaluate --split val`` with one ``--checkpoint`` per member.

    Raises:
        EnsembleError: naming the bundle and the error of a weights file or of the evaluation.
    """
    settings = {**dict(overrides or {}), "split": "val", "metrics_file": str(report)}
    try:
        evaluate_checkpoints(bundle, weights, overlays, settings)
    except (FileNotFoundError, ConfigError, ValueError) as err:
        raise EnsembleError(f"evaluating the ensemble of {bundle} on its validation images failed: {err}") from None
    return report


def evaluate_checkpoints(
    bundle: Path,
    checkpoints: Sequence[Path] = (),
    overlays: Sequence[str | Path] = (),
    overrides: Mapping[str, Any] | None = None,
    tracking_uri: str | None = None,
) -> None:
    """Run ``bundle``'s evaluate.yaml on the network of one checkpoint or the ensemble of several (joined as
    ``medseg bundle ship`` joins them); no checkpoints: on the bundle's own ``ckpt_path``. The network the bundle
    builds follows the weights (:func:`medseg.networks.ensemble_override`). With ``tracking_uri``, the evaluation
    is an MLflow run there, tagged with the weights' sha256 and nested under the training run they came from
    (:func:`medseg.tracking.evaluation_tags`).

    Raises:
        EnsembleError: naming a checkpoint that is missing, unreadable or not a copy of the first one's network.
        ValueError: an ensemble's weights for a bundle that builds one network.
        FileNotFoundError, ConfigError: from the bundle's config (:func:`~medseg.engines.run_bundle_config`).
    """
    settings = dict(overrides or {})
    config = read_bundle_config(bundle, "evaluate", overlays,
                                {key: value for key, value in settings.items() if key == "experiment_name"})
    with contextlib.ExitStack() as stack:
        if checkpoints:
            joined = join_checkpoints(checkpoints)
            settings.update(ensemble_override(config, joined, ", ".join(map(str, checkpoints)), bundle.resolve()))
            settings["ckpt_path"] = str(stack.enter_context(joined_checkpoint(joined)))
        if tracking_uri is not None:
            settings["tracking_uri"] = tracking_uri
            weights = list(checkpoints) or [bundle / "models" / "model.pt"]
            if all(Path(path).is_file() for path in weights):
                settings["evaluation_tags"] = evaluation_tags(weights, tracking_uri)
        run_bundle_config(bundle, "evaluate", overlays=overlays, overrides=settings,
                          tracking=None if tracking_uri is None else str(MLFLOW_TRACKING), workflow_type="eval")


@contextlib.contextmanager
def joined_checkpoint(state_dict: Mapping[str, torch.Tensor]) -> Iterator[Path]:
    """A temporary checkpoint file of ``state_dict`` (:func:`join_checkpoints`), for a config's ``ckpt_path``;
    removed on exit."""
    with tempfile.TemporaryDirectory(prefix="medseg-weights-") as work:
        checkpoint = Path(work) / "model.pt"
        torch.save(dict(state_dict), checkpoint)
        yield checkpoint


def join_checkpoints(checkpoints: Sequence[Path]) -> dict[str, torch.Tensor]:
    """The weights in ``checkpoints``: one file's state dict, or the ensemble of several files' networks.

    Raises:
        EnsembleError: naming the file that is missing, unreadable, or not a copy of the first file's network.
    """
    state_dicts = []
    for checkpoint in checkpoints:
        if not Path(checkpoint).is_file():
            raise EnsembleError(f"{checkpoint}: no such checkpoint")
        try:
            state_dicts.append(read_state_dict(checkpoint))
        except ValueError as err:  # names the file
            raise EnsembleError(str(err)) from None
    try:
        return ensemble_state_dict(state_dicts)
    except IncompatibleMember as err:
        raise EnsembleError(f"{checkpoints[err.member]}: {err}") from None


def _start_member(command: list[str], log: Path, cores: set[int] | None, echo_prefix: str | None) -> subprocess.Popen:
    """Start a member's training; its output goes to ``log`` and, unless ``echo_prefix`` is ``None``, its
    progress lines (one per epoch) also to the console after that prefix."""
    env = dict(os.environ)
    if cores is not None:
        # one thread per core of the member's share: more would compete with the other members
        env["OMP_NUM_THREADS"] = str(len(cores))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                               errors="replace", preexec_fn=_dies_with(os.getpid()))
    if cores is not None:
        os.sched_setaffinity(process.pid, cores)
    threading.Thread(target=_tee, args=(process, log, "--resume" in command, echo_prefix), daemon=True).start()
    return process


def _dies_with(parent: int) -> Callable[[], None] | None:
    """What a member runs between fork and exec so that it ends when ``parent`` does, however that ends (a SIGKILL
    included, which no handler of the parent's sees): Linux's parent-death signal, sent when the thread that started
    the member ends (the members are started from the thread that waits for them). ``None`` elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the forked child only calls it

    def set_parent_death_signal() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent ended before the signal was set
            os._exit(1)

    return set_parent_death_signal


def _tee(process: subprocess.Popen, log: Path, append: bool, echo_prefix: str | None) -> None:
    with log.open("a" if append else "w") as out:
        for line in process.stdout:
            out.write(line)
            out.flush()
            if echo_prefix is not None and line.startswith("epoch "):
                print(f"{echo_prefix}{line}", end="", flush=True)


def _wait_for_members(runs: dict[int, subprocess.Popen], logs: list[Path]) -> None:
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
                    raise EnsembleError(f"training failed: member {k} (exit code {code}, see {logs[k]})")
            time.sleep(1.0)
    finally:
        for run in runs.values():
            run.terminate()
        for run in runs.values():
            run.wait()
        signal.signal(signal.SIGTERM, previous)
