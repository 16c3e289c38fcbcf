"""GUI-thread time and latency of one live-mode click after the frame's embedding exists.

Run under an X server:  ``xvfb-run -a python benchmarks/bench_gui.py [--size 1024] [--clicks 20]``

Per click (with an idle pause before each, as a user makes):

* GUI-thread time = ``Points.add`` (napari's own work plus our handler, which collects the prompts
  and hands them to the model thread) + our result handler (label rendering, the undoable
  ``data_setitem`` write and the layer's refresh).
* longest freeze: the longest gap between ticks of a 1 ms QTimer from the click until the new
  mask is drawn, i.e. the longest the viewer could not react to anything (napari's own redraws,
  which under Xvfb's software OpenGL take tens of ms on a 2-core machine, included).
* latency: click until the mask is drawn (the first timer tick after our write and its redraw).

Two designs, each in its own process (a thread that has run the model keeps an OpenMP team for the
rest of the process, which slows every other thread's model work, see ``gui/threads.py``):
``worker`` (what the widget does: the decoder runs on the model thread) and ``gui-thread`` (the
baseline: the decoder runs inside the click handler on the GUI thread, as plugins built on stock
segment-anything do). In each process, the decoder alone (``Predictor.predict_objects``, one point,
multimask) and stock ``SamPredictor.predict`` on the same embedding are timed on the model thread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

KEYS = ("gui", "freeze", "latency", "move", "floor", "decoder", "stock")
LABELS = {
    "gui": "live click, GUI-thread time (Points.add + our handlers)",
    "freeze": "live click, longest GUI freeze until the mask is drawn",
    "latency": "live click, latency until the mask is drawn",
    "move": "move a point, GUI-thread time of the data event",
    "floor": "Points.add with live mode off (napari + bookkeeping)",
    "decoder": "decoder alone (predict_objects, 1 point, multimask)",
    "stock": "stock SamPredictor.predict (same embedding)",
}


def stats(ms: list[float]) -> str:
    a = np.asarray(ms)
    return f"median {np.median(a):6.1f} ms   p90 {np.percentile(a, 90):6.1f} ms   max {a.max():6.1f} ms  (n={len(a)})"


def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    from napari_mobilesam._threads import configure_openmp

    configure_openmp()  # as napari loading the plugin does (napari_mobilesam.gui), before torch loads
    import napari
    import torch
    from qtpy.QtCore import QEventLoop, QTimer
    from qtpy.QtWidgets import QApplication
    from segment_anything import SamPredictor
    from skimage import data, transform

    from napari_mobilesam import Predictor, Prompt, build_mobilesam
    from napari_mobilesam.gui.widget import CHOOSE_FILE, MobileSAMWidget

    img = (transform.resize(data.cell(), (args.size, args.size), preserve_range=True)).astype(np.uint8)
    viewer = napari.Viewer(show=True)
    viewer.add_image(img, name="cell")
    w = MobileSAMWidget(viewer)
    viewer.window.add_dock_widget(w)
    sam = w.model_thread.call(lambda: build_mobilesam(args.checkpoint, device="cpu"))  # the GUI thread never runs the model
    w.model_box.value = CHOOSE_FILE
    w.model_file.value = args.checkpoint
    w.device_box.value = "cpu"
    w.set_model(sam, (args.checkpoint, "cpu"))
    w.state.live_threaded = args.mode == "worker"
    app = QApplication.instance()
    w.live.value = True  # embedding on the model thread
    t0 = time.perf_counter()
    while w.busy:
        app.processEvents()
        time.sleep(0.01)
    print(f"[{args.mode}] image {img.shape}, torch threads {torch.get_num_threads()}, OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'default')}; embedding {time.perf_counter() - t0:.2f} s", file=sys.stderr)

    def setup():
        pred = Predictor(sam)
        pred.set_image(img)
        stock = SamPredictor(sam)
        stock.features, stock.original_size, stock.input_size = pred.features, pred.original_size, pred.input_size
        stock.is_image_set = True
        return pred, stock

    pred, stock = w.model_thread.call(setup)

    def timed(fn) -> float:
        def run():
            t = time.perf_counter()
            with torch.inference_mode():
                fn()
            return (time.perf_counter() - t) * 1e3

        return w.model_thread.call(run)

    out: dict[str, list[float]] = {k: [] for k in KEYS}
    handler = {"t": 0.0, "end": 0.0}
    live = w.prompts.live_mode
    decoded = live._decoded
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

    live._decoded = timed_decoded
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(1)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    pts = w.points_box.value

    def click(r, c) -> tuple[float, float, float]:
        for _ in range(20):  # an idle pause before the click
            app.processEvents(QEventLoop.AllEvents, 10)
            time.sleep(0.01)
        handler["t"] = 0.0
        ticks.clear()
        t0 = time.perf_counter()
        ticks.append(t0)
        pts.add([[r, c]])
        t1 = time.perf_counter()
        settle()
        end = handler["end"]
        QTimer.singleShot(200, waiting.quit)  # let napari repaint the new mask
        waiting.exec_()
        shown = min(t for t in ticks if t > end)  # the event loop is free again: the mask is drawn
        gaps = np.diff([t for t in ticks if t <= shown])
        gui = t1 - t0 + (handler["t"] if end > t1 else 0.0)  # a GUI-thread decode's handler ran inside add()
        return gui * 1e3, (shown - t0) * 1e3, float(gaps.max()) * 1e3

    rng = np.random.default_rng(0)
    clicks = rng.uniform(0.1 * args.size, 0.9 * args.size, size=(args.clicks + 3, 2))
    for i, (r, c) in enumerate(clicks):
        g, lat, fr = click(r, c)
        dd = timed(lambda: pred.predict_objects([Prompt(points=[[r, c]])], multimask_output=True))
        ds = timed(lambda: stock.predict(np.array([[c, r]]), np.array([1]), multimask_output=True))
        if i >= 3:  # warm-up
            for k, v in zip(("gui", "latency", "freeze", "decoder", "stock"), (g, lat, fr, dd, ds), strict=True):
                out[k].append(v)
    for i in range(min(10, len(pts.data))):  # move one point: its own mask is replaced
        t = time.perf_counter()
        pts.data = pts.data + np.array([[2.0, 2.0]]) * (np.arange(len(pts.data)) == i)[:, None]
        out["move"].append((time.perf_counter() - t) * 1e3)
        settle()
    timer.stop()
    assert len(np.unique(w.labels_box.value.data)) > 1, "no labels written"
    w.live.value = False  # napari's own cost of adding a point (our bookkeeping only, no decoding)
    for r, c in clicks[3:]:
        app.processEvents()
        t = time.perf_counter()
        pts.add([[r, c]])
        out["floor"].append((time.perf_counter() - t) * 1e3)
    viewer.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024, help="image side in pixels")
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument("--checkpoint", default=None, help="default: the seeded random test checkpoint")
    ap.add_argument("--mode", choices=["both", "worker", "gui-thread"], default="both")
    ap.add_argument("--busy", action="store_true", help='another process keeps one core busy (python -c "while True: pass") throughout')
    args = ap.parse_args()
    if args.checkpoint is None:
        from napari_mobilesam.testing.reference import random_checkpoint

        args.checkpoint = str(random_checkpoint())
    if args.mode != "both":
        print(json.dumps(measure(args)))
        return
    results = {}
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    try:
        for mode in ("gui-thread", "worker"):
            cmd = [sys.executable, __file__, "--mode", mode, "--size", str(args.size), "--clicks", str(args.clicks), "--checkpoint", args.checkpoint]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()
    print(f"{'one core busy' if args.busy else 'no extra load'}; load average {os.getloadavg()[0]:.1f}")
    for mode, title in (("worker", "decoder on the model thread (the widget)"), ("gui-thread", "baseline: decoder on the GUI thread")):
        print(f"-- {title}")
        for k in KEYS:
            print(f"   {LABELS[k]:56s} {stats(results[mode][k])}")
    med = {m: {k: float(np.median(v)) for k, v in r.items()} for m, r in results.items()}
    print("worker / GUI-thread decoding (medians): " + ", ".join(
        f"{k} {med['worker'][k] / med['gui-thread'][k]:.2f}x" for k in ("gui", "freeze", "latency")))
    print(f"widget GUI-thread time / stock predict: {med['worker']['gui'] / med['worker']['stock']:.2f}x")


if __name__ == "__main__":
    main()
