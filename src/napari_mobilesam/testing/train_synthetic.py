"""Train the functional test checkpoint end to end on synthetic cells (CPU, seeded).

``python -m napari_mobilesam.testing.train_synthetic --out mobilesam_synthetic.pt [--steps N]``

The whole MobileSAM (TinyViT encoder, prompt encoder, mask decoder) is trained from a seeded
random initialisation with SAM's losses: focal (x20) + dice on the masks, MSE between the
predicted and the actual IoU. The model is used at SAM's 1024² input; training runs on
448² crops of that 1024² canvas, which is cheap and exact in the ways that matter:

- TinyViT's weights do not depend on the input size; 448 px = 28 tokens = two stage-3 windows
  (14 tokens), four stage-4 and eight stage-2 windows (7 tokens), and crops start at multiples
  of 224 px, so every attention window of a crop is a window of the full canvas;
- the positional encodings of image tokens and prompts are computed in the 1024 canvas's
  coordinates, exactly as at inference;
- the frames are made as the model sees them: a synthetic frame of native size ``1024 / f``
  (``f`` log-uniform in 1..4, i.e. frames of 256..1024 px, cells of radius 6..40 px) is resized
  by SAM's own transform (bilinear, longest side 1024); a crop sometimes ends in padding, as
  non-square frames do.

Prompts per crop, sampled from the ground truth (many per embedding, the encoder runs once):
single positive clicks (multimask, loss on the best of the three), jittered boxes (single
mask), box + click, a click plus a negative click on a touching neighbour, box + mask input of
the cell shifted a few pixels (as propagation prompts), and clicks / boxes on background whose
target is an empty mask (so that grid points on background and vanished cells score low).

Three choices make it learn within a CPU budget (without them nothing is learnt in 200 steps:
click IoU 0.00): the positional encoding's random Fourier matrix is drawn at scale 2 instead of
SAM's 1, the decoder's image-to-token attention starts as a position match
(:func:`_localising_init`), and a class-balanced cross-entropy is added to the loss during the
first half of training (it keeps the masks from collapsing to empty). All weights train.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage as ndi

from ..engine.image import to_rgb_uint8
from ..model.build import mobilesam_architecture
from ..model.tiny_vit import TinyViT
from .synthetic import render_cells, sample_cells

CROP = 224  # training crop of the 1024² canvas (see the module docstring)
CANVAS = 1024
LOSS = 112  # masks are compared at half the crop's resolution
MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
PE_SCALE = 2.0  # see build_train_model
TRAIN_SEED_BASE = 1_000_000  # training frames use seeds >= this; tests use small seeds


# ---------------------------------------------------------------------------------------- data
def make_crop(rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray, tuple[int, int]]:
    """One training crop: ``(image 3 x CROP x CROP float normalised, labels CROP x CROP int32,
    (oy, ox) crop offset in the 1024 canvas)``."""
    f = float(np.exp(rng.uniform(0, np.log(4.0))))
    oy, ox = (int(v) * CROP for v in rng.integers(0, CANVAS // CROP + 1, 2))
    native = int(math.ceil(CROP / f)) + 2
    # cell radius 8..90 px in the canvas (at most 40 px in the frame), e.g. 8..22 px in a 256² frame
    radius = (max(8.0 / f, 4.0), min(90.0, 40.0 * f) / f)
    mean_r = math.sqrt(radius[0] * radius[1])
    n = int(native * native / (math.pi * mean_r**2) * rng.uniform(0.25, 0.6)) + 2
    cells = sample_cells((native, native), n, rng, radius, 2.5, float(rng.uniform(0.1, 0.5)), (0.25, 0.9))
    # cells may hang over the native window's edges: the window is a piece of a larger frame
    cells[:, :2] += rng.uniform(-0.5, 0.5, (len(cells), 2)) * mean_r
    polarity = "dark" if rng.random() < 0.25 else "bright"
    dtype = np.uint16 if rng.random() < 0.25 else np.uint8
    img, lab = render_cells(
        (native, native), cells, seed=int(rng.integers(1 << 31)), polarity=polarity, dtype=dtype,
        blur=float(rng.uniform(0.5, 2.0)), noise=float(rng.uniform(0.01, 0.07)), texture=float(rng.uniform(0.1, 0.35)),
    )
    rgb = to_rgb_uint8(img)
    size = int(round(native * f))
    rgb = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))[:CROP, :CROP]
    lab = np.asarray(Image.fromarray(lab).resize((size, size), Image.NEAREST))[:CROP, :CROP].astype(np.int32)
    x = (torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() - MEAN) / STD
    if rng.random() < 0.2:  # the frame ends inside this crop: padding as in Sam.preprocess
        edge = int(rng.integers(CROP // 4, CROP))
        if rng.random() < 0.5:
            x[:, edge:], lab[edge:] = 0, 0
        else:
            x[:, :, edge:], lab[:, edge:] = 0, 0
    return x, lab, (oy, ox)


def _down(mask: np.ndarray) -> np.ndarray:
    """CROP² bool -> LOSS² float target (area fraction > 0.5)."""
    k = CROP // LOSS
    return (mask.reshape(LOSS, k, LOSS, k).mean((1, 3)) > 0.5).astype(np.float32)


def _point_in(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    i = int(rng.integers(len(ys)))
    return np.array([xs[i], ys[i]], np.float32)  # x, y


def _box_of(mask: np.ndarray, rng: np.random.Generator, jitter: float) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    w, h = x1 - x0, y1 - y0
    j = rng.normal(0, jitter, 4) * np.array([w, h, w, h])
    return np.array([x0 + j[0], y0 + j[1], x1 + j[2], y1 + j[3]], np.float32)


def _mask_logits(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A cell's mask as the previous frame's mask input: shifted, grown or shrunk, CROP/4 grid."""
    shift = rng.normal(0, 0.08 * math.sqrt(mask.sum()), 2)
    m = ndi.shift(mask.astype(np.float32), shift, order=0)
    grow = int(rng.integers(-2, 3)) * 2
    if grow > 0:
        m = ndi.binary_dilation(m > 0.5, iterations=grow)
    elif grow < 0:
        m = ndi.binary_erosion(m > 0.5, iterations=-grow)
    k = CROP // (CROP // 4)
    low = np.asarray(m, np.float32).reshape(CROP // 4, k, CROP // 4, k).mean((1, 3))
    mag = rng.uniform(2.0, 10.0)
    return ((low > 0.5) * 2 - 1).astype(np.float32) * mag


def sample_prompts(lab: np.ndarray, rng: np.random.Generator, per_kind: dict[str, int]) -> dict[str, dict]:
    """Prompt groups (one token layout per group) with their targets, in crop pixels (x, y)."""
    ids = [i for i in np.unique(lab) if i and (lab == i).sum() >= 64]
    bg = lab == 0
    groups: dict[str, dict] = {}

    def add(kind, **items):
        g = groups.setdefault(kind, {})
        for k, v in items.items():
            g.setdefault(k, []).append(v)

    if ids:
        for kind, count in per_kind.items():
            for _ in range(count):
                cid = ids[int(rng.integers(len(ids)))]
                m = lab == cid
                if kind == "point":
                    add(kind, points=_point_in(m, rng)[None], labels=np.ones(1), target=_down(m))
                elif kind == "box":
                    add(kind, boxes=_box_of(m, rng, 0.06), target=_down(m))
                elif kind == "box_point":
                    add(kind, points=_point_in(m, rng)[None], labels=np.ones(1), boxes=_box_of(m, rng, 0.06), target=_down(m))
                elif kind == "pos_neg":
                    ring = ndi.binary_dilation(m, iterations=6) & ~m
                    nbrs = [i for i in np.unique(lab[ring]) if i and i != cid]
                    other = (lab == nbrs[int(rng.integers(len(nbrs)))]) if nbrs else (ring & bg)
                    if not other.any():
                        other = bg if bg.any() else ~m
                    pts = np.stack([_point_in(m, rng), _point_in(other, rng)])
                    add(kind, points=pts, labels=np.array([1, 0]), target=_down(m))
                elif kind == "box_mask":
                    add(kind, boxes=_box_of(m, rng, 0.08), masks=_mask_logits(m, rng), target=_down(m))
    empty = np.zeros((LOSS, LOSS), np.float32)
    far = ~ndi.binary_dilation(lab > 0, iterations=8)
    for _ in range(per_kind.get("bg_point", 0)):
        if far.any():
            add("bg_point", points=_point_in(far, rng)[None], labels=np.ones(1), target=empty)
    for _ in range(per_kind.get("bg_box", 0)):
        if far.sum() > 400:  # a vanished cell: a box and a mask input where nothing is any more
            cy, cx = np.argwhere(far)[int(rng.integers(far.sum()))]
            r = int(rng.integers(8, 40))
            blob = np.zeros_like(far)
            blob[max(cy - r, 0) : cy + r, max(cx - r, 0) : cx + r] = True
            add("bg_box", boxes=_box_of(blob, rng, 0.0), masks=_mask_logits(blob, rng), target=empty)
    return groups


# ---------------------------------------------------------------------------------------- model
def _dense_pe(sam, offset: tuple[int, int], grid: int) -> torch.Tensor:
    """Positional encoding of a crop's tokens in canvas coordinates: 1 x 256 x grid x grid."""
    oy, ox = offset
    c = (torch.arange(grid, dtype=torch.float32) + 0.5) * 16
    yy, xx = torch.meshgrid(c + oy, c + ox, indexing="ij")
    pe = sam.prompt_encoder.pe_layer.forward_with_coords(torch.stack([xx, yy], -1).view(1, -1, 2), (CANVAS, CANVAS))
    return pe.view(grid, grid, -1).permute(2, 0, 1)[None]


def _encode(sam, offset, kind: str, g: dict, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse (B x T x 256) and dense (B x 256 x grid x grid) prompt embeddings of one group."""
    pe_enc = sam.prompt_encoder
    oy, ox = offset
    shift = torch.tensor([ox, oy], dtype=torch.float32)
    points = boxes = None
    if "points" in g:
        points = (torch.from_numpy(np.stack(g["points"])) + shift, torch.from_numpy(np.stack(g["labels"])).long())
    if "boxes" in g:
        boxes = torch.from_numpy(np.stack(g["boxes"])) + shift.repeat(2)
    sparse, _ = pe_enc(points, boxes, None)
    if "masks" in g:
        dense = pe_enc.mask_downscaling(torch.from_numpy(np.stack(g["masks"]))[:, None])
    else:
        dense = pe_enc.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(sparse.shape[0], -1, grid, grid)
    return sparse, dense


def crop_loss(
    sam, emb: torch.Tensor, pe: torch.Tensor, offset, groups: dict[str, dict], balance: float = 0.0
) -> tuple[torch.Tensor, float]:
    """SAM's loss for all prompt groups of one crop embedding ``1 x 256 x g x g``, decoded in one pass
    (groups with fewer tokens are padded with SAM's "not a point" token).

    ``balance`` weighs an extra class-balanced cross-entropy (foreground and background pixels of
    each target count half each). From a random start, focal + dice alone first collapse to empty
    masks (most pixels are background); this term, faded out during training, avoids that.

    Returns the mean loss and the mean IoU of the single clicks' best masks."""
    grid = emb.shape[-1]
    enc = [_encode(sam, offset, kind, g, grid) for kind, g in groups.items()]
    width = max(s.shape[1] for s, _ in enc)
    pad = sam.prompt_encoder.not_a_point_embed.weight
    sparse = torch.cat([torch.cat([s, pad.expand(s.shape[0], width - s.shape[1], -1)], 1) for s, _ in enc])
    dense = torch.cat([d for _, d in enc])
    multi = torch.cat([torch.full((len(g["target"]),), kind in ("point", "bg_point")) for kind, g in groups.items()])
    clicks = torch.cat([torch.full((len(g["target"]),), kind == "point") for kind, g in groups.items()])
    target = torch.from_numpy(np.concatenate([np.stack(g["target"]) for g in groups.values()]))[:, None]
    logits, iou_pred = sam.mask_decoder.predict_masks(emb, pe, sparse, dense)  # B x 4 x 4g x 4g, B x 4
    logits = F.interpolate(logits, (LOSS, LOSS), mode="bilinear", align_corners=False)
    target = target.expand_as(logits)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = p * target + (1 - p) * (1 - target)
    focal = ((0.25 * target + 0.75 * (1 - target)) * ce * (1 - pt) ** 2).mean((2, 3))
    dice = 1 - (2 * (p * target).sum((2, 3)) + 1) / (p.sum((2, 3)) + target.sum((2, 3)) + 1)
    mask_loss = 20 * focal + dice  # B x 4: output 0 for single-mask prompts, 1..3 for single clicks
    if balance > 0:
        fg = target.mean((2, 3), keepdim=True)
        w = torch.where(target > 0.5, 0.5 / fg.clamp(min=1e-3), 0.5 / (1 - fg).clamp(min=1e-3))
        w = torch.where(fg > 0, w, torch.ones_like(w))
        mask_loss = mask_loss + balance * (w * ce).mean((2, 3))
    with torch.no_grad():
        hard, tb = logits > 0, target > 0.5
        union = (hard | tb).sum((2, 3)).float()
        iou = torch.where(union > 0, (hard & tb).sum((2, 3)).float() / union.clamp(min=1), torch.zeros_like(union))
    big = torch.tensor(1e9)
    ml = torch.where(multi[:, None], mask_loss.detach().index_fill(1, torch.tensor([0]), 1e9),
                     torch.cat([mask_loss.detach()[:, :1], big.expand(len(multi), 3)], 1))
    best = ml.argmin(1)
    rows = torch.arange(len(best))
    used = torch.where(multi[:, None], torch.tensor([False, True, True, True]), torch.tensor([True, False, False, False]))
    iou_loss = ((iou_pred - iou) ** 2 * used).sum() / used.sum()
    loss = mask_loss[rows, best].mean() + iou_loss
    click_iou = float(iou[rows, best][clicks].mean()) if clicks.any() else 0.0
    return loss, click_iou


def build_train_model(seed: int):
    """MobileSAM with a TinyViT built for CROP² input; same parameter names as the 1024 model."""
    torch.manual_seed(seed)
    sam = mobilesam_architecture(TinyViT(img_size=CROP))
    # SAM's random Fourier positional encoding has scale 1: wavelengths of ~170 px and more in the
    # 1024 canvas, so a click is hard to localise among a crop's tokens early in training. A larger
    # scale (same buffer, same checkpoint key) gives wavelengths of ~100-250 px and a position kernel
    # (see _localising_init) about 40 px wide: a cell.
    gauss = sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    with torch.no_grad():
        gauss.copy_(torch.randn(gauss.shape) * PE_SCALE)
        _localising_init(sam)
    return sam


def _localising_init(sam, alpha: float = 1.5) -> None:
    """Start the decoder's image-to-token attention as a position match.

    From a random start the decoder takes thousands of steps to learn where a click is. Here the
    query and key projections of each image-to-token attention pick, per head, the sine and
    cosine of 8 of the positional encoding's frequencies, so a head's score between an image token
    and a prompt token starts as ``sum_k cos(phase_k(token) - phase_k(prompt))``: a kernel that
    peaks where the token is the prompt's position. Everything stays trainable.
    """
    inner, heads = 128, 8
    per = inner // heads // 2  # frequencies per head
    sel = torch.zeros(inner, 256)
    for h in range(heads):
        for j in range(per):
            f = h * per + j
            sel[h * 2 * per + j, f] = 1.0  # sin of frequency f
            sel[h * 2 * per + per + j, 128 + f] = 1.0  # cos of frequency f
    for layer in sam.mask_decoder.transformer.layers:
        att = layer.cross_attn_image_to_token
        for proj in (att.q_proj, att.k_proj):
            proj.weight.copy_(alpha * sel)
            proj.bias.zero_()


def export_state(sam) -> dict[str, torch.Tensor]:
    """The trained weights as an official-layout fp32 state dict (checked against the 1024 model)."""
    state = {k: v.detach().float().clone() for k, v in sam.state_dict().items()}
    full = mobilesam_architecture()
    full.load_state_dict(state, strict=True)
    return state


PER_KIND = {"point": 6, "box": 4, "box_point": 1, "pos_neg": 2, "box_mask": 2, "bg_point": 1, "bg_box": 1}


def train(
    out: Path, steps: int, seed: int = 0, lr: float = 8e-4, max_minutes: float | None = None, threads: int = 1, log_every: int = 10
) -> Path:
    torch.set_num_threads(threads)
    sam = build_train_model(seed)
    sam.train()
    params = [p for p in sam.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warm = max(1, steps // 20)
    t0 = time.time()

    def progress(s: int) -> float:
        # the cosine runs over the steps, or over the time budget if that ends first (a busy machine)
        frac = s / steps
        if max_minutes is not None:
            frac = max(frac, (time.time() - t0) / (60 * max_minutes))
        return min(frac, 1.0)

    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * progress(s)))
    )
    rng = np.random.default_rng(TRAIN_SEED_BASE + seed)
    hist: list[float] = []
    ious: list[float] = []
    for step in range(steps):
        x, lab, off = make_crop(rng)
        groups = sample_prompts(lab, rng, PER_KIND)
        if not groups:
            continue
        emb = sam.image_encoder(x[None])
        pe = _dense_pe(sam, off, emb.shape[-1])
        balance = max(0.0, 1.0 - 2.0 * progress(step))  # faded out over the first half
        total, click_iou = crop_loss(sam, emb, pe, off, groups, balance)
        ious.append(click_iou)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        hist.append(total.item())
        elapsed = time.time() - t0
        if step % log_every == 0 or step == steps - 1:
            print(
                f"step {step} loss {np.mean(hist[-log_every:]):.4f} click-iou {np.mean(ious[-log_every:]) if ious else 0:.3f} "
                f"lr {sched.get_last_lr()[0]:.2e} {elapsed / (step + 1):.2f} s/step {elapsed / 60:.1f} min "
                f"(cpu {time.process_time() / 60:.1f} min)",
                flush=True,
            )
        if step % 200 == 199:
            torch.save(export_state(sam), out)
        if max_minutes is not None and progress(step + 1) >= 1.0 and step + 1 < steps:
            print(f"stopping at step {step}: {max_minutes} min budget reached", flush=True)
            break
    sam.eval()
    torch.save(export_state(sam), out)
    print(f"saved {out} after {(time.time() - t0) / 60:.1f} min", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="where to write the fp32 state dict (.pt)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=8e-4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core machine)")
    ap.add_argument("--max-minutes", type=float, default=None, help="stop early (and save) after this long")
    a = ap.parse_args(argv)
    train(a.out, a.steps, a.seed, a.lr, a.max_minutes, a.threads)


if __name__ == "__main__":
    main()
