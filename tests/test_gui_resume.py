"""Issue 24: hand corrections survive a session resumed as a user does it.

Each step runs in a fresh Python process, napari first, a 1280 x 720 window, the widget from the
Plugins menu, the image opened from a file: two clicks, *Segment*, erase and paint by hand, save the
session; then a NEW process opens the image, the session and the checkpoint and presses *Segment*.
Run under Xvfb: ``xvfb-run -a python -m pytest tests/test_gui_resume.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytestmark = [pytest.mark.gui, pytest.mark.slow]

PRELUDE = r"""
import json, sys, time
import numpy as np
import napari
from qtpy.QtWidgets import QApplication

def wait(w):
    t0 = time.time()
    while w.busy and time.time() - t0 < 600:
        QApplication.processEvents()
        time.sleep(0.02)
    QApplication.processEvents()

viewer = napari.Viewer()
viewer.window._qt_window.resize(1280, 720)
QApplication.processEvents()
dock, w = viewer.window.add_plugin_dock_widget("napari-mobilesam")
QApplication.processEvents()
args = json.loads(sys.argv[1])
image = viewer.open(args["image"])[0]
QApplication.processEvents()
w.image_box.value = image
w.device_box.value = "cpu"
"""

FIRST = PRELUDE + r"""
w.model_box.value = "choose file…"
w.model_file.value = args["weights"]
pts = w.points_box.value
pts.add(np.array(args["clicks"], float))
w.segment(); wait(w)
status_first = w.status.value
labels = w.labels_box.value
assert labels is not None, status_first
after_segment = np.asarray(labels.data).copy()
# by hand: erase a band of label 1, paint label 2 onto background next to it
labels.selected_label = 0
(r, c), (pr, pc) = args["erase"], args["paint"]
labels.brush_size = 5
labels.paint((r, c), 0)
labels.paint((pr, pc), 2)
edited = np.asarray(labels.data).copy()
w.segment(); wait(w)
status_live = w.status.value
viewer.layers.selection = {labels, pts, w.shapes_box.value}
saved = viewer.layers.save(args["session"], selected=True, plugin="napari-mobilesam")
np.save(args["out"] + "/edited.npy", edited)
np.save(args["out"] + "/after_segment.npy", after_segment)
np.save(args["out"] + "/live.npy", np.asarray(labels.data))
print(json.dumps({"first": status_first, "status": status_live, "saved": saved}))
viewer.close()
"""

SECOND = PRELUDE + r"""
# File > Open Folder: napari's own path (no plugin named); a "Choose reader" dialog would be a failure
import napari._qt.qt_viewer as _qv
dialogs = []
_qv.handle_gui_reading = lambda *a, **k: dialogs.append(a)
viewer.window._qt_viewer._qt_open([args["session"]], stack=False)
QApplication.processEvents()
assert not dialogs, "napari asked 'Choose reader' for the session folder"
if args.get("weights_again"):
    w.model_box.value = "choose file…"
    w.model_file.value = args["weights"]
before = np.asarray(w.labels_box.value.data).copy() if w.labels_box.value is not None else None
w.segment(); wait(w)
labels = w.labels_box.value
np.save(args["out"] + "/resumed.npy", np.asarray(labels.data))
print(json.dumps({
    "status": w.status.value,
    "picked": [getattr(b.value, "name", None) for b in (w.labels_box, w.points_box, w.shapes_box)],
    "layers": [la.name for la in viewer.layers],
    "model": w.model_box.value, "model_file": str(w.model_file.line_edit.value),
    "embedded": len(w.state.cache) if hasattr(w.state.cache, "__len__") else None,
    "same_as_opened": before is not None and bool(np.array_equal(before, np.asarray(labels.data))),
}))
viewer.close()
"""


def _run(code: str, args: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "NAPARI_MOBILESAM_ALLOW_TRITON"}
    env["NAPARI_CONFIG"] = str(Path(args["out"]) / "napari_settings.yaml")  # the user's napari settings stay untouched
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, timeout=900, env=env, check=False)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_resume_and_segment_keeps_hand_edits(fcheckpoint, tmp_path):
    if not os.environ.get("DISPLAY"):
        pytest.skip("needs an X server (run the tests under xvfb-run)")
    from napari_mobilesam.testing import synthetic_stack
    from napari_mobilesam.testing.metrics import interior_point
    from test_prompt_equality import _cells

    stack, gt = synthetic_stack(n_frames=1, seed=106)
    img, lab = stack[0], gt[0]
    tif = tmp_path / "movie.tif"
    tifffile.imwrite(tif, img, photometric="minisblack")
    a, b = _cells(lab, 2)
    clicks = [list(map(float, interior_point(lab == a))), list(map(float, interior_point(lab == b)))]
    args = {"image": str(tif), "weights": str(fcheckpoint), "clicks": clicks, "session": str(tmp_path / "work.mobilesam"),
            "out": str(tmp_path), "erase": clicks[0]}
    # paint label 2 on a background pixel next to cell b
    rr, cc = np.nonzero(lab == 0)
    d = np.hypot(rr - clicks[1][0], cc - clicks[1][1])
    k = int(np.argmin(np.where(d > 8, d, np.inf)))
    args["paint"] = [float(rr[k]), float(cc[k])]
    first = _run(FIRST, args)
    edited = np.load(tmp_path / "edited.npy")
    after = np.load(tmp_path / "after_segment.npy")
    assert (after == 1).any() and (after == 2).any(), first["first"]
    assert (after == 1).any() and (after == 2).any() and not np.array_equal(edited, after)
    assert "nothing to do" in first["status"], first["status"]
    np.testing.assert_array_equal(np.load(tmp_path / "live.npy"), edited)
    assert first["saved"] == [args["session"]]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "work.mobilesam" / "labels.tif"), edited)

    second = _run(SECOND, {**args, "weights_again": True})
    assert "nothing to do" in second["status"], second["status"]
    np.testing.assert_array_equal(np.load(tmp_path / "resumed.npy"), edited)
    print(second)


def test_resumed_session_picks_its_layers_and_its_model(fcheckpoint, tmp_path):
    """Item 5: the session's layers are picked for an image opened from a file, no extra empty prompt
    layers stay, and the model recorded in the session is the widget's model."""
    if not os.environ.get("DISPLAY"):
        pytest.skip("needs an X server (run the tests under xvfb-run)")
    from napari_mobilesam.testing import synthetic_stack
    from napari_mobilesam.testing.metrics import interior_point
    from test_prompt_equality import _cells

    stack, gt = synthetic_stack(n_frames=1, seed=106)
    tif = tmp_path / "movie.tif"
    tifffile.imwrite(tif, stack[0], photometric="minisblack")
    clicks = [list(map(float, interior_point(gt[0] == c))) for c in _cells(gt[0], 2)]
    args = {"image": str(tif), "weights": str(fcheckpoint), "clicks": clicks, "session": str(tmp_path / "work.mobilesam"),
            "out": str(tmp_path), "erase": clicks[0], "paint": clicks[1]}
    _run(FIRST, args)
    second = _run(SECOND, args)  # the model is not chosen again
    assert second["picked"] == ["movie labels", "movie points", "movie boxes"]
    assert sorted(second["layers"]) == ["movie", "movie boxes", "movie labels", "movie points"]
    assert second["model"] == "choose file…" and second["model_file"] == str(fcheckpoint)
    assert "nothing to do" in second["status"], second["status"]


def test_cli_session_uses_the_recorded_weights(fcheckpoint, tmp_path, capsys):
    """Item 5: ``mobilesam segment --session`` without --weights uses the session's weights file."""
    from napari_mobilesam import build_mobilesam
    from napari_mobilesam.cli import main
    from napari_mobilesam.engine.session import save_session
    from napari_mobilesam.engine.store import model_fingerprint

    img = np.zeros((64, 64), np.uint8)
    img[20:40, 20:40] = 200
    tifffile.imwrite(tmp_path / "img.tif", img)
    model = {"weights": str(fcheckpoint), "decoder": None, "model_hash": model_fingerprint(build_mobilesam(fcheckpoint, device="cpu"))}
    folder = save_session(tmp_path / "s.mobilesam", image={"name": "img", "shape": [64, 64]}, model=model, preprocess={},
                          points=np.array([[30.0, 30.0]]), point_features={"label": [1], "label_id": [1]})
    code = main(["segment", str(tmp_path / "img.tif"), "--session", str(folder), "-o", str(tmp_path / "out.tif"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"using the weights recorded in the session: {fcheckpoint}" in err
    assert tifffile.imread(tmp_path / "out.tif").shape == (64, 64)
