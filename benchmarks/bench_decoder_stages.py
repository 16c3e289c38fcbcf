"""Where one prompt's decode time goes: the folded decoder by stage, the previous streamed FrameDecoder
and segment-anything's MaskDecoder, interleaved in one process, against the folded decoder's floor.

    python benchmarks/bench_decoder_stages.py [--checkpoint PATH] [--batch 8] [--threads 1] [--repeats 5] [--multimask]
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_decoder_stages.py --threads 2   # as the command and the plugin run

Single-mask (or --multimask) box prompts on a random 1024² embedding, one batch of ``--batch`` prompts,
the decoders run in turn (with ``--threads`` > 1 also the folded decoder on decode workers,
``model.scratch.DecodeThreads``: whole prompts per worker, one intra-op thread each), ``--repeats`` rounds (the CPU may be shared: medians, min-max).
CPU (process) time and wall time per prompt; GFLOP per prompt counted by torch's FlopCounterMode;
the folded decoder's stages: transformer (token side + factored image side) and upscaler.

The floor: the folded decoder's unavoidable pieces timed alone on random tensors of the same shapes,
batched as the decoder runs them: the per-head products against per-frame projections (14 of
h x (T x d) x (d x N)), the products with the per-prompt factor (hT = 56, r' = 2(h(T-1) + 1) = 98), the
rank-r' first transposed convolution, the second one, the hypernetwork dot product, the two GELUs,
LayerNorm2d and the softmaxes. "decoder / floor" is how far the whole decode is from them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch.utils import flop_counter as fcounter
from torch.utils.flop_counter import FlopCounterMode

warnings.filterwarnings("ignore")
ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--checkpoint", default=str(Path(__file__).resolve().parents[2] / "shared" / "reference" / "mobile_sam_random.pt"))
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--repeats", type=int, default=5)
ap.add_argument("--multimask", action="store_true")
args = ap.parse_args()
torch.set_num_threads(args.threads)
from napari_mobilesam import build_mobilesam
from napari_mobilesam.model import folded_decoder as fo
from napari_mobilesam.model.fast_decoder import FrameDecoder
from napari_mobilesam.model.scratch import DecodeThreads, Scratch

sam = build_mobilesam(args.checkpoint).requires_grad_(False)  # (FlopCounterMode hooks tensors that need grad)
torch.manual_seed(0)
feat = torch.randn(1, 256, 64, 64)
B, MM = args.batch, args.multimask
stage: dict[str, float] = {}


def _inplace_bmm_flop(self_shape, a_shape, b_shape, *args, out_shape=None, **kw):
    return fcounter.bmm_flop(a_shape, b_shape)


def _onednn_linear_flop(x_shape, w_shape, *args, out_shape=None, **kw):
    return 2 * (x_shape.numel() // x_shape[-1]) * w_shape[0] * w_shape[1]


# FlopCounterMode counts baddbmm, not in-place baddbmm_, nor oneDNN's fused linear + GELU
INPLACE = {torch.ops.aten.baddbmm_: _inplace_bmm_flop, torch.ops.mkldnn._linear_pointwise: _onednn_linear_flop}


def wrap(cls, name):
    f = getattr(cls, name)

    def g(*a, **k):
        t = time.process_time()
        r = f(*a, **k)
        stage[name] = stage.get(name, 0.0) + time.process_time() - t
        return r

    setattr(cls, name, g)


for n in ("transformer", "decode"):
    wrap(fo.FoldedFrame, n)
print(f"load average at start: {os.getloadavg()[0]:.2f}")

with torch.inference_mode():
    setup: dict[str, list[float]] = {"folded": [], "streamed": []}
    # the folded decoder splitting each operation over torch's threads (the calling thread), and with
    # --threads > 1 also on decode workers (what the command and the plugin do with OpenMP's passive wait)
    folded, streamed = FrameDecoder(sam, feat, scratch=Scratch(start_threads=False)), FrameDecoder(sam, feat, folded=False)
    workers = FrameDecoder(sam, feat, scratch=Scratch(DecodeThreads(args.threads))) if args.threads > 1 else None
    boxes = torch.rand(B, 4) * 800
    boxes[:, 2:] = boxes[:, :2] + 150
    sp, de = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
    pe = sam.prompt_encoder.get_dense_pe()
    fns = {
        "folded": lambda: folded.decode(sp, None, MM),
        **({"folded, decode workers": lambda: workers.decode(sp, None, MM)} if workers is not None else {}),
        "streamed (previous FrameDecoder)": lambda: streamed.decode(sp, None, MM),
        "stock MaskDecoder": lambda: sam.mask_decoder(feat, pe, sp, de, MM),
    }
    outs = {k: f() for k, f in fns.items()}
    gflop = {}
    for k, f in fns.items():
        with FlopCounterMode(display=False, custom_mapping=INPLACE) as fc:
            f()
        gflop[k] = fc.get_total_flops() / B / 1e9
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    wall: dict[str, list[float]] = {k: [] for k in fns}
    stage.clear()
    for _ in range(args.repeats):
        for name, fold in (("folded", True), ("streamed", False)):  # per-frame set-up, interleaved too
            t = time.process_time()
            FrameDecoder(sam, feat, folded=fold)
            setup[name].append((time.process_time() - t) * 1000)
        for k, f in fns.items():
            t, w = time.process_time(), time.perf_counter()
            f()
            cpu[k].append((time.process_time() - t) / B * 1000)
            wall[k].append((time.perf_counter() - w) / B * 1000)


def floor(b: int, m: int, repeats: int = 3) -> dict[str, tuple[float, float]]:
    """CPU ms and GFLOP per prompt of the folded decoder's unavoidable pieces, by group.
    Products with the factor run batched over the ``b`` prompts (as in the decoder), the rest per prompt."""
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    n, h, t, d = 4096, 8, 7, 16
    ht = h * t
    r1 = h * (t - 1) + 1  # one layer's factor rows (each head's probabilities sum to one)
    rr = 2 * r1
    q, kt, v, p = r(h, t, d), r(h, d, n), r(h, n, d), r(h, t, n)
    a1, f1, a2, f2, a3, f3 = r(b, ht, ht), r(b, ht, n), r(b, ht, r1), r(b, r1, n), r(b, ht, rr), r(b, rr, n)
    a4 = r(b, r1, r1)
    fc, ec, x2, w2, y, hy = r(n, rr), r(rr, 256), r(4 * n, 64), r(64, 128), r(16 * n, 32), r(32, m)
    s4, s3 = r(b, h, t, n), r(b, ht, n)
    F_ = torch.nn.functional
    groups = {  # name: [(fn, divisor, GFLOP per prompt)]
        "per-head products vs the frame (14)": [(lambda: torch.bmm(q, kt), 1, 2 * ht * d * n)] * 11 + [(lambda: torch.bmm(p, v), 1, 2 * ht * d * n)] * 3,
        "products with the factor (9)": [(lambda: torch.bmm(a1, f1), b, 2 * ht * ht * n)] * 2
        + [(lambda: torch.bmm(a4, f2), b, 2 * r1 * r1 * n)] + [(lambda: torch.bmm(a2, f2), b, 2 * ht * r1 * n)] * 4
        + [(lambda: torch.bmm(a3, f3), b, 2 * ht * rr * n)] * 2,
        "ConvT1 (rank r')": [(lambda: torch.mm(fc, ec), 1, 2 * n * rr * 256)],
        "ConvT2": [(lambda: torch.mm(x2, w2), 1, 2 * 4 * n * 64 * 128)],
        "hypernetwork dot": [(lambda: torch.mm(y, hy), 1, 2 * 16 * n * 32 * m)],
        "GELU x2 + LayerNorm2d": [(lambda: F_.gelu(F_.layer_norm(x2, (64,))), 1, 0), (lambda: F_.gelu(y), 1, 0)],
        "softmaxes (5)": [(lambda: torch.softmax(s4, dim=2), b, 0)] * 2 + [(lambda: torch.softmax(s3, -1), b, 0)] * 3,
    }
    out = {}
    for name, ops in groups.items():
        for f, _, _ in ops:
            f()
        ms = 0.0
        for f, div, _ in ops:
            t0 = time.process_time()
            for _ in range(repeats):
                f()
            ms += (time.process_time() - t0) / repeats * 1000 / div
        out[name] = (ms, sum(fl for _, _, fl in ops) / 1e9)
    return out


with torch.inference_mode():
    fl = floor(B, 3 if MM else 1)
med = {k: statistics.median(v) for k, v in cpu.items()}
medw = {k: statistics.median(v) for k, v in wall.items()}
ref = outs["stock MaskDecoder"][0]
print(f"batch {B}, {'3 masks' if MM else '1 mask'}, {args.threads} thread(s), OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'default')}, "
      f"{args.repeats} interleaved rounds; per prompt:")
for k in fns:
    err = (outs[k][0] - ref).abs().max().item()
    fl_ = f"{gflop[k]:.3f} GFLOP" if gflop[k] else "  (as above)"  # FlopCounterMode sees the calling thread only
    print(f"  {k:34s} CPU {med[k]:6.1f} ms [{min(cpu[k]):.1f}-{max(cpu[k]):.1f}]  wall {medw[k]:6.1f} ms  {fl_}  max|Δlogit| vs stock {err:.1e}")
base, basew = med["streamed (previous FrameDecoder)"], medw["streamed (previous FrameDecoder)"]
print(f"  folded / streamed: CPU {med['folded'] / base:.2f}, wall {medw['folded'] / basew:.2f}; folded / stock: CPU {med['folded'] / med['stock MaskDecoder']:.2f}")
if workers is not None:
    print(f"  folded on decode workers / streamed: wall {medw['folded, decode workers'] / basew:.2f}")
s = {k: v / args.repeats / B * 1000 for k, v in stage.items()}
if workers is not None:  # process CPU time counts every thread: stages are per decoder at one thread only
    s = {k: float("nan") for k in s}
print(f"folded stages (CPU ms per prompt): transformer {s['transformer']:.1f}, heads + upscaler {s['decode'] - s['transformer']:.1f}; "
      f"per-frame set-up (median): folded {statistics.median(setup['folded']):.0f} ms, streamed {statistics.median(setup['streamed']):.0f} ms")
tot = sum(v[0] for v in fl.values())
print("folded floor, CPU ms per prompt (GFLOP): " + ", ".join(f"{k} {v[0]:.2f} ({v[1]:.3f})" for k, v in fl.items()))
print(f"floor total {tot:.1f} ms for {sum(v[1] for v in fl.values()):.3f} GFLOP; folded decoder / floor = {med['folded'] / tot:.2f} (CPU)")
print(f"load average at end: {os.getloadavg()[0]:.2f}")
