"""``TrackingHandler`` on an embedded SQLite store: what MONAI's ``MLFlowHandler`` lacks."""

import warnings

from ignite.engine import Engine, Events
from mlflow import MlflowClient
from monai.utils import path_to_sqlite_uri

from medseg.tracking import SEGMENT_START_METRIC
from medseg.tracking.handler import TrackingHandler


def test_a_training_that_loses_the_race_to_create_the_experiment_logs_to_the_winners_experiment(tmp_path):
    uri = path_to_sqlite_uri(tmp_path / "mlflow.db")
    handler = TrackingHandler(tracking_uri=uri, experiment_name="race", run_name="second",
                              experiment_param={"seed": 13}, iteration_log=False, close_on_complete=True)
    lookup = handler.client.get_experiment_by_name

    def lookup_while_another_training_creates_it(name):
        found = lookup(name)
        MlflowClient(uri).create_experiment(name)  # the other training, between this lookup and our create
        handler.client.get_experiment_by_name = lookup
        return found

    handler.client.get_experiment_by_name = lookup_while_another_training_creates_it
    engine = Engine(lambda engine, batch: None)
    handler.attach(engine)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a lost tracking warns
        engine.run([0], max_epochs=1)

    client = MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "race"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert not handler.tracking_lost
    assert run.info.run_name == "second" and run.info.status == "FINISHED"
    assert run.data.params["seed"] == "13"


def test_the_training_handler_marks_each_start_of_the_training_and_the_validators_do_not(tmp_path):
    uri = path_to_sqlite_uri(tmp_path / "mlflow.db")
    for _ in ("first process", "resumed process"):  # a killed run stays unfinished; the resumed one joins it
        trainer, validator = Engine(lambda engine, batch: 0.5), Engine(lambda engine, batch: None)
        TrackingHandler(tracking_uri=uri, experiment_name="resumed", run_name="run", tag_name="train_loss",
                        output_transform=lambda output: output, close_on_complete=False).attach(trainer)
        TrackingHandler(tracking_uri=uri, experiment_name="resumed", run_name="run", iteration_log=False,
                        close_on_complete=False).attach(validator)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: validator.run([0]))
        trainer.run([0, 1], max_epochs=2)

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("resumed").experiment_id])
    assert len(client.get_metric_history(run.info.run_id, SEGMENT_START_METRIC)) == 2


def test_datasets_are_recorded_as_run_inputs_without_a_progress_bar_on_the_console(tmp_path, capsys):
    from monai.data import Dataset

    uri = path_to_sqlite_uri(tmp_path / "mlflow.db")
    samples = [{"image": f"/photos/{i}.png", "label": f"/labels/{i}.png"} for i in range(3)]
    trainer = Engine(lambda engine, batch: 0.5)
    TrackingHandler(tracking_uri=uri, experiment_name="datasets", run_name="run", tag_name="train_loss",
                    output_transform=lambda output: output, dataset_dict={"train": Dataset(samples)}).attach(trainer)
    trainer.run([0], max_epochs=1)

    assert "Recording the" not in capsys.readouterr().err
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("datasets").experiment_id])
    (recorded,) = run.inputs.dataset_inputs
    assert recorded.dataset.name == "train_dataset_0"  # MONAI names each record by its dataset_dict key
    assert '"num_rows": 3' in recorded.dataset.profile
