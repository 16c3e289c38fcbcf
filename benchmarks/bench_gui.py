"""GUI-thread time and latency of one live-mode click after the frame's embedding exists.

Run under an X server:  ``xvfb-run -a python benchmarks/bench_gui.py [--size 1024] [--clicks 20]``

Per click (the user pauses between clicks, as people do):

* GUI-thread time = ``Points.add`` (napari's own work plus our handler, which collects the prompts
  and hands them to the decode worker) + our result handler (label rendering, the undoable
  ``data_setitem`` write and the layer's refresh). The decoder runs in a worker thread.
* longest freeze: the longest gap between ticks of a 1 ms QTimer from the click until the new
  mask is drawn, i.e. the longest the viewer could not react to anything (napari's own redraws,
  which under Xvfb's software OpenGL take tens of ms on this 2-core machine, included).
* latency: click until the mask is drawn (the first timer tick after our write and its redraw).

Baselines timed in the same run, on the same frame, click by click: the decoder alone
(``Predictor.predict_objects``, one point, multimask) and the stock
``segment_anything.SamPredictor.predict`` on the same embedding (what a plugin that decodes on the
GUI thread with stock segment-anything freezes the viewer for).
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
    ap.add_argument("--size", type=int, default=1024, help="image side in pixels")
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument("--checkpoint", default=str(REF / "mobile_sam_random.pt"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    args = ap.parse_args()

    import napari
    import torch
    from qtpy.QtCore import QEventLoop, QTimer
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
    clicks = rng.uniform(0.1 * args.size, 0.9 * args.size, size=(args.clicks + 3, 2))  # 2 points each: baseline + ours
    # baselines on the same frame and model, interleaved click by click so that both see the same
    # machine load (other processes share the CPU)
    pred = Predictor(sam)
    pred.set_image(img)
    stock = SamPredictor(sam)
    stock.features, stock.original_size, stock.input_size = pred.features, pred.original_size, pred.input_size
    stock.is_image_set = True
    gui_ms, lat_ms, freeze_ms, dec_ms, stock_ms, floor_ms, move_ms = [], [], [], [], [], [], []
    handler = {"t": 0.0, "end": 0.0}
    decoded = w._decoded

    waiting = QEventLoop()

    def timed_decoded(*a, **kw):  # our GUI-thread result handler
        t = time.perf_counter()
        decoded(*a, **kw)
        handler["end"] = time.perf_counter()
        handler["t"] += handler["end"] - t
        if not w.live_pending:
            waiting.quit()

    def settle() -> None:  # sleep in Qt's event loop (no polling) until the mask is written
        if w.live_pending:
            waiting.exec_()

    w._decoded = timed_decoded
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(1)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()

    def click(r, c, threaded: bool) -> tuple[float, float, float]:
        """(GUI-thread ms, latency ms, longest freeze ms) of one live click."""
        w.live_threaded = threaded
        for _ in range(20):  # an idle pause before the click, as a user makes
            app.processEvents(QEventLoop.AllEvents, 10)
            time.sleep(0.01)
        handler["t"] = 0.0
        ticks.clear()
        t0 = time.perf_counter()
        ticks.append(t0)
        pts.add([[r, c]])  # our handler hands the prompt to the decode worker
        t1 = time.perf_counter()
        settle()
        end = handler["end"]
        QTimer.singleShot(200, waiting.quit)  # let napari repaint the new mask
        waiting.exec_()
        shown = min(t for t in ticks if t > end)  # the event loop is free again: the mask is drawn
        gaps = np.diff([t for t in ticks if t <= shown])
        gui = t1 - t0 + (handler["t"] if end > t1 else 0.0)  # an inline decode's handler ran inside add()
        return gui * 1e3, (shown - t0) * 1e3, float(gaps.max()) * 1e3

    base_gui, base_lat, base_freeze = [], [], []
    for i, (r, c) in enumerate(clicks):
        bg, blat, bfr = click(r + 3.0, c + 3.0, threaded=False)  # baseline: decoder on the GUI thread
        g, lat, fr = click(r, c, threaded=True)
        t = time.perf_counter()
        pred.predict_objects([Prompt(points=[[r, c]])], multimask_output=True)
        dd = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        with torch.inference_mode():
            stock.predict(np.array([[c, r]]), np.array([1]), multimask_output=True)
        ds = (time.perf_counter() - t) * 1e3
        if i >= 3:  # warm-up
            base_gui.append(bg)
            base_lat.append(blat)
            base_freeze.append(bfr)
            gui_ms.append(g)
            lat_ms.append(lat)
            freeze_ms.append(fr)
            dec_ms.append(dd)
            stock_ms.append(ds)
    for i in range(min(10, len(pts.data))):  # move one point: its own mask is replaced
        t = time.perf_counter()
        pts.data = pts.data + np.array([[2.0, 2.0]]) * (np.arange(len(pts.data)) == i)[:, None]
        move_ms.append((time.perf_counter() - t) * 1e3)
        settle()
    timer.stop()
    labels = w.labels_box.value
    assert len(np.unique(labels.data)) > 1, "no labels written"
    w.live.value = False  # napari's own cost of adding a point (our bookkeeping only, no decoding)
    for r, c in clicks[3:]:
        app.processEvents()
        t = time.perf_counter()
        pts.add([[r, c]])
        floor_ms.append((time.perf_counter() - t) * 1e3)

    print(f"live click, GUI-thread time (Points.add + our handlers): {stats(gui_ms)}")
    print(f"live click, longest GUI freeze until the mask is drawn:    {stats(freeze_ms)}")
    print(f"live click, latency until the mask is drawn:              {stats(lat_ms)}")
    print(f"baseline, decoder on the GUI thread: GUI-thread time     {stats(base_gui)}")
    print(f"baseline, decoder on the GUI thread: longest freeze     {stats(base_freeze)}")
    print(f"baseline, decoder on the GUI thread: latency            {stats(base_lat)}")
    print(f"move a point, GUI-thread time of the data event:         {stats(move_ms)}")
    print(f"Points.add with live mode off (napari + bookkeeping):    {stats(floor_ms)}")
    print(f"decoder alone (predict_objects, 1 point, multimask):     {stats(dec_ms)}")
    print(f"stock SamPredictor.predict (same embedding):             {stats(stock_ms)}")
    print(f"worker / GUI-thread decoding, per click pair: GUI-thread time {np.median(np.asarray(gui_ms) / np.asarray(base_gui)):.2f}x, "
          f"longest freeze {np.median(np.asarray(freeze_ms) / np.asarray(base_freeze)):.2f}x, latency {np.median(np.asarray(lat_ms) / np.asarray(base_lat)):.2f}x")
    print(f"GUI-thread time / stock predict, per click: median {np.median(np.asarray(gui_ms) / np.asarray(stock_ms)):.2f}x; "
          f"latency / stock predict: {np.median(np.asarray(lat_ms) / np.asarray(stock_ms)):.2f}x")
    viewer.close()


if __name__ == "__main__":
    main()
