"""Evaluation reports written at the end of a bundle's ``evaluate.yaml``."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from medseg.data import read_binary, read_vessel_label, validate_vessel_records
from medseg.data.files import read_pixels
from medseg.inference import ImageMeta, LoadedModel, fov_for, predict_image, prepare_network, read_image
from medseg.metrics import FOVVesselMetrics, SegmentationMetrics
from medseg.utils import atomic_write_text, format_table

__all__ = [
    "SegmentationReport",
    "VesselReport",
    "eval_metrics_from_report",
    "evaluate_vessel_folder",
    "report_table",
    "pooled_vessel_metrics",
    "record_fov",
    "second_observer_metrics",
    "write_segmentation_report",
    "write_vessel_folder_report",
    "write_vessel_report",
]


def report_table(report: Mapping) -> str:
    """A metrics report as text: one row per metric name, one column per section of the report that holds
    metrics (thresholds, the second observer, ...), ``-`` where a section lacks it; then its scalars."""
    sections = {name: values for name, values in report.items() if isinstance(values, dict)}
    names = list(dict.fromkeys(key for values in sections.values() for key in values))
    rows = [[name, *(values[name] if isinstance(values.get(name), float) else "-" for values in sections.values())]
            for name in names]
    scalars = [f"{name}: {value}" for name, value in report.items() if not isinstance(value, dict)]
    return "\n".join([format_table(["metric", *sections], rows), *scalars])


def pooled_vessel_metrics(
    probabilities: Mapping[str, np.ndarray],
    records: Sequence[dict],
    threshold: float = 0.5,
    *,
    label_positive: Sequence[int] | None = None,
) -> dict[str, float]:
    """FOV-pooled vessel metrics of ``{record id: probabilities}`` against the records' ``label`` inside their
    ``mask`` (binary, as DRIVE's), every FOV pixel of those images pooled; ``label_positive``: the vessel values
    of index-map labels (LES-AV's), as :func:`medseg.data.read_vessel_label` reads them.

    Each probability map has the label's pixels, as (H, W) or (1, H, W); a map of another size raises
    ``ValueError`` naming the record and its label file.
    """
    by_id = {record["id"]: record for record in records}
    metric = FOVVesselMetrics()
    for image_id, probs in probabilities.items():
        record = by_id[image_id]
        label, mask = read_vessel_label(record["label"], label_positive), read_binary(record["mask"])
        probs = np.asarray(probs)
        if probs.size != label.size:
            raise ValueError(f"{image_id}: probabilities of shape {probs.shape}, but {record['label']} is {label.shape}")
        metric.update(probs.reshape(label.shape), label, mask)
    return metric.compute(threshold)


def second_observer_metrics(records: Sequence[dict]) -> dict[str, float] | None:
    """Pooled FOV metrics of the second observer (``label2``) against the first (``label``), or None.

    The human reference of the DRIVE protocol; None when the records carry no second observer (training split).
    """
    if not records or any("label2" not in r for r in records):
        return None
    values = pooled_vessel_metrics({r["id"]: read_binary(r["label2"]) for r in records}, records)
    # a binary segmentation has no ranking of pixels, so its curves (AUCs) mean nothing
    return {k: v for k, v in values.items() if not k.startswith("auc")}


def write_vessel_report(
    path: str | os.PathLike, test: FOVVesselMetrics, validation: FOVVesselMetrics, test_records: Sequence[dict]
) -> dict:
    """Write the DRIVE evaluation table as JSON and return it.

    Keys: ``threshold_0.5`` (metrics at 0.5), ``threshold_val`` (at the threshold that maximises F1 on the
    validation images, itself recorded as ``threshold``), ``second_observer`` (human reference, when the
    test records have ``label2``), and ``images`` (how many were scored).
    """
    tuned = validation.best_f1_threshold()
    report = {
        "images": len(test_records),
        "threshold_0.5": test.compute(0.5),
        "threshold_val": {"threshold": tuned, **test.compute(tuned)},
        "second_observer": second_observer_metrics(test_records),
    }
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    return report


class VesselReport:
    """Handler writing :func:`write_vessel_report` when the test evaluator completes.

    Attached before any tracking handler (MONAI appends those last), so the report exists when the run's
    artifacts are logged.

    Args:
        path: the JSON file.
        test_metric: the test evaluator's ``FOVVesselMetricHandler``.
        validation_metric: the ``FOVVesselMetricHandler`` of an evaluator already run on the validation images.
        test_records: the records scored, for the second-observer reference.
    """

    def __init__(self, path: str | os.PathLike, test_metric, validation_metric, test_records: Sequence[dict]) -> None:
        self.path = path
        self.test_metric = test_metric
        self.validation_metric = validation_metric
        self.test_records = test_records
        self.report: dict | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        self.report = write_vessel_report(
            self.path, self.test_metric.metric, self.validation_metric.metric, self.test_records
        )


def evaluate_vessel_folder(
    model: LoadedModel,
    records: Sequence[dict[str, str]],
    path: str | os.PathLike,
    *,
    label_positive: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    precision: str = "float32",
    runtime: str = "torch",
) -> dict:
    """Score ``model`` on any labelled vessel dataset, every image through the inference path of ``medseg infer``
    (the model's settings, ``--scale auto`` for fundus models), and write the report as JSON.

    ``records`` ({"id", "image", "label"[, "mask"]}, :func:`medseg.data.vessel_folder_records`) are all opened
    and checked first (:func:`medseg.data.validate_vessel_records`), so a bad pair raises ``DatasetError``
    naming it before anything is scored. Each image's FOV is its "mask" when the records have them, else the
    automatic estimate: it zeroes the outside, sets the scale, and is where the pixels are scored (pooled).

    Report keys: ``images``, ``fov`` ("given masks" or "estimated"), ``threshold_0.5``, ``threshold_val`` (at
    the model's ``validation_threshold``, when it has one) and ``per_image`` ({id: F1 at 0.5}). ``precision``
    and ``runtime`` replace the model's own (float32 on PyTorch by default, as the bundles' evaluate.yaml).
    """
    validate_vessel_records(records, label_positive)
    # float32 by default, as the bundles' evaluate.yaml: scores that reproduce on any machine
    model = model.with_settings(precision=precision, runtime=runtime)
    network = prepare_network(model, device)

    def predicted() -> Iterator[tuple[Mapping[str, str], torch.Tensor, np.ndarray | None]]:
        for record in records:
            image, meta = read_image(Path(record["image"]))
            fov = record_fov(record, image, meta)
            yield record, predict_image(network, image, meta, model.settings, fov, device=device).probabilities, fov

    return write_vessel_folder_report(predicted(), path, label_positive=label_positive,
                                      validation_threshold=model.settings.validation_threshold)


def write_vessel_folder_report(
    predictions: Iterable[tuple[Mapping[str, str], torch.Tensor, np.ndarray | None]],
    path: str | os.PathLike,
    *,
    label_positive: Sequence[int] | None = None,
    validation_threshold: float | None = None,
) -> dict:
    """The report of :func:`evaluate_vessel_folder` from each record's (1, H, W) probabilities and (H, W) bool FOV
    (``None``: no disc found, every pixel scores), written as JSON; ``threshold_val`` at ``validation_threshold``
    when one is given."""
    pooled, per_image, masks_given = FOVVesselMetrics(), {}, []
    for record, probabilities, fov in predictions:
        fov = fov if fov is not None else np.ones(probabilities.shape[1:], dtype=bool)
        pixels = (probabilities[0], read_vessel_label(record["label"], label_positive), fov)
        pooled.update(*pixels)
        alone = FOVVesselMetrics()
        alone.update(*pixels)
        per_image[record["id"]] = alone.compute(0.5)["f1"]
        masks_given.append("mask" in record)
    report = {
        "images": len(per_image),
        "fov": "given masks" if all(masks_given) else "estimated",
        "threshold_0.5": pooled.compute(0.5),
    }
    if validation_threshold is not None:
        report["threshold_val"] = pooled.compute(validation_threshold)
    report["per_image"] = per_image
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    return report


def record_fov(record: Mapping[str, str], image: np.ndarray, meta: ImageMeta) -> np.ndarray | None:
    """The (H, W) bool FOV of the (C, H, W) photograph of ``record``: its "mask" where it has one, else the
    automatic estimate of ``medseg infer`` (``None``: no disc found)."""
    if "mask" in record:
        return read_pixels(Path(record["mask"]), mode="L") > 127
    return fov_for(meta.path, image, "auto", fundus=True, alpha=meta.alpha)


def write_segmentation_report(path: str | os.PathLike, metrics: SegmentationMetrics, images: int, split: str) -> dict:
    """Write the multi-class evaluation table (CamVid protocol) as JSON and return it.

    Keys: ``images`` (how many were scored) and ``<split>``: ``miou``, ``pixel_accuracy`` and ``iou_<class>``
    of the pooled confusion matrix, with ``null`` for a class absent from both the labels and the predictions.
    """
    values = {key: None if math.isnan(value) else value for key, value in metrics.compute().items()}
    report = {"images": images, split: values}
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    return report


class SegmentationReport:
    """Handler writing :func:`write_segmentation_report` when the evaluator completes.

    Attached before any tracking handler (MONAI appends those last), so the report exists when the run's
    artifacts are logged.

    Args:
        path: the JSON file.
        metric: the evaluator's ``SegmentationMetricHandler``.
        records: the records scored.
        split: name of the section holding the metrics, e.g. ``"test"``.
    """

    def __init__(self, path: str | os.PathLike, metric, records: Sequence[dict], split: str = "test") -> None:
        self.path = path
        self.metric = metric
        self.records = records
        self.split = split
        self.report: dict | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        self.report = write_segmentation_report(self.path, self.metric.metric, len(self.records), self.split)


def eval_metrics_from_report(report: dict) -> dict[str, float]:
    """The ``eval_metrics`` of a bundle's ``metadata.json``, from the JSON report of its evaluate.yaml on the
    test images.

    DRIVE report (:func:`write_vessel_report`): every metric at threshold 0.5 as ``test_<name>``, plus
    ``test_f1_val_threshold``, the F1 at the threshold chosen on the validation images.
    CamVid report (:func:`write_segmentation_report` of split ``test``): ``test_miou`` and ``test_pixel_accuracy``.

    Raises:
        ValueError: the report is neither of these (e.g. a CamVid report of the validation split).
    """
    if "threshold_0.5" in report and "threshold_val" in report:
        # the threshold is a setting of the row, not a result
        at_half = {f"test_{name}": value for name, value in report["threshold_0.5"].items() if name != "threshold"}
        return {**at_half, "test_f1_val_threshold": report["threshold_val"]["f1"]}
    if isinstance(report.get("test"), dict) and "miou" in report["test"]:
        return {f"test_{name}": report["test"][name] for name in ("miou", "pixel_accuracy")}
    raise ValueError(
        "not a test-split evaluation report: expected 'threshold_0.5' and 'threshold_val' (DRIVE) or a 'test' "
        f"section with 'miou' (CamVid), got keys {sorted(report)}"
    )
