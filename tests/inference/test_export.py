"""ONNX: the network as medseg runs it, with dynamic axes, read back by OpenVINO and compared with the eager network."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import openvino as ov
import pytest
import torch

from medseg.cli import main
from medseg.inference import InferenceSettings, LoadedModel, export_onnx, load_model
from medseg.networks import UNet

from .test_runtime import trained_like

REPO_ROOT = Path(__file__).resolve().parents[2]
# ONNX in OpenVINO at f32 against eager PyTorch: the same arithmetic in another order, logits within this
TOLERANCE = 1e-4


def onnx_logits(path: Path, x: torch.Tensor) -> torch.Tensor:
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return torch.from_numpy(compiled(x.numpy())[0])


def eager_logits(network: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits = network.eval()(x)
    return logits[0] if isinstance(logits, (list, tuple)) else logits


def test_onnx_export_has_dynamic_axes_and_computes_the_eager_network(tmp_path):
    torch.manual_seed(0)
    network = trained_like(UNet(spatial_dims=2, in_channels=3, out_channels=2, features=(4, 8, 16)))
    path = export_onnx(LoadedModel(network, InferenceSettings(roi_size=(64, 64))), tmp_path / "model.onnx")
    assert [path.name for path in tmp_path.iterdir()] == ["model.onnx"]  # no scratch file left
    for shape in [(1, 3, 64, 64), (2, 3, 37, 45)]:
        x = torch.randn(shape)
        torch.testing.assert_close(onnx_logits(path, x), eager_logits(network, x), atol=TOLERANCE, rtol=TOLERANCE)


def test_bundle_export_onnx_writes_model_onnx_of_the_shipped_weights(tmp_path, capsys):
    target = tmp_path / "drive_vessel_unet"
    assert main(["bundle", "export", "drive_vessel_unet", str(target), "--onnx"]) == 0
    assert (target / "models" / "model.onnx").is_file()
    x = torch.rand(1, 3, 80, 72)
    expected = eager_logits(load_model(target).network, x)
    torch.testing.assert_close(onnx_logits(target / "models" / "model.onnx", x), expected, atol=TOLERANCE,
                               rtol=TOLERANCE)


def monai_onnx_export_command(bundle: Path) -> list[str]:
    """The command each bundle's configs/inference.yaml documents, as a list (its last comment lines)."""
    lines = (bundle / "configs" / "inference.yaml").read_text().splitlines()
    start = next(index for index, line in enumerate(lines) if "python -m monai.bundle onnx_export" in line)
    text = ""
    for line in lines[start:]:
        text += line.lstrip("# ").rstrip("\\").rstrip() + " "
        if not line.rstrip().endswith("\\"):
            break
    words = text.split()
    converter = text[text.index('"') + 1 : text.rindex('"')]
    command = words[: words.index("--converter_kwargs")] + ["--converter_kwargs", converter]
    assert ast.literal_eval(converter)["dynamo"] is False
    return [sys.executable if word == "python" else word for word in command]


@pytest.mark.parametrize("bundle", ["drive_vessel_unet", "drive_vessel_u2net", "fundus_vessel_unet", "camvid_unet"])
def test_monai_onnx_export_verb_on_the_bundle_inference_config(bundle, tmp_path):
    folder = REPO_ROOT / "bundles" / bundle
    command = monai_onnx_export_command(folder)
    command[command.index("--filepath") + 1] = str(tmp_path / "model.onnx")
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    x = torch.rand(1, 3, 64, 80)
    torch.testing.assert_close(onnx_logits(tmp_path / "model.onnx", x), eager_logits(load_model(folder).network, x),
                               atol=TOLERANCE, rtol=TOLERANCE)
