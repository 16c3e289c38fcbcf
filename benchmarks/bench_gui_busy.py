"""Live clicks while a long job runs: how long until each click's mask is in the Labels layer.

Run under an X server:  ``xvfb-run -a python benchmarks/bench_gui_busy.py [--frames 8] [--clicks 8]``

*Segment everything* (blobs) works through a stack of ``--frames`` 1024² frames on the model
thread; meanwhile a click on the embedded frame 0 every ~0.7 s. Each click's mask is decoded
between two steps of the job (the job's steps are an embedding or a batch of 8 box decodes), so
its latency is about the rest of the current step plus one decode. Baseline in the same run: the
same clicks with no job running.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--clicks", type=int, default=8)
    ap.add_argument("--checkpoint", default=None, help="default: the seeded random test checkpoint")
    args = ap.parse_args()
    if args.checkpoint is None:
        from napari_mobilesam.testing.reference import random_checkpoint

        args.checkpoint = str(random_checkpoint())

    import napari
    from qtpy.QtWidgets import QApplication
    from skimage import data, transform

    from napari_mobilesam import build_mobilesam
    from napari_mobilesam.gui.widget import CHOOSE_FILE, MobileSAMWidget

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_everything import cells

    frame0 = transform.resize(data.cell(), (1024, 1024), preserve_range=True).astype(np.uint16) * 40
    stack = np.stack([frame0] + [cells(1024, seed=s) for s in range(1, args.frames)])
    viewer = napari.Viewer(show=True)
    viewer.add_image(stack, name="stack")
    w = MobileSAMWidget(viewer)
    viewer.window.add_dock_widget(w)
    sam = w.model_thread.call(lambda: build_mobilesam(args.checkpoint, device="cpu"))
    w.model_box.value, w.model_file.value, w.device_box.value = CHOOSE_FILE, args.checkpoint, "cpu"
    w.set_model(sam, (args.checkpoint, "cpu"))
    app = QApplication.instance()

    def wait(cond, limit=600.0):
        t0 = time.perf_counter()
        while not cond() and time.perf_counter() - t0 < limit:
            app.processEvents()
            time.sleep(0.002)

    viewer.dims.set_current_step(0, 0)
    w.live.value = True
    wait(lambda: not w.busy)
    pts = w.points_box.value
    rng = np.random.default_rng(0)

    def clicks(n: int, during_job: bool) -> list[float]:
        out = []
        for r, c in rng.uniform(100, 900, size=(n, 2)):
            t = time.perf_counter()
            while time.perf_counter() - t < 0.7:  # a user's pace
                app.processEvents()
                time.sleep(0.005)
            if during_job and not w.busy:
                break
            before = len(w._signatures)
            t0 = time.perf_counter()
            pts.add([[0, r, c]])
            wait(lambda: len(w._signatures) > before)
            out.append((time.perf_counter() - t0) * 1e3)
        return out

    idle = clicks(args.clicks, during_job=False)
    w.everything.sampler.value = "blobs"
    w.everything.all_frames.value = True
    w.everything.run()
    busy = clicks(args.clicks, during_job=True)
    still_busy = w.busy
    wait(lambda: not w.busy)
    print(f"stack {stack.shape}; job still running after the clicks: {still_busy}")
    for name, ms in (("no job running", idle), ("during Segment everything", busy)):
        a = np.asarray(ms)
        print(f"click -> mask in the layer, {name:26s} median {np.median(a):7.0f} ms   max {a.max():7.0f} ms  (n={len(a)})")
    viewer.close()


if __name__ == "__main__":
    main()
