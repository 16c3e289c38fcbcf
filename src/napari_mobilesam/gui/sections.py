"""What a section of the dock widget is, and the public context every section works through.

The widget (:class:`~.widget.MobileSAMWidget`) lays out its sections from one list, in order, and
binds each section's :class:`Action` (a viewer key and the job button it presses) from the same
list, so the key hint, the keys and the buttons disabled while a job runs cannot disagree. A section
sees the widget only as a :class:`Context`: its state (:class:`~.state.WidgetState`) and a few public
methods; no section reads another part's private attributes (tests/test_state.py checks every gui
module for that).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from magicgui.widgets import CheckBox, ComboBox, PushButton
    from napari.layers import Image, Labels
    from qtpy.QtWidgets import QWidget

    from ..engine.prompts import ObjectPrompt
    from . import layers as L
    from .layout import StatusLine
    from .state import WidgetState

__all__ = ["Action", "Context", "Section", "key_hint"]

CANCEL_KEY = ("Escape", "Cancel")
LAYER_KEYS = "T / Shift+T (points layer) positive/negative"


@dataclass(frozen=True)
class Action:
    """A job a section starts: its viewer-wide ``key`` (napari spelling, e.g. ``"Shift-S"``), its
    ``name`` (in the key hint and the status line), the ``button`` that starts it (disabled while any
    job runs) and ``run``, what the button and the key call."""

    key: str
    name: str
    button: PushButton
    run: Callable[..., None]


class Section(Protocol):
    """A part of the dock: a Qt ``box`` laid out in the widget's list and the ``actions`` it offers."""

    @property
    def box(self) -> QWidget: ...
    @property
    def actions(self) -> tuple[Action, ...]: ...

    def on_image(self, image: Image | None) -> None:
        """The chosen image changed (None: none)."""


def key_hint(actions: tuple[Action, ...]) -> str:
    """The dock's key line, from the sections' actions (a key is written as napari shows it)."""
    keys = [(a.key.replace("-", "+"), a.name) for a in actions if a.key] + [("Esc", CANCEL_KEY[1])]
    return "Keys: " + " · ".join(f"{k} {name}" for k, name in keys) + f" · {LAYER_KEYS}"


class Context(Protocol):
    """What sections may use of the widget (all public)."""

    state: WidgetState
    viewer: Any
    status: StatusLine
    image_box: ComboBox
    labels_box: ComboBox
    overwrite: CheckBox
    all_frames: CheckBox

    @property
    def busy(self) -> bool: ...
    @property
    def points_layer(self) -> Any: ...
    @property
    def shapes_layer(self) -> Any: ...
    @property
    def issued(self) -> int: ...

    def context(self) -> tuple[Image, L.FrameGeometry, tuple[int, ...]]: ...
    def objects(self, frames: Any = None) -> list[ObjectPrompt]: ...
    def run_job(self, gen: Generator[Any, Any, Any], on_msg: Callable | None = None, on_finish: Callable | None = None, title: str = "") -> Any: ...
    def write_objects(self, frame: Any, objects: list[ObjectPrompt], masks: Any, also_clear: Any = ()) -> list: ...
    def frame_reader(self, image: Image) -> tuple[Callable, Callable, dict]: ...
    def model_step(self) -> object: ...
    def labels_layer(self, create: bool = True) -> Labels | None: ...
    def guard(self, fn: Callable) -> object: ...
    def end_status(self, text: str) -> None: ...
    def show_progress(self, done: int, total: int, message: str) -> None: ...
    def report_error(self, err: Exception) -> None: ...
    def next_id(self) -> int: ...
    def release(self, label_id: int) -> None: ...
    def unlink_store(self, _: Any = None) -> None: ...
    def reset_choices(self, _: Any = None) -> None: ...
    def image_box_value(self) -> Image | None: ...
    def outside_note(self) -> str: ...
