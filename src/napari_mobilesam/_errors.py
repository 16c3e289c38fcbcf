"""Which errors are the user's and which are bugs: one rule for the widget and the ``mobilesam`` CLI.

A user error (bad input, a missing file, weights that cannot be downloaded) carries its fix in its
message; the user sees that one sentence and nothing is logged. Any other error is a bug: the user
still sees one sentence, and its traceback goes to the ``"napari_mobilesam"`` logger (napari's
console, the terminal, or whatever handler the user configured).
"""

from __future__ import annotations

import logging

__all__ = ["LOGGER", "is_user_error", "log_unexpected"]

LOGGER = "napari_mobilesam"


def user_error_types() -> tuple[type[BaseException], ...]:
    """``ValueError`` (bad input, e.g. ``InputError``, ``CheckpointError``), ``OSError`` (files),
    ``KeyError`` (a frame missing from an embeddings store) and ``WeightsUnavailableError``."""
    from .model.weights import WeightsUnavailableError

    return (ValueError, OSError, KeyError, WeightsUnavailableError)


def is_user_error(err: BaseException) -> bool:
    return isinstance(err, user_error_types())


def log_unexpected(err: BaseException, where: str) -> bool:
    """Log ``err`` with its traceback unless it is a user error; True if it was logged."""
    if is_user_error(err):
        return False
    logging.getLogger(LOGGER).error("%s: unexpected %s: %s", where, type(err).__name__, err,
                                    exc_info=(type(err), err, err.__traceback__))
    return True
