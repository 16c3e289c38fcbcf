"""Make docs/screenshot.png: the sample image, prompts, result labels and the docked widget.

Run under an X server:  ``xvfb-run -a python docs/screenshot.py [--checkpoint mobile_sam]``

It opens the plugin the way a user does (File → Open Sample, Plugins → MobileSAM), so it also
checks the npe2 manifest. ``--checkpoint`` takes a registry name or a file; by default the
official weights when they can be found, else the repository's random-valued test checkpoint
(then the masks are not meaningful and the title says so).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REF = Path(os.environ.get("NAPARI_MOBILESAM_REFERENCE", HERE.parents[1] / "shared" / "reference"))


def pick_checkpoint(requested: str | None) -> tuple[str, bool]:
    """(checkpoint, is_real_weights)."""
    from napari_mobilesam.model.weights import WeightsUnavailableError, resolve_weights

    if requested:
        return requested, True
    try:
        return str(resolve_weights("mobile_sam")), True
    except (WeightsUnavailableError, OSError, ValueError):
        return str(REF / "mobile_sam_random.pt"), False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--out", default=str(HERE / "screenshot.png"))
    args = ap.parse_args()

    import napari
    from qtpy.QtWidgets import QApplication
    from skimage.io import imsave

    from napari_mobilesam.gui.widget import CHOOSE_FILE

    ckpt, real = pick_checkpoint(args.checkpoint)
    viewer = napari.Viewer(show=True, title="MobileSAM" + ("" if real else " — random test weights: masks are not meaningful"))
    viewer.window._qt_window.resize(1500, 950)
    viewer.open_sample("napari-mobilesam", "cell")
    _, w = viewer.window.add_plugin_dock_widget("napari-mobilesam", "MobileSAM")
    app = QApplication.instance()
    if Path(ckpt).is_file():
        w.model_box.value = CHOOSE_FILE
        w.model_file.value = ckpt
    else:
        w.model_box.value = ckpt
    w.device_box.value = "auto"
    # two cells clicked (one refined by a negative click) and one drawn rectangle
    pts = w.points_box.value
    pts.add([[200.0, 190.0], [420.0, 300.0]])
    w.mode.value = "negative"
    pts.add([[215.0, 240.0]])
    w.mode.value = "positive"
    w.shapes_box.value.add_rectangles(np.array([[470.0, 60.0], [600.0, 200.0]]))
    w.segment()
    t0 = time.time()
    while w.busy and time.time() - t0 < 600:
        app.processEvents()
        time.sleep(0.05)
    viewer.layers.selection.active = pts
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):  # e.g. the PyQt5 notice
        toast.close()
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    img = viewer.screenshot(canvas_only=False, flash=False)
    imsave(args.out, img)
    print(f"saved {args.out} {img.shape} (checkpoint {ckpt}, real weights: {real}); status: {w.status.value}")
    viewer.close()


if __name__ == "__main__":
    main()
