"""How well a model segments synthetic cells: the measures used by tests/test_functional.py.

``python -m napari_mobilesam.testing.metrics [--checkpoint PATH] [--detector PATH]`` prints every
number of the functional tests (click and box IoU, recall and precision per sampler, tiling,
propagation) for a checkpoint, by default the functional test checkpoint, on the same held-out
frames (seeds 101-107) as the tests.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage as ndi

__all__ = ["bbox", "cells_of", "interior_point", "iou", "match", "right_cell"]


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


def _report(checkpoint: str | None, detector: str | None, slow: bool) -> None:
    from napari_mobilesam import Predictor, Prompt, build_mobilesam, iter_propagate, segment_everything

    from . import synthetic_cells, synthetic_checkpoint, synthetic_detector, synthetic_stack

    pred = Predictor(build_mobilesam(checkpoint or synthetic_checkpoint()))
    frames = [
        synthetic_cells((256, 256), 16, seed=101, radius=(9, 22)),
        synthetic_cells((256, 256), 16, seed=102, radius=(9, 22), polarity="dark", dtype=np.uint16),
    ]
    clicks, boxes, right = [], [], {"click": [], "box": []}
    for img, lab in frames:
        pred.set_image(img)
        ids = cells_of(lab)
        ms = pred.predict_objects([Prompt(points=[interior_point(lab == c)]) for c in ids], multimask_output=True)
        clicks += [iou(m.full(), lab == c) for m, c in zip(ms, ids)]
        right["click"] += [right_cell(m.full(), lab, c) for m, c in zip(ms, ids)]
        ms = pred.predict_objects([Prompt(box=bbox(lab == c)) for c in ids])
        boxes += [iou(m.full(), lab == c) for m, c in zip(ms, ids)]
        right["box"] += [right_cell(m.full(), lab, c) for m, c in zip(ms, ids)]
    for name, v in (("click", clicks), ("box", boxes)):
        v = np.array(v)
        print(f"{name}: n={len(v)} median IoU {np.median(v):.3f}, >=0.5: {(v >= 0.5).mean():.2f}, >=0.8: {(v >= 0.8).mean():.2f}, "
              f">=0.85: {(v >= 0.85).mean():.2f}, mask mostly on the prompted cell: {np.mean(right[name]):.2f}, "
              f"10th percentile {np.percentile(v, 10):.3f}")
    if not slow:
        return
    img, lab = synthetic_cells((256, 256), 16, seed=104, radius=(10, 20))
    options = {"blobs": dict(diameter=30), "grid": dict(points_per_side=16),
               "object-aware": dict(imgsz=256, conf=0.25, detector=detector or synthetic_detector())}
    for sampler, kw in options.items():
        t = time.perf_counter()
        out = segment_everything(img, pred, sampler, **kw)
        r, p = match(out, lab)
        print(f"everything {sampler}: recall {r:.2f} precision {p:.2f} ({len(np.unique(out)) - 1} labels, "
              f"{len(np.unique(lab)) - 1} cells, {time.perf_counter() - t:.1f} s)")
    img, lab = synthetic_cells((2048, 2048), 70, seed=105, radius=(10, 24))
    t = time.perf_counter()
    out = segment_everything(img, pred, "blobs", diameter=34, tile=1024)
    r, p = match(out, lab)
    print(f"tiling 2048² tile=1024: recall {r:.2f} precision {p:.2f} ({len(np.unique(lab)) - 1} cells, {time.perf_counter() - t:.1f} s)")
    stack, labels = synthetic_stack(seed=106)
    areas = {c: [(labels[t] == c).sum() for t in range(len(stack))] for c in np.unique(labels[0]) if c}
    stays = [c for c, a in areas.items() if min(a) >= 300][:1]
    leaves = [c for c, a in areas.items() if a[0] >= 300 and a[-1] == 0][:1]
    for cid in stays + leaves:
        steps = list(iter_propagate(pred, lambda i: stack[i], len(stack), 0, labels[0] == cid, directions=(1,)))
        got = {s.index: s.mask for s in steps if s.mask is not None}
        ious = [round(iou(got[t], labels[t] == cid), 2) if t in got else None for t in range(1, len(stack))]
        area = [int((labels[t] == cid).sum()) for t in range(1, len(stack))]
        print(f"propagate cell {cid}: IoU per frame {ious}, area {area}, {steps[-1].stopped or 'to the end'}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--detector", default=None)
    ap.add_argument("--quick", action="store_true", help="clicks and boxes only")
    a = ap.parse_args(argv)
    _report(a.checkpoint, a.detector, not a.quick)


if __name__ == "__main__":
    main()
