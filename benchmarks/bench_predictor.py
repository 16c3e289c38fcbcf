"""Predictor speed vs the stock segment-anything path, same weights, same run.

    python benchmarks/bench_predictor.py [--checkpoint PATH] [--repeats N] [--boxes 64]

Reports (median of N, after a warm-up):
- encoder: one 1024² frame, stock ``SamPredictor.set_image`` with the encoder run as the official
  code does (reference mode) vs ours (``Predictor.set_image``, fastest available backend);
- one click -> 3 full-resolution masks, after the embedding exists: ``SamPredictor.predict`` vs
  ``Predictor.predict``;
- N boxes decoded in one batch, single-mask mode, full-resolution masks: ``SamPredictor.predict_torch``
  (+ thresholding) vs ``Predictor.predict_objects``.
Ratios < 1 mean we are faster.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from segment_anything import SamPredictor

from napari_mobilesam import Predictor, Prompt, build_mobilesam

DEFAULT_CKPT = Path(__file__).resolve().parents[2] / "shared" / "reference" / "mobile_sam_random.pt"


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def random_boxes(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` plausible object boxes (x0, y0, x1, y1) of 20-200 px in a ``size``² frame."""
    wh = rng.uniform(20, 200, (n, 2))
    xy = rng.uniform(0, size - wh)
    return np.concatenate([xy, xy + wh], 1)


def bench_clicks_and_boxes(sam, image: np.ndarray, n_boxes: int, repeats: int) -> dict[str, float]:
    stock, ours = SamPredictor(sam), Predictor(sam)
    with torch.inference_mode():
        stock.set_image(image)
    ours.set_image(image)
    pt, lbl = np.array([[image.shape[1] * 0.45, image.shape[0] * 0.55]]), np.array([1])
    res = {
        "click_stock": median_time(lambda: stock.predict(pt, lbl, multimask_output=True), repeats),
        "click_ours": median_time(lambda: ours.predict(pt, lbl, multimask_output=True), repeats),
    }
    boxes = random_boxes(n_boxes, min(image.shape[:2]), np.random.default_rng(0))

    def stock_boxes():
        tb = stock.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float32), stock.original_size)
        with torch.inference_mode():
            masks, _, _ = stock.predict_torch(None, None, boxes=tb, multimask_output=False)
        return masks.numpy()

    prompts = [Prompt(box=b[[1, 0, 3, 2]]) for b in boxes]
    res["boxes_stock"] = median_time(stock_boxes, max(1, repeats // 3))
    res["boxes_ours"] = median_time(lambda: ours.predict_objects(prompts), max(1, repeats // 3))
    return res


def bench_encoder(sam, image: np.ndarray, repeats: int) -> dict[str, float]:
    """Official op sequence ("reference") vs our eager path vs the fastest backend, interleaved."""
    from napari_mobilesam.model.accelerate import available_backends, time_encoders

    backends = ["reference", "eager"] + [b for b in available_backends() if b not in ("reference", "eager", "auto")]
    times = time_encoders(sam, backends, repeats)
    res = {"encoder_stock": times["reference"], "encoder_ours": times["eager"]}
    for b in backends[2:]:
        res[f"encoder_{b}"] = times[b]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(DEFAULT_CKPT))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--boxes", type=int, default=64)
    ap.add_argument("--skip-encoder", action="store_true")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    sam = build_mobilesam(args.checkpoint)
    image = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    res = {} if args.skip_encoder else bench_encoder(sam, image, args.repeats)
    res.update(bench_clicks_and_boxes(sam, image, args.boxes, args.repeats))
    for key in [k for k in res if k.startswith("encoder_") and k not in ("encoder_stock", "encoder_ours")]:
        print(f"{'encoder, ' + key[8:]:24s} {res[key] * 1000:9.1f} ms   ratio vs stock {res[key] / res['encoder_stock']:.3f}")
    for what in ("encoder", "click", "boxes"):
        if f"{what}_stock" in res:
            s, o = res[f"{what}_stock"], res[f"{what}_ours"]
            label = {"encoder": "encoder (eager), 1024²", "click": "1 click -> 3 masks", "boxes": f"{args.boxes} boxes batched"}[what]
            print(f"{label:24s} stock {s * 1000:9.1f} ms   ours {o * 1000:9.1f} ms   ratio {o / s:.3f}")


if __name__ == "__main__":
    main()
