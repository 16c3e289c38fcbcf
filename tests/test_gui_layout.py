"""The dock widget on a laptop screen: a real napari window at 1280×720 (run under Xvfb).

Checked before and after the longest messages the widget shows (the offline-download error, a
prompt layer with the wrong dimensions) and while a job runs: the canvas keeps at least 55% of the
window's width, the window does not grow, and no visible control is squashed below its
``minimumSizeHint()``.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from qtpy.QtWidgets import QApplication, QScrollArea, QWidget  # noqa: E402

from napari_mobilesam.gui.widget import MobileSAMWidget  # noqa: E402

pytestmark = pytest.mark.gui

SIZE = (1280, 720)
TIMEOUT = 180_000


def settle(qtbot, ms: int = 300) -> None:
    qtbot.wait(ms)
    QApplication.processEvents()


def squashed(w: MobileSAMWidget) -> list[str]:
    """Visible controls of the widget smaller than their minimum size hint."""
    out = []
    for child in w.findChildren(QWidget):
        if not child.isVisibleTo(w) or isinstance(child, QScrollArea) or child.objectName().startswith("qt_scrollarea"):
            continue  # the scroll area's own scroll bars and viewport
        hint = child.minimumSizeHint()
        if hint.isValid() and (child.height() < hint.height() or child.width() < hint.width()):
            out.append(f"{type(child).__name__} {child.objectName() or getattr(child, 'text', lambda: '')()!r}: "
                       f"{child.width()}x{child.height()} < {hint.width()}x{hint.height()}")
    return out


def check_fits(qtbot, viewer, w: MobileSAMWidget, when: str) -> None:
    settle(qtbot)
    win = viewer.window._qt_window
    canvas = viewer.window._qt_viewer.canvas.native
    assert (win.width(), win.height()) == SIZE, f"{when}: the window grew to {win.width()}x{win.height()}"
    assert canvas.width() >= 0.55 * SIZE[0], f"{when}: canvas {canvas.width()} px of {SIZE[0]}"
    assert not squashed(w), f"{when}: {squashed(w)}"


@pytest.fixture
def laptop(make_napari_viewer, qtbot):
    """A shown viewer at 1280×720 with the widget docked the way Plugins → MobileSAM docks it."""
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(*SIZE)
    viewer.add_image(np.zeros((5, 128, 160), np.uint8), name="a time-lapse with a long name, as microscopes write them")
    _, w = viewer.window.add_plugin_dock_widget("napari-mobilesam", "MobileSAM")
    settle(qtbot)
    return viewer, w


def test_fits_1280x720_before_and_after_long_messages(qtbot, laptop, monkeypatch, tmp_path):
    from napari_mobilesam.gui import feedback
    from napari_mobilesam.model.weights import REGISTRY, WeightsSpec

    viewer, w = laptop
    seen: list = []
    monkeypatch.setattr(feedback, "notify", seen.append)
    check_fits(qtbot, viewer, w, "at start")
    assert w.width() <= 420  # bounded default width
    w.propagate.section.set_expanded(True)
    w.everything.section.set_expanded(True)
    check_fits(qtbot, viewer, w, "all sections open")  # taller than the window: it scrolls
    # the offline-download error, with its URLs and the resolver's text
    monkeypatch.setenv("NAPARI_MOBILESAM_CACHE", str(tmp_path))
    urls = tuple(f"https://unreachable.invalid/mirror{i}/mobile_sam.pt?{'x' * 80}" for i in range(3))
    monkeypatch.setitem(REGISTRY, "mobile_sam", WeightsSpec("mobile_sam", "mobile_sam.pt", urls, None, "offline"))
    w.model_box.value = "mobile_sam"
    w.points_box.value.add([[2, 40.0, 40.0]])
    w.segment()
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)
    assert seen and "Could not download" in seen[-1].message
    assert w.status.value.startswith("Error: Could not download")
    assert w.status.native.text() != w.status.value and w.status.native.text().endswith("…")  # elided ...
    assert w.status.native.toolTip() == w.status.value  # ... the full text in the tooltip
    check_fits(qtbot, viewer, w, "after the offline error")
    # a prompt layer with the wrong dimensions
    wrong = viewer.add_points(np.zeros((1, 4)), name="4D points")
    w.points_box.value = wrong
    w.segment()
    assert "dimensions" in seen[-1].message
    check_fits(qtbot, viewer, w, "after the wrong-dimensions error")


def press(viewer, key, modifier=None) -> None:
    """A key press on the canvas, as the user makes it."""
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    QTest.keyClick(canvas, key, modifier or Qt.KeyboardModifier.NoModifier)


def test_fits_while_a_job_runs_and_keys(qtbot, laptop, sam, checkpoint):
    """Shift+S starts Segment, the layout holds while the progress bar shows, Esc cancels."""
    from qtpy.QtCore import Qt

    from napari_mobilesam.gui.widget import CHOOSE_FILE

    viewer, w = laptop
    assert {str(k) for k in viewer.keymap} >= {k.replace("-", "+") for k, _ in w.keys}
    from qtpy.QtWidgets import QLabel

    assert any("Shift+S Segment" in label.text() and "Esc Cancel" in label.text() for label in w.findChildren(QLabel))
    w.model_box.value = CHOOSE_FILE
    w.model_file.value = str(checkpoint)
    w.device_box.value = "cpu"
    w.set_model(sam, (str(checkpoint), "cpu"))
    w.points_box.value.add([[t, 40.0, 40.0] for t in range(5)])
    w.all_frames.value = True
    w.live.value = False
    press(viewer, Qt.Key.Key_S, Qt.KeyboardModifier.ShiftModifier)
    assert w.busy and w.progress.visible
    check_fits(qtbot, viewer, w, "while Segment runs")
    qtbot.waitUntil(lambda: not w.busy or (w.labels_box.value is not None and w.labels_box.value.data.any()), timeout=TIMEOUT)
    press(viewer, Qt.Key.Key_Escape)
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)
    done = sum(int(w.labels_box.value.data[t].any()) for t in range(5))
    assert done < 5 and w.status.value.startswith(f"Segment cancelled: {done} of 5 frames written")
    check_fits(qtbot, viewer, w, "after Segment")


def clipped(w: MobileSAMWidget) -> list[str]:
    """Visible controls that reach past the right edge of the dock's scroll viewport, and texts cut short."""
    from qtpy.QtWidgets import QAbstractButton, QLabel

    area = next(a for a in w.findChildren(QScrollArea))
    view = area.viewport()
    out = []
    if area.horizontalScrollBar().isVisible():
        out.append("a horizontal scroll bar")
    for child in w.findChildren(QWidget):
        if not child.isVisibleTo(w) or not view.isAncestorOf(child):
            continue
        right = child.mapTo(view, child.rect().topRight()).x()
        if right > view.width():
            out.append(f"{type(child).__name__} {getattr(child, 'text', lambda: '')()!r} ends at {right} > {view.width()}")
        if isinstance(child, (QLabel, QAbstractButton)) and not (isinstance(child, QLabel) and child.wordWrap()):
            text = child.text()
            if text and child.fontMetrics().horizontalAdvance(text) > child.width() + 2 and not text.endswith("…"):
                out.append(f"{type(child).__name__} {text!r} cut to {child.width()} px")
    return out


@pytest.mark.parametrize("sampler", ["blobs", "object-aware", "grid"])
def test_every_section_open_fits_sideways(qtbot, laptop, sampler, tmp_path):
    """Issue 24 item 8: no horizontal scrolling, no control or text cut, for every sampler."""
    viewer, w = laptop
    for section in (w.propagate.section, w.everything.section, w.refine.section):
        section.set_expanded(True)
    w.everything.sampler.value = sampler
    if sampler == "object-aware":
        w.everything.detector.value = str(tmp_path / "a detector with a long name, as people name them.pt")
    settle(qtbot)
    check_fits(qtbot, viewer, w, f"all sections open, {sampler}")
    assert not clipped(w), clipped(w)
    dock = w.parentWidget()
    while dock is not None and type(dock).__name__ != "QtViewerDockWidget":
        dock = dock.parentWidget()
    if dock is not None:
        title = dock.windowTitle() or dock.name
        assert dock.fontMetrics().horizontalAdvance(title) < dock.width() - 40, f"dock title {title!r} cut at {dock.width()} px"
    if sampler == "object-aware":
        viewer.window._qt_window.grab().save(str(tmp_path.parent / f"layout_{sampler}.png"))
