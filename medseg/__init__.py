"""medseg: MONAI-based medical image segmentation pipeline."""

from __future__ import annotations

import importlib
from types import ModuleType

__version__ = "0.1.0"

_SUBPACKAGES = ("data", "engines", "inference", "losses", "metrics", "networks", "resources", "tracking")


def __getattr__(name: str) -> ModuleType:
    # Subpackages load on first use, so `import medseg` stays cheap and bundle expressions such as
    # `$medseg.data.drive_records(...)` work after a single `$import medseg`.
    if name in _SUBPACKAGES:
        return importlib.import_module(f"medseg.{name}")
    raise AttributeError(f"module 'medseg' has no attribute {name!r}")
