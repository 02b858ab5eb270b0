"""Run a bundle's config as a MONAI ``ConfigWorkflow``: the one code path behind ``medseg train``,
``medseg evaluate`` and ``python -m monai.bundle run``.

Bundle configs follow MONAI's convention of running from the bundle folder: ``bundle_root`` is ``.`` and
settings shared between configs are ``%configs/train.yaml#...`` macros, which MONAI resolves against the
working directory. :func:`run_bundle_config` therefore parses and runs the workflow from inside the bundle
folder, with every path it is given made absolute first.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from mlflow.utils.logging_utils import MlflowLoggingStream
from monai.bundle import ConfigParser, ConfigWorkflow

from medseg.resources import bundle_config_files, configs_root, is_packaged
from medseg.utils import dropped_log_records

__all__ = [
    "MLFLOW_TRACKING", "ConfigError", "bundle_workflow", "check_override_ids", "parse_overrides", "run_bundle_config",
    "share_the_console",
]

# how MONAI words an error raised while it evaluates an expression or instantiates a component of a config
_MONAI_CONFIG_FAILURES = ("Failed to evaluate ", "Failed to instantiate component ")


class ConfigError(ValueError):
    """An error raised inside a bundle config's expression or component, named by its config id and the
    bundle, with the error at its root (MONAI wraps it in one ``RuntimeError`` per level of references) as
    ``root``."""

    def __init__(self, message: str, root: BaseException | None = None) -> None:
        super().__init__(message)
        self.root = root


def config_error(err: BaseException, parser: ConfigParser, bundle: Path) -> ConfigError | None:
    """``err`` as a :class:`ConfigError` if MONAI raised it while parsing ``parser``'s config, else ``None``."""
    chain = [err]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    failures = [e for e in chain if isinstance(e, RuntimeError) and str(e).startswith(_MONAI_CONFIG_FAILURES)]
    if not failures:
        return None
    innermost, root = str(failures[-1]), chain[-1]
    ids = [item_id for item_id, item in parser.ref_resolver.items.items()
           if item_id and (f"Failed to evaluate {item}" == innermost or
                           innermost.startswith(f"Failed to instantiate component '{_target_of(item)}'"))]
    # an installed bundle by its name: its folder inside the package is nothing the user can act on
    named = bundle.name if is_packaged(bundle) else bundle
    where = f"config id {max(ids, key=len)!r} of {named}" if ids else f"a config of {named}"
    return ConfigError(f"{where}: {type(root).__name__}: {root}".replace("\n", " "), root)


def _target_of(item: Any) -> str | None:
    config = item.get_config()
    return config.get("_target_") if isinstance(config, dict) else None

# medseg's MLflow settings for MONAI's ``tracking`` argument, one of the shipped config files
MLFLOW_TRACKING = configs_root() / "mlflow_tracking.yaml"


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["max_epochs=5", "network_def#features=[8,16]"]`` -> ``{"max_epochs": 5, "network_def#features": [8, 16]}``.

    Values are parsed as YAML, so numbers, booleans, lists and MONAI ``$expressions`` all work.
    """
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def check_override_ids(
    bundle: str | os.PathLike, overrides: Mapping[str, Any], overlays: Sequence[str | os.PathLike] = (),
    extra_ids: Iterable[str] = (),
) -> None:
    """Check that each override's top-level id (``network_def`` of ``network_def#features``) is an id of one of
    ``bundle``'s configs (they share their settings, so a train.yaml id given to an evaluation is no error), of an
    overlay, of medseg's tracking settings or one of ``extra_ids`` (ids the command adds, e.g. a training on a
    folder's); MONAI's runner would add an unknown id and run without a word.

    Raises:
        ConfigError: naming the unknown id and the nearest known ids.
    """
    files = [*(Path(bundle) / "configs").glob("*.yaml"), *map(Path, overlays)]
    # a file's keys as MONAI merges them: "train#handlers" of an overlay sets the top-level id "train"
    known = {key.split("#", 1)[0] for path in files for key in ConfigParser.load_config_file(str(path))}
    known |= {"_meta_", "bundle_root", *ConfigParser.load_config_file(str(MLFLOW_TRACKING))["configs"]}
    known |= set(extra_ids)
    for key in overrides:
        top = key.split("#", 1)[0]
        if top not in known:
            nearest = difflib.get_close_matches(top, sorted(known), n=3)
            hint = f"; did you mean {' or '.join(nearest)}?" if nearest else ""
            raise ConfigError(f"--set {key}: {top!r} is not an id of {Path(bundle).name}'s configs{hint}")


def bundle_workflow(
    bundle: str | os.PathLike,
    name: str,
    *,
    overlays: Sequence[str | os.PathLike] = (),
    overrides: Mapping[str, Any] | None = None,
    tracking: str | dict | None = None,
    workflow_type: str | None = None,
) -> ConfigWorkflow:
    """``<bundle>/configs/<name>.yaml`` (plus overlays, merged in order) as an initialised MONAI
    ``ConfigWorkflow``, ready to ``run()``: its parser holds every component (``workflow.parser``).

    Args:
        bundle: the bundle folder.
        name: config name, e.g. ``"train"``, ``"evaluate"``, ``"inference"``.
        overlays: more config files merged on top (``configs/cpu_budget.yaml``, ...).
        overrides: ``{config id: value}`` applied last, as ``--id value`` on MONAI's command line.
        tracking: MONAI's experiment-tracking settings, e.g. ``"mlflow"`` (as ``--tracking mlflow``) or a file.
        workflow_type: MONAI's workflow type (``"train"``, ``"infer"``) to check the config's properties.
    """
    bundle = Path(bundle).resolve()
    files = bundle_config_files(bundle, name, overlays)
    configs = bundle / "configs"
    logging_file = configs / "logging.conf"
    # macros are resolved when the workflow is built and initialised; nothing reads files relative to the
    # working directory after that
    # MONAI warns whenever an overlay lies outside configs/, about the defaults of meta_file and logging_file,
    # which are both given here
    with contextlib.chdir(bundle), dropped_log_records("monai.bundle.workflows", "Not all config files are in "):
        workflow = ConfigWorkflow(
            config_file=files,
            meta_file=str(configs / "metadata.json"),
            logging_file=str(logging_file) if logging_file.is_file() else False,
            tracking=tracking,
            workflow_type=workflow_type,
            bundle_root=str(bundle),
            **dict(overrides or {}),
        )
    share_the_console()
    with contextlib.chdir(bundle):
        with _config_errors(workflow.parser, bundle):
            workflow.initialize()
    share_the_console()
    return workflow


def _is_console(handler: logging.Handler) -> bool:
    """Whether ``handler`` writes to the console: stdout or stderr, or MLflow's stream, which writes to whatever
    stderr is at each record; not to a file, a buffer (pytest's caplog) or nowhere."""
    if not isinstance(handler, logging.StreamHandler):
        return False
    return handler.stream in (sys.stdout, sys.stderr) or isinstance(handler.stream, MlflowLoggingStream)


def _is_medseg(name: str) -> bool:
    return name.partition(".")[0] == "medseg"


def _medseg_owns_the_console() -> bool:
    """Whether medseg's logger prints its records itself (the CLI's handler, or the progress bar's stand-in for it
    while ``medseg infer`` shows one)."""
    return any(_is_console(handler) for handler in logging.getLogger("medseg").handlers)


def _on_shared_console(record: logging.LogRecord) -> bool:
    """The filter of every console handler but medseg's own. Under medseg's CLI (:func:`_medseg_owns_the_console`)
    medseg's records are left to its handler, and the other libraries' below WARNING (ignite's and MONAI's
    per-epoch INFO lines, which repeat what medseg's progress line and MLflow hold) are not printed unless
    medseg's logger is at DEBUG (``--verbose``). Without it (medseg as a library) every record passes, medseg's
    reaching the root's handler as any library's."""
    if not _medseg_owns_the_console():
        return True
    if _is_medseg(record.name):
        return False
    return record.levelno >= logging.WARNING or logging.getLogger("medseg").isEnabledFor(logging.DEBUG)


def share_the_console() -> None:
    """Give every console handler outside medseg (the root's, which a bundle's logging.conf sets up with MONAI's
    ``fileConfig``; MONAI's StatsHandler's; MLflow's) the filter :func:`_on_shared_console`. Call it again once
    new loggers have handlers: a workflow's handlers make theirs when it is initialised."""
    named = (logger for logger in logging.root.manager.loggerDict.values() if isinstance(logger, logging.Logger))
    for logger in (logging.getLogger(), *named):
        if _is_medseg(logger.name):
            continue
        for handler in logger.handlers:
            if _is_console(handler) and _on_shared_console not in handler.filters:
                handler.addFilter(_on_shared_console)


@contextlib.contextmanager
def _config_errors(parser: ConfigParser, bundle: Path) -> Iterator[None]:
    try:
        yield
    except RuntimeError as err:
        translated = config_error(err, parser, bundle)
        if translated is None:
            raise
        _remove_executed_config(parser, bundle)
        raise translated from err


def _remove_executed_config(parser: ConfigParser, bundle: Path) -> None:
    """Remove the executed config MONAI's tracking patch wrote (``save_execute_config``): it records a run that
    never ran."""
    if isinstance(parser.get("save_execute_config"), str):
        with contextlib.chdir(bundle):
            Path(parser.get_parsed_content("save_execute_config")).unlink(missing_ok=True)


def run_bundle_config(bundle: str | os.PathLike, name: str, **kwargs: Any) -> ConfigWorkflow:
    """Build (:func:`bundle_workflow`, same arguments), run and finalise a bundle config; return the workflow."""
    workflow = bundle_workflow(bundle, name, **kwargs)
    with _config_errors(workflow.parser, Path(bundle).resolve()):
        workflow.run()
    workflow.finalize()
    return workflow
