"""Training a bundle's own recipe on a user's labelled folder, from scratch or from trained weights.

A bundle's train.yaml reads its dataset through one config id, ``records`` ((train, validation) records). Training
on a folder replaces that id with the folder's reader (:func:`medseg.data.labelled_folder_records`), so the
recipe (network, loss, patches, augmentation, schedule) stays the bundle's. Fundus bundles (those whose metadata
has a ``training_fov_width``) bring every photograph to that FOV width first, as inference does (``--set
training_fov_width=W`` trains at another one, which a bundle shipped from the weights then infers at). Fine-tuning
starts each network (each member of an ensemble) from its own trained weights (:func:`initial_weights_overrides`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch.optim import Optimizer

from medseg.data.labelled_folder import LabelledFolder, default_validation_size
from medseg.data.drive import split_validation
from medseg.inference import read_state_dict
from medseg.networks import ensemble_size, member_state_dict
from medseg.resources import read_bundle_config
from medseg.tracking import executed_config

__all__ = [
    "FolderTraining",
    "bundle_classes",
    "LinearWarmUp",
    "folder_summary",
    "folder_training_ids",
    "folder_training_overrides",
    "initial_weights",
    "initial_weights_overrides",
    "member_initial_weights",
    "trained_fov_width",
    "with_initial_weights",
]

# the config ids of a vessel bundle's transform chains that resample to the training FOV width
_FOV_WIDTH_IDS = {"train": ("train#transforms#fov_width", "validate#transforms#fov_width"),
                  "evaluate": ("preprocessing_chain#fov_width",)}


@dataclass(frozen=True)
class FolderTraining:
    """What ``medseg train --images`` trains on: a labelled folder, its validation (``n_val`` of its photographs,
    or a folder of its own) and whether the bundle's own training photographs are mixed in."""

    folder: LabelledFolder
    n_val: int | None = None
    val_folder: LabelledFolder | None = None
    keep_bundle_data: bool = False

    def validation_size(self) -> int:
        return self.n_val or default_validation_size(len(self.folder.records()))

    def reader(self, fov_dir: str) -> dict[str, Any]:
        """The ``records`` component of a bundle config: :func:`medseg.data.labelled_folder_records` of this."""
        folder, val = self.folder, self.val_folder
        component = {"_target_": "medseg.data.labelled_folder_records", "images": str(folder.images),
                     "labels": str(folder.labels), "masks": None if folder.masks is None else str(folder.masks),
                     "label_positive": list(folder.label_positive) or None, "seed": "@split_seed",
                     "fov_dir": None if folder.has_classes else fov_dir}
        if val is None:
            return {**component, "n_val": self.validation_size()}
        return {**component, "val_images": str(val.images), "val_labels": str(val.labels),
                "val_masks": None if val.masks is None else str(val.masks)}


def folder_summary(training: FolderTraining, seed: int) -> dict[str, Any]:
    """Name, digest, counts and held-out ids of the folder a run trains on: the run's MLflow dataset input and
    params, and what a bundle shipped from it records."""
    records = training.folder.records()
    if training.val_folder is None:
        train, val = split_validation(records, n_val=training.validation_size(), seed=seed)
        digest = training.folder.digest()
    else:
        train, val = records, training.val_folder.records()
        digest = f"{training.folder.digest()}+{training.val_folder.digest()}"
    return {"name": training.folder.images.parent.name or training.folder.images.name,
            "source": str(training.folder.images.parent), "digest": digest, "pairs": len(train) + len(val),
            "train": len(train), "validation": len(val), "validation_ids": " ".join(r["id"] for r in val)}


def folder_training_overrides(bundle: Path, training: FolderTraining, workflow: str = "train",
                              overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Config overrides that make ``bundle``'s ``workflow`` ("train" or "evaluate") read ``training``'s folder.

    Photographs without FOV masks get estimated masks under ``<output_dir>/fov_estimates``. A fundus bundle's
    transforms resample to ``training_fov_width`` (its metadata's, unless ``overrides`` set the id).
    ``keep_bundle_data`` mixes in ``keep_bundle_data_ratio`` (default of ``configs/finetune.yaml``) of the
    bundle's own training photographs per folder photograph, through :func:`medseg.data.mix_records`.
    """
    parser = read_bundle_config(bundle, workflow)
    if "records" not in parser:
        raise ValueError(f"{bundle}: its {workflow}.yaml has no 'records' id, so it cannot train on a folder")
    given = dict(overrides or {})
    reader = training.reader("$os.path.join(@output_dir, 'fov_estimates')")
    settings: dict[str, Any] = {"records": reader, "training_folder": folder_summary(training, given.get("split_seed", given.get("seed", 0)))}
    if training.keep_bundle_data:
        settings["bundle_records"] = parser["records"]
        settings.setdefault("keep_bundle_data_ratio", given.get("keep_bundle_data_ratio", 1.0))
        settings["records"] = {"_target_": "medseg.data.mix_records", "own": reader, "bundle": "@bundle_records",
                               "ratio": "@keep_bundle_data_ratio", "seed": "@split_seed"}
    if folder_training_ids(bundle):
        if "training_fov_width" not in parser and "training_fov_width" not in given:
            settings["training_fov_width"] = "@_meta_#medseg#training_fov_width"
        settings.update({key: "@training_fov_width" for key in _FOV_WIDTH_IDS[workflow]})
    if training.folder.has_classes:  # the folder's void value is mapped to the bundle's ignore index
        settings["void_value"] = training.folder.void_value
    settings["dataset_name"] = settings["training_folder"]["name"]
    return settings


def folder_training_ids(bundle: str | Path) -> set[str]:
    """The config ids that training ``bundle`` on a folder adds and reads, which ``--set`` may therefore give: a
    fundus bundle's ``training_fov_width`` (the FOV width its photographs are brought to)."""
    metadata = json.loads((Path(bundle) / "configs" / "metadata.json").read_text())
    return {"training_fov_width"} if "training_fov_width" in metadata.get("medseg", {}) else set()


def bundle_classes(bundle: Path) -> int | None:
    """The class count of a bundle that learns index-map classes (its train.yaml has a ``void_value`` id: the
    value of unlabelled pixels in the labels it reads), ``None`` for a vessel bundle."""
    parser = read_bundle_config(bundle, "train")
    return int(parser.get_parsed_content("num_classes")) if "void_value" in parser else None


def initial_weights(sources: Sequence[Path]) -> dict[str, torch.Tensor]:
    """The weights to start from: a bundle folder's ``models/model.pt``, or one checkpoint per ensemble member
    joined (:func:`medseg.engines.ensemble.join_checkpoints`)."""
    from medseg.engines.ensemble import join_checkpoints

    if len(sources) == 1 and (Path(sources[0]) / "configs" / "metadata.json").is_file():
        sources = [Path(sources[0]) / "models" / "model.pt"]
    return join_checkpoints(sources)


def member_initial_weights(weights: Mapping[str, torch.Tensor], members: int, folder: Path) -> list[Path]:
    """Write member k's share of ``weights`` to ``folder/member<k>.pt`` for an ensemble of ``members``; the
    paths. Raises ``ValueError`` when the weights hold another number of networks."""
    held = ensemble_size(weights)
    if held != members:
        raise ValueError(f"the initial weights hold {held} network(s), the bundle trains {members}; each member "
                         "starts from its own member")
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"member{k}.pt" for k in range(members)]
    for k, path in enumerate(paths):
        torch.save(dict(weights) if members == 1 else member_state_dict(weights, k), path)
    return paths


def initial_weights_overrides(bundle: Path, path: str | Path, overlays: Sequence[str | Path] = ()) -> dict[str, Any]:
    """Overrides that build ``bundle``'s train.yaml ``network`` from ``network_def`` with the weights in ``path``
    and warm the learning rate up over ``warmup_iterations`` (0 unless an overlay sets it, e.g.
    ``configs/finetune.yaml``) with :class:`LinearWarmUp`, attached after the trainer's own handlers."""
    parser = read_bundle_config(bundle, "train", overlays)
    warm_up = {"_target_": "medseg.engines.LinearWarmUp", "optimizer": "@optimizer",
               "iterations": "@warmup_iterations"}
    settings = {"init_weights": str(path),
                "network": "$medseg.engines.with_initial_weights(@network_def, @init_weights).to(@device)",
                "train#state_handlers": [*parser["train"]["state_handlers"], warm_up]}
    if "warmup_iterations" not in parser:
        settings["warmup_iterations"] = 0
    return settings


def with_initial_weights(network: torch.nn.Module, path: str) -> torch.nn.Module:
    """``network`` with the weights of the checkpoint ``path`` (float16 weights are cast to its dtype)."""
    network.load_state_dict(read_state_dict(path))
    return network


class LinearWarmUp:
    """Scale the learning rate by ``iteration / iterations`` for the first ``iterations`` iterations.

    :class:`medseg.engines.TimeBudget` (which lacks a warm-up) sets every iteration's learning rate from the
    start; attached after it, this scales that rate, so the fine-tuned weights are not thrown off by full-size
    steps of a fresh Adam state.
    """

    def __init__(self, optimizer: Optimizer, iterations: int) -> None:
        self.optimizer = optimizer
        self.iterations = int(iterations)

    def attach(self, engine: Engine) -> None:
        if self.iterations > 0:
            engine.add_event_handler(Events.ITERATION_STARTED, self._scale)

    def _scale(self, engine: Engine) -> None:
        if engine.state.iteration <= self.iterations:
            for group in self.optimizer.param_groups:
                group["lr"] *= engine.state.iteration / self.iterations


def held_out_records(training: FolderTraining, seed: int) -> list[dict]:
    """The photographs a training on ``training`` validated on (never trained on): its validation folder, or the
    same split of the folder (``seed``: the run's ``split_seed``)."""
    if training.val_folder is not None:
        return training.val_folder.records()
    return split_validation(training.folder.records(), n_val=training.validation_size(), seed=seed)[1]


def fine_tuned_metadata(parent: Mapping[str, Any], parent_name: str, summary: Mapping[str, Any],
                        eval_metrics: Mapping[str, float], widening: float | None = None,
                        fov_width: float | None = None) -> dict[str, Any]:
    """The metadata.json of a bundle of weights trained on a user's folder, from its ``parent`` bundle's: the
    version ``<parent version>-<digest>``, ``eval_metrics`` those on the held-out photographs (``heldout_*``),
    ``medseg.parent_bundle`` and ``medseg.training_data`` saying where the weights came from, and
    ``medseg.resampled_vessel_widening`` the ``widening`` measured on the held-out photographs (``None``: none
    was shrunk, and the library's applies); ``medseg.training_fov_width`` the ``fov_width`` the weights were
    trained at, where not the parent's (:func:`trained_fov_width`)."""
    version = f"{parent.get('version', '0.0.0')}-{summary['digest'][:8]}"
    data = (f"{summary['pairs']} labelled photographs of {summary['source']} (digest {summary['digest']}; "
            f"{summary['validation']} held out: {summary['validation_ids']})")
    meta = {**parent, "version": version, "eval_metrics": dict(eval_metrics)}
    meta["changelog"] = {version: f"{parent_name} {parent.get('version', '-')} trained on {data}.",
                         **parent.get("changelog", {})}
    meta["data_source"] = f"{data}; before that: {parent.get('data_source', '-')}"
    meta["medseg"] = {**parent.get("medseg", {}), "parent_bundle": {"name": parent_name, "version": parent.get("version")},
                      "training_data": {"folder": summary["source"], "count": summary["pairs"],
                                        "digest": summary["digest"], "held_out": summary["validation_ids"]}}
    for fact in ("training", "validation_threshold", "resampled_vessel_widening"):  # they describe other weights
        meta["medseg"].pop(fact, None)
    if widening is not None:
        meta["medseg"]["resampled_vessel_widening"] = widening
    if fov_width is not None:
        meta["medseg"]["training_fov_width"] = fov_width
    return meta


def trained_fov_width(checkpoints: Sequence[str | Path]) -> float | None:
    """The FOV width, in pixels, that the training which wrote ``checkpoints`` (``OUTPUT/checkpoints/*.pt``, one
    per ensemble member) brought its photographs to, when it set one (``--set training_fov_width=W``, a number in
    its executed config); ``None`` when it trained at its bundle's own (a reference to the metadata) or left no
    executed config.

    Raises:
        ValueError: the members were trained at different widths.
    """
    widths = set()
    for checkpoint in checkpoints:
        config = executed_config(None, Path(checkpoint).resolve().parent.parent)
        width = json.loads(Path(config).read_text()).get("training_fov_width") if config else None
        widths.add(float(width) if isinstance(width, (int, float)) and not isinstance(width, bool) else None)
    if len(widths) > 1:
        raise ValueError(f"the checkpoints were trained at different FOV widths ({sorted(map(str, widths))})")
    return widths.pop() if widths else None


def heldout_eval_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """``eval_metrics`` from a :func:`medseg.engines.evaluate_vessel_folder` report of the held-out photographs:
    every metric at 0.5 as ``heldout_<name>``."""
    return {f"heldout_{name}": value for name, value in report["threshold_0.5"].items() if name != "threshold"}
