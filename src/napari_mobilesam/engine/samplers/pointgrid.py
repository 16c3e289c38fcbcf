"""The ``grid`` sampler: segment-anything's ``SamAutomaticMaskGenerator`` on our fast decoder.

:func:`iter_grid_objects` runs the generator's 32 x 32 point grid (three masks per point, IoU/stability
filtering, box NMS) on :class:`~napari_mobilesam.engine.predictor.Predictor`'s fast decoder, batch by
batch, so that it reports progress and can be cancelled between batches (a cancelled frame keeps the
masks of the batches done).

Coordinates are napari's: ``(row, col)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..._progress import relay
from ..errors import SettingsError
from .base import SamplerContext, opt, register_sampler

if TYPE_CHECKING:
    from ..predictor import ObjectMask, Predictor  # noqa: F401 (ObjectMask also imported where built)

__all__ = ["GridOptions", "GridSampler", "grid_batch_size", "iter_grid_objects"]


def _iter_grid_fast(
    predictor: Predictor,
    rgb: np.ndarray,
    key: Hashable | None,
    points_per_side: int,
    points_per_batch: int | None,
    min_score: float,
    min_stability: float,
    box_nms_thresh: float,
    stability_offset: float = 1.0,
    stop: Callable[[], bool] | None = None,
) -> Generator[tuple[int, int], None, list[ObjectMask]]:
    """The generator's whole-frame pass (``crop_n_layers=0``) with each mask computed only around itself.

    Same steps as ``SamAutomaticMaskGenerator._process_batch`` + ``_process_crop``: the point
    grid, three masks per point, predicted IoU ``> min_score``, stability ``>= min_stability``
    (of the full-resolution logits, thresholded at ±``stability_offset``; each filter only when
    its threshold is > 0), box NMS; empty masks are left out. The full-size
    logit maps (4 MB per mask for a 1024² frame) never exist: each mask's full-resolution logits
    are computed in the window where they can exceed ``threshold - offset`` (:class:`MaskUpsampler`).
    """
    import torch
    from segment_anything.utils.amg import build_point_grid
    from torchvision.ops.boxes import batched_nms

    from ..predictor import ObjectMask

    size = tuple(rgb.shape[:2])
    predictor.set_image(rgb, key=key)
    up = predictor.mask_upsampler()
    thr = predictor.model.mask_threshold
    points = build_point_grid(points_per_side)[:, ::-1] * np.array(size)[None]  # (row, col)
    step = int(points_per_batch or 64)
    total = math.ceil(len(points) / step)
    objects: list[ObjectMask] = []
    boxes: list[tuple[int, int, int, int]] = []
    for k in range(total):
        if stop is not None and stop():  # cancelled: the batches done make a partial frame
            break
        low, iou = predictor.decode_point_batch(points[k * step : (k + 1) * step], multimask_output=True)
        low, iou = low.reshape(-1, *low.shape[2:]), iou.reshape(-1)
        for j in np.flatnonzero(iou > min_score) if min_score > 0 else range(len(iou)):  # the generator's rules
            logits, (r0, c0) = up.crop_logits(low[j], thr - stability_offset)
            n_loose = int((logits > thr - stability_offset).sum())
            stability = float((logits > thr + stability_offset).sum()) / n_loose if n_loose else 0.0
            if min_stability > 0 and stability < min_stability:
                continue
            mask = logits > thr
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            if rows.size == 0:
                continue
            crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            top, left = r0 + int(rows[0]), c0 + int(cols[0])
            objects.append(ObjectMask(crop, (top, left), size, float(iou[j]), stability, int(j % 3), None))  # type: ignore[arg-type]  # no low-res logits kept
            boxes.append((left, top, left + crop.shape[1] - 1, top + crop.shape[0] - 1))  # x0, y0, x1, y1 inclusive
        yield k + 1, total
    if not objects:
        return []
    scores = torch.tensor([o.score for o in objects])
    keep = batched_nms(torch.tensor(boxes, dtype=torch.float32), scores, torch.zeros(len(objects)), box_nms_thresh)
    kept = [objects[i] for i in keep.tolist()]
    kept.sort(key=lambda o: -o.score)
    return kept


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
    stop: Callable[[], bool] | None = None,
) -> Generator[tuple[int, int], None, list[ObjectMask]]:
    """SAM's automatic mask generation on one frame, batch by batch.

    With ``crop_n_layers=0`` (the default) the generator's steps run on the fast decoder with
    per-mask windows (:func:`_iter_grid_fast`; the same masks as ``generate()`` up to float32
    rounding, empty masks left out). With crop layers, ``SamAutomaticMaskGenerator`` runs with
    ``predictor`` as its predictor (embeddings come from the predictor's cache) and its own
    per-batch step, so results equal ``generate()``'s.

    Args:
        rgb: ``(H, W, 3)`` uint8 RGB frame.
        key: embedding-cache key of the whole frame (crops get ``(key, crop_box)``).
        points_per_batch: points per progress step; default 64 for the whole frame (the fast path,
            decoded ``predictor.batch_size`` at a time), from ``predictor.batch_bytes`` with crop
            layers (the stock generator, see :func:`grid_batch_size`).
        min_score, min_stability: the generator's ``pred_iou_thresh``, ``stability_score_thresh``.
        stop: polled before each batch; once it returns True no further batch is decoded and the
            masks of the batches done are returned (filtered and de-duplicated as usual).

    Yields:
        ``(batches done, batches total)``.

    Returns:
        the masks as :class:`ObjectMask` crops, by decreasing predicted IoU. Their
        ``low_res_logits`` is None (the generator does not keep them).
    """
    import torch
    from segment_anything import SamAutomaticMaskGenerator
    from segment_anything.utils.amg import (
        MaskData,
        batch_iterator,
        generate_crop_boxes,
        rle_to_mask,
        uncrop_boxes_xyxy,
    )
    from torchvision.ops.boxes import batched_nms, box_area

    from ..._compat import mask_data_len, process_batch
    from ..predictor import ObjectMask

    if int(points_per_side) < 1:
        raise SettingsError(f"points_per_side must be >= 1, got {points_per_side}.")
    size = tuple(rgb.shape[:2])
    if int(crop_n_layers) == 0:
        return (yield from _iter_grid_fast(predictor, rgb, key, int(points_per_side), points_per_batch, min_score, min_stability,
                                           box_nms_thresh, stop=stop))
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
        if stop is not None and stop():
            break
        x0, y0, x1, y1 = crop_box
        crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        whole = (x0, y0, x1, y1) == (0, 0, size[1], size[0])
        predictor.set_image(crop, key=(key if whole or key is None else (key, tuple(crop_box))))
        points = gen.point_grids[layer] * np.array(crop.shape[:2])[None, ::-1]
        crop_data = MaskData()
        for (batch,) in batch_iterator(gen.points_per_batch, points):
            if stop is not None and stop():  # cancelled: the batches done make a partial frame
                break
            with torch.inference_mode():
                crop_data.cat(process_batch(gen, batch, crop.shape[:2], crop_box, size))
            done += 1
            yield done, total
        if mask_data_len(crop_data) == 0:
            continue
        keep = batched_nms(crop_data["boxes"].float(), crop_data["iou_preds"], torch.zeros(len(crop_data["boxes"])), gen.box_nms_thresh)
        crop_data.filter(keep)
        crop_data["boxes"] = uncrop_boxes_xyxy(crop_data["boxes"], crop_box)
        crop_data["crop_boxes"] = torch.tensor([crop_box] * len(crop_data["rles"]))
        data.cat(crop_data)
    if len(crop_boxes) > 1 and mask_data_len(data):
        # duplicates between crops: prefer masks from smaller crops, as the generator does
        keep = batched_nms(data["boxes"].float(), 1 / box_area(data["crop_boxes"]), torch.zeros(len(data["boxes"])), gen.crop_nms_thresh)
        data.filter(keep)
    if not mask_data_len(data):
        return []
    objects = []
    for rle, iou, stab in zip(data["rles"], data["iou_preds"].tolist(), data["stability_score"].tolist()):
        full = rle_to_mask(rle)
        rows, cols = np.flatnonzero(full.any(1)), np.flatnonzero(full.any(0))
        if rows.size == 0:
            continue
        crop = full[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        objects.append(ObjectMask(crop, (int(rows[0]), int(cols[0])), size, float(iou), float(stab), -1, None))  # type: ignore[arg-type]  # no low-res logits kept
    objects.sort(key=lambda o: -o.score)
    return objects


@dataclass
class GridOptions:
    """Options of the ``grid`` sampler (segment-anything's generator; see :func:`iter_grid_objects`)."""

    points_per_side: int = opt(32, "points per side", metavar="N")
    points_per_batch: int | None = None
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7


@register_sampler
class GridSampler:
    """SAM's 32 x 32 point grid (MobileSAM v1's "everything"): generic, slow, no extra weights."""

    name = "grid"
    label = "grid (SAM 32×32 points)"
    help = "SAM's 32×32 point grid, three masks per point (generic, slow)"
    empty_hint = "lower --min-score / --min-stability, or try --sampler blobs"
    options = GridOptions
    score_defaults = (0.88, 0.95)  # the generator's own quality filter (pred_iou_thresh, stability_score_thresh)
    needs_detector = False

    def propose(self, ctx: SamplerContext, rgb: np.ndarray, key: Hashable | None,
                options: GridOptions) -> Generator[tuple[float, str], None, list[ObjectMask]]:
        o = options
        last = [0, 0]

        def show(p: tuple[int, int]) -> tuple[float, str]:
            last[:] = p
            return p[0] / p[1], f"point batch {p[0]}/{p[1]}"

        grid = iter_grid_objects(ctx.predictor, rgb, key, o.points_per_side, o.points_per_batch, ctx.min_score, ctx.min_stability,
                                 o.box_nms_thresh, o.crop_n_layers, o.crop_nms_thresh, stop=ctx.stop)
        objects = yield from relay(grid, show)
        if ctx.stop() and (last[1] == 0 or last[0] < last[1]):  # cancelled before the last batch: a partial frame
            ctx.partial = f"{last[0]} of {last[1]} point batches" if last[1] else "no point batch"
        return objects
