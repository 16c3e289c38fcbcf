"""Qt layout of the dock widget: groups, collapsible sections, the status line, the scroll area.

The widget must fit a laptop screen (1280×720) next to napari's own docks without eating the
canvas: everything sits in a scroll area, the default width leaves the canvas at least 55% of
the window, controls shrink to a short minimum (long layer names are elided), and the status
line wraps and is elided to a few lines (the full text is its tooltip), so no message can widen
or heighten the dock.
"""

from __future__ import annotations

from magicgui.widgets import ComboBox, Container, FileEdit, Widget
from qtpy.QtCore import QSize, Qt
from qtpy.QtGui import QFontMetrics
from qtpy.QtWidgets import (
    QComboBox,
    QDockWidget,
    QFrame,
    QGroupBox,
    QLabel,
    QScrollArea,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

__all__ = ["ElidedLabel", "Section", "StatusLine", "compact", "default_width", "group", "scrolled"]

WIDTH = (230, 380)  # default dock width bounds (px); the user can drag it wider or narrower
CANVAS_SHARE = 0.55  # the default width leaves at least this share of the window to the canvas


class ElidedLabel(QLabel):
    """A word-wrapped label of at most ``lines`` lines: longer text ends in "…", the full text is
    the tooltip. Its height is fixed, so a new message never moves the controls below it."""

    def __init__(self, text: str = "", lines: int = 3) -> None:
        super().__init__()
        self._full, self._lines = "", lines
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.set_full_text(text)

    def _height(self) -> int:
        m = self.contentsMargins()
        return QFontMetrics(self.font()).lineSpacing() * self._lines + m.top() + m.bottom() + 2

    def full_text(self) -> str:
        return self._full

    def set_full_text(self, text: str) -> None:
        self._full = str(text)
        self._fit()

    def _fit(self) -> None:
        fm, width, text = QFontMetrics(self.font()), max(self.contentsRect().width(), 40), self._full
        limit = fm.lineSpacing() * self._lines

        def fits(t: str) -> bool:
            return fm.boundingRect(0, 0, width, 10 * limit, int(Qt.TextFlag.TextWordWrap), t).height() <= limit

        if not fits(text):
            lo, hi = 0, len(text)  # longest prefix that fits with the ellipsis
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if fits(text[:mid].rstrip() + "…") else (lo, mid - 1)
            text = text[:lo].rstrip() + "…"
        super().setText(text)
        self.setToolTip(self._full if text != self._full else "")

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt)
        super().resizeEvent(event)
        self._fit()

    def hasHeightForWidth(self) -> bool:  # noqa: N802 (Qt): the height is fixed, not the text's
        return False

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt): any width, its fixed height
        return QSize(40, self._height())

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt)
        return QSize(200, self._height())


class StatusLine:
    """The widget's status line; ``value`` is the full text (the label shows it elided)."""

    def __init__(self, text: str = "Ready.", lines: int = 3) -> None:
        self.native = ElidedLabel(text, lines)

    @property
    def value(self) -> str:
        return self.native.full_text()

    @value.setter
    def value(self, text: str) -> None:
        self.native.set_full_text(text)


def compact(*widgets: Widget) -> None:
    """Let controls shrink: combo boxes elide long layer names, file fields get a short button."""
    for w in widgets:
        if isinstance(w, ComboBox):
            w.native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            w.native.setMinimumContentsLength(4)
        elif isinstance(w, FileEdit):
            w.choose_btn.text = "…"
            w.choose_btn.tooltip = "Choose in a file dialog"
            w.line_edit.native.setMinimumWidth(40)


def _box(title: str, *widgets, note: str = "") -> tuple[QWidget, QVBoxLayout, Container]:
    compact(*widgets)
    box = QGroupBox(title)
    lay = QVBoxLayout(box)
    lay.setContentsMargins(1, 2, 1, 2)
    if note:  # full-width hint above the controls
        hint = QLabel(note)
        hint.setWordWrap(True)
        lay.addWidget(hint)
    inner = Container(widgets=list(widgets), labels=True)
    inner.margins = (0, 0, 0, 0)
    return box, lay, inner


def group(title: str, *widgets: Widget, note: str = "") -> tuple[QGroupBox, Container]:
    """A titled group of labelled controls (``note``: a wrapped hint above them)."""
    box, lay, inner = _box(title, *widgets, note=note)
    lay.addWidget(inner.native)
    return box, inner


class Section:
    """A group whose contents collapse under a header button ("▸ title" / "▾ title")."""

    def __init__(self, title: str, *widgets: Widget, expanded: bool = False) -> None:
        self.box, lay, self.inner = _box("", *widgets)
        self.header = QToolButton()
        self.header.setText(title)
        self.header.setCheckable(True)
        self.header.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.header.setStyleSheet("QToolButton { border: none; font-weight: bold; }")
        self.header.toggled.connect(self.set_expanded)
        lay.addWidget(self.header)
        lay.addWidget(self.inner.native)
        self.set_expanded(expanded)

    @property
    def expanded(self) -> bool:
        return self.header.isChecked()

    def set_expanded(self, on: bool) -> None:
        if self.header.isChecked() != bool(on):
            self.header.setChecked(bool(on))  # calls back here
            return
        self.header.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        self.inner.native.setVisible(bool(on))


def scrolled(content: QWidget) -> QScrollArea:
    """``content`` in a frameless scroll area that scrolls vertically when the window is short
    (horizontally only when the user drags the dock narrower than the controls)."""
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
    area.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
    area.setWidget(content)
    return area


def default_width(widget: QWidget) -> int:
    """The dock's default width: within ``WIDTH``, and leaving the canvas ``CANVAS_SHARE`` of the
    main window next to the other docks (napari's layer list and controls take about 320 px)."""
    win = widget.window()
    if win is widget or win is None:
        return WIDTH[1]
    areas: dict = {}
    for dock in win.findChildren(QDockWidget):
        if dock.isVisible() and not dock.isFloating() and not dock.isAncestorOf(widget):
            area = win.dockWidgetArea(dock) if hasattr(win, "dockWidgetArea") else None
            if area in (Qt.DockWidgetArea.LeftDockWidgetArea, Qt.DockWidgetArea.RightDockWidgetArea):
                areas[area] = max(areas.get(area, 0), dock.width())
    spare = int(win.width() * (1 - CANVAS_SHARE)) - sum(areas.values()) - 30  # 30: splitters, margins
    return max(WIDTH[0], min(WIDTH[1], spare))
