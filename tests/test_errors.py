"""One rule for whose error it is (engine/errors.py, _errors.py): the user's errors exit 2 with their
message; anything else is a bug, exits 1 and logs its traceback."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest


def test_an_internal_key_error_is_a_bug_with_its_traceback_logged(monkeypatch, caplog, capsys):
    from napari_mobilesam import cli
    from napari_mobilesam.model import weights

    def broken():
        return {}["cache"]  # a bug inside the package, not the user's input

    monkeypatch.setattr(weights, "cache_dir", broken)
    with caplog.at_level(logging.ERROR, logger="napari_mobilesam"):
        assert cli.main(["weights"]) == 1
    assert "internal error, please report it" in capsys.readouterr().err
    assert any(r.exc_info and r.exc_info[0] is KeyError for r in caplog.records)


def test_a_user_error_exits_2_with_its_message_and_logs_nothing(caplog, capsys):
    from napari_mobilesam import cli

    with caplog.at_level(logging.ERROR, logger="napari_mobilesam"):
        assert cli.main(["weights", "fetch", "no_such_model"]) == 2
    assert "Unknown weights name(s) no_such_model" in capsys.readouterr().err
    assert not caplog.records


def test_whose_error():
    from napari_mobilesam._errors import is_user_error
    from napari_mobilesam.engine.errors import InputError, MissingEmbedding, UserError
    from napari_mobilesam.engine.image import to_rgb_uint8
    from napari_mobilesam.model.build import CheckpointError, resolve_device

    def caught(fn):
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - the test looks at whatever was raised
            return err
        raise AssertionError("nothing raised")

    assert is_user_error(caught(lambda: to_rgb_uint8(np.zeros((4, 4), complex))))  # our check: the fix is in the message
    assert not is_user_error(caught(lambda: int("x")))  # a plain ValueError raised in our code is a bug too (issue 23)
    assert not is_user_error(ValueError("an internal check"))
    assert not is_user_error(caught(lambda: np.ones(2) + np.ones(3)))  # numpy's ValueError: a bug of ours
    assert not is_user_error(caught(lambda: {}["x"]))
    assert not is_user_error(caught(lambda: [][1]))
    assert is_user_error(caught(lambda: open("/no/such/file")))
    for cls in (InputError, CheckpointError, MissingEmbedding):
        assert issubclass(cls, UserError) and issubclass(cls, ValueError)
        assert is_user_error(cls("x"))
    assert issubclass(MissingEmbedding, KeyError) and str(MissingEmbedding("Frame 3: run it")) == "Frame 3: run it"
    if not __import__("torch").cuda.is_available():
        err = caught(lambda: resolve_device("cuda"))
        assert isinstance(err, RuntimeError) and is_user_error(err)


def test_old_names_are_the_new_classes():
    from napari_mobilesam.engine import errors, io, store

    assert io.InputError is errors.InputError
    assert issubclass(store.EmbeddingStoreMismatch, errors.InputError)


@pytest.mark.parametrize("module", ["csv_prompts", "labelfile"])
def test_no_import_cycle_through_io(module):
    code = f"import sys, napari_mobilesam.engine.{module}; print('napari_mobilesam.engine.io' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# code "of the package" (its globals' __name__), as a bug deep inside the engine would raise it
IN_PACKAGE = {"__name__": "napari_mobilesam.engine.somewhere"}


@pytest.mark.parametrize("bug", [eval("lambda: {}['frame']", IN_PACKAGE), eval("lambda: int('not a number')", IN_PACKAGE)])
def test_an_internal_keyerror_or_valueerror_logs_its_traceback_and_exits_1(bug, monkeypatch, caplog, capsys):
    """Issue 23: only UserError (and OSError) is the user's. A KeyError or a plain ValueError from our own
    code is a bug: one line saying so, exit status 1, and its traceback in the log."""
    from napari_mobilesam import cli

    def broken(args):
        return bug()

    monkeypatch.setattr(cli, "cmd_weights", broken)
    with caplog.at_level(logging.ERROR, logger="napari_mobilesam"):
        assert cli.main(["weights"]) == 1
    assert "internal error, please report it" in capsys.readouterr().err
    (record,) = caplog.records
    assert record.exc_info is not None and "<lambda>" in "".join(__import__("traceback").format_exception(*record.exc_info))
