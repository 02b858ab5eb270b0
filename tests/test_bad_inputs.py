"""The bad-input matrix (issue #34 item 16): every case of ``bench/bad_inputs.py`` (corrupt and cut files of each
format, empty files, wrong sizes and label values, missing and unwritable folders, a full disk, checkpoints of
another network or of none, a pickled payload, a broken bundle, NaN pixels, a 1-pixel image, a volume for a 2D
bundle) across ``data check``, ``train``, ``evaluate``, ``infer``, ``bundle ship / export`` and MONAI's runner ends
with exit 1 (2 for usage), one line on stderr naming the file and the problem, no traceback, nothing written and
nothing overwritten."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# the case table lives in the bench script that writes bench/results/bad_inputs.md (the bench is not a package;
# its scripts import bench/common.py from beside them)
if str(REPO / "bench") not in sys.path:
    sys.path.insert(0, str(REPO / "bench"))
_SPEC = importlib.util.spec_from_file_location("bad_inputs", REPO / "bench" / "bad_inputs.py")
bad_inputs = sys.modules["bad_inputs"] = importlib.util.module_from_spec(_SPEC)  # dataclasses look their module up
_SPEC.loader.exec_module(bad_inputs)


def _param(case):
    marks = [pytest.mark.xfail(strict=True, reason=f"waits for {case.pending}")] if case.pending else []
    return pytest.param(case, id=f"{case.command}: {case.name}", marks=marks)


@pytest.mark.parametrize("case", [_param(case) for case in bad_inputs.CASES])
def test_a_bad_input_is_one_line_naming_the_file_with_nothing_written_or_overwritten(case, tmp_path):
    try:
        outcome = bad_inputs.run_case(case, tmp_path)
    except bad_inputs.Unavailable as reason:
        pytest.skip(str(reason))
    assert outcome.breaches(case) == [], outcome.stderr


def test_the_matrix_holds_at_least_20_kinds_of_bad_input_over_every_command():
    assert len({case.name for case in bad_inputs.CASES}) >= 20
    commands = {case.command.split()[0] if case.entry != "monai" else "monai" for case in bad_inputs.CASES}
    assert commands == {"infer", "data", "evaluate", "train", "bundle", "monai"}
    assert {"main", "console", "monai"} <= {case.entry for case in bad_inputs.CASES}


def test_a_pickled_payload_would_run_if_unpickled_but_medseg_never_runs_it(tmp_path):
    case = next(case for case in bad_inputs.CASES if case.name.startswith("pickled payload"))
    outcome = bad_inputs.run_case(case, tmp_path)
    marker = outcome.call.named.with_name("payload_ran")
    assert outcome.code == 1 and not marker.exists()
    # the same file, loaded as plain pickle would load it, runs its payload: the check above can fail
    torch.load(outcome.call.named, weights_only=False)
    assert marker.exists()


def test_the_committed_table_lists_every_case():
    table = bad_inputs.TABLE.read_text()
    for case in bad_inputs.CASES:
        assert f"| {case.command} | {case.name} |" in table
