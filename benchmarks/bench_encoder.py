"""Encoder time per 1024² frame: official op sequence vs our eager path vs accelerated backends.

Same weights, same process, runs interleaved (reference, eager, ..., then again), median of
``--repeats`` after ``--warmup`` rounds. Other processes on a shared machine slow every
backend alike, so read the ratios; the absolute numbers are only for this machine and moment.

    python benchmarks/bench_encoder.py                       # reference, eager, onnxruntime
    python benchmarks/bench_encoder.py --backends reference eager --repeats 7
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import torch
from _runtime import add_runtime_args, apply_runtime_args

from napari_mobilesam import build_mobilesam
from napari_mobilesam.model.accelerate import available_backends, time_encoders
from napari_mobilesam.testing.reference import random_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_weights = os.environ.get("NAPARI_MOBILESAM_BENCH_WEIGHTS") or str(random_checkpoint())
    parser.add_argument("--checkpoint", default=default_weights, help="registry name or .pt path")
    parser.add_argument("--backends", nargs="+", default=None, help="default: every available one")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    add_runtime_args(parser, threads_default=None)
    args = parser.parse_args()
    apply_runtime_args(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    backends = args.backends or available_backends()
    if "reference" not in backends:
        backends.insert(0, "reference")
    sam = build_mobilesam(args.checkpoint, device="cpu")
    t0 = time.perf_counter()
    times = time_encoders(sam, backends, repeats=args.repeats, warmup=args.warmup)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"{args.repeats} repeats after {args.warmup} warm-up (total {time.perf_counter() - t0:.0f} s incl. setup)")
    ref = times["reference"]
    print(f"{'backend':<12} {'s/frame':>8} {'vs reference':>13}")
    for b, t in times.items():
        print(f"{b:<12} {t:8.3f} {t / ref:12.2f}x")


if __name__ == "__main__":
    main()
