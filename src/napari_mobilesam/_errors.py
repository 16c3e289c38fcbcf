"""Which errors are the user's and which are bugs: one rule for the widget and the ``mobilesam`` CLI.

A user error carries its fix in its message; the user sees that one sentence and nothing is logged.
Any other error is a bug: the user still sees one sentence, and its traceback goes to the
``"napari_mobilesam"`` logger (napari's console, the terminal, or whatever handler the user configured).

The user's errors are:

- :class:`~napari_mobilesam.engine.errors.UserError` and its subclasses (``InputError``,
  ``CheckpointError``, ...; see :mod:`napari_mobilesam.engine.errors`);
- ``OSError`` (a missing file, a full disk, no permission) and ``WeightsUnavailableError`` (offline).

Every other exception is a bug, a plain ``ValueError`` or ``KeyError`` included, wherever it was
raised: a check of the user's input raises a ``UserError`` (``SettingsError`` for a value, ``InputError``
for a file) with the fix in its message.
"""

from __future__ import annotations

import logging

__all__ = ["LOGGER", "is_user_error", "log_unexpected", "user_error_types"]

LOGGER = "napari_mobilesam"


def user_error_types() -> tuple[type[BaseException], ...]:
    """``UserError`` (bad input, e.g. ``InputError``, ``CheckpointError``), ``OSError`` (files) and
    ``WeightsUnavailableError``."""
    from .engine.errors import UserError
    from .model.weights import WeightsUnavailableError

    return (UserError, OSError, WeightsUnavailableError)


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is the user's to fix (see the module docstring); everything else is a bug."""
    return isinstance(err, user_error_types())


def log_unexpected(err: BaseException, where: str) -> bool:
    """Log ``err`` with its traceback unless it is a user error; True if it was logged."""
    if is_user_error(err):
        return False
    logging.getLogger(LOGGER).error("%s: unexpected %s: %s", where, type(err).__name__, err,
                                    exc_info=(type(err), err, err.__traceback__))
    return True
