"""``medseg infer`` end to end: formats, geometry, model sources, robustness and overwrite protection."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medseg.cli import main
from medseg.fundus import RESAMPLED_VESSEL_WIDENING, erode, estimate_fov
from medseg.inference import native_bfloat16
from medseg.inference.predict import TTA_MODES
from medseg.networks import UNet, ensemble_state_dict

NETWORK_KWARGS = {"spatial_dims": 2, "in_channels": 3, "out_channels": 1, "features": [4, 8, 16]}


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    torch.save({"network": UNet(**NETWORK_KWARGS).state_dict()}, path)
    return path


def checkpoint_args(checkpoint: Path) -> list[str]:
    return [str(checkpoint), "--network", "unet", "--network-kwargs", json.dumps(NETWORK_KWARGS), "--roi", "64"]


def write_png(path: Path, seed: int, size=(40, 50)) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_drive_round_trip_keeps_size_and_zeroes_outside_the_estimated_fov(drive_root, checkpoint, tmp_path):
    source = drive_root / "test" / "images" / "01_test.tif"
    out = tmp_path / "out"
    code = main(["infer", *checkpoint_args(checkpoint), str(source), "-o", str(out), "--fundus-width", "540",
                 "--threshold", "1e-6", "--save-prob"])
    assert code == 0
    mask = np.asarray(Image.open(out / "01_test_mask.png"))
    assert mask.shape == (584, 565) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 255}
    # every probability is above 1e-6 except outside the FOV, where it is zeroed
    np.testing.assert_array_equal(mask > 0, estimate_fov(np.asarray(Image.open(source))))
    assert np.asarray(Image.open(out / "01_test_prob.png")).shape == (584, 565)
    assert np.asarray(Image.open(out / "01_test_overlay.png")).shape == (584, 565, 3)


def make_volume(path: Path, shape=(20, 18, 7)) -> nib.Nifti1Image:
    affine = np.array([[0.8, 0.1, 0, -30], [0, 0.7, 0.2, 12], [0.1, 0, 2.5, 5], [0, 0, 0, 1]])
    data = np.random.default_rng(4).integers(-100, 300, shape).astype(np.int16)
    volume = nib.Nifti1Image(data, affine)
    nib.save(volume, path)
    return volume


def test_3d_nifti_output_keeps_shape_and_affine(tmp_path):
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 1, 1))
    model = tmp_path / "model3d.ts"
    torch.jit.script(network).save(str(model))
    volume = make_volume(tmp_path / "scan.nii.gz")
    out = tmp_path / "out"
    assert main(["infer", str(model), str(tmp_path / "scan.nii.gz"), "-o", str(out), "--roi", "16",
                 "--save-prob"]) == 0
    mask = nib.load(out / "scan_mask.nii.gz")
    probs = nib.load(out / "scan_prob.nii.gz")
    for written in (mask, probs):
        assert written.shape == volume.shape
        np.testing.assert_allclose(written.affine, volume.affine, atol=1e-6)
    assert set(np.unique(np.asanyarray(mask.dataobj))) <= {0, 1}
    assert mask.get_data_dtype() == np.uint8
    assert 0 <= probs.get_fdata().min() and probs.get_fdata().max() <= 1


def test_2d_network_over_a_volume_slice_by_slice(tmp_path):
    torch.manual_seed(0)
    checkpoint = tmp_path / "grey.pt"
    kwargs = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "features": [4, 8]}
    torch.save(UNet(**kwargs).state_dict(), checkpoint)
    volume = make_volume(tmp_path / "scan.nii")
    out = tmp_path / "out"
    args = [str(checkpoint), "--network", "unet", "--network-kwargs", json.dumps(kwargs), "--roi", "16,16"]
    assert main(["infer", *args, str(tmp_path / "scan.nii"), "-o", str(out), "--slice-axis", "2"]) == 0
    mask = nib.load(out / "scan_mask.nii")
    assert mask.shape == volume.shape
    np.testing.assert_allclose(mask.affine, volume.affine, atol=1e-6)


def test_corrupt_file_is_named_and_the_others_still_run(checkpoint, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_png(inputs / "a.png", 1)
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    write_png(inputs / "c.png", 2)
    out = tmp_path / "out"
    assert main(["infer", *checkpoint_args(checkpoint), str(inputs), "-o", str(out)]) == 1
    assert (out / "a_mask.png").is_file() and (out / "c_mask.png").is_file()
    assert not (out / "broken_mask.png").exists()
    captured = capsys.readouterr()
    assert "2 input(s) written" in captured.out and "1 failed" in captured.out
    assert str(inputs / "broken.png") in captured.err
    assert not list(out.glob(".*")), "no temporary file is left behind"


def test_output_read_through_a_pipe_has_one_line_per_message_and_no_progress_bar(checkpoint, tmp_path, capsys):
    """``medseg infer ... 2>&1 | tee log``: a progress bar drawn into a pipe interleaves with the per-file lines."""
    inputs = [str(write_png(tmp_path / f"{name}.png", seed)) for seed, name in enumerate("abc")]
    assert main(["infer", *checkpoint_args(checkpoint), *inputs, "-o", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "file/s" not in captured.err and "\r" not in captured.err
    assert "3 input(s) written" in captured.out


def test_existing_outputs_are_kept_unless_overwrite(checkpoint, tmp_path, capsys):
    image = write_png(tmp_path / "a.png", 1)
    out = tmp_path / "out"
    assert main(["infer", *checkpoint_args(checkpoint), str(image), "-o", str(out)]) == 0
    (out / "a_mask.png").write_bytes(b"kept")
    assert main(["infer", *checkpoint_args(checkpoint), str(image), "-o", str(out)]) == 1
    assert "exists (use --overwrite" in capsys.readouterr().err
    assert (out / "a_mask.png").read_bytes() == b"kept"
    assert main(["infer", *checkpoint_args(checkpoint), str(image), "-o", str(out), "--overwrite"]) == 0
    assert np.asarray(Image.open(out / "a_mask.png")).shape == (40, 50)


def test_an_input_is_never_overwritten(checkpoint, tmp_path, capsys):
    write_png(tmp_path / "a.png", 1)
    write_png(tmp_path / "a_mask.png", 2)
    before = (tmp_path / "a_mask.png").read_bytes()
    args = [*checkpoint_args(checkpoint), str(tmp_path / "a.png"), str(tmp_path / "a_mask.png")]
    assert main(["infer", *args, "-o", str(tmp_path), "--overwrite"]) == 1
    assert "would overwrite an input" in capsys.readouterr().err
    assert (tmp_path / "a_mask.png").read_bytes() == before


def make_bundle(folder: Path) -> Path:
    """A minimal inference bundle: network and settings in configs/inference.yaml, facts in metadata.json."""
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    metadata = {
        "network_data_format": {"inputs": {"image": {"num_channels": 3, "spatial_shape": ["16*n", "16*n"]}},
                                "outputs": {"pred": {"num_channels": 1}}},
        "medseg": {"fundus": False},
    }
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata))
    config = {
        "roi_size": [32, 32],
        "threshold": 0.0,
        "network_def": {"_target_": "medseg.networks.UNet", **NETWORK_KWARGS},
        "inference_settings": {
            "_target_": "medseg.inference.InferenceSettings",
            "roi_size": "@roi_size",
            "sw_batch_size": 2,
            "normalization": "standardize",
            "threshold": "@threshold",
            "fundus": "@_meta_#medseg#fundus",
        },
    }
    (folder / "configs" / "inference.yaml").write_text(json.dumps(config))  # JSON is YAML
    return folder


def test_bundle_folder_supplies_network_weights_and_settings(tmp_path):
    bundle = make_bundle(tmp_path / "bundle")
    torch.save(UNet(**NETWORK_KWARGS).state_dict(), bundle / "models" / "model.pt")
    image = write_png(tmp_path / "a.png", 1)
    out = tmp_path / "out"
    assert main(["infer", str(bundle), str(image), "-o", str(out)]) == 0
    # the config's threshold 0 keeps every pixel: no FOV masking for a non-fundus bundle
    assert (np.asarray(Image.open(out / "a_mask.png")) == 255).all()


def test_bundle_weights_from_checkpoint_and_settings_from_config_overlays(checkpoint, tmp_path, capsys):
    bundle = make_bundle(tmp_path / "bundle")  # no models/model.pt: the weights come with --checkpoint
    image = write_png(tmp_path / "a.png", 1)
    assert main(["infer", str(bundle), str(image), "-o", str(tmp_path / "none")]) == 1
    assert "model.pt: no such checkpoint" in capsys.readouterr().err
    overlay = tmp_path / "strict.yaml"
    overlay.write_text("threshold: 1.1\n")  # above every probability: an empty mask
    out = tmp_path / "out"
    assert main(["infer", str(bundle), str(image), "-o", str(out), "--checkpoint", str(checkpoint),
                 "--config", str(overlay)]) == 0
    assert (np.asarray(Image.open(out / "a_mask.png")) == 0).all()
    reference = tmp_path / "reference"
    assert main(["infer", *checkpoint_args(checkpoint), str(image), "-o", str(reference), "--roi", "32",
                 "--normalization", "standardize", "--threshold", "0.5"]) == 0
    assert main(["infer", str(bundle), str(image), "-o", str(out), "--checkpoint", str(checkpoint),
                 "--threshold", "0.5", "--overwrite"]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a_mask.png")),
                                  np.asarray(Image.open(reference / "a_mask.png")))


def test_an_ensembles_weights_in_a_bundle_that_builds_one_network_fail_naming_the_file(tmp_path, capsys):
    bundle = make_bundle(tmp_path / "bundle")
    members = [UNet(**NETWORK_KWARGS).state_dict() for _ in range(2)]
    ensemble = tmp_path / "ensemble.pt"
    torch.save(ensemble_state_dict(members), ensemble)
    image = write_png(tmp_path / "a.png", 1)
    out = tmp_path / "out"
    assert main(["infer", str(bundle), str(image), "-o", str(out), "--checkpoint", str(ensemble)]) == 1
    assert f"{ensemble}: the weights of an ensemble of 2 networks; {bundle} builds one network" in (
        capsys.readouterr().err
    )
    assert not out.exists()


def test_checkpoint_and_config_options_need_a_bundle(checkpoint, tmp_path, capsys):
    image = write_png(tmp_path / "a.png", 1)
    assert main(["infer", *checkpoint_args(checkpoint), str(image), "-o", str(tmp_path / "out"),
                 "--checkpoint", str(checkpoint)]) == 1
    assert "apply to a bundle folder only" in capsys.readouterr().err


def test_unknown_pattern_and_unsupported_file_fail_by_name(checkpoint, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    args = [*checkpoint_args(checkpoint), str(tmp_path / "notes.txt"), str(tmp_path / "missing*.png")]
    assert main(["infer", *args, "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "notes.txt: unsupported file type" in err and "missing*.png" in err


def test_fov_masks_from_a_folder_zero_predictions_outside(checkpoint, tmp_path):
    image = write_png(tmp_path / "a.png", 1)
    masks = tmp_path / "masks"
    masks.mkdir()
    fov = np.zeros((40, 50), dtype=np.uint8)
    fov[5:30, 10:45] = 255
    Image.fromarray(fov).save(masks / "a_mask.gif")
    out = tmp_path / "out"
    assert main(["infer", *checkpoint_args(checkpoint), str(image), "-o", str(out), "--fov", str(masks),
                 "--threshold", "1e-6"]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a_mask.png")), fov)


def test_two_inputs_with_one_name_do_not_share_an_output(checkpoint, tmp_path, capsys):
    for folder in ("first", "second"):
        (tmp_path / folder).mkdir()
        write_png(tmp_path / folder / "a.png", 1)
    args = [*checkpoint_args(checkpoint), str(tmp_path / "first"), str(tmp_path / "second")]
    assert main(["infer", *args, "-o", str(tmp_path / "out"), "--overwrite"]) == 1
    assert f"{tmp_path / 'second' / 'a.png'}: output" in capsys.readouterr().err


def sharp_network() -> UNet:
    """A network whose probabilities lie far apart from pixel to pixel (its last convolution scaled by 50), so that
    what moves them differs by far more than float16 rounding."""
    torch.manual_seed(0)
    network = UNet(**NETWORK_KWARGS).eval()
    with torch.no_grad():
        [m for m in network.modules() if isinstance(m, torch.nn.Conv2d)][-1].weight.mul_(50)
    return network


@pytest.mark.parametrize(
    ("tta", "mode"), [([], "none"), (["--tta"], "flips"), (["--tta", "dihedral"], "dihedral"), (["--tta", "none"], "none")]
)
def test_tta_option_names_the_views_a_bare_flag_meaning_flips(tmp_path, tta, mode):
    from medseg.inference import predict, read_image

    network = sharp_network()
    checkpoint = tmp_path / "sharp.pt"
    torch.save({"network": network.state_dict()}, checkpoint)
    image = write_png(tmp_path / "a.png", 3, size=(64, 64))
    out = tmp_path / "out"
    assert main(["infer", *checkpoint_args(checkpoint), str(image), "-o", str(out), "--save-prob", "float16", *tta]) == 0
    written = torch.from_numpy(np.load(out / "a_prob.npy").astype(np.float32))
    pixels = read_image(image)[0]
    by_mode = {m: predict(network, pixels, roi_size=(64, 64), tta=m, normalization="scale255") for m in TTA_MODES}
    assert {m for m, probs in by_mode.items() if torch.allclose(written, probs, atol=1e-3, rtol=0)} == {mode}


def test_the_log_says_which_precision_auto_chose(checkpoint, tmp_path, capsys):
    image = write_png(tmp_path / "photo.png", seed=3)
    assert main(["infer", *checkpoint_args(checkpoint), str(image), "-o", str(tmp_path / "out")]) == 0
    chosen = "bfloat16 (auto: " if native_bfloat16("cpu") else "float32 (auto: no native bfloat16"
    assert f"INFO: inference in {chosen}" in capsys.readouterr().err
    assert main(["infer", *checkpoint_args(checkpoint), str(image), "-o", str(tmp_path / "out32"),
                 "--precision", "float32"]) == 0
    assert "INFO: inference in float32 on cpu" in capsys.readouterr().err


def test_upsampled_edge_erosion_flag_erodes_what_a_shrunk_photograph_gives_back(tmp_path):
    checkpoint = tmp_path / "sharp.pt"
    torch.save({"network": sharp_network().state_dict()}, checkpoint)
    image = write_png(tmp_path / "a.png", 4, size=(64, 64))
    # a fundus model: the 64-pixel photograph (no dark surround, so no width to measure) is shrunk by the given
    # 0.5, its probabilities resampled back and, with the flag, eroded by ((1 + widening) / 0.5 - 1) / 2 pixels
    fundus = [*checkpoint_args(checkpoint), str(image), "--fundus-width", "32", "--scale", "0.5", "--fov", "none",
              "--save-prob", "float16"]
    plain, eroded = tmp_path / "plain", tmp_path / "eroded"
    assert main(["infer", *fundus, "-o", str(plain), "--no-upsampled-edge-erosion"]) == 0
    assert main(["infer", *fundus, "-o", str(eroded), "--upsampled-edge-erosion"]) == 0
    plain_probs, eroded_probs = (torch.from_numpy(np.load(folder / "a_prob.npy").astype(np.float32))
                                 for folder in (plain, eroded))
    radius = ((1 + RESAMPLED_VESSEL_WIDENING) / 0.5 - 1) / 2
    torch.testing.assert_close(eroded_probs, erode(plain_probs, radius), atol=2e-3, rtol=0)
    assert (eroded_probs < plain_probs - 0.01).any()
