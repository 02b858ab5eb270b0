"""What the command line writes on the console besides its own output."""

from __future__ import annotations

import subprocess
import sys

import numpy

# a process set up as `medseg COMMAND` sets itself up, that then warns from medseg's code and from numpy's
WARN_FROM_MEDSEG_AND_NUMPY = """
import warnings, numpy, medseg.tracking.handler
from medseg.cli import _log_to_stderr
_log_to_stderr()
warnings.warn_explicit("MLflow tracking lost while logging the run start", RuntimeWarning,
                       medseg.tracking.handler.__file__, 120)
warnings.warn_explicit("overflow", RuntimeWarning, numpy.__file__, 7)
"""


def test_medseg_warnings_reach_the_console_as_one_line_and_other_libraries_keep_theirs():
    result = subprocess.run([sys.executable, "-c", WARN_FROM_MEDSEG_AND_NUMPY], capture_output=True, text=True,
                            check=True)
    lines = result.stderr.splitlines()
    assert lines[0] == "WARNING: MLflow tracking lost while logging the run start"
    assert lines[1] == f"{numpy.__file__}:7: RuntimeWarning: overflow"
