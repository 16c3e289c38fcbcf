"""Make docs/stacks_3d.png and docs/stacks_tracks.png: a 1280×720 napari window with the widget's
*Segment everything* and **link frames** run on a synthetic z-stack (3D view of the linked labels)
and on a synthetic time-lapse with a division (the linked labels plus napari's Tracks layer).

Run under an X server:  ``xvfb-run -a python docs/stacks_screenshots.py``

The model is the project's functional test model (``napari_mobilesam.testing.synthetic_checkpoint()``,
trained on synthetic cells only), opened the way a user does (Plugins → MobileSAM, choose file…).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _wait(app, w, limit: float = 900) -> None:
    t0 = time.time()
    while w.busy and time.time() - t0 < limit:
        app.processEvents()
        time.sleep(0.05)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)


def _run(stack: np.ndarray, axis: str, link: str, out: Path, ndisplay: int) -> str:
    import napari
    from qtpy.QtWidgets import QApplication
    from skimage.io import imsave

    from napari_mobilesam.gui.widget import CHOOSE_FILE
    from napari_mobilesam.testing import synthetic_checkpoint

    viewer = napari.Viewer(show=True, title="MobileSAM")
    viewer.window._qt_window.resize(1280, 720)
    viewer.add_image(stack, name="nuclei" if link == "3d" else "movie", axis_labels=(axis, "y", "x"),
                     contrast_limits=(0, 255))
    _, w = viewer.window.add_plugin_dock_widget("napari-mobilesam", "MobileSAM")
    app = QApplication.instance()
    w.model_box.value = CHOOSE_FILE
    w.model_file.value = str(synthetic_checkpoint())
    w.device_box.value = "cpu"
    ev = w.everything
    ev.sampler.value = "blobs"
    ev.diameter.value = 30
    ev.all_frames.value = True
    ev.link.value = link
    ev.run()
    _wait(app, w)
    labels = w.labels_layer(create=False)
    if ndisplay == 3:
        viewer.layers["nuclei"].visible = False
        viewer.dims.ndisplay = 3
        viewer.camera.angles = (-20, 35, 140)
        viewer.camera.zoom = 1.6
        if labels is not None:
            labels.opacity = 1.0
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    img = viewer.screenshot(canvas_only=False, flash=False)
    imsave(out, img)
    status = str(w.status.value)
    ids = 0 if labels is None else len(np.unique(labels.data)) - 1
    viewer.close()
    return f"saved {out} {img.shape}: {ids} ids; status: {status}"


def main() -> None:
    from napari_mobilesam.testing.stacks import synthetic_timelapse, synthetic_volume

    vol, _ = synthetic_volume(12, (256, 256), 10, seed=5, radius=(10, 22))
    print(_run(vol, "z", "3d", HERE / "stacks_3d.png", ndisplay=3))
    mov, _, _ = synthetic_timelapse(8, (256, 256), 10, seed=5, divide_at=3)
    print(_run(mov, "t", "time", HERE / "stacks_tracks.png", ndisplay=2))


if __name__ == "__main__":
    main()
