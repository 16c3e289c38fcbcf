"""What the widget tells the user: status lines and error notifications (text only, no layout).

Every action ends with one short status line. Errors become one short sentence that names the
fix in napari's notification; the technical details (URLs, exception text, traceback) sit behind
the notification's *View Traceback* button. Errors that are bugs rather than bad input are also
logged with their traceback (``_errors.py``: the rule the CLI follows too).
"""

from __future__ import annotations

from collections.abc import Sequence

from napari.utils.notifications import ErrorNotification, notification_manager

from .._errors import is_user_error
from ..model.weights import WeightsUnavailableError, env_var_for

__all__ = [
    "UserError", "cancelled", "error_notification", "held_note", "ids_note", "notify", "object_line", "objects_summary", "px", "short_error",
]

SHORT = 240  # characters of an error's first sentence shown in the notification and status line


def px(n: int) -> str:
    """``1234`` -> ``"1,234 px"``."""
    return f"{int(n):,} px"


def object_line(label_id: int, written: int, area: int, kept: str = "") -> str:
    """One object's result: its pixels in the layer, or why there are none; ``kept``: the mask
    chosen (e.g. "mask 1") came out empty, so the object's pixels were kept as they were."""
    if kept:
        return f"{kept} is empty for object {label_id}; kept its {px(written)} as they were (pick another mask)"
    if written > 0:
        return f"object {label_id}: {px(written)}"
    if area == 0:
        return f"object {label_id}: nothing written — the model found no mask there"
    return f"object {label_id}: nothing written — the mask lies on existing labels (tick 'overwrite' to cover them)"


def objects_summary(counts: Sequence[tuple[int, int, int]], limit: int = 3) -> str:
    """``[(label id, pixels written, mask area)]`` -> ``"object 4: 1,234 px; object 5: …"``
    (the first ``limit`` objects, then how many more)."""
    parts = [object_line(*c) for c in counts[:limit]]
    if len(counts) > limit:
        empty = sum(1 for c in counts[limit:] if c[1] == 0)
        parts.append(f"{len(counts) - limit} more" + (f" ({empty} with nothing written)" if empty else ""))
    return "; ".join(parts)


def ids_note(first_id: int, layer_top: int, layer_name: str) -> str:
    """Why new ids start where they do, when the chosen layer already has labels."""
    if layer_top <= 0 or first_id != layer_top + 1:
        return ""
    return f"new ids start at {first_id}, after the largest label in '{layer_name}'"


def cancelled(done: int, total: int, unit: str = "frame") -> str:
    """``"cancelled: 1 of 5 frames written"``."""
    return f"cancelled: {done} of {total} {unit}{'' if total == 1 else 's'} written"


class UserError(Exception):
    """An error as the user sees it: ``message`` is one short sentence (shown in the notification),
    ``str()`` the full technical text (behind *View Traceback*, with the original as its cause)."""

    def __init__(self, message: str, details: str) -> None:
        super().__init__(details)
        self.message = message


def short_error(err: BaseException) -> str:
    """One short sentence that names the fix, for the notification and the status line."""
    if isinstance(err, WeightsUnavailableError):
        name = str(err).split("'")[1] if str(err).count("'") >= 2 else "model"
        return (f"Could not download the {name!r} weights (offline?): pick a downloaded .pt file under "
                f"model → 'choose file…', or set {env_var_for(name)}. Details: View Traceback.")
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if not is_user_error(err) and not isinstance(err, RuntimeError):  # (RuntimeError: also device checks)
        first = f"Internal error, please report it (the log has the traceback): {type(err).__name__}: {first}"
    if len(first) > SHORT:
        first = first[: SHORT - 1].rsplit(" ", 1)[0] + "… (details: View Traceback)"
    return first


def notify(notification) -> None:
    """Hand a notification to napari (tests replace this to read what the user would see)."""
    notification_manager.dispatch(notification)


def error_notification(err: BaseException) -> ErrorNotification:
    """napari's error notification: the short sentence, and ``err`` behind *View Traceback*."""
    wrapped = UserError(f"MobileSAM: {short_error(err)}", str(err))
    wrapped.__cause__ = err
    wrapped.__traceback__ = err.__traceback__
    return ErrorNotification(wrapped)


def held_note(held) -> str:
    """Objects whose prompt changed but whose label was edited by hand (kept: the user's)."""
    ids = ", ".join(str(o.label_id) for o in held[:5]) + (" …" if len(held) > 5 else "")
    one = len(held) == 1
    return f"kept object{'' if one else 's'} {ids}: edited by hand (tick 'overwrite labels' to redo {'it' if one else 'them'})"
