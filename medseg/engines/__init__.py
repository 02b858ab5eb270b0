"""ignite handlers and MONAI inferers that MONAI lacks, attached from bundle configs (``_target_``)."""

from medseg.engines.artifacts import RunArtifacts
from medseg.engines.checkpoint import AtomicCheckpointSaver
from medseg.engines.tracking import TrackingHandler

__all__ = ["AtomicCheckpointSaver", "RunArtifacts", "TrackingHandler"]
