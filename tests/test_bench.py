"""The DRIVE baseline overlay, the ablation rows and the acquisition-shift conditions do what their descriptions
say."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
from monai.networks.nets import BasicUNet

from medseg.data import multi_camera_records
from medseg.engines.workflow import bundle_workflow, parse_overrides
from medseg.networks import Ensemble, U2NetLite, UNet

REPO = Path(__file__).resolve().parents[1]


def _load_bench(name: str):
    if str(REPO / "bench") not in sys.path:  # as `python bench/SCRIPT.py` runs it: beside bench/common.py
        sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


ablation = _load_bench("drive_ablation")
acquisition_shift = _load_bench("acquisition_shift")
upsampled_edges = _load_bench("upsampled_edges")
inference_bench = _load_bench("inference")


def _parser(config: str, row):
    # as the runner's commands give it: `medseg evaluate` sets ensemble_members from the checkpoints it is given
    members = [f"ensemble_members={row.members}"] if row.bundle == ablation.BUNDLE else []
    sets = [*row.train_sets, *members, *(row.eval_sets if config == "evaluate" else ())]
    return bundle_workflow(REPO / row.bundle, config, overlays=[REPO / row.overlay], overrides=parse_overrides(sets)).parser


@pytest.mark.parametrize("config", ["train", "evaluate"])
def test_baseline_overlay_is_the_plain_monai_baseline(config):
    parser = _parser(config, ablation.ROWS["baseline"])
    network = parser.get_parsed_content("network_def")
    assert type(network) is BasicUNet
    assert sum(p.numel() for p in network.parameters()) == 1_948_417
    assert parser.get_parsed_content("tta") is False
    assert parser.get_parsed_content("roi_size") == [96, 96]
    if config == "train":
        assert parser.get_parsed_content("autocast_dtype") is None
        assert parser.get_parsed_content("intensity_jitter") is False
        assert parser.get_parsed_content("ema_momentum") is None
        assert parser.get_parsed_content("time_budget_minutes") == 50
        assert parser.get_parsed_content("batch_images") * parser.get_parsed_content("patches_per_image") == 16


@pytest.mark.parametrize("name", [name for name, row in ablation.ROWS.items() if row.weights_of is None])
def test_every_trained_ablation_row_builds_its_network(name):
    row = ablation.ROWS[name]
    for config in ("train", "evaluate"):
        parser = _parser(config, row)
        network = parser.get_parsed_content("network_def")
        if config == "evaluate" and row.members > 1:
            assert type(network) is Ensemble and len(network.members) == row.members
            network = network.members[0]
        assert type(network) is {"baseline": BasicUNet, "u2net_lite": U2NetLite}.get(name, UNet)
        channels = 1 if parser.get_parsed_content("preprocessing") == "clahe" else 3
        assert next(network.parameters()).shape[1] == channels


def test_rows_that_reuse_weights_name_a_trained_row():
    for row in ablation.ROWS.values():
        assert row.weights_of is None or ablation.ROWS[row.weights_of].weights_of is None


def test_the_loss_mix_row_halves_the_dice_term_only():
    loss = _parser("train", ablation.ROWS["loss_mix"]).get_parsed_content("loss")
    assert (loss.lambda_dice, loss.lambda_ce) == (0.5, 1.0)


@pytest.mark.parametrize("name", list(acquisition_shift.CONDITIONS))
def test_each_acquisition_condition_alters_a_photograph_keeping_its_size(name):
    import numpy as np
    from PIL import Image

    generator = np.random.default_rng(0)
    photograph = Image.fromarray(generator.integers(20, 236, size=(48, 40, 3), dtype=np.uint8))
    altered = acquisition_shift.CONDITIONS[name][1](photograph)
    assert (altered.size, altered.mode) == (photograph.size, "RGB")
    changed = np.abs(np.asarray(altered, dtype=np.int16) - np.asarray(photograph, dtype=np.int16)).mean()
    assert changed == 0 if name == "unaltered" else changed > 1


camera_transfer = _load_bench("camera_transfer")


@pytest.mark.parametrize("name", [name for name, row in camera_transfer.ROWS.items() if not row.shipped])
def test_every_camera_transfer_row_trains_one_drive_network_on_the_shared_validation_split(name):
    args = camera_transfer.train_args(name, seed=10)
    sets = [args[i + 1] for i, arg in enumerate(args) if arg == "--set"]
    assert {"ensemble_members=1", "split_seed=0", f"time_budget_minutes={camera_transfer.MINUTES}"} <= set(sets)
    parser = bundle_workflow(camera_transfer.BUNDLE, "train", overlays=[REPO / camera_transfer.PRESET],
                             overrides=parse_overrides(sets)).parser
    for change in camera_transfer.ROWS[name].sets:
        key, value = change.split("=", 1)
        assert str(parser.get_parsed_content(key)).lower() == value.lower()


def test_camera_transfer_compares_on_validation_sets_and_scores_test_sets_only_when_asked(drive_root):
    validation = {split for _, split, chosen_on in camera_transfer.SETS if chosen_on}
    assert validation == {"drive_val", "les_av_training"}
    val_records, _ = camera_transfer.records("drive_val")
    assert val_records and not any("/test/" in record["image"] for record in val_records)


def _scored_run(row: str, trained: str, drive_val: float, les_av: float) -> dict:
    return {"row": row, "seed": 0, "trained": trained, "machine": "a CPU", "steps": "6,000",
            "drive_val": {"f1": drive_val, "auc_roc": 0.97, "date": trained},
            "les_av_training": {"f1": les_av, "auc_roc": 0.97, "date": trained}}


def test_camera_transfer_chooses_only_beside_a_baseline_trained_the_same_day(monkeypatch):
    runs = [_scored_run("preset_retrained", "2026-12-01", 0.80, 0.79),
            _scored_run("clahe", "2026-12-01", 0.79, 0.81),
            _scored_run("camera_jitter", "2026-12-01", 0.79, 0.78),
            # a better pair of candidates, but with no reference trained beside them
            _scored_run("bce_loss", "2026-12-02", 0.82, 0.82),
            _scored_run("random_convolution", "2026-12-02", 0.81, 0.82)]
    monkeypatch.setattr(camera_transfer, "recorded_runs", lambda: runs)
    choice = camera_transfer.table().split("Chosen on validation", 1)[1].split("\n\n", 1)[0]
    assert "2026-12-01 (a CPU): **clahe (seed 0)**" in choice
    assert "2026-12-02 (a CPU): nothing (no preset_retrained beside them)" in choice
    assert "bce_loss" not in choice


bundle_results = _load_bench("bundle_results")
BUNDLES = sorted(p for p in (REPO / "bundles").iterdir() if p.is_dir())


def _block(text: str, name: str) -> str:
    found = re.search(rf"<!-- {name} -->\n(.*?)\n<!-- /{name} -->", text, re.S)
    assert found, f"no <!-- {name} --> block"
    return found.group(1)


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_each_bundle_quotes_its_section_of_the_measured_results(bundle):
    section = (REPO / "bench" / "results" / "bundles.md").read_text().split(f"## `bundles/{bundle.name}`\n\n")[1]
    quoted = _block((bundle / "docs" / "README.md").read_text(), bundle_results.TEST_BLOCK)
    assert section.startswith(quoted)
    # the training record is the metadata's, as the script renders it
    assert bundle_results.training_line(bundle) in quoted


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_the_measured_test_results_are_the_eval_metrics_of_metadata(bundle):
    quoted = _block((bundle / "docs" / "README.md").read_text(), bundle_results.TEST_BLOCK)
    metrics = json.loads((bundle / "configs" / "metadata.json").read_text())["eval_metrics"]
    header, _, first_row = [line.strip("|").split(" | ") for line in quoted.splitlines() if line.startswith("|")][:3]
    row = dict(zip([name.strip() for name in header], [value.strip() for value in first_row]))
    if "test_miou" in metrics:
        expected = {"mIoU": metrics["test_miou"], "pixel accuracy": metrics["test_pixel_accuracy"]}
    else:
        assert row["setting"] == "threshold 0.5"
        expected = {name: metrics[f"test_{name}"] for name in bundle_results.VESSEL_METRICS}
    for name, value in expected.items():
        assert float(row[name]) == pytest.approx(value, abs=5e-5), (bundle.name, name)


def test_the_camera_tables_of_readme_and_bundle_docs_are_the_measured_file():
    measured = (REPO / "bench" / "results" / "bundle_cameras.md").read_text().split("\n\n", 1)[1].rstrip("\n")
    fundus = [bundle for bundle in BUNDLES if bundle_results.is_fundus(bundle)]
    for docs in [REPO / "README.md", *(bundle / "docs" / "README.md" for bundle in fundus)]:
        assert _block(docs.read_text(), bundle_results.CAMERA_BLOCK) == measured, docs
    assert {f"`{bundle.name}`" for bundle in fundus} <= set(re.findall(r"^\| (`\w+`) \|", measured, re.M))


@pytest.mark.parametrize("bundle", ["drive_vessel_unet", "fundus_vessel_unet"])
def test_upsampled_edge_erosion_is_chosen_on_photographs_neither_trained_on_nor_tested(bundle, drive_root, les_av_root):
    _, records = upsampled_edges.validation_photographs(REPO / "bundles" / bundle, les_av_root.parent)
    images = {record["image"] for record in records}
    assert images and all("/LES-AV/training/" in image for image in images)
    if bundle == "fundus_vessel_unet":  # trained on LES-AV training photographs but for the held-out ones
        train = bundle_workflow(REPO / "bundles" / bundle, "train").parser
        trained, _ = multi_camera_records(drive_root, les_av_root, val_drive=train["val_images"],
                                          val_les_av=train["val_images_les_av"],
                                          seed=train.get_parsed_content("split_seed"))
        assert len(images) == 2 and not images & {record["image"] for record in trained}
    else:
        assert len(images) == 11


def test_the_inference_report_bounds_each_row_by_its_flops_at_the_one_thread_bf16_peak():
    peaks = {"float32": 90.0, "bfloat16": 200.0}  # a log from before the all-core peaks were measured
    previous = {"case": "drive", "method": "previous", "precision": "float32", "sw_batch_size": 16, "wall_s": 150.0,
                "gflop": 10000.0, "peak_rss_mib": 1000.0, "vs_previous": 1.0, "vs_monai": float("nan"),
                "agreement": 1.0}
    previous["ceiling"] = inference_bench.ceiling_vs_previous(previous, previous, peaks)
    assert previous["ceiling"] == pytest.approx(3.0)  # 10000 GFLOP at 200 GFLOP/s: 50 s, against 150 s

    text = inference_bench.report([previous], peaks, {}, [], None, "python bench/inference.py")
    row = next(line for line in text.splitlines() if line.startswith("| DRIVE test"))
    assert "| 1.00x | 3.00x | - |" in row  # speed vs previous, its ceiling, vs monai (not measured)
    assert "threads: fp32" not in text
    all_cores = inference_bench.report([previous], {**peaks, "float32_all_cores": 180.0, "bfloat16_all_cores": 400.0},
                                       {}, [], None, "python bench/inference.py")
    assert "fp32 180, bf16 400)" in all_cores
