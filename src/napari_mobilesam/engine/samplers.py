"""Prompt samplers for segment-everything: detector-free blobs (microscopy) and SAM's point grid.

- :func:`blob_boxes`: scikit-image LoG/DoG blob detection on the normalised frame proposes one
  box per roundish object, sized from the blob's scale; the boxes are then decoded in batches
  like MobileSAMv2's detector boxes. No weights besides MobileSAM's.
- :func:`iter_grid_objects`: segment-anything's ``SamAutomaticMaskGenerator`` (32 x 32 point
  grid, three masks per point, IoU/stability filtering, box NMS) run on our
  :class:`~napari_mobilesam.engine.predictor.Predictor`, batch by batch so that it reports
  progress and can be cancelled between batches.

Coordinates are napari's: ``(row, col)``; boxes are ``(row0, col0, row1, col1)``.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Hashable

import numpy as np
import torch

from .predictor import ObjectMask, Predictor

__all__ = ["blob_boxes", "grid_batch_size", "iter_grid_objects"]


def _grey(rgb: np.ndarray, polarity: str) -> np.ndarray:
    """``(H, W)`` float32 in 0..1, objects bright (``polarity="dark"`` inverts)."""
    if polarity not in ("bright", "dark"):
        raise ValueError(f"polarity must be 'bright' (objects brighter than background) or 'dark', got {polarity!r}.")
    g = np.asarray(rgb, np.float32)
    if g.ndim == 3:
        g = g.mean(-1)
    g = g / 255.0 if rgb.dtype == np.uint8 else g
    return 1.0 - g if polarity == "dark" else g


def blob_boxes(
    rgb: np.ndarray,
    diameter: float | None = None,
    diameter_range: tuple[float, float] = (0.5, 2.0),
    method: str = "log",
    threshold: float = 0.05,
    polarity: str = "bright",
    overlap: float = 0.5,
    num_sigma: int = 6,
    box_scale: float = 1.2,
    max_det: int | None = 1000,
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes around blob-like objects found by scale-space blob detection.

    Args:
        rgb: ``(H, W, 3)`` uint8 (as from ``to_rgb_uint8``) or ``(H, W)`` float in 0..1.
        diameter: expected object diameter in pixels; default: about 1/40 of the shorter side.
        diameter_range: factors around ``diameter`` that bound the scale search.
        method: "log" (Laplacian of Gaussian; accurate) or "dog" (difference of Gaussians; faster).
        threshold: minimum scale-normalised response (intensities in 0..1); lower finds fainter objects.
        polarity: "bright" (fluorescence: objects brighter than background) or "dark" (brightfield).
        overlap: blobs overlapping more than this fraction are merged (skimage's ``overlap``).
        num_sigma: number of scales tried between the bounds ("log").
        box_scale: box half-side = ``box_scale`` x the blob radius.
        max_det: keep at most this many blobs, the strongest first (None: all).

    Returns:
        ``(boxes (N, 4) float64 (row0, col0, row1, col1), scores (N,) float64)``, strongest
        first; the box centre is the blob centre (up to clipping at the image border).
    """
    from scipy import ndimage
    from skimage.feature import blob_dog, blob_log
    from skimage.transform import downscale_local_mean

    if method not in ("log", "dog"):
        raise ValueError(f"method must be 'log' or 'dog', got {method!r}.")
    img = _grey(np.asarray(rgb), polarity)
    h, w = img.shape
    if diameter is None:
        diameter = max(4.0, min(h, w) / 40.0)
    if not diameter > 0 or not 0 < diameter_range[0] <= diameter_range[1]:
        raise ValueError(f"diameter={diameter} and diameter_range={diameter_range} must be positive, low <= high.")
    # sigma of a disk of radius r for the LoG is r / sqrt(2)
    smin = diameter * diameter_range[0] / 2 / math.sqrt(2)
    smax = diameter * diameter_range[1] / 2 / math.sqrt(2)
    # work at a coarser grid when objects are large: same blobs, far fewer pixels
    f = max(1, int(smin // 2))
    small = downscale_local_mean(img, (f, f)) if f > 1 else img
    if method == "log":
        blobs = blob_log(small, min_sigma=smin / f, max_sigma=smax / f, num_sigma=max(1, num_sigma), threshold=threshold, overlap=overlap)
    else:
        blobs = blob_dog(small, min_sigma=smin / f, max_sigma=smax / f, threshold=threshold, overlap=overlap)
    if len(blobs) == 0:
        return np.zeros((0, 4)), np.zeros(0)
    centres = (blobs[:, :2] + 0.5) * f - 0.5
    radius = blobs[:, 2] * f * math.sqrt(2)
    # strength = Gaussian-smoothed intensity at the centre minus the image median (background)
    smooth = ndimage.gaussian_filter(small, max(1.0, float(np.median(blobs[:, 2])) / 2))
    ri = np.clip(np.round(blobs[:, 0]).astype(int), 0, small.shape[0] - 1)
    ci = np.clip(np.round(blobs[:, 1]).astype(int), 0, small.shape[1] - 1)
    scores = smooth[ri, ci] - float(np.median(small))
    order = np.argsort(-scores, kind="stable")
    if max_det is not None:
        order = order[: max(0, int(max_det))]
    centres, radius, scores = centres[order], radius[order], scores[order]
    half = (radius * box_scale)[:, None]
    boxes = np.concatenate([centres - half, centres + half], 1)
    boxes = np.clip(boxes, 0, [h, w, h, w])
    return boxes, scores.astype(np.float64)


def grid_batch_size(shape: tuple[int, int], budget_bytes: int) -> int:
    """Points per batch of the stock generator within ``budget_bytes``.

    Per point the stock decoder holds a copy of the image embedding and three full-size float
    logit maps (plus their boolean masks).
    """
    per_point = 3 * 256 * 64 * 64 * 4 + 3 * int(shape[0]) * int(shape[1]) * 9
    return int(min(64, max(1, budget_bytes // per_point)))


def iter_grid_objects(
    predictor: Predictor,
    rgb: np.ndarray,
    key: Hashable | None = None,
    points_per_side: int = 32,
    points_per_batch: int | None = None,
    min_score: float = 0.88,
    min_stability: float = 0.95,
    box_nms_thresh: float = 0.7,
    crop_n_layers: int = 0,
    crop_nms_thresh: float = 0.7,
) -> Generator[tuple[int, int], None, list[ObjectMask]]:
    """SAM's automatic mask generation on one frame, batch by batch.

    Uses ``SamAutomaticMaskGenerator`` with ``predictor`` as its predictor (embeddings come from
    the predictor's cache) and its own per-batch step, so results equal ``generate()``'s.

    Args:
        rgb: ``(H, W, 3)`` uint8 RGB frame.
        key: embedding-cache key of the whole frame (crops get ``(key, crop_box)``).
        points_per_batch: default from ``predictor.batch_bytes`` (see :func:`grid_batch_size`).
        min_score, min_stability: the generator's ``pred_iou_thresh``, ``stability_score_thresh``.

    Yields:
        ``(batches done, batches total)``.

    Returns:
        the masks as :class:`ObjectMask` crops, by decreasing predicted IoU. Their
        ``low_res_logits`` is None (the generator does not keep them).
    """
    from segment_anything import SamAutomaticMaskGenerator
    from segment_anything.utils.amg import (
        MaskData,
        batch_iterator,
        generate_crop_boxes,
        rle_to_mask,
        uncrop_boxes_xyxy,
    )
    from torchvision.ops.boxes import batched_nms, box_area

    if int(points_per_side) < 1:
        raise ValueError(f"points_per_side must be >= 1, got {points_per_side}.")
    size = tuple(rgb.shape[:2])
    if points_per_batch is None:
        points_per_batch = grid_batch_size(size, predictor.batch_bytes)
    gen = SamAutomaticMaskGenerator(
        predictor.model,
        points_per_side=int(points_per_side),
        points_per_batch=int(points_per_batch),
        pred_iou_thresh=float(min_score),
        stability_score_thresh=float(min_stability),
        box_nms_thresh=float(box_nms_thresh),
        crop_n_layers=int(crop_n_layers),
        crop_nms_thresh=float(crop_nms_thresh),
        output_mode="binary_mask",
    )
    gen.predictor = predictor  # share the embedding cache
    crop_boxes, layers = generate_crop_boxes(size, gen.crop_n_layers, gen.crop_overlap_ratio)
    total = sum(math.ceil(len(gen.point_grids[k]) / gen.points_per_batch) for k in layers)
    done = 0
    data = MaskData()
    for crop_box, layer in zip(crop_boxes, layers):
        x0, y0, x1, y1 = crop_box
        crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        whole = (x0, y0, x1, y1) == (0, 0, size[1], size[0])
        predictor.set_image(crop, key=(key if whole or key is None else (key, tuple(crop_box))))
        points = gen.point_grids[layer] * np.array(crop.shape[:2])[None, ::-1]
        crop_data = MaskData()
        for (batch,) in batch_iterator(gen.points_per_batch, points):
            with torch.inference_mode():
                crop_data.cat(gen._process_batch(batch, crop.shape[:2], crop_box, size))
            done += 1
            yield done, total
        if len(crop_data["rles"]) == 0:
            continue
        keep = batched_nms(crop_data["boxes"].float(), crop_data["iou_preds"], torch.zeros(len(crop_data["boxes"])), gen.box_nms_thresh)
        crop_data.filter(keep)
        crop_data["boxes"] = uncrop_boxes_xyxy(crop_data["boxes"], crop_box)
        crop_data["crop_boxes"] = torch.tensor([crop_box] * len(crop_data["rles"]))
        data.cat(crop_data)
    if len(crop_boxes) > 1 and data._stats and len(data["rles"]):
        # duplicates between crops: prefer masks from smaller crops, as the generator does
        keep = batched_nms(data["boxes"].float(), 1 / box_area(data["crop_boxes"]), torch.zeros(len(data["boxes"])), gen.crop_nms_thresh)
        data.filter(keep)
    if not data._stats or not len(data["rles"]):
        return []
    objects = []
    for rle, iou, stab in zip(data["rles"], data["iou_preds"].tolist(), data["stability_score"].tolist()):
        full = rle_to_mask(rle)
        rows, cols = np.flatnonzero(full.any(1)), np.flatnonzero(full.any(0))
        if rows.size == 0:
            continue
        crop = full[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        objects.append(ObjectMask(crop, (int(rows[0]), int(cols[0])), size, float(iou), float(stab), -1, None))
    objects.sort(key=lambda o: -o.score)
    return objects
