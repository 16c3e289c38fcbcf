"""What linking costs on top of per-frame segment everything, over a 16-slice 1024² z-stack.

Interleaved in one process: per-frame everything (``link="none"``), then the link pass alone over
its labels (fill-ins on, their embeddings from the predictor's cache, as in one engine run; and
``--cold``: with the cache cleared, as the CLI's link pass sees it), then linking without
fill-ins; ``--repeats`` rounds. Prints seconds per stack and the link pass / everything ratio.

    python benchmarks/bench_link.py [--weights PATH] [--threads 1] [--repeats 2] [--cold]

Run it only on a quiet machine (report ``uptime`` with the figures).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _runtime import add_runtime_args, apply_runtime_args


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", help="checkpoint (default: the functional test model)")
    ap.add_argument("--slices", type=int, default=16)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cold", action="store_true", help="also time the link pass with the embedding cache cleared")
    add_runtime_args(ap)
    args = ap.parse_args()
    apply_runtime_args(args)

    from napari_mobilesam import Predictor, build_mobilesam, segment_everything
    from napari_mobilesam._progress import drive
    from napari_mobilesam.engine.image import to_rgb_uint8
    from napari_mobilesam.engine.linkpass import iter_link_stack
    from napari_mobilesam.testing import synthetic_checkpoint
    from napari_mobilesam.testing.stacks import synthetic_volume

    sam = build_mobilesam(args.weights or synthetic_checkpoint(), device="cpu")
    pred = Predictor(sam)
    vol, _ = synthetic_volume(args.slices, (args.size, args.size), 60, seed=1, radius=(20, 45))
    rows = []
    for r in range(args.repeats):
        pred.cache.clear()
        t0 = time.perf_counter()
        lab = segment_everything(vol, pred, "blobs", rgb=False, diameter=60.0, min_score=0.0)
        t_every = time.perf_counter() - t0

        def link(fill: bool, cold: bool = False) -> float:
            if cold:
                pred.cache.clear()
            t = time.perf_counter()
            links = drive(iter_link_stack(len(vol), lambda k: lab[k], "3d", predictor=pred, read_image=lambda k: to_rgb_uint8(vol[k]),
                                          fill=fill))
            list(links.iter_relabel(lab[k] for k in range(len(vol))))
            return time.perf_counter() - t

        t_fill, t_nofill = link(True), link(False)
        t_cold = link(True, cold=True) if args.cold else float("nan")
        rows.append((t_every, t_fill, t_nofill, t_cold))
        print(f"round {r}: everything {t_every:.1f} s; link pass {t_fill:.2f} s with fill-ins (cached embeddings), "
              f"{t_nofill:.2f} s without, {t_cold:.2f} s cold; ratio {t_fill / t_every:.1%}")
    e, f, n, c = np.median(np.array(rows), axis=0)
    print(f"median: everything {e:.1f} s / {args.slices} slices of {args.size}²; link +{f / e:.1%} (fill-ins), +{n / e:.1%} (none), "
          f"cold +{c / e:.1%}")


if __name__ == "__main__":
    main()
