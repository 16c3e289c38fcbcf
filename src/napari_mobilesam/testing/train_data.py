"""Training data for :mod:`.train_synthetic`: synthetic crops of SAM's 1024² canvas and the
prompts sampled on them, with their targets (see that module's docstring).

Coordinates: prompts are ``(x, y)`` in crop pixels; targets are ``LOSS x LOSS`` float masks.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage as ndi

from ..engine.image import to_rgb_uint8
from .synthetic import render_cells, sample_cells

CROP = 224  # training crop of the 1024² canvas (see train_synthetic's docstring)
CANVAS = 1024
LOSS = 112  # masks are compared at half the crop's resolution
MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
PER_KIND = {"point": 6, "box": 4, "box_point": 1, "pos_neg": 2, "box_mask": 2, "bg_point": 1, "bg_box": 1}
# stage 3 adds the pair prompt and Refine's prompts (a wrong mask + its box + a click)
PER_KIND_3 = {**PER_KIND, "box_mask": 1, "prop_mask": 2, "box_pair_neg": 2, "mask_click": 2, "mask_click_neg": 1}

# ---------------------------------------------------------------------------------------- data
def make_crop(rng: np.random.Generator, dark: float = 0.25) -> tuple[torch.Tensor, np.ndarray, tuple[int, int]]:
    """One training crop: ``(image 3 x CROP x CROP float normalised, labels CROP x CROP int32,
    (oy, ox) crop offset in the 1024 canvas)``; ``dark``: the share of brightfield-like crops."""
    f = float(np.exp(rng.uniform(0, np.log(4.0))))
    oy, ox = (int(v) * CROP for v in rng.integers(0, CANVAS // CROP + 1, 2))
    native = math.ceil(CROP / f) + 2
    # cell radius 8..90 px in the canvas (at most 40 px in the frame), e.g. 8..22 px in a 256² frame
    radius = (max(8.0 / f, 4.0), min(90.0, 40.0 * f) / f)
    mean_r = math.sqrt(radius[0] * radius[1])
    n = int(native * native / (math.pi * mean_r**2) * rng.uniform(0.25, 0.6)) + 2
    cells = sample_cells((native, native), n, rng, radius, 2.5, float(rng.uniform(0.1, 0.5)), (0.25, 0.9))
    # cells may hang over the native window's edges: the window is a piece of a larger frame
    cells[:, :2] += rng.uniform(-0.5, 0.5, (len(cells), 2)) * mean_r
    polarity = "dark" if rng.random() < dark else "bright"
    dtype = np.uint16 if rng.random() < 0.25 else np.uint8
    img, lab = render_cells(
        (native, native), cells, seed=int(rng.integers(1 << 31)), polarity=polarity, dtype=dtype,
        blur=float(rng.uniform(0.5, 2.0)), noise=float(rng.uniform(0.01, 0.07)), texture=float(rng.uniform(0.1, 0.35)),
    )
    rgb = to_rgb_uint8(img)
    size = round(native * f)
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


def _moved(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A cell's mask as the previous frame gave it: shifted, grown or shrunk (bool, CROP²)."""
    shift = rng.normal(0, 0.08 * math.sqrt(mask.sum()), 2)
    m = ndi.shift(mask.astype(np.float32), shift, order=0) > 0.5
    grow = int(rng.integers(-2, 3)) * 2
    if grow > 0:
        m = ndi.binary_dilation(m, iterations=grow)
    elif grow < 0:
        m = ndi.binary_erosion(m, iterations=-grow)
    return m if m.any() else mask


def _as_logits(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A bool CROP² mask as a binary mask input on the CROP/4 grid, +-m with m uniform in 2..10
    (the widget and Propagate send +-8: engine.propagate.mask_to_logits)."""
    k = CROP // (CROP // 4)
    low = np.asarray(mask, np.float32).reshape(CROP // 4, k, CROP // 4, k).mean((1, 3))
    return ((low > 0.5) * 2 - 1).astype(np.float32) * rng.uniform(2.0, 10.0)


def _mask_logits(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A cell's mask as the previous frame's mask input: shifted, grown or shrunk, CROP/4 grid."""
    return _as_logits(_moved(mask, rng), rng)


def _bad_mask(m: np.ndarray, lab: np.ndarray, cid: int, rng: np.random.Generator) -> np.ndarray:
    """A wrong mask of cell ``m`` as a user corrects it with *Refine*: grown by 2-16 px, merged
    with a touching neighbour, shrunk, or shifted."""
    r = rng.random()
    if r < 0.45:
        bad = ndi.binary_dilation(m, iterations=int(rng.integers(2, 17)))
    elif r < 0.7:
        ring = ndi.binary_dilation(m, iterations=4) & ~m
        nbrs = [i for i in np.unique(lab[ring]) if i and i != cid]
        bad = m | (lab == nbrs[int(rng.integers(len(nbrs)))]) if nbrs else ndi.binary_dilation(m, iterations=8)
    elif r < 0.85:
        bad = ndi.binary_erosion(m, iterations=int(rng.integers(2, 6)))
    else:
        shift = rng.normal(0, 0.25 * math.sqrt(m.sum()), 2)
        bad = ndi.shift(m.astype(np.float32), shift, order=0) > 0.5
    return bad if bad.sum() >= 16 else ndi.binary_dilation(m, iterations=4)


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
                elif kind == "box_pair_neg":  # a box over two touching cells, a click on each: + on the cell, - on the other
                    ring = ndi.binary_dilation(m, iterations=3) & ~m
                    nbrs = [i for i in np.unique(lab[ring]) if i and i != cid and (lab == i).sum() >= 64]
                    if not nbrs:
                        continue
                    other = lab == nbrs[int(rng.integers(len(nbrs)))]
                    pts = np.stack([_point_in(m, rng), _point_in(other, rng)])
                    add(kind, points=pts, labels=np.array([1, 0]), boxes=_box_of(m | other, rng, 0.04), target=_down(m))
                elif kind == "box_mask":
                    add(kind, boxes=_box_of(m, rng, 0.08), masks=_mask_logits(m, rng), target=_down(m))
                elif kind == "prop_mask":  # as Propagate prompts: the previous frame's mask and ITS box
                    prev = _moved(m, rng)
                    add(kind, boxes=_box_of(prev, rng, 0.03), masks=_as_logits(prev, rng), target=_down(m))
                elif kind in ("mask_click", "mask_click_neg"):  # Refine: a wrong mask, its box, a click
                    bad = _bad_mask(m, lab, cid, rng)
                    pts, labels = [_point_in(m, rng)], [1]
                    if kind == "mask_click_neg":
                        spill = bad & ~m
                        if spill.sum() < 8:
                            continue
                        pts.append(_point_in(spill, rng))
                        labels.append(0)
                    add(kind, points=np.stack(pts), labels=np.array(labels), boxes=_box_of(bad, rng, 0.0),
                        masks=_as_logits(bad, rng), target=_down(m))
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


def refine_prompts(groups: dict[str, dict], best_low: torch.Tensor, rng: np.random.Generator) -> dict[str, dict]:
    """SAM's iterative training rounds: the clicks and boxes again, each with its first-round mask
    as mask input; a click also gets a correction click in the middle of the larger error (positive
    on a missed part, negative on a spill), as a user would add. Boxes + mask input are what
    propagation sends on every frame. Works on a crop or on a context grid (:func:`in_context`):
    the targets' side is half the decoded area's side in pixels."""
    out: dict[str, dict] = {}
    start = 0
    for kind, g in groups.items():
        n = len(g["target"])
        if kind in ("point", "box"):
            size = g["target"][0].shape[-1]
            scale = 4 * best_low.shape[-1] // size  # pixels per target cell (2)
            low = best_low[start : start + n]
            pred = F.interpolate(low[:, None], (size, size), mode="bilinear", align_corners=False)[:, 0].numpy() > 0
            for i in range(n):
                tgt = g["target"][i] > 0.5
                item = {"masks": low[i].numpy(), "target": g["target"][i]}
                if kind == "box":
                    item["boxes"] = g["boxes"][i]
                else:
                    fn, fp = tgt & ~pred[i], pred[i] & ~tgt
                    err, lab = (fn, 1) if fn.sum() >= fp.sum() else (fp, 0)
                    if err.any():
                        dist = ndi.distance_transform_edt(np.pad(err, 1))[1:-1, 1:-1]
                        r, c = np.unravel_index(int(dist.argmax()), err.shape)
                        corr = np.array([c, r], np.float32) * scale + scale / 2
                    else:
                        corr, lab = g["points"][i][0], 1
                    item["points"] = np.stack([g["points"][i][0], corr])
                    item["labels"] = np.array([1, lab])
                grp = out.setdefault(kind + "_refine", {})
                for k, v in item.items():
                    grp.setdefault(k, []).append(v)
        start += n
    return out


def in_context(groups: dict[str, dict], quadrant: tuple[int, int]) -> dict[str, dict]:
    """The crop's prompts on a 2 x 2 grid of crops, the crop at ``quadrant`` (qy, qx): prompts move
    by a crop, targets and mask inputs grow to the grid (empty / -m outside the crop). At inference
    the decoder sees 64 x 64 image tokens; trained on one crop's 14 x 14 only, masks leaked onto
    tokens it never saw. On the grid, every prompt learns that the other crops' cells are not its."""
    qy, qx = quadrant
    shift = np.array([qx * CROP, qy * CROP], np.float32)
    out: dict[str, dict] = {}
    for kind, g in groups.items():
        h: dict[str, list] = {}
        for k, vals in g.items():
            if k == "points":
                h[k] = [v + shift for v in vals]
            elif k == "boxes":
                h[k] = [v + np.tile(shift, 2) for v in vals]
            elif k in ("target", "masks"):
                h[k] = []
                for v in vals:
                    n = v.shape[-1]
                    big = np.full((2 * n, 2 * n), 0.0 if k == "target" else -float(np.abs(v).max()), np.float32)
                    big[qy * n : (qy + 1) * n, qx * n : (qx + 1) * n] = v
                    h[k].append(big)
            else:
                h[k] = list(vals)
        out[kind] = h
    return out
