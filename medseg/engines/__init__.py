"""Workflow helpers and ignite handlers that MONAI lacks, referenced from bundle configs with ``_target_``."""

from medseg.engines.artifacts import RunArtifacts
from medseg.engines.budget import TimeBudget
from medseg.engines.progress import TrainingProgress
from medseg.engines.checkpoint import AtomicCheckpointSaver, latest_checkpoint
from medseg.engines.evaluation import (
    SegmentationReport,
    VesselReport,
    eval_metrics_from_report,
    pooled_vessel_metrics,
    second_observer_metrics,
    write_segmentation_report,
    write_vessel_report,
)
from medseg.engines.finetune import FolderTraining, LinearWarmUp, folder_summary, with_initial_weights
from medseg.engines.inferers import AutocastInferer, PredictInferer
from medseg.engines.random_state import RandomStates

__all__ = [
    "AtomicCheckpointSaver",
    "AutocastInferer",
    "FolderTraining",
    "LinearWarmUp",
    "PredictInferer",
    "RandomStates",
    "RunArtifacts",
    "SegmentationReport",
    "TimeBudget",
    "TrainingProgress",
    "VesselReport",
    "eval_metrics_from_report",
    "folder_summary",
    "latest_checkpoint",
    "pooled_vessel_metrics",
    "second_observer_metrics",
    "write_segmentation_report",
    "with_initial_weights",
    "write_vessel_report",
]
