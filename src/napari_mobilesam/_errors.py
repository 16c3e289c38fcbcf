"""Which errors are the user's and which are bugs: one rule for the widget and the ``mobilesam`` CLI.

A user error carries its fix in its message; the user sees that one sentence and nothing is logged.
Any other error is a bug: the user still sees one sentence, and its traceback goes to the
``"napari_mobilesam"`` logger (napari's console, the terminal, or whatever handler the user configured).

The user's errors are:

- :class:`~napari_mobilesam.engine.errors.UserError` and its subclasses (``InputError``,
  ``CheckpointError``, ...; see :mod:`napari_mobilesam.engine.errors`);
- ``OSError`` (a missing file, a full disk, no permission) and ``WeightsUnavailableError`` (offline);
- for now, a plain ``ValueError`` raised by this package's own checks (the innermost frame of its
  traceback is in ``napari_mobilesam``): older argument checks still raise ``ValueError`` with the
  fix in the message. A ``ValueError`` from inside numpy, torch or any other library is a bug, and so
  is every ``KeyError``, ``IndexError``, ``TypeError``, ... Raise ``UserError`` in new code.
"""

from __future__ import annotations

import logging

__all__ = ["LOGGER", "is_user_error", "log_unexpected", "user_error_types"]

LOGGER = "napari_mobilesam"
_PACKAGE = __name__.split(".")[0]


def user_error_types() -> tuple[type[BaseException], ...]:
    """``UserError`` (bad input, e.g. ``InputError``, ``CheckpointError``), ``OSError`` (files) and
    ``WeightsUnavailableError``."""
    from .engine.errors import UserError
    from .model.weights import WeightsUnavailableError

    return (UserError, OSError, WeightsUnavailableError)


def _raised_here(err: BaseException) -> bool:
    """True if the innermost frame of ``err``'s traceback is code of this package."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0] == _PACKAGE


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is the user's to fix (see the module docstring); everything else is a bug."""
    if isinstance(err, user_error_types()):
        return True
    return isinstance(err, ValueError) and _raised_here(err)  # legacy checks, until they raise UserError


def log_unexpected(err: BaseException, where: str) -> bool:
    """Log ``err`` with its traceback unless it is a user error; True if it was logged."""
    if is_user_error(err):
        return False
    logging.getLogger(LOGGER).error("%s: unexpected %s: %s", where, type(err).__name__, err,
                                    exc_info=(type(err), err, err.__traceback__))
    return True
