"""The params of a training run come from its config: every top-level literal id, no hand-kept list."""

from __future__ import annotations

import json
from pathlib import Path

from monai.bundle import ConfigParser

from medseg.tracking import RUN_CONTROL_IDS, executed_config, hyper_parameters

DRIVE_TRAIN = Path(__file__).resolve().parents[2] / "bundles" / "drive_vessel_unet" / "configs" / "train.yaml"


def test_every_literal_top_level_id_of_the_train_config_is_a_param():
    config = ConfigParser.load_config_file(str(DRIVE_TRAIN))
    params = hyper_parameters(config)
    assert {"learning_rate", "camera_jitter", "network_features", "roi_size", "sw_overlap", "tta", "seed",
            "ensemble_members", "time_budget_minutes"} <= params.keys()
    assert params["split_seed"] == config["seed"]  # "@seed": the value it refers to
    assert params["network_features"] == config["network_features"]
    # expressions (paths, devices, records), sections and run control are not params
    assert not {"dataset_dir", "device", "records", "network_def", "train", "imports"} & params.keys()
    assert not RUN_CONTROL_IDS & params.keys()


def test_a_new_id_is_tracked_by_being_written_in_the_config_and_read_from_the_executed_file(tmp_path):
    executed = tmp_path / "config_20261203_000000.json"  # what MONAI's save_execute_config writes
    executed.write_text(json.dumps({"new_knob": 0.25, "resume": True, "output_dir": "$'/tmp/out'",
                                    "split_seed": "@seed", "seed": 3, "run": ["$@trainer.run()"]}))
    assert hyper_parameters(executed) == {"new_knob": 0.25, "split_seed": 3, "seed": 3}


def test_the_executed_config_is_found_where_monai_wrote_it_even_when_the_config_does_not_name_it(tmp_path):
    written = tmp_path / "config_20261203_000000.json"
    written.write_text("{}")
    assert executed_config(str(written), tmp_path / "elsewhere") == str(written)
    # a plain --output_dir: MONAI's setting then reads "<dir> + '/config_....json'", the file is in <dir>
    assert executed_config(f"{tmp_path} + '/config_20261203_000000.json'", tmp_path) == str(written)
    assert executed_config(None, tmp_path / "empty") is None
    assert hyper_parameters(None) == {}
