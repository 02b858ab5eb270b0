"""InferenceSettings: one name and one default per inference setting, from a bundle config or the command line
to predict()."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from medseg.cli import build_parser
from medseg.inference import InferenceSettings, predict

FIELDS = {field.name: field.default for field in dataclasses.fields(InferenceSettings)}


def infer_flags() -> dict[str, str]:
    """``{destination: help}`` of the options of ``medseg infer``."""
    parser = build_parser()
    infer = parser._subparsers._group_actions[0].choices["infer"]
    return {action.dest: action.help or "" for action in infer._actions if action.option_strings}


def test_predict_defaults_are_the_settings_defaults():
    parameters = inspect.signature(predict).parameters
    shared = {name for name in FIELDS if name in parameters}
    assert {"sw_overlap", "mode", "precision", "slice_axis", "tta"} <= shared
    for name in shared - {"roi_size", "sw_batch_size", "normalization", "activation", "scale"}:
        assert parameters[name].default == FIELDS[name], name


@pytest.mark.parametrize("name", ["sw_overlap", "sw_batch_size", "mode", "threshold", "normalization", "tta",
                                  "precision", "fov", "scale", "slice_axis"])
def test_each_setting_the_command_line_changes_has_a_flag_of_its_own_name(name):
    flags = infer_flags()
    assert name in flags, f"medseg infer has no --{name.replace('_', '-')}"


@pytest.mark.parametrize("name", ["sw_overlap", "mode", "threshold", "slice_axis", "scale"])
def test_the_command_line_help_shows_the_settings_default(name):
    assert f"default {FIELDS[name]}" in infer_flags()[name]


def test_the_bundles_name_their_inference_settings_as_the_fields_are_named():
    import yaml
    from pathlib import Path

    for config in sorted(Path(__file__).resolve().parents[2].glob("bundles/*/configs/inference.yaml")):
        keys = set(yaml.safe_load(config.read_text())["inference_settings"]) - {"_target_"}
        assert keys <= set(FIELDS), f"{config}: {sorted(keys - set(FIELDS))}"
