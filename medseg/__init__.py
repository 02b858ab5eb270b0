"""medseg: MONAI-based medical image segmentation pipeline."""

__version__ = "0.1.0"
