"""Errors the user can fix: one hierarchy for the engine, the ``mobilesam`` CLI and the widget.

Every error a user can fix is a :class:`UserError` whose message names what was wrong and the fix.
The CLI prints that message and exits with status 2; the widget shows it as one sentence. Any other
exception is a bug: the CLI exits with status 1 and the widget says "internal error"; both log its
traceback to the ``"napari_mobilesam"`` logger (:func:`napari_mobilesam._errors.log_unexpected`).

::

    UserError (a ValueError, so callers' ``except ValueError`` keep working)
    ├── InputError               a file the user gave is missing, unreadable or inconsistent (engine.io)
    │   ├── EmbeddingStoreMismatch, EmbeddingStoreDamaged        (engine.store)
    │   └── MissingEmbedding      a frame the store does not hold (also a KeyError)
    ├── SettingsError            an option value that cannot work (a device, a channel, a contrast window)
    │   └── DeviceUnavailable     the device asked for is not there (also a RuntimeError)
    └── CheckpointError          a weights file of another architecture, or unreadable (model.build)

``OSError`` (the user's files and disks) and :class:`~napari_mobilesam.model.weights.WeightsUnavailableError`
are the user's too. This module imports nothing of the package, so any module can import it.
"""

from __future__ import annotations

__all__ = ["DeviceUnavailable", "InputError", "MissingEmbedding", "SettingsError", "UserError"]


class UserError(ValueError):
    """Something the user can fix; the message names what was wrong and the fix (CLI exit status 2)."""


class InputError(UserError):
    """A user-supplied file is missing, unreadable or inconsistent; the message names it and the fix."""


class SettingsError(UserError):
    """An option or argument value that cannot work (the message names the valid values)."""


class MissingEmbedding(InputError, KeyError):
    """A frame has no stored embedding (a ``KeyError`` too, for lookups that expect one)."""

    __str__ = ValueError.__str__  # the message as written, not KeyError's quoted repr


class DeviceUnavailable(SettingsError, RuntimeError):
    """The device asked for (``cuda``, ``mps``) is not available here (a ``RuntimeError`` too)."""
