"""``medseg runs``: list the MLflow runs of the tracking store."""

from __future__ import annotations

import argparse
import os

from mlflow.exceptions import MlflowException

from medseg.cli import CLIError
from medseg.tracking import TrackingServerError, check_tracking_server, default_tracking_uri, runs_table


def _runs(args: argparse.Namespace) -> int:
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    try:
        check_tracking_server(uri)
        print(runs_table(uri, experiment_name=args.experiment, filter_string=args.filter))
    except (TrackingServerError, FileNotFoundError, ValueError, MlflowException) as err:
        raise CLIError(str(err)) from None
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    runs = subparsers.add_parser(
        "runs",
        help="list the MLflow runs with their key params and metrics",
        description="Print a table of MLflow runs, newest first: run name, status, start, duration, network and "
        "dataset tags, key params and the latest value of the key metrics.",
    )
    runs.add_argument("--experiment", metavar="NAME", help="only the runs of this MLflow experiment")
    runs.add_argument("--filter", default="", metavar="EXPR",
                      help="MLflow search syntax, e.g. \"metrics.val_f1 > 0.8 and tags.dataset = 'drive'\"")
    runs.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow tracking URI, e.g. http://127.0.0.1:5000 (default: $MLFLOW_TRACKING_URI, else "
        "sqlite:///<cwd>/mlflow.db)",
    )
    runs.set_defaults(func=_runs)
