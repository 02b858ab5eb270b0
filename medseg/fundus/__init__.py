"""Fundus photographs: where the field of view is, how wide its disc is, the scale a photograph is brought to,
why vessels resampled up from a shrunk photograph are eroded, and how its contrast and intensities are made
alike across cameras.

Both the data chains (:mod:`medseg.data`) and inference (:mod:`medseg.inference`) use this package; it imports
neither, as MONAI keeps domain code in ``monai.apps`` apart from its generic inferers. Inference asks it for a
pair of steps around the generic window pass (:class:`FundusSteps`).
"""

from medseg.fundus.appearance import equalize_local_contrast, fill_outside_fov, fov_statistics, standardize_inside_fov
from medseg.fundus.fov import estimate_fov, find_fov, fov_from_alpha, fov_width
from medseg.fundus.scale import (
    AUTO_SCALE_TOLERANCE,
    RESAMPLED_VESSEL_WIDENING,
    erode,
    fundus_scale,
    resample,
    resample_vessel_label,
    upsampled_edge_radius,
)
from medseg.fundus.steps import FundusSettings, FundusSteps

__all__ = [
    "AUTO_SCALE_TOLERANCE",
    "FundusSettings",
    "FundusSteps",
    "RESAMPLED_VESSEL_WIDENING",
    "equalize_local_contrast",
    "erode",
    "estimate_fov",
    "fill_outside_fov",
    "find_fov",
    "fov_from_alpha",
    "fov_statistics",
    "fov_width",
    "fundus_scale",
    "resample",
    "resample_vessel_label",
    "standardize_inside_fov",
    "upsampled_edge_radius",
]
