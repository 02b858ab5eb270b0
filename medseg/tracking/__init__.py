"""MLflow tracking, one room per concept: the store and server check (``store``), what a run records
(``record``: params, tags, machine, command line, the run id its output folder keeps), reading runs back
(``runs``: the runs table, the source run of checkpoints, training records), ensemble runs (``ensemble_runs``),
the training handler (``handler``) and MLflow models and the registry (``models``)."""

from medseg.tracking.ensemble_runs import ensemble_parent_run, log_ensemble_metrics
from medseg.tracking.record import (
    COMMAND_TAG, MACHINE_TAG, RUN_CONTROL_IDS, RUN_ID_FILE, SEGMENT_START_METRIC, cpu_instructions, executed_config,
    hyper_parameters, machine_description, record_run_id, recorded_run_id, run_tags, training_run_name,
)
from medseg.tracking.runs import (
    DEFAULT_RUN_METRICS, DEFAULT_RUN_PARAMS, DEFAULT_RUN_TAGS, evaluation_tags, runs_table, source_run_id,
    source_run_tags, training_record,
)
from medseg.tracking.store import (
    EXPERIMENT_KIND_TAG, TrackingServerError, check_tracking_server, default_tracking_uri, prepare_tracking_store,
    tag_experiment_kind, tracking_at,
)

__all__ = [
    "COMMAND_TAG", "DEFAULT_RUN_METRICS", "DEFAULT_RUN_PARAMS", "DEFAULT_RUN_TAGS", "EXPERIMENT_KIND_TAG",
    "MACHINE_TAG", "RUN_CONTROL_IDS", "RUN_ID_FILE", "SEGMENT_START_METRIC", "TrackingServerError", "check_tracking_server",
    "cpu_instructions", "default_tracking_uri", "ensemble_parent_run", "evaluation_tags", "executed_config",
    "hyper_parameters", "log_ensemble_metrics", "machine_description", "prepare_tracking_store", "record_run_id",
    "recorded_run_id", "run_tags", "runs_table", "source_run_id", "source_run_tags", "tag_experiment_kind",
    "tracking_at", "training_record", "training_run_name",
]
