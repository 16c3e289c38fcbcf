"""Make docs/screenshot.png: a 1280×720 napari window (a laptop screen) with the synthetic
time-lapse sample, clicks on cells, one box, the resulting labels and the docked widget.

Run under an X server:  ``xvfb-run -a python docs/screenshot.py [--checkpoint mobile_sam]``

It opens the plugin the way a user does (File → Open Sample, Plugins → MobileSAM), so it also
checks the npe2 manifest. ``--checkpoint`` takes a registry name or a file; by default the
functional test checkpoint trained on synthetic cells (``napari_mobilesam.testing``), else the
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
    """(checkpoint, gives meaningful masks)."""
    from napari_mobilesam.model.weights import WeightsUnavailableError, resolve_weights

    if requested:
        return requested, True
    try:
        from napari_mobilesam.testing import synthetic_checkpoint

        return str(synthetic_checkpoint()), True
    except (ImportError, OSError, ValueError, RuntimeError):
        pass
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
    viewer.window._qt_window.resize(1280, 720)
    viewer.open_sample("napari-mobilesam", "synthetic_cells")
    _, w = viewer.window.add_plugin_dock_widget("napari-mobilesam", "MobileSAM")
    app = QApplication.instance()
    if Path(ckpt).is_file():
        w.model_box.value = CHOOSE_FILE
        w.model_file.value = ckpt
    else:
        w.model_box.value = ckpt
    w.device_box.value = "auto"
    # four cells of frame 0 clicked at their centres, a fifth boxed
    from scipy import ndimage

    from napari_mobilesam.testing.synthetic import synthetic_stack

    viewer.dims.set_current_step(0, 0)
    _, truth = synthetic_stack(n_frames=8, shape=(256, 256), seed=0)
    inner = np.zeros_like(truth[0], bool)
    inner[12:-12, 12:-12] = True  # cells wholly inside the frame, largest first
    ids = [i for i in np.unique(truth[0]) if i and not (truth[0] == i)[~inner].any()]
    ids = sorted(ids, key=lambda i: -(truth[0] == i).sum())[:5]
    centres = [ndimage.center_of_mass(truth[0] == i) for i in ids]
    pts = w.points_box.value
    pts.add([[0.0, r, c] for r, c in centres[:4]])
    if len(centres) > 4:
        rows, cols = np.nonzero(truth[0] == ids[4])
        r0, c0, r1, c1 = rows.min() - 3, cols.min() - 3, rows.max() + 3, cols.max() + 3
        w.shapes_box.value.add_rectangles(np.array([[0, r0, c0], [0, r0, c1], [0, r1, c1], [0, r1, c0]], float))
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
    if not real:  # say so on the picture itself
        viewer.text_overlay.text = "random-valued test weights: the masks are not meaningful"
        viewer.text_overlay.visible = True
        for _ in range(5):
            app.processEvents()
    img = viewer.screenshot(canvas_only=False, flash=False)
    imsave(args.out, img)
    print(f"saved {args.out} {img.shape} (checkpoint {ckpt}, real weights: {real}); status: {w.status.value}")
    viewer.close()


if __name__ == "__main__":
    main()
