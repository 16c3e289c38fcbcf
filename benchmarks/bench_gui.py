"""GUI-thread time of one live-mode click after the frame's embedding exists.

Run under an X server:  ``xvfb-run -a python benchmarks/bench_gui.py [--size 512] [--clicks 30]``

For each click the timer covers everything napari runs synchronously on the GUI thread after
``Points.add``: our data-event handler (prompt collection, decoder, label rendering, the undoable
``data_setitem`` write and the layer's partial refresh). The baselines, timed in the same run on
the same frame: the decoder alone (``Predictor.predict_objects``, one point, multimask) and the
stock ``segment_anything.SamPredictor.predict`` path on the same embedding.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

REF = Path(os.environ.get("NAPARI_MOBILESAM_REFERENCE", Path(__file__).resolve().parents[2] / "shared" / "reference"))


def stats(ms: list[float]) -> str:
    a = np.asarray(ms)
    return f"median {np.median(a):6.1f} ms   p90 {np.percentile(a, 90):6.1f} ms   max {a.max():6.1f} ms  (n={len(a)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=512, help="image side in pixels")
    ap.add_argument("--clicks", type=int, default=30)
    ap.add_argument("--checkpoint", default=str(REF / "mobile_sam_random.pt"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    args = ap.parse_args()

    import napari
    import torch
    from qtpy.QtWidgets import QApplication
    from segment_anything import SamPredictor
    from skimage import data, transform

    from napari_mobilesam import Predictor, Prompt, build_mobilesam
    from napari_mobilesam.gui.widget import CHOOSE_FILE, MobileSAMWidget

    if args.threads:
        torch.set_num_threads(args.threads)
    img = (transform.resize(data.cell(), (args.size, args.size), preserve_range=True)).astype(np.uint8)
    sam = build_mobilesam(args.checkpoint, device="cpu")
    viewer = napari.Viewer(show=True)
    layer = viewer.add_image(img, name="cell")
    w = MobileSAMWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.model_box.value = CHOOSE_FILE
    w.model_file.value = args.checkpoint
    w.device_box.value = "cpu"
    w.set_model(sam, (args.checkpoint, "cpu"))
    app = QApplication.instance()
    w.live.value = True  # embedding in the background
    t0 = time.perf_counter()
    while w.busy:
        app.processEvents()
        time.sleep(0.01)
    print(f"image {img.shape}, torch threads {torch.get_num_threads()}; embedding (worker thread) {time.perf_counter() - t0:.2f} s")

    rng = np.random.default_rng(0)
    pts = w.points_box.value
    clicks = rng.uniform(0.1 * args.size, 0.9 * args.size, size=(args.clicks + 3, 2))
    # baselines on the same frame and model, interleaved click by click so that both see the same
    # machine load (other processes share the CPU)
    pred = Predictor(sam)
    pred.set_image(img)
    stock = SamPredictor(sam)
    stock.features, stock.original_size, stock.input_size = pred.features, pred.original_size, pred.input_size
    stock.is_image_set = True
    gui_ms, dec_ms, stock_ms, floor_ms, move_ms = [], [], [], [], []
    for i, (r, c) in enumerate(clicks):
        t = time.perf_counter()
        pts.add([[r, c]])  # runs the live handler synchronously
        dt = (time.perf_counter() - t) * 1e3
        app.processEvents()
        t = time.perf_counter()
        pred.predict_objects([Prompt(points=[[r, c]])], multimask_output=True)
        dd = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        with torch.inference_mode():
            stock.predict(np.array([[c, r]]), np.array([1]), multimask_output=True)
        ds = (time.perf_counter() - t) * 1e3
        if i >= 3:  # warm-up
            gui_ms.append(dt)
            dec_ms.append(dd)
            stock_ms.append(ds)
    for i in range(min(10, len(pts.data))):  # move one point: its own mask is replaced
        t = time.perf_counter()
        pts.data = pts.data + np.array([[2.0, 2.0]]) * (np.arange(len(pts.data)) == i)[:, None]
        move_ms.append((time.perf_counter() - t) * 1e3)
        app.processEvents()
    labels = w.labels_box.value
    assert len(np.unique(labels.data)) > 1, "no labels written"
    w.live.value = False  # napari's own cost of adding a point (our bookkeeping only, no decoding)
    for r, c in clicks[3:]:
        t = time.perf_counter()
        pts.add([[r, c]])
        floor_ms.append((time.perf_counter() - t) * 1e3)
        app.processEvents()

    print(f"live click, GUI thread (handler + decode + undoable write): {stats(gui_ms)}")
    print(f"move all points (CHANGED, one object re-decoded):           {stats(move_ms)}")
    print(f"Points.add with live mode off (napari + bookkeeping):       {stats(floor_ms)}")
    print(f"decoder alone (predict_objects, 1 point, multimask):        {stats(dec_ms)}")
    print(f"stock SamPredictor.predict (same embedding):                {stats(stock_ms)}")
    print(f"live click minus decoder minus napari floor (our overhead): {np.median(gui_ms) - np.median(dec_ms) - np.median(floor_ms):.1f} ms")
    ratio = np.asarray(gui_ms) / np.asarray(dec_ms)
    print(f"click / decoder alone, per click pair: median {np.median(ratio):.2f}x; "
          f"click / stock predict: {np.median(np.asarray(gui_ms) / np.asarray(stock_ms)):.2f}x")
    viewer.close()


if __name__ == "__main__":
    main()
