"""The OpenVINO runtime: the network call replaced, everything around it medseg's; converted once, cached, checked."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch

from medseg.cli import main
from medseg.data.synthetic import write_synthetic_drive
from medseg.engines import PredictInferer
from medseg.inference import (
    InferenceNetwork,
    InferenceSettings,
    LoadedModel,
    native_bfloat16,
    prepare_network,
    read_image,
    resolve_runtime,
)
from medseg.inference.files import predict_image
from medseg.inference.io import ImageMeta
from medseg.inference.openvino_runtime import OpenVINONetwork, cache_folder
from medseg.networks import UNet, ensemble_of

from .test_runtime import trained_like

REPO_ROOT = Path(__file__).resolve().parents[2]
NETWORK_KWARGS = {"spatial_dims": 2, "in_channels": 3, "out_channels": 1, "features": [4, 8, 16]}
# float32 on OpenVINO and on PyTorch differ only by the order of float additions: probabilities within this
FLOAT32_TOLERANCE = 1e-4


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test converts into a cache folder of its own (the user's cache folder is never touched)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "medseg" / "openvino"


def small_model(seed: int = 0, **settings) -> LoadedModel:
    torch.manual_seed(seed)
    network = trained_like(UNet(**NETWORK_KWARGS))
    return LoadedModel(network, InferenceSettings(roi_size=(64, 64), sw_overlap=0.5, **settings))


def photograph(seed: int = 0, size: tuple[int, int] = (150, 173)) -> tuple[np.ndarray, ImageMeta]:
    """A (3, H, W) uint8 image of odd size, larger than a window, so windows overlap and are stitched."""
    pixels = np.random.default_rng(seed).integers(0, 256, (3, *size), dtype=np.uint8)
    return pixels, ImageMeta(Path("photograph.png"))


def probabilities(model: LoadedModel, image: np.ndarray, meta: ImageMeta) -> torch.Tensor:
    return predict_image(prepare_network(model), image, meta, model.settings, None).probabilities


@pytest.mark.parametrize("tta", [False, "dihedral"])
def test_openvino_float32_probabilities_match_torch_on_a_small_image(tta):
    model = small_model(tta=tta, precision="float32")
    image, meta = photograph()
    on_torch = probabilities(model, image, meta)
    on_openvino = probabilities(model.with_settings(runtime="openvino"), image, meta)
    assert on_openvino.shape == on_torch.shape == (1, 150, 173)
    torch.testing.assert_close(on_openvino, on_torch, atol=FLOAT32_TOLERANCE, rtol=0)


def test_openvino_serves_any_window_size_and_batch_from_one_conversion():
    model = small_model(precision="float32")
    with warnings.catch_warnings():  # the decoder's padding is traced on purpose: no tracer warning reaches the user
        warnings.simplefilter("error", torch.jit.TracerWarning)
        network = prepare_network(model.with_settings(runtime="openvino"))
    reference = InferenceNetwork(model.network, "cpu", "float32", 2)
    for shape in [(1, 3, 64, 64), (3, 3, 64, 64), (1, 3, 37, 45), (2, 3, 21, 64)]:  # odd sizes pad in the decoder
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(network(x), reference(x), atol=FLOAT32_TOLERANCE, rtol=1e-4)


def test_bfloat16_asks_openvino_for_bf16_and_float32_for_f32():
    model = small_model()
    hints = {precision: prepare_network(model.with_settings(runtime="openvino", precision=precision))
             .compiled.get_property("INFERENCE_PRECISION_HINT") for precision in ("float32", "bfloat16")}
    assert str(hints["float32"]) == "<Type: 'float32'>"
    # the compiled model reports what it computes in: on a CPU without AMX or AVX512-BF16 OpenVINO keeps f32
    assert str(hints["bfloat16"]) == ("<Type: 'bfloat16'>" if native_bfloat16("cpu") else "<Type: 'float32'>")


def test_a_deep_supervised_ensemble_returns_its_first_output_as_torch_does():
    torch.manual_seed(0)
    network = trained_like(ensemble_of(UNet(**NETWORK_KWARGS), 2))
    model = LoadedModel(network, InferenceSettings(roi_size=(32, 32), precision="float32"))
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(prepare_network(model.with_settings(runtime="openvino"))(x),
                                   prepare_network(model)(x), atol=FLOAT32_TOLERANCE, rtol=1e-4)


def cached_files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_the_conversion_is_cached_per_weights_in_the_user_cache_folder(own_cache):
    model = small_model(precision="float32").with_settings(runtime="openvino")
    assert cache_folder() == own_cache
    prepare_network(model)
    first = cached_files(own_cache)
    assert sorted(Path(name).suffix for name in first) == [".bin", ".json", ".xml"]
    manifest = json.loads(next(v for k, v in first.items() if k.endswith(".json")))
    assert manifest["openvino"] == ov.__version__ and manifest["int8_calibration"] is None
    prepare_network(model)  # the same weights: read back, not converted again
    assert cached_files(own_cache) == first
    prepare_network(small_model(seed=1, precision="float32").with_settings(runtime="openvino"))
    assert len(cached_files(own_cache)) == 6  # other weights, another conversion beside the first


def test_a_corrupt_cached_model_is_rebuilt_and_outputs_still_match(own_cache, caplog):
    model = small_model(precision="float32")
    image, meta = photograph()
    on_torch = probabilities(model, image, meta)
    probabilities(model.with_settings(runtime="openvino"), image, meta)
    weights = next(own_cache.glob("*.bin"))
    intact = weights.read_bytes()
    corrupt = bytearray(intact)
    corrupt[len(corrupt) // 2 : len(corrupt) // 2 + 64] = b"\xff" * 64  # weights silently changed on disk
    weights.write_bytes(bytes(corrupt))
    with caplog.at_level(logging.WARNING):
        on_openvino = probabilities(model.with_settings(runtime="openvino"), image, meta)
    assert "unreadable or stale" in caplog.text
    assert weights.read_bytes() == intact  # rebuilt
    torch.testing.assert_close(on_openvino, on_torch, atol=FLOAT32_TOLERANCE, rtol=0)


def test_a_truncated_manifest_is_rebuilt(own_cache):
    model = small_model(precision="float32").with_settings(runtime="openvino")
    prepare_network(model)
    manifest = next(own_cache.glob("*.json"))
    intact = manifest.read_text()
    manifest.write_text(intact[:10])
    prepare_network(model)
    rebuilt = json.loads(manifest.read_text())["sha256"]
    for suffix, digest in rebuilt.items():
        assert hashlib.sha256(manifest.with_suffix(suffix).read_bytes()).hexdigest() == digest


def synthetic_bundle_model(root: Path, **settings) -> LoadedModel:
    """A small model whose training photographs are synthetic DRIVE training images."""
    drive = write_synthetic_drive(root / "DRIVE", n_training=4, n_test=1)
    training = sorted(str(path) for path in (drive / "training" / "images").iterdir())
    model = small_model(precision="float32", **settings)
    return LoadedModel(model.network, model.settings, lambda: training)


def test_int8_calibrates_on_the_training_photographs_and_keeps_most_of_the_mask(tmp_path, own_cache):
    model = synthetic_bundle_model(tmp_path, runtime="openvino")
    image, meta = read_image(tmp_path / "DRIVE" / "test" / "images" / "01_test.tif")
    on_float32 = probabilities(model, image, meta)
    on_int8 = probabilities(model.with_settings(precision="int8"), image, meta)
    manifests = [json.loads(path.read_text()) for path in own_cache.glob("*.json")]
    assert sorted(m["int8_calibration"] is not None for m in manifests) == [False, True]
    assert float((on_int8 - on_float32).abs().mean()) < 0.02
    assert float(((on_int8 >= 0.5) == (on_float32 >= 0.5)).float().mean()) > 0.95


def test_int8_needs_training_photographs_and_the_openvino_runtime():
    with pytest.raises(ValueError, match="training photographs"):
        prepare_network(small_model(precision="int8", runtime="openvino"))
    with pytest.raises(ValueError, match="OpenVINO runtime only"):
        prepare_network(small_model(precision="int8", runtime="torch"))


def test_openvino_runs_on_the_cpu_only_and_auto_keeps_torch_elsewhere():
    with pytest.raises(ValueError, match="on the CPU"):
        resolve_runtime("openvino", "cuda")
    assert resolve_runtime("auto", "cuda") == "torch"
    assert resolve_runtime("auto", "cpu") == "openvino"
    with pytest.raises(ValueError, match="runtime must be one of"):
        resolve_runtime("onnxruntime", "cpu")


def test_auto_without_openvino_installed_falls_back_to_torch_with_one_log_line():
    script = (
        "import logging, sys\n"
        "sys.modules['openvino'] = None  # as if OpenVINO were not installed\n"
        "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
        "from medseg.inference import InferenceSettings, LoadedModel, prepare_network\n"
        "from medseg.networks import UNet\n"
        "network = UNet(spatial_dims=2, in_channels=3, out_channels=1, features=[4, 8])\n"
        "prepared = prepare_network(LoadedModel(network, InferenceSettings(runtime='auto')), 'cpu')\n"
        "print(type(prepared).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=REPO_ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "InferenceNetwork"
    assert done.stderr.count("OpenVINO is not installed") == 1


def test_medseg_infer_runtime_openvino_writes_the_torch_mask(tmp_path):
    torch.manual_seed(0)
    checkpoint = tmp_path / "model.pt"
    torch.save({"network": trained_like(UNet(**NETWORK_KWARGS)).state_dict()}, checkpoint)
    image = tmp_path / "photograph.png"
    from PIL import Image

    Image.fromarray(photograph()[0].transpose(1, 2, 0)).save(image)
    args = [str(checkpoint), "--network", "unet", "--network-kwargs", json.dumps(NETWORK_KWARGS), "--roi", "64",
            str(image), "--precision", "float32", "--save-prob", "float16"]
    masks = {}
    for runtime in ("torch", "openvino"):
        assert main(["infer", *args, "-o", str(tmp_path / runtime), "--runtime", runtime]) == 0
        masks[runtime] = np.load(tmp_path / runtime / "photograph_prob.npy").astype(np.float32)
    np.testing.assert_allclose(masks["openvino"], masks["torch"], atol=1e-3)  # float16 files


def test_the_evaluation_inferer_runs_the_network_on_openvino():
    model = small_model(precision="float32")
    images = torch.as_tensor(photograph()[0])[None].float()
    settings = {"sw_overlap": 0.5, "normalization": "scale255", "precision": "float32"}
    on_torch = PredictInferer((64, 64), **settings)(images, model.network)
    inferer = PredictInferer((64, 64), runtime="openvino", **settings)
    on_openvino = inferer(images, model.network)
    prepared = inferer._prepared
    assert isinstance(prepared[1], OpenVINONetwork)
    inferer(images, model.network)
    assert inferer._prepared is prepared  # the same weights: prepared once
    torch.testing.assert_close(on_openvino, on_torch, atol=FLOAT32_TOLERANCE, rtol=0)
