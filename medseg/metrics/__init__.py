"""Pooled evaluation metrics and their ignite adapters for MONAI evaluators."""

from medseg.metrics.fov import VESSEL_METRIC_NAMES, FOVVesselMetricHandler, FOVVesselMetrics
from medseg.metrics.segmentation import SegmentationMetricHandler, SegmentationMetrics

__all__ = [
    "VESSEL_METRIC_NAMES",
    "FOVVesselMetricHandler",
    "FOVVesselMetrics",
    "SegmentationMetricHandler",
    "SegmentationMetrics",
]
