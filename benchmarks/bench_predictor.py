"""Predictor speed vs the official MobileSAM ``SamPredictor``, same weights, same run.

    python benchmarks/bench_predictor.py [--checkpoint PATH] [--repeats N] [--boxes 64] [--skip-encoder]

The official code is ``mobile_sam`` (mobilesam-mirror, byte-identical to the official package) with our
checkpoint loaded into it (state dict keys are identical). Reports medians of N runs after a warm-up,
the official and our call interleaved run by run (the CPU may be shared), with min-max in brackets:
- encoder: one 1024² frame, the official op sequence (reference mode) vs ours (fastest backend);
- one click -> 3 full-resolution masks, after the embedding exists: official ``SamPredictor.predict``
  vs ``Predictor.predict``;
- N boxes in one ``predict_torch`` call, single-mask mode, full-resolution boolean masks (official vs
  ours: the drop-in path), and ours through ``Predictor.predict_objects`` (cropped masks).
Ratios are official / ours (> 1: we are faster).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from _runtime import add_runtime_args, apply_runtime_args

from napari_mobilesam import Predictor, Prompt, build_mobilesam

DEFAULT_CKPT = Path(__file__).resolve().parents[2] / "shared" / "reference" / "mobile_sam_random.pt"


def interleaved(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Run each function once to warm up, then ``repeats`` rounds of all of them in turn."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return times


def random_boxes(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` plausible object boxes (x0, y0, x1, y1) of 20-200 px in a ``size``² frame."""
    wh = rng.uniform(20, 200, (n, 2))
    xy = rng.uniform(0, size - wh)
    return np.concatenate([xy, xy + wh], 1)


def official_predictor(checkpoint: str):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm deprecation / registry warnings
        from mobile_sam import SamPredictor, sam_model_registry

        osam = sam_model_registry["vit_t"]()
    osam.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return SamPredictor(osam.eval())


def bench_clicks_and_boxes(sam, official, image: np.ndarray, n_boxes: int, repeats: int) -> dict[str, list[float]]:
    ours = Predictor(sam)
    with torch.no_grad():
        official.set_image(image)
    ours.set_image(image)
    pt, lbl = np.array([[image.shape[1] * 0.45, image.shape[0] * 0.55]]), np.array([1])
    res = interleaved(
        {"click_official": lambda: official.predict(pt, lbl, multimask_output=True), "click_ours": lambda: ours.predict(pt, lbl, multimask_output=True)},
        repeats,
    )
    boxes = random_boxes(n_boxes, min(image.shape[:2]), np.random.default_rng(0))

    def torch_boxes(pred):
        tb = pred.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float32), pred.original_size)
        with torch.no_grad():
            masks, _, _ = pred.predict_torch(None, None, boxes=tb, multimask_output=False)
        return masks.numpy()

    prompts = [Prompt(box=b[[1, 0, 3, 2]]) for b in boxes]
    res.update(interleaved(
        {"boxes_official": lambda: torch_boxes(official), "boxes_ours": lambda: torch_boxes(ours), "objects_ours": lambda: ours.predict_objects(prompts)},
        max(1, repeats // 3),
    ))
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


def _ms(ts: list[float]) -> str:
    return f"{statistics.median(ts) * 1000:8.1f} ms [{min(ts) * 1000:.0f}-{max(ts) * 1000:.0f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(DEFAULT_CKPT))
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--boxes", type=int, default=64)
    ap.add_argument("--skip-encoder", action="store_true")
    add_runtime_args(ap)
    args = ap.parse_args()
    apply_runtime_args(args)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    sam = build_mobilesam(args.checkpoint)
    official = official_predictor(args.checkpoint)
    image = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    if not args.skip_encoder:
        enc = bench_encoder(sam, image, args.repeats)
        for key, t in enc.items():
            print(f"{'encoder, ' + key[8:]:24s} {t * 1000:9.1f} ms   official/this {enc['encoder_stock'] / t:.2f}x")
    res = bench_clicks_and_boxes(sam, official, image, args.boxes, args.repeats)
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"{'1 click -> 3 masks':28s} official {_ms(res['click_official'])}   ours {_ms(res['click_ours'])}   x{med['click_official'] / med['click_ours']:.2f}")
    for ours, label in (("boxes_ours", "predict_torch"), ("objects_ours", "predict_objects")):
        print(f"{f'{args.boxes} boxes, {label}':28s} official {_ms(res['boxes_official'])}   ours {_ms(res[ours])}   x{med['boxes_official'] / med[ours]:.2f}")
    print("(goals: 64 boxes through predict_torch >= x5; one click <= 15 ms)")


if __name__ == "__main__":
    main()
