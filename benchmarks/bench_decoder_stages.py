"""Where one prompt's decode time goes: our FrameDecoder by stage vs segment-anything's MaskDecoder.

    python benchmarks/bench_decoder_stages.py [--checkpoint PATH] [--batch 8] [--threads 1]

Process (CPU) time per prompt, single-mask box prompts on a random 1024² embedding, one batch of
``--batch`` prompts: transformer (image-token passes and token side), upscaler, and a full-resolution
1024² mask by the crop path; the stock decoder and its post-processing for comparison. CPU time rather
than wall time: on a shared CPU it is the steadier measure of the work done.

The floor: the matrix products that one prompt's decode cannot avoid (the seven 56 x 256 x 4096
products of the folded attentions, the two transposed convolutions as matmuls, the hypernetwork
dot product), each batched over the prompts as the decoder runs them, timed alone on random
tensors in the same run. "decoder / floor" is how far the whole decode is from those products alone.
"""

import argparse
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--checkpoint", default=str(Path(__file__).resolve().parents[2] / "shared" / "reference" / "mobile_sam_random.pt"))
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--threads", type=int, default=1)
args = ap.parse_args()
torch.set_num_threads(args.threads)
from napari_mobilesam import build_mobilesam
from napari_mobilesam.model import fast_decoder as fd
from napari_mobilesam.engine.upsample import MaskUpsampler
sam = build_mobilesam(args.checkpoint)
torch.manual_seed(0)
feat = torch.randn(1, 256, 64, 64)
T = {}
def wrap(obj, name):
    f = getattr(obj, name)
    def g(*a, **k):
        t = time.process_time(); r = f(*a, **k); T[name] = T.get(name, 0) + time.process_time() - t; return r
    setattr(obj, name, g)
for n in ("_decode_streamed", "_stream_keys", "_heads_out", "_upscale_masks"):
    wrap(fd.FrameDecoder, n)
B, R = args.batch, 3
with torch.inference_mode():
    t = time.process_time(); dec = fd.FrameDecoder(sam, feat); per_frame = time.process_time() - t
    boxes = torch.rand(B, 4) * 800; boxes[:, 2:] = boxes[:, :2] + 150
    sp, de = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
    dec.decode(sp, None, False); T.clear()
    t, w = time.process_time(), time.perf_counter()
    for _ in range(R): lo, io = dec.decode(sp, None, False)
    tot = (time.process_time() - t) / R / B * 1000
    tot_wall = (time.perf_counter() - w) / R / B * 1000
    up = MaskUpsampler((1024, 1024), (1024, 1024))
    low = lo[:, 0].numpy()
    t = time.process_time()
    for _ in range(R):
        for j in range(B): up.crop_mask(low[j], 0.0)
    crop = (time.process_time() - t) / R / B * 1000
    t = time.process_time()
    for _ in range(2): olo, oio = sam.mask_decoder(feat, sam.prompt_encoder.get_dense_pe(), sp, de, False)
    stock = (time.process_time() - t) / 2 / B * 1000
    t = time.process_time()
    for _ in range(2): sam.postprocess_masks(olo, (1024, 1024), (1024, 1024)) > 0
    stock_post = (time.process_time() - t) / 2 / B * 1000


def floor_ms(b: int, repeats: int = 3) -> tuple[float, float, float]:
    """CPU ms, wall ms and GFLOP per prompt of the decoder's unavoidable matrix products, single-mask mode."""
    g = torch.Generator().manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    n, c, ht = 4096, 256, 56
    ops = [  # (a, b) pairs, products a @ b
        *[(r(b, ht, c), r(b, c, n))] * 3,  # scores of three attentions over the image tokens
        *[(r(b, n, ht), r(b, ht, c))] * 2,  # image-to-token mixing (residual updates)
        *[(r(b, ht, n), r(b, n, c))] * 2,  # token-to-image mixing
        (r(8, b * 7, 16), r(8, 16, n)),  # layer 1's image-to-token scores (image queries per frame)
        (r(b * n, c), r(c, 4 * 64)),  # ConvT 1 as a matmul
        (r(b * 4 * n, 64), r(64, 4 * 32)),  # ConvT 2 as a matmul
        (r(b * 16 * n, 32), r(32, 1)),  # hypernetwork dot product
    ]
    flop = sum(2 * a.numel() * bb.shape[-1] for a, bb in ops) / b
    for a, bb in ops:
        torch.matmul(a, bb)
    t, w = time.process_time(), time.perf_counter()
    for _ in range(repeats):
        for a, bb in ops:
            torch.matmul(a, bb)
    return (time.process_time() - t) / repeats / b * 1000, (time.perf_counter() - w) / repeats / b * 1000, flop / 1e9


with torch.inference_mode():
    floor, floor_wall, gflop = floor_ms(B)
s = {k: v / R / B * 1000 for k, v in T.items()}
print(f"per frame (FrameDecoder init): {per_frame*1000:.1f} ms")
print(f"ours per prompt (B={B}, {args.threads} thread(s), CPU ms): decoder total {tot:.1f} = transformer {s['_decode_streamed']:.1f} "
      f"(of which image-token streams {s['_stream_keys']:.1f}, token side {s['_decode_streamed']-s['_stream_keys']:.1f}) + heads/upscaler {s['_heads_out']:.1f} "
      f"(upscaler {s['_upscale_masks']:.1f}); full-res mask (1024², crop path) {crop:.1f}")
print(f"stock MaskDecoder per prompt {stock:.1f} ms + postprocess_masks+threshold {stock_post:.1f} ms; max |logit diff| {(lo-olo).abs().max().item():.2e}")
print(f"floor per prompt: the decoder's matrix products alone (whole-frame shapes) {floor:.1f} CPU ms, {floor_wall:.1f} ms wall, "
      f"for {gflop:.2f} GFLOP ({gflop / floor_wall * 1000:.0f} GFLOP/s wall); the decoder: {tot_wall:.1f} ms wall; "
      f"decoder / floor = {tot / floor:.2f} (CPU), {tot_wall / floor_wall:.2f} (wall)")
