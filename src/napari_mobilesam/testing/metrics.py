"""How well a model segments synthetic cells: the measures used by tests/test_functional.py.

``python -m napari_mobilesam.testing.metrics [--checkpoint PATH] [--detector PATH] [--quick]``
prints every number of the functional tests for a checkpoint (by default the functional test
checkpoint) on the same held-out frames as the tests (seeds 101-112; training uses seeds from
1,000,000 on): click and box IoU on 256², 512² and 1024² frames in 8 and 16 bit, what a negative
click takes out of a spill onto a touching cell, recall and precision of "segment everything"
per sampler, tiling, and propagation along a drifting cell.

The measuring functions return plain numbers; the tests assert thresholds on exactly these.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "bbox",
    "box_ious",
    "cells_of",
    "click_ious",
    "everything",
    "interior_point",
    "iou",
    "match",
    "negative_click",
    "prompt_frames",
    "propagation",
    "refine_ious",
    "right_cell",
    "touching_pairs",
]

# held-out frames: (shape, cells, seed, radius, polarity, dtype); the radius grows with the frame
# so that cells cover a similar share of SAM's 1024² input
PROMPT_FRAMES = [
    ((256, 256), 16, 101, (9, 22), "bright", np.uint8),
    ((256, 256), 16, 102, (9, 22), "dark", np.uint16),
    ((512, 512), 24, 108, (14, 34), "bright", np.uint16),
    ((512, 512), 24, 109, (14, 34), "dark", np.uint8),
    ((1024, 1024), 30, 110, (20, 44), "bright", np.uint8),
    ((1024, 1024), 30, 111, (20, 44), "dark", np.uint16),
]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks (0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def cells_of(labels: np.ndarray, min_area: int = 120) -> list[int]:
    """Ids of the cells with at least ``min_area`` visible pixels."""
    ids, counts = np.unique(labels, return_counts=True)
    return [int(i) for i, c in zip(ids, counts) if i and c >= min_area]


def interior_point(mask: np.ndarray) -> np.ndarray:
    """Where a user clicks: the pixel deepest inside the mask, ``(row, col)`` float."""
    dist = ndi.distance_transform_edt(mask)
    return np.array(np.unravel_index(dist.argmax(), mask.shape), float)


def bbox(mask: np.ndarray) -> np.ndarray:
    """``(row0, col0, row1, col1)`` of a mask, exclusive ends."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], float)


def match(labels: np.ndarray, truth: np.ndarray, thr: float = 0.5) -> tuple[float, float]:
    """``(recall, precision)``: the fraction of true cells with a label at IoU >= ``thr``, and the
    fraction of labels that match a true cell at IoU >= ``thr``."""
    cells = [i for i in np.unique(truth) if i]
    found = [i for i in np.unique(labels) if i]
    hits = 0
    for c in cells:
        m = truth == c
        cand = [k for k in np.unique(labels[m]) if k]
        hits += any(iou(labels == k, m) >= thr for k in cand)
    precise = 0
    for k in found:
        m = labels == k
        cand = [c for c in np.unique(truth[m]) if c]
        precise += any(iou(truth == c, m) >= thr for c in cand)
    return hits / max(len(cells), 1), precise / max(len(found), 1)


def right_cell(mask: np.ndarray, truth: np.ndarray, cell: int) -> bool:
    """Whether ``mask`` overlaps ``cell`` more than any other cell and more than the background."""
    counts = np.bincount(truth[mask].ravel(), minlength=int(truth.max()) + 1)
    return bool(mask.any()) and int(counts.argmax()) == cell


def touching_pairs(lab: np.ndarray) -> list[tuple[int, int]]:
    """``(cell, neighbour)`` pairs of cells (both of :func:`cells_of`) that touch, in both orders."""
    ids = set(cells_of(lab))
    pairs = set()
    for c in ids:
        ring = ndi.binary_dilation(lab == c, iterations=2) & (lab != c) & (lab > 0)
        pairs.update((c, int(o)) for o in np.unique(lab[ring]) if o in ids)
    return sorted(pairs)


def prompt_frames(which: Sequence[int] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The held-out frames of :data:`PROMPT_FRAMES` (all, or those indexed by ``which``)."""
    from .synthetic import synthetic_cells

    rows = PROMPT_FRAMES if which is None else [PROMPT_FRAMES[i] for i in which]
    return [synthetic_cells(s, n, seed=seed, radius=r, polarity=p, dtype=d) for s, n, seed, r, p, d in rows]


def click_ious(pred: Any, frames: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """A click at the deepest point of each cell (multimask, the best mask by predicted IoU):
    ``(IoU with the cell, whether the mask lies mostly on it)`` per cell, float and bool arrays."""
    from napari_mobilesam import Prompt

    ious, right = [], []
    for img, lab in frames:
        pred.set_image(img)
        ids = cells_of(lab)
        ms = pred.predict_objects([Prompt(points=[interior_point(lab == c)]) for c in ids], multimask_output=True)
        ious += [iou(m.full(), lab == c) for m, c in zip(ms, ids)]
        right += [right_cell(m.full(), lab, c) for m, c in zip(ms, ids)]
    return np.array(ious), np.array(right, bool)


def box_ious(pred: Any, frames: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's exact bounding box as the prompt: ``(IoU, mask mostly on the cell)`` per cell."""
    from napari_mobilesam import Prompt

    ious, right = [], []
    for img, lab in frames:
        pred.set_image(img)
        ids = cells_of(lab)
        ms = pred.predict_objects([Prompt(box=bbox(lab == c)) for c in ids])
        ious += [iou(m.full(), lab == c) for m, c in zip(ms, ids)]
        right += [right_cell(m.full(), lab, c) for m, c in zip(ms, ids)]
    return np.array(ious), np.array(right, bool)


def negative_click(pred: Any, img: np.ndarray, lab: np.ndarray, pairs: int = 12, click: bool = False) -> dict[str, np.ndarray]:
    """Touching pairs ``(a, b)``: a box drawn over both spills onto ``b``; a negative click on ``b``
    (added to the same box) should take the spill out and keep ``a``. With ``click``, both
    prompts also have a positive click on ``a`` (a model that keeps to the click spills less).

    Returns per pair: ``spill`` (share of ``b`` covered without the negative click), ``after``
    (with it), ``removed`` (share of the spill taken out: ``1 - after / spill``, 1 where there was
    no spill) and ``kept`` (IoU of the mask with ``a`` after the negative click).
    """
    from napari_mobilesam import Prompt

    pred.set_image(img)
    spill, after, kept = [], [], []
    for a, b in touching_pairs(lab)[:pairs]:
        ma, mb = lab == a, lab == b
        box = bbox(ma | mb)
        pa, pb = interior_point(ma), interior_point(mb)
        pos = ([pa], [1]) if click else ([], [])
        plain = Prompt(points=pos[0] or None, labels=pos[1] or None, box=box)
        neg = Prompt(points=[*pos[0], pb], labels=[*pos[1], 0], box=box)
        plain_m, neg_m = (m.full() for m in pred.predict_objects([plain, neg]))
        spill.append((plain_m & mb).sum() / mb.sum())
        after.append((neg_m & mb).sum() / mb.sum())
        kept.append(iou(neg_m, ma))
    s, a_ = np.array(spill), np.array(after)
    removed = np.where(s > 0, 1 - a_ / np.maximum(s, 1e-9), 1.0)
    return {"spill": s, "after": a_, "removed": removed, "kept": np.array(kept)}


def refine_ious(pred: Any, img: np.ndarray, lab: np.ndarray, grow: int = 6, cells: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """*Refine* as the widget does it: a cell's label grown by ``grow`` px and one positive click
    at the cell's deepest point (the engine's split_refinements + refine_objects: the label's box
    and mask as mask input). ``(IoU of the grown label, IoU after refining)`` per cell."""
    from napari_mobilesam.engine.prompts import PromptTable
    from napari_mobilesam.engine.refine import refine_objects, split_refinements

    pred.set_image(img)
    before, after = [], []
    edge = set(np.unique(np.concatenate([lab[:8].ravel(), lab[-8:].ravel(), lab[:, :8].ravel(), lab[:, -8:].ravel()])))
    ids, counts = np.unique(lab[lab > 0], return_counts=True)
    inner = [int(i) for _, i in sorted(zip(-counts, ids)) if i not in edge][:cells]  # largest, off the border
    for c in inner:
        cell = lab == c
        bad = ndi.binary_dilation(cell, iterations=grow)
        labels = np.where(bad, 9, 0).astype(np.uint32)
        table = PromptTable.of(points=[interior_point(cell)], labels=[1], ids=[9])
        found, _ = split_refinements(table, lambda f, labels=labels: labels, 0, (), spatial=lab.shape)
        (ob,) = refine_objects(found, labels, pred)
        before.append(iou(bad, cell))
        after.append(iou(pred.predict_objects([ob.prompt])[0].full(), cell))
    return np.array(before), np.array(after)


EVERYTHING_OPTIONS: dict[str, dict[str, Any]] = {
    "blobs": {"diameter": 30},
    "grid": {"points_per_side": 16},
    "object-aware": {"imgsz": 256, "conf": 0.25},  # the synthetic detector was trained at 256
}


def everything(pred: Any, sampler: str, img: np.ndarray, lab: np.ndarray, detector: Any = None, **kw: Any) -> tuple[float, float]:
    """``(recall, precision)`` at IoU 0.5 of ``segment_everything`` with ``sampler``'s test options."""
    from napari_mobilesam import segment_everything

    from . import synthetic_detector

    opts = {**EVERYTHING_OPTIONS[sampler], **kw}
    if sampler == "object-aware":
        opts["detector"] = detector or synthetic_detector()
    return match(segment_everything(img, pred, sampler, **opts), lab)


def propagation(pred: Any, stack: np.ndarray, labels: np.ndarray, cid: int) -> tuple[list[float | None], str]:
    """Propagate cell ``cid``'s frame-0 mask forward: ``(IoU per frame 1.., None where not
    segmented; the stop reason or "")``."""
    from napari_mobilesam import iter_propagate

    steps = list(iter_propagate(pred, lambda i: stack[i], len(stack), 0, labels[0] == cid, directions=(1,)))
    got = {s.index: s.mask for s in steps if s.mask is not None}
    ious = [iou(got[t], labels[t] == cid) if t in got else None for t in range(1, len(stack))]
    return ious, steps[-1].stopped or ""


def track_cells(labels: np.ndarray) -> tuple[list[int], list[int]]:
    """``(cells visible with >= 300 px in every frame, cells that start so and leave the frame)``."""
    n = len(labels)
    areas = {c: [(labels[t] == c).sum() for t in range(n)] for c in np.unique(labels[0]) if c}
    stays = [c for c, a in areas.items() if min(a) >= 300]
    leaves = [c for c, a in areas.items() if a[0] >= 300 and a[-1] == 0]
    return stays, leaves


def _share(v: np.ndarray, thr: float) -> str:
    return f"{(v >= thr).mean():.2f}"


def _prompt_summary(pred: Any, c: np.ndarray, b: np.ndarray) -> None:
    from . import synthetic_cells

    print(f"ALL click IoU>=0.8: {_share(c, 0.8)} (median {np.median(c):.3f}, 10th pct {np.percentile(c, 10):.3f}); "
          f"box IoU>=0.85: {_share(b, 0.85)} (median {np.median(b):.3f}, 10th pct {np.percentile(b, 10):.3f})")
    img, lab = synthetic_cells((256, 256), 24, seed=103, radius=(10, 22), touching=0.8)
    for click in (False, True):
        neg = negative_click(pred, img, lab, click=click)
        print(f"negative click ({'box + click' if click else 'box'} over a pair): spill {np.round(neg['spill'], 2)}, "
              f"after {np.round(neg['after'], 2)}; spill mean {neg['spill'].mean():.2f}, removed: mean "
              f"{neg['removed'].mean():.2f}, >=0.8 in {_share(neg['removed'], 0.8)}; kept IoU median {np.median(neg['kept']):.2f}")
    img, lab = synthetic_cells((256, 256), 16, seed=101, radius=(9, 22))
    before, after = refine_ious(pred, img, lab)
    print(f"refine (label grown 6 px + one click): IoU median {np.median(before):.2f} -> {np.median(after):.2f}, "
          f"better for {(after > before).sum()} of {len(after)}")


def _report(checkpoint: str | None, detector: str | None, slow: bool, prompts: bool = True) -> None:
    from napari_mobilesam import Predictor, build_mobilesam

    from . import synthetic_cells, synthetic_checkpoint, synthetic_stack

    pred = Predictor(build_mobilesam(checkpoint or synthetic_checkpoint()))
    allc, allb = [], []
    for k, row in enumerate(PROMPT_FRAMES if prompts else []):
        frames = prompt_frames([k])
        c, cr = click_ious(pred, frames)
        b, br = box_ious(pred, frames)
        allc.append(c)
        allb.append(b)
        print(f"{row[0][0]}² {row[4]:6} {np.dtype(row[5]).name:6} n={len(c):2d}  click: median {np.median(c):.3f} "
              f">=0.8 {_share(c, 0.8)} right {cr.mean():.2f}  box: median {np.median(b):.3f} >=0.85 {_share(b, 0.85)} "
              f"right {br.mean():.2f}", flush=True)
    if prompts:
        _prompt_summary(pred, np.concatenate(allc), np.concatenate(allb))
    if not slow:
        return
    img, lab = synthetic_cells((256, 256), 16, seed=104, radius=(10, 20))
    for sampler in EVERYTHING_OPTIONS:
        t = time.perf_counter()
        r, p = everything(pred, sampler, img, lab, detector)
        print(f"everything {sampler}: recall {r:.2f} precision {p:.2f} ({time.perf_counter() - t:.1f} s)", flush=True)
    img, lab = synthetic_cells((2048, 2048), 70, seed=105, radius=(10, 24))
    r, p = everything(pred, "blobs", img, lab, diameter=34, tile=1024)
    print(f"tiling 2048² tile=1024: recall {r:.2f} precision {p:.2f}")
    for seed in (106, 112):
        stack, labels = synthetic_stack(seed=seed)
        stays, leaves = track_cells(labels)
        for cid in stays[:1] + leaves[:1]:
            ious, stop = propagation(pred, stack, labels, cid)
            print(f"propagate seed {seed} cell {cid}: IoU per frame {[None if v is None else round(v, 2) for v in ious]}, "
                  f"{stop or 'to the end'}", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--detector", default=None)
    ap.add_argument("--quick", action="store_true", help="prompts only (clicks, boxes, negative click)")
    ap.add_argument("--no-prompts", action="store_true", help="everything, tiling and propagation only")
    a = ap.parse_args(argv)
    _report(a.checkpoint, a.detector, not a.quick, not a.no_prompts)


if __name__ == "__main__":
    main()
