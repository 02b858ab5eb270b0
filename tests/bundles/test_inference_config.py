"""The bundles' configs/inference.yaml: settings from train.yaml (written once), the same masks as
``medseg infer``, failures named, and MONAI's verify/export tools working on it."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export
from monai.bundle import run as run_bundle
from PIL import Image

from medseg.cli import main
from medseg.data import drive_records, read_binary
from medseg.data.synthetic import synthetic_retina
from medseg.fundus import fov_width
from medseg.inference import load_model

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
DRIVE_BUNDLE = BUNDLES / "drive_vessel_unet"
INFERENCE_BUNDLES = sorted(p.parents[1] for p in BUNDLES.glob("*/configs/inference.yaml"))
VESSEL_BUNDLES = [BUNDLES / name for name in ("drive_vessel_u2net", "drive_vessel_unet", "fundus_vessel_unet")]
RESULTS = BUNDLES.parent / "bench" / "results"
# hyper-parameters live in the configs; metadata.json keeps only descriptive facts
HYPER_PARAMETERS = {"roi_size", "sw_batch_size", "overlap", "sw_overlap", "normalization", "activation", "threshold",
                    "tta", "preprocessing", "mode"}
SMALL_NETWORK = {"network_features": [4, 8, 16]}


def parsed(bundle: Path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser.update(overrides)
    return parser


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory) -> tuple[Path, Path]:
    """Weights of one network of the DRIVE bundle with small features (what MONAI's runner trains), and an overlay
    file that selects them."""
    folder = tmp_path_factory.mktemp("weights")
    overlay = folder / "small.yaml"
    overlay.write_text(json.dumps(SMALL_NETWORK))
    torch.manual_seed(0)
    with contextlib.chdir(DRIVE_BUNDLE):
        network = parsed(DRIVE_BUNDLE, **SMALL_NETWORK, ensemble_members=1).get_parsed_content("network_def")
    weights = folder / "weights.pt"
    torch.save(network.state_dict(), weights)
    return weights, overlay


@pytest.fixture(scope="module")
def fundus_image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "retina.png"
    Image.fromarray(synthetic_retina(0, height=150, width=140)[0]).save(path)
    return path


@pytest.mark.parametrize("bundle", INFERENCE_BUNDLES, ids=lambda b: b.name)
def test_inference_settings_are_the_training_ids(bundle):
    train = ConfigParser.load_config_file(str(bundle / "configs" / "train.yaml"))
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    with contextlib.chdir(bundle):
        settings = parsed(bundle).get_parsed_content("inference_settings")
    assert settings.tta == train["tta"]
    if not window_tables(bundle):  # windows not chosen apart: those of validation
        assert list(settings.roi_size) == train["roi_size"] and settings.sw_overlap == train["sw_overlap"]
    assert settings.mode == train["sw_inferer"]["mode"]
    assert settings.activation == train["sw_inferer"]["activation"]
    assert settings.fundus == metadata.get("medseg", {}).get("fundus", False)


def window_tables(bundle: Path) -> list[str]:
    """bench/inference_windows.py's tables of ``bundle``, one per kind of CPU, the latest measured first."""
    tables = [path.read_text() for path in RESULTS.glob(f"inference_windows_{bundle.name}_*.md")]
    return sorted(tables, key=lambda table: re.search(r"- Date: ([0-9-]+)", table)[1], reverse=True)


@pytest.mark.parametrize("bundle", VESSEL_BUNDLES, ids=lambda b: b.name)
def test_a_vessel_bundles_windows_are_the_ones_chosen_on_validation_photographs(bundle):
    # bench/inference_windows.py: the fastest candidate with float32's answers on the validation photographs, on
    # every kind of CPU measured (precision auto is bfloat16 on some)
    latest, *others = window_tables(bundle)
    choice = re.search(r"- Chosen: .*?\*\*`([^`]+)`\*\*", latest)[1]
    for table in others:
        verdict = re.search(rf"^\| `{re.escape(choice)}`.*\| (yes|no) \|$", table, flags=re.MULTILINE)
        assert verdict is None or verdict[1] == "yes"
    roi, overlap, batch, runtime, precision = choice.split(",")
    with contextlib.chdir(bundle):
        settings = parsed(bundle).get_parsed_content("inference_settings")
    assert tuple(settings.roi_size) == (int(roi), int(roi)) and settings.sw_overlap == float(overlap)
    assert (settings.sw_batch_size, settings.precision) == (int(batch), precision)
    # OpenVINO where it is installed, PyTorch elsewhere: the same answers
    assert settings.runtime == ("auto" if runtime == "openvino" else runtime)
    # evaluation keeps the windows its recorded metrics were scored with, in float32 on PyTorch
    with contextlib.chdir(bundle):
        evaluation = ConfigParser()
        evaluation.read_config([str(bundle / "configs" / "train.yaml"), str(bundle / "configs" / "evaluate.yaml")])
        train = ConfigParser.load_config_file(str(bundle / "configs" / "train.yaml"))
        assert evaluation.get_parsed_content("roi_size") == train["roi_size"]
        assert evaluation.get_parsed_content("sw_overlap") == train["sw_overlap"]


@pytest.mark.parametrize("name", ["drive_vessel_unet", "drive_vessel_u2net", "fundus_vessel_unet"])
def test_every_vessel_bundle_erodes_upsampled_edges_as_the_label_convention_it_learned_calls_for(name):
    # every label a vessel bundle learned marks each pixel a vessel touches at the training grid
    # (medseg.fundus.resample_vessel_label): resampled up, that grid's excess edge is eroded
    with contextlib.chdir(BUNDLES / name):
        assert parsed(BUNDLES / name).get_parsed_content("inference_settings").upsampled_edge_erosion is True


def test_drive_metadata_holds_facts_not_hyper_parameters():
    metadata = json.loads((DRIVE_BUNDLE / "configs" / "metadata.json").read_text())
    assert metadata["medseg"].keys() == {"fundus", "training_fov_width", "validation_threshold", "training"}
    assert not HYPER_PARAMETERS & metadata["medseg"].keys()


@pytest.mark.parametrize("name", ["drive_vessel_unet", "drive_vessel_u2net"])
def test_the_training_fov_width_is_the_median_width_of_the_training_masks(name, drive_root):
    metadata = json.loads((DRIVE_BUNDLE.parent / name / "configs" / "metadata.json").read_text())
    widths = [fov_width(read_binary(record["mask"])) for record in drive_records(drive_root, "training")]
    assert metadata["medseg"]["training_fov_width"] == pytest.approx(float(np.median(widths)), abs=1)


def test_an_overlay_changes_the_loaded_settings(small_weights, tmp_path):
    weights, overlay = small_weights
    roi_overlay = tmp_path / "roi.yaml"
    roi_overlay.write_text("roi_size: [64, 48]\nsw_overlap: 0.125\n")
    default = load_model(DRIVE_BUNDLE, overlays=[overlay], checkpoint=weights).settings
    changed = load_model(DRIVE_BUNDLE, overlays=[overlay, roi_overlay], checkpoint=weights).settings
    assert (default.roi_size, default.sw_overlap) != ((64, 48), 0.125)
    assert (changed.roi_size, changed.sw_overlap) == ((64, 48), 0.125)
    assert (changed.fundus, changed.training_fov_width, changed.in_channels) == (True, 540, 3)


def test_cli_and_bundle_run_write_identical_masks(small_weights, fundus_image, tmp_path):
    weights, overlay = small_weights
    cli_out, bundle_out = tmp_path / "cli", tmp_path / "bundle"
    assert main(["infer", str(DRIVE_BUNDLE), str(fundus_image), "-o", str(cli_out), "--checkpoint", str(weights),
                 "--config", str(overlay)]) == 0
    # as `python -m monai.bundle run --config_file configs/inference.yaml --input_files ... ` from the bundle folder
    with contextlib.chdir(DRIVE_BUNDLE):
        run_bundle(config_file="configs/inference.yaml", logging_file=False, input_files=[str(fundus_image)],
                   output_dir=str(bundle_out), ckpt_path=str(weights), **SMALL_NETWORK)
    cli_mask = np.asarray(Image.open(cli_out / "retina_mask.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(bundle_out / "retina_mask.png")), cli_mask)
    assert 0 < (cli_mask == 255).sum() < cli_mask.size, "a fundus mask has background outside the FOV"


def test_bundle_run_tries_every_input_then_exits_1_naming_the_bad_ones_on_one_line_each(
    small_weights, fundus_image, tmp_path, capsys
):
    weights, _ = small_weights
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    # an exception would reach the user of MONAI's runner as a traceback
    with contextlib.chdir(DRIVE_BUNDLE), pytest.raises(SystemExit) as raised:
        run_bundle(config_file="configs/inference.yaml", logging_file=False,
                   input_files=[str(broken), str(fundus_image)], output_dir=str(tmp_path / "out"),
                   ckpt_path=str(weights), **SMALL_NETWORK)
    assert raised.value.code == 1
    failures = [line for line in capsys.readouterr().err.splitlines() if "failed: " in line]
    assert len(failures) == 1 and str(broken) in failures[0]
    assert (tmp_path / "out" / "retina_mask.png").is_file()


def test_traced_export_matches_the_eager_network(small_weights, tmp_path):
    weights, overlay = small_weights
    exported = tmp_path / "model.ts"
    with contextlib.chdir(DRIVE_BUNDLE):
        ckpt_export("network_def", filepath=str(exported), ckpt_file=str(weights), ckpt_path=str(weights),
                    meta_file="configs/metadata.json", config_file="configs/inference.yaml", use_trace=True,
                    input_shape=[1, 3, 96, 96], **SMALL_NETWORK)
    eager = load_model(DRIVE_BUNDLE, overlays=[overlay], checkpoint=weights).network
    windows = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(exported))(windows), eager(windows))


def test_a_bundles_checkpoint_given_as_a_relative_path_is_read_from_the_working_directory(small_weights, tmp_path):
    weights, overlay = small_weights
    with contextlib.chdir(weights.parent):
        relative = load_model(DRIVE_BUNDLE, overlays=[overlay], checkpoint=weights.name).network
    absolute = load_model(DRIVE_BUNDLE, overlays=[overlay], checkpoint=weights).network
    for (name, value), other in zip(relative.state_dict().items(), absolute.state_dict().values()):
        torch.testing.assert_close(value, other, msg=name)
