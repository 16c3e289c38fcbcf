"""Train the functional test checkpoint end to end on synthetic cells (CPU, seeded, two stages).

``python -m napari_mobilesam.testing.train_synthetic --out mobilesam_synthetic.pt [--steps N] ...``
(the two commands that made the committed model are in docs/training.md).

The whole MobileSAM (TinyViT encoder, prompt encoder, mask decoder) trains with SAM's losses:
focal (x20) + dice on the masks, MSE between the predicted and the actual IoU. The model is used
at SAM's 1024² input; training runs on 224² crops of that 1024² canvas, which is cheap and exact
in the ways that matter:

- TinyViT's weights do not depend on the input size; 224 px = 14 tokens = one stage-3 window,
  two stage-4 and four stage-2 windows (7 tokens), and crops start at multiples of 224 px, so
  every attention window of a crop is a window of the full canvas;
- the positional encodings of image tokens and prompts are computed in the 1024 canvas's
  coordinates, exactly as at inference;
- the frames are made as the model sees them: a synthetic frame of native size ``1024 / f``
  (``f`` log-uniform in 1..4, i.e. frames of 256..1024 px) is resized by SAM's own transform
  (bilinear, longest side 1024); a crop sometimes ends in padding, as non-square frames do.

Prompts per crop (:mod:`.train_data`; many per embedding, the encoder runs once): single positive
clicks (multimask, loss on the best of the three), jittered boxes, box + click, a click plus a
negative click on a touching neighbour, a box over two touching cells with a positive click on
one and a negative click on the other, box + mask input of the cell shifted a few pixels (as
propagation prompts), and clicks / boxes on background whose target is an empty mask (so that
grid points on background and vanished cells score low). With ``--refine`` every click and box
is decoded a second time with its first-round mask as mask input, a click with a correction click
on its larger error (SAM's iterative training).

Stage 1 (from a seeded random initialisation) needs three things to learn within a CPU budget
(without them nothing is learnt in 200 steps: click IoU 0.00): the positional encoding's random
Fourier matrix is drawn at scale 2 instead of SAM's 1, the decoder's image-to-token attention
starts as a position match (:func:`_localising_init`), and a class-balanced cross-entropy is added
to the loss during the first half of training (it keeps the masks from collapsing to empty).

Stage 2 (``--init`` the stage-1 weights, ``--calibrate N``) fixes why stage 1 stalls on held-out
frames: with one crop per step, BatchNorm in training mode normalises each crop by its own
statistics, while inference uses the running averages. The same stage-1 weights give held-out
click IoU 0.77 (median) with per-image statistics and 0.43 with the running ones, and
recalibrating the running statistics does not help (0.46): the network relies on per-image
normalisation. Stage 2 sets the statistics once over N crops and then trains with BatchNorm in
eval mode (its affine weights still train), exactly as the model runs at inference.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..model.build import mobilesam_architecture
from ..model.tiny_vit import TinyViT
from .train_data import (
    CANVAS,
    CROP,
    MEAN,
    PER_KIND,
    PER_KIND_3,
    STD,
    in_context,
    make_crop,
    refine_prompts,
    sample_prompts,
)

__all__ = ["CROP", "MEAN", "STD", "build_train_model", "calibrate_batchnorm", "crop_loss", "export_state", "train"]

PE_SCALE = 2.0  # see build_train_model
TRAIN_SEED_BASE = 1_000_000  # training frames use seeds >= this; tests use small seeds


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
) -> tuple[torch.Tensor, float, torch.Tensor]:
    """SAM's loss for all prompt groups of one crop embedding ``1 x 256 x g x g``, decoded in one pass
    (groups with fewer tokens are padded with SAM's "not a point" token).

    ``balance`` weighs an extra class-balanced cross-entropy (foreground and background pixels of
    each target count half each). From a random start, focal + dice alone first collapse to empty
    masks (most pixels are background); this term, faded out during training, avoids that.

    Returns the mean loss, the mean IoU of the single clicks' best masks, and each prompt's best
    low-resolution logits ``B x 4g x 4g`` (detached, in the order of the groups) for :func:`refine_prompts`."""
    grid = emb.shape[-1]
    enc = [_encode(sam, offset, kind, g, grid) for kind, g in groups.items()]
    width = max(s.shape[1] for s, _ in enc)
    pad = sam.prompt_encoder.not_a_point_embed.weight
    sparse = torch.cat([torch.cat([s, pad.expand(s.shape[0], width - s.shape[1], -1)], 1) for s, _ in enc])
    dense = torch.cat([d for _, d in enc])
    multi = torch.cat([torch.full((len(g["target"]),), kind in ("point", "bg_point")) for kind, g in groups.items()])
    clicks = torch.cat([torch.full((len(g["target"]),), kind == "point") for kind, g in groups.items()])
    target = torch.from_numpy(np.concatenate([np.stack(g["target"]) for g in groups.values()]))[:, None]
    low, iou_pred = sam.mask_decoder.predict_masks(emb, pe, sparse, dense)  # B x 4 x 4g x 4g, B x 4
    logits = F.interpolate(low, target.shape[-2:], mode="bilinear", align_corners=False)
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
    return loss, click_iou, low[rows, best].detach()


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


def _batchnorms(sam) -> list[torch.nn.BatchNorm2d]:
    return [m for m in sam.image_encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def calibrate_batchnorm(sam, rng: np.random.Generator, crops: int, dark: float = 0.25) -> None:
    """Set the encoder's BatchNorm running statistics to their average over ``crops`` training crops.

    With one crop per step, BatchNorm in training mode normalises each image by its own statistics
    (an instance norm), while inference uses the running averages: measured on held-out cells,
    the same stage-1 weights give click IoU 0.77 (median) with per-image statistics and 0.43 with
    the running ones. Stage 2 therefore calibrates the statistics once and then trains with them
    frozen (BatchNorm in eval mode), i.e. exactly as the model runs at inference.
    """
    enc = sam.image_encoder
    was = enc.training
    enc.train()
    for m in _batchnorms(sam):
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    with torch.no_grad():
        for _ in range(crops):
            enc(make_crop(rng, dark)[0][None])
    for m in _batchnorms(sam):
        m.momentum = 0.1
    enc.train(was)


def train(
    out: Path, steps: int, seed: int = 0, lr: float = 8e-4, max_minutes: float | None = None, threads: int = 1,
    log_every: int = 10, init: Path | None = None, calibrate: int = 0, balance_until: float = 0.5,
    per_kind: dict[str, int] | None = None, save_every: int = 200, refine: bool = False, dark: float = 0.25,
    context: float = 0.0, frozen_bn: bool = False,
) -> Path:
    """Train and save an fp32 official-layout state dict to ``out``.

    Stage 1 (from scratch): ``init=None``, BatchNorm in training mode, class-balanced CE faded out
    until ``balance_until`` of the run. Stage 2: ``init`` = the stage-1 weights, ``calibrate`` > 0
    crops to set the BatchNorm statistics, which then stay frozen (see :func:`calibrate_batchnorm`).
    Stage 3 adds ``context``: the share of steps decoded on a 2 x 2 grid of crops (28 x 28 tokens),
    the crop's embedding next to (detached) embeddings of the three previous crops (see
    :func:`.train_data.in_context`).
    """
    torch.set_num_threads(threads)
    sam = build_train_model(seed)
    rng = np.random.default_rng(TRAIN_SEED_BASE + seed)
    if init is not None:
        sam.load_state_dict(torch.load(init, map_location="cpu", weights_only=True), strict=True)
    sam.train()
    if calibrate:
        calibrate_batchnorm(sam, rng, calibrate, dark)
    if calibrate or frozen_bn:
        for m in _batchnorms(sam):
            m.eval()  # frozen statistics; the affine weights still train
    per_kind = per_kind or PER_KIND
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
    hist: list[float] = []
    ious: list[float] = []
    earlier: list[torch.Tensor] = []  # the last crops' embeddings (detached), context for stage 3
    for step in range(steps):
        x, lab, off = make_crop(rng, dark)
        groups = sample_prompts(lab, rng, per_kind)
        if not groups:
            continue
        emb = sam.image_encoder(x[None])
        fresh = emb.detach()
        if context > 0 and len(earlier) == 3 and rng.random() < context:
            qy, qx = (int(v) for v in rng.integers(0, 2, 2))
            tiles = list(earlier)
            tiles.insert(2 * qy + qx, emb)
            emb = torch.cat([torch.cat(tiles[:2], -1), torch.cat(tiles[2:], -1)], -2)
            groups = in_context(groups, (qy, qx))
            off = (off[0] - qy * CROP, off[1] - qx * CROP)
        earlier = [*earlier[-2:], fresh]
        pe = _dense_pe(sam, off, emb.shape[-1])
        balance = max(0.0, 1.0 - progress(step) / balance_until) if balance_until > 0 else 0.0
        total, click_iou, best_low = crop_loss(sam, emb, pe, off, groups, balance)
        if refine:
            again = refine_prompts(groups, best_low, rng)
            if again:
                total = total + crop_loss(sam, emb, pe, off, again, balance)[0]
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
        if step % save_every == save_every - 1:
            torch.save(export_state(sam), out)
        if max_minutes is not None and progress(step + 1) >= 1.0 and step + 1 < steps:
            print(f"stopping at step {step}: {max_minutes} min budget reached", flush=True)
            break
    sam.eval()
    torch.save(export_state(sam), out)
    print(f"saved {out} after {(time.time() - t0) / 60:.1f} min", flush=True)
    return out


def _per_kind(text: str) -> dict[str, int]:
    out = dict(PER_KIND)
    for item in text.split(","):
        k, v = item.split("=")
        out[k.strip()] = int(v)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="where to write the fp32 state dict (.pt)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=8e-4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core machine)")
    ap.add_argument("--max-minutes", type=float, default=None, help="stop early (and save) after this long")
    ap.add_argument("--init", type=Path, default=None, help="stage 2: start from these weights (official layout)")
    ap.add_argument("--calibrate", type=int, default=0, help="stage 2: crops to calibrate BatchNorm on, then frozen")
    ap.add_argument("--frozen-bn", action="store_true", help="keep --init's BatchNorm statistics frozen (a stage-2 start)")
    ap.add_argument("--balance-until", type=float, default=0.5, help="fraction of the run with the balanced CE (0: none)")
    ap.add_argument("--refine", action="store_true", help="a second, iterative round per click and box (SAM's)")
    ap.add_argument("--prompts", type=_per_kind, default=None, help="prompts per crop, e.g. point=6,box=4 (default PER_KIND)")
    ap.add_argument("--dark", type=float, default=0.25, help="share of brightfield-like (dark cell) crops")
    ap.add_argument("--context", type=float, default=0.0, help="stage 3: share of steps decoded on a 2 x 2 grid of crops")
    ap.add_argument("--stage3-prompts", action="store_true", help="stage 3's prompt mix (PER_KIND_3: + Refine and Propagate prompts)")
    ap.add_argument("--log-every", type=int, default=10, help="steps between log lines")
    ap.add_argument("--save-every", type=int, default=200, help="steps between checkpoints")
    a = ap.parse_args(argv)
    train(a.out, a.steps, a.seed, a.lr, a.max_minutes, a.threads, init=a.init, calibrate=a.calibrate,
          balance_until=a.balance_until, save_every=a.save_every, refine=a.refine, per_kind=a.prompts or (PER_KIND_3 if a.stage3_prompts else None),
          dark=a.dark, context=a.context, log_every=a.log_every, frozen_bn=a.frozen_bn)


if __name__ == "__main__":
    main()
