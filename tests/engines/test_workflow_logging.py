"""A bundle's logging.conf and medseg's own records: once on the console, with the CLI or without it."""

import logging
import sys
from pathlib import Path

import pytest

from medseg.engines.workflow import bundle_workflow

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "drive_vessel_unet"


@pytest.mark.parametrize("handlers", [[], [logging.NullHandler()]], ids=["no handler", "a NullHandler"])
def test_without_the_cli_medseg_records_reach_the_console_the_bundle_configures(handlers, monkeypatch, capsys):
    # medseg as a library: the root console handler of the bundle's logging.conf prints medseg's records as any
    # library's, whatever handlers the user's code gave the "medseg" logger
    monkeypatch.setattr(logging.getLogger("medseg"), "handlers", handlers)
    bundle_workflow(BUNDLE, "inference")
    logging.getLogger("medseg.example").warning("a record of medseg's")
    assert capsys.readouterr().out.count("a record of medseg's") == 1


def test_with_a_console_handler_of_medseg_s_own_the_bundle_s_console_leaves_medseg_records_to_it(monkeypatch, capsys):
    # the CLI's handler on stderr (or tqdm's stand-in for it under a progress bar): each record once, there
    own = logging.StreamHandler(sys.stderr)
    monkeypatch.setattr(logging.getLogger("medseg"), "handlers", [own])
    bundle_workflow(BUNDLE, "inference")
    logging.getLogger("medseg.example").warning("a record of medseg's")
    console = capsys.readouterr()
    assert console.err.count("a record of medseg's") == 1 and "a record of medseg's" not in console.out
