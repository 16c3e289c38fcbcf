"""First use as a user does it, each in a fresh Python process.

- napari is started first, then *Plugins → MobileSAM* opens the widget (``add_plugin_dock_widget``),
  then the Cell sample is opened, one click is made and *Segment* runs with the test checkpoint. This
  is the import order that segfaulted on Mesa (triton's LLVM loaded after napari's OpenGL context);
  the pytest process itself has long imported torch, so only a fresh process can show it.
- The ``mobilesam`` commands, without ``--workers``/``--scheduler``, import no napari, Qt, magicgui
  or dask.distributed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile

GUI_SCRIPT = r"""
import json, sys, time
import napari
from qtpy.QtWidgets import QApplication

viewer = napari.Viewer()                      # napari first: its OpenGL context exists from here on
viewer.window._qt_window.resize(1280, 720)
QApplication.processEvents()
assert "torch" not in sys.modules, "napari itself imported torch"
dock, w = viewer.window.add_plugin_dock_widget("napari-mobilesam")   # Plugins > MobileSAM
QApplication.processEvents()
layer = viewer.open_sample("napari-mobilesam", "cell")[0]
QApplication.processEvents()
w.image_box.value = layer
w.model_box.value = "choose file…"
w.model_file.value = sys.argv[1]
w.device_box.value = "cpu"
w.points_box.value.add([[330.0, 275.0]])      # one click in the middle of the cell
w.segment()
t0 = time.time()
while w.busy and time.time() - t0 < 600:
    QApplication.processEvents()
    time.sleep(0.02)
labels = w.labels_box.value
print(json.dumps({
    "busy": w.busy,
    "triton": sys.modules.get("triton", "absent") is None,
    "torch": "torch" in sys.modules,
    "labels": None if labels is None else sorted(int(i) for i in set(labels.data.ravel().tolist())),
    "shape": None if labels is None else list(labels.data.shape),
}))
viewer.close()
"""


def _run(code: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "NAPARI_MOBILESAM_ALLOW_TRITON"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.gui
@pytest.mark.slow
def test_widget_from_the_menu_of_a_running_napari(checkpoint):
    pytest.importorskip("napari")
    if not os.environ.get("DISPLAY"):
        pytest.skip("needs an X server (run the tests under xvfb-run)")
    proc = _run(GUI_SCRIPT, str(checkpoint))
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["torch"] and not result["busy"]
    assert result["shape"] == [660, 550]  # the Cell sample, 2D labels
    assert result["labels"] is not None and result["labels"][-1] == 1  # one click -> object 1


HEADLESS_SCRIPT = r"""
import json, sys
from napari_mobilesam.cli import main
weights, image, points, out = sys.argv[1:5]
codes = [
    main(["embed", image, "-o", out + "/emb.zarr", "--weights", weights, "--device", "cpu", "-q"]),
    main(["segment", image, "--points", points, "-o", out + "/seg.tif", "--weights", weights, "--device", "cpu", "-q"]),
    main(["everything", image, "-o", out + "/all.tif", "--sampler", "blobs", "--diameter", "12", "--max-det", "2",
          "--weights", weights, "--device", "cpu", "-q"]),
]
heavy = [m for m in ("napari", "qtpy", "PyQt5", "PyQt6", "PySide6", "magicgui", "vispy", "distributed") if m in sys.modules]
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


@pytest.mark.slow
def test_cli_commands_import_no_gui_and_no_distributed(checkpoint, tmp_path):
    img = np.zeros((48, 64), np.uint8)
    img[10:30, 20:40] = 200
    tifffile.imwrite(tmp_path / "img.tif", img)
    (tmp_path / "points.csv").write_text("index,axis-0,axis-1\n0,20,30\n")
    proc = _run(HEADLESS_SCRIPT, str(checkpoint), str(tmp_path / "img.tif"), str(tmp_path / "points.csv"), str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["codes"] == [0, 0, 0]
    assert result["heavy"] == []
    # a 2D image gives 2D labels
    assert tifffile.imread(tmp_path / "seg.tif").shape == (48, 64)


def test_help_imports_no_torch():
    code = textwrap.dedent(
        """
        import contextlib, io, json, sys
        from napari_mobilesam.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            for cmd in ([], ["segment", "--help"], ["everything", "--help"], ["embed", "--help"]):
                try:
                    main(cmd)
                except SystemExit:
                    pass
        print(json.dumps([m for m in ("torch", "napari", "qtpy", "distributed", "magicgui") if m in sys.modules]))
        """
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_a_2d_image_gives_2d_labels_in_every_format(tmp_path, suffix):
    import zarr

    from napari_mobilesam.engine.io import LabelWriter

    writer = LabelWriter(tmp_path / f"out{suffix}", (), (12, 16), {"run": 1})
    labels = np.zeros((12, 16), np.uint32)
    labels[2:5, 3:9] = 1
    writer.write(0, labels)
    path = writer.finish()
    got = np.asarray(zarr.open_group(path, mode="r")["labels"]) if suffix == ".zarr" else tifffile.imread(path)
    assert got.shape == (12, 16)
    np.testing.assert_array_equal(got, labels)
