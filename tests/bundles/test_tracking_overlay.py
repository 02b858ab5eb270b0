"""MLflow tracking only adds to a bundle's workflows: with medseg's tracking settings (configs/mlflow_tracking.yaml,
patched in by MONAI's ``ConfigWorkflow.patch_bundle_tracking``) every engine keeps all its handlers, and every
evaluator of evaluate.yaml scores the bundle's weights, with tracking on and off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.utils import path_to_sqlite_uri

from medseg.engines.workflow import MLFLOW_TRACKING, bundle_workflow
from medseg.inference import read_state_dict
from medseg.resources import bundle_names, bundles_root, read_bundle_config

ENGINES = ("SupervisedEvaluator", "SupervisedTrainer")
# the real datasets each bundle's config lists its records from
DATASET_FIXTURES = {"camvid_unet": ["camvid_root"], "fundus_vessel_unet": ["drive_root", "les_av_root"]}


def engine_ids(config: Any, prefix: str = "") -> Iterator[str]:
    """The config ids of every MONAI engine component (``_target_`` a supervised trainer or evaluator)."""
    if isinstance(config, dict):
        if str(config.get("_target_", "")).rsplit(".", 1)[-1] in ENGINES:
            yield prefix
        for key, value in config.items():
            yield from engine_ids(value, f"{prefix}#{key}" if prefix else str(key))
    elif isinstance(config, list):
        for index, value in enumerate(config):
            yield from engine_ids(value, f"{prefix}#{index}")


def engine_handlers(parser: ConfigParser, engine_id: str) -> list:
    """The handler configs an engine is given, its ``"@id"`` reference followed."""
    engine = parser.get(engine_id)
    handlers = engine.get("train_handlers", engine.get("val_handlers", []))
    if isinstance(handlers, str) and handlers.startswith("@"):
        handlers = parser.get(handlers[1:])
    return list(handlers)


@pytest.mark.parametrize("config_name", ["train", "evaluate"])
@pytest.mark.parametrize("bundle", bundle_names())
def test_the_tracking_settings_keep_every_handler_of_every_engine(bundle, config_name):
    parser = read_bundle_config(bundles_root() / bundle, config_name)
    before = {engine_id: engine_handlers(parser, engine_id) for engine_id in engine_ids(parser.get())}
    parser["save_execute_config"] = False  # nothing written by the patch
    ConfigWorkflow.patch_bundle_tracking(parser, ConfigParser.load_config_files(str(MLFLOW_TRACKING)))
    assert before, f"{bundle}/configs/{config_name}.yaml has no engine"
    for engine_id, handlers in before.items():
        after = engine_handlers(parser, engine_id)
        assert after[:len(handlers)] == handlers, f"{engine_id}: the tracking settings replaced its handlers"


@pytest.mark.parametrize("tracking", [False, True], ids=["untracked", "tracked"])
@pytest.mark.parametrize("bundle", bundle_names())
def test_every_evaluator_of_evaluate_yaml_has_loaded_the_bundles_weights(bundle, tracking, tmp_path, request):
    for fixture in DATASET_FIXTURES.get(bundle, ["drive_root"]):
        request.getfixturevalue(fixture)
    folder = bundles_root() / bundle
    workflow = bundle_workflow(
        folder, "evaluate", tracking=str(MLFLOW_TRACKING) if tracking else None, workflow_type="eval",
        overrides={"output_dir": str(tmp_path), "tracking_uri": path_to_sqlite_uri(str(tmp_path / "mlflow.db"))},
    )
    weights = read_state_dict(folder / "models" / "model.pt")
    evaluator_ids = list(engine_ids(workflow.parser.get()))
    assert len(evaluator_ids) >= 1
    for evaluator_id in evaluator_ids:
        with contextlib.chdir(folder):
            evaluator = workflow.parser.get_parsed_content(evaluator_id)
        with torch.no_grad():
            for parameter in evaluator.network.parameters():
                parameter.zero_()
        evaluator.fire_event(Events.STARTED)  # where MONAI's CheckpointLoader loads
        state = evaluator.network.state_dict()
        assert state.keys() == weights.keys()
        unloaded = [key for key, value in weights.items() if not torch.equal(state[key].cpu(), value)]
        assert not unloaded, f"{bundle} {evaluator_id}: evaluates other weights than models/model.pt ({unloaded[:3]})"
