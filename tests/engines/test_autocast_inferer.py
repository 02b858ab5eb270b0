"""The training forward pass: autocast where it pays, float32 outputs for the loss."""

import logging

import pytest
import torch
from torch import nn

import medseg.engines.inferers as inferers
from medseg.engines import AutocastInferer
from medseg.inference import native_bfloat16


class AutocastProbe(nn.Module):
    """Returns 1 where its forward pass ran under bfloat16 autocast on the CPU, else 0, as a (1,) bf16 tensor."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        on = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        return torch.tensor([float(on)], dtype=torch.bfloat16)


def ran_in_bfloat16(inferer: AutocastInferer) -> bool:
    output = inferer(torch.zeros(1, 3, 8, 8), AutocastProbe())
    assert output.dtype == torch.float32
    return bool(output.item())


@pytest.mark.parametrize("native, expected", [("AMX", True), ("AVX512-BF16", True), (None, False)])
def test_auto_takes_bfloat16_only_where_the_cpu_computes_it_natively(monkeypatch, caplog, native, expected):
    monkeypatch.setattr(inferers, "native_bfloat16", lambda device: native)
    with caplog.at_level(logging.INFO, logger="medseg.engines.inferers"):
        inferer = AutocastInferer("auto")
        assert ran_in_bfloat16(inferer) is expected
        ran_in_bfloat16(inferer)
    said = [record.getMessage() for record in caplog.records]
    chosen = "bfloat16 autocast" if expected else "float32"
    assert said == [f"training in {chosen} (auto: {native or 'no native bfloat16'} on cpu)"]


def test_auto_on_this_machine_follows_the_rule_of_inference_precision():
    assert ran_in_bfloat16(AutocastInferer("auto")) is bool(native_bfloat16("cpu"))


def test_a_named_dtype_is_used_on_any_cpu_and_none_is_float32():
    assert ran_in_bfloat16(AutocastInferer("bfloat16")) is True
    assert ran_in_bfloat16(AutocastInferer(None)) is False


@pytest.mark.parametrize("dtype", ["bf16", "float32", "int8"])
def test_a_dtype_autocast_cannot_train_in_is_refused(dtype):
    with pytest.raises(ValueError, match="autocast dtype"):
        AutocastInferer(dtype)
