"""Where one prompt's decode time goes: our FrameDecoder by stage vs segment-anything's MaskDecoder.

    python benchmarks/bench_decoder_stages.py [--checkpoint PATH] [--batch 8] [--threads 1]

Process (CPU) time per prompt, single-mask box prompts on a random 1024² embedding, one batch of
``--batch`` prompts: transformer (image-token passes and token side), upscaler, and a full-resolution
1024² mask by the crop path; the stock decoder and its post-processing for comparison. CPU time rather
than wall time: on a shared CPU it is the steadier measure of the work done.
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
    t = time.process_time()
    for _ in range(R): lo, io = dec.decode(sp, None, False)
    tot = (time.process_time() - t) / R / B * 1000
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
s = {k: v / R / B * 1000 for k, v in T.items()}
print(f"per frame (FrameDecoder init): {per_frame*1000:.1f} ms")
print(f"ours per prompt (B={B}, {args.threads} thread(s), CPU ms): decoder total {tot:.1f} = transformer {s['_decode_streamed']:.1f} "
      f"(of which image-token streams {s['_stream_keys']:.1f}, token side {s['_decode_streamed']-s['_stream_keys']:.1f}) + heads/upscaler {s['_heads_out']:.1f} "
      f"(upscaler {s['_upscale_masks']:.1f}); full-res mask (1024², crop path) {crop:.1f}")
print(f"stock MaskDecoder per prompt {stock:.1f} ms + postprocess_masks+threshold {stock_post:.1f} ms; max |logit diff| {(lo-olo).abs().max().item():.2e}")
