"""Prompt samplers for segment-everything: detector-free blobs (microscopy) and SAM's point grid.

- :func:`blob_boxes`: scikit-image LoG/DoG blob detection on the normalised frame proposes one
  box per roundish object, sized from the blob's scale; the boxes are then decoded in batches
  like MobileSAMv2's detector boxes. No weights besides MobileSAM's. Without a diameter,
  :func:`estimate_diameter` measures one from the image (the scale of its strongest blobs), and
  proposals must stand out of the noise (:func:`blob_contrast`), so that noise gives few boxes.
- :func:`iter_grid_objects`: segment-anything's ``SamAutomaticMaskGenerator`` (32 x 32 point
  grid, three masks per point, IoU/stability filtering, box NMS) run on our
  :class:`~napari_mobilesam.engine.predictor.Predictor`'s fast decoder, batch by batch so that it
  reports progress and can be cancelled between batches.

Coordinates are napari's: ``(row, col)``; boxes are ``(row0, col0, row1, col1)``.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Hashable

import numpy as np
import torch

from .._compat import mask_data_len, process_batch
from .predictor import ObjectMask, Predictor

__all__ = ["blob_boxes", "blob_contrast", "estimate_diameter", "grid_batch_size", "iter_grid_objects", "noise_level"]


def _grey(rgb: np.ndarray, polarity: str) -> np.ndarray:
    """``(H, W)`` float32 in 0..1, objects bright (``polarity="dark"`` inverts)."""
    if polarity not in ("bright", "dark"):
        raise ValueError(f"polarity must be 'bright' (objects brighter than background) or 'dark', got {polarity!r}.")
    g = np.asarray(rgb, np.float32)
    if g.ndim == 3:
        g = g.mean(-1)
    g = g / 255.0 if rgb.dtype == np.uint8 else g
    return 1.0 - g if polarity == "dark" else g


def noise_level(img: np.ndarray) -> float:
    """Robust standard deviation of the pixel noise of an ``(H, W)`` float image.

    The median absolute deviation of the image minus its 1-pixel Gaussian blur (objects and
    gradients mostly cancel there), scaled so that white noise of sd s gives s.
    """
    from scipy import ndimage

    res = img - ndimage.gaussian_filter(img, 1.0)
    delta = np.zeros((11, 11))
    delta[5, 5] = 1.0
    gain = float(np.linalg.norm(delta - ndimage.gaussian_filter(delta, 1.0)))  # white noise sd 1 -> this sd
    mad = float(np.median(np.abs(res - np.median(res))))
    return 1.4826 * mad / gain


def _log_noise_gain(sigma: float) -> float:
    """Standard deviation of the scale-normalised LoG ``σ²∇²G_σ`` of white noise of sd 1."""
    from scipy import ndimage

    n = 2 * int(math.ceil(4 * sigma)) + 3
    delta = np.zeros((n, n))
    delta[n // 2, n // 2] = 1.0
    return float(np.linalg.norm(sigma**2 * ndimage.gaussian_laplace(delta, sigma)))


def estimate_diameter(img: np.ndarray, min_diameter: float = 4.0, max_diameter: float | None = None, per_octave: int = 4) -> float:
    """Typical diameter in pixels of the bright blobs of an ``(H, W)`` float image (0..1).

    Scale selection on the scale-normalised Laplacian of Gaussian ``-σ²∇²G_σ * img``: its
    scale-space maxima are blobs, with diameter ``2√2 σ`` for a disk. The estimate is the
    diameter-weighted median diameter of the strong maxima (at least 30 % of the strongest
    response; an edge responds about a third as strongly as a disk of the same contrast), leaving
    out maxima inside a larger one (texture inside an object). Scales run from
    ``min_diameter`` to ``max_diameter`` (default: a third of the shorter side), ``per_octave``
    per doubling; large scales are computed on a downscaled image (σ of 1.5-3 working pixels).
    """
    from scipy import ndimage
    from skimage.transform import downscale_local_mean

    h, w = img.shape
    dmax = float(max_diameter or max(2 * min_diameter, min(h, w) / 3))
    n = int(np.floor(per_octave * math.log2(dmax / min_diameter))) + 1
    sigmas = min_diameter / (2 * math.sqrt(2)) * 2.0 ** (np.arange(n) / per_octave)
    levels: dict[int, np.ndarray] = {1: np.asarray(img, np.float32)}
    maps = []
    for s in sigmas:
        f = 2 ** max(0, int(math.floor(math.log2(s / 1.5))))
        if f not in levels:
            levels[f] = downscale_local_mean(levels[f // 2], (2, 2))
        ss = s / f
        r = -(ss**2) * ndimage.gaussian_laplace(levels[f], ss)
        maps.append((f, r, ndimage.maximum_filter(r, 3)))
    found = []  # (row, col, diameter, response) of scale-space maxima
    for k in range(1, n - 1):  # a scale-space maximum needs a scale on each side
        f, r, mx = maps[k]
        ri, ci = np.nonzero((r == mx) & (r > 0))
        v = r[ri, ci]
        for j in (k - 1, k + 1):  # the neighbouring scales' 3x3 maxima at the same place
            fj, _, mj = maps[j]
            rj = np.clip(((ri + 0.5) * f / fj).astype(int), 0, mj.shape[0] - 1)
            cj = np.clip(((ci + 0.5) * f / fj).astype(int), 0, mj.shape[1] - 1)
            keep = v >= mj[rj, cj]
            ri, ci, v = ri[keep], ci[keep], v[keep]
        found.append(np.stack([(ri + 0.5) * f - 0.5, (ci + 0.5) * f - 0.5, np.full(len(v), 2 * math.sqrt(2) * sigmas[k]), v], 1))
    p = np.concatenate(found) if found else np.zeros((0, 4))
    if not len(p):
        return float(min_diameter)
    p = p[np.argsort(-p[:, 3], kind="stable")[:4000]]  # noise has many maxima: the strongest decide
    strong = p[p[:, 3] >= 0.3 * p[0, 3]][:1000]
    cover = p[p[:, 3] >= 0.2 * p[0, 3]]
    # texture inside an object is not an object: drop maxima inside a clearly larger one
    dist = np.hypot(strong[:, None, 0] - cover[None, :, 0], strong[:, None, 1] - cover[None, :, 1])
    inside = (dist < cover[None, :, 2] / 2) & (cover[None, :, 2] > 1.2 * strong[:, None, 2])
    kept = strong[~inside.any(1)]
    kept = kept if len(kept) else strong
    # median weighted by diameter: between the median per object and per area covered
    order = np.argsort(kept[:, 2])
    wts = np.cumsum(kept[order, 2])
    return float(kept[order[np.searchsorted(wts, wts[-1] / 2)], 2])


def blob_contrast(img: np.ndarray, centres: np.ndarray, radius: np.ndarray, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Contrast of blobs against their surroundings, and its signal-to-noise ratio.

    Contrast: the mean of ``img`` in the square inscribed in each blob's disk minus the mean in
    the square ring between 1.25 and 1.75 radii around it (clipped to the image). The SNR
    divides it by its standard deviation under white pixel noise of sd ``noise``.
    centres: ``(N, 2)`` (row, col); radius: ``(N,)``. Returns ``(contrast (N,), snr (N,))``.
    """
    h, w = img.shape
    ii = np.zeros((h + 1, w + 1))
    ii[1:, 1:] = np.asarray(img, np.float64).cumsum(0).cumsum(1)

    def square(half: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r0 = np.clip(np.round(centres[:, 0] - half), 0, h).astype(int)
        r1 = np.clip(np.round(centres[:, 0] + half) + 1, 0, h).astype(int)
        c0 = np.clip(np.round(centres[:, 1] - half), 0, w).astype(int)
        c1 = np.clip(np.round(centres[:, 1] + half) + 1, 0, w).astype(int)
        total = ii[r1, c1] - ii[r0, c1] - ii[r1, c0] + ii[r0, c0]
        return total, np.maximum(r1 - r0, 0) * np.maximum(c1 - c0, 0)

    s_in, n_in = square(np.maximum(radius / math.sqrt(2), 0.5))
    s_mid, n_mid = square(1.25 * radius)
    s_out, n_out = square(np.maximum(1.75 * radius, 1.25 * radius + 1))
    n_ring = n_out - n_mid
    inner = s_in / np.maximum(n_in, 1)
    ring = np.where(n_ring > 0, (s_out - s_mid) / np.maximum(n_ring, 1), inner)
    contrast = inner - ring
    sd = max(float(noise), 1e-6) * np.sqrt(1.0 / np.maximum(n_in, 1) + 1.0 / np.maximum(n_ring, 1))
    return contrast, contrast / sd


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
    min_snr: float | None = 5.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes around blob-like objects found by scale-space blob detection.

    Args:
        rgb: ``(H, W, 3)`` uint8 (as from ``to_rgb_uint8``) or ``(H, W)`` float in 0..1.
        diameter: expected object diameter in pixels; default: measured on the image
            (:func:`estimate_diameter`).
        diameter_range: factors around ``diameter`` that bound the scale search.
        method: "log" (Laplacian of Gaussian; accurate) or "dog" (difference of Gaussians; faster).
        threshold: minimum scale-normalised response (intensities in 0..1); lower finds fainter objects.
        polarity: "bright" (fluorescence: objects brighter than background) or "dark" (brightfield).
        overlap: blobs overlapping more than this fraction are merged (skimage's ``overlap``).
        num_sigma: number of scales tried between the bounds ("log").
        box_scale: box half-side = ``box_scale`` x the blob radius.
        max_det: keep at most this many blobs, the strongest first (None: all).
        min_snr: keep only blobs whose contrast (:func:`blob_contrast`) is at least this many
            times its standard deviation under the image's pixel noise (:func:`noise_level`), so
            that noise and flat texture propose few boxes; None or 0: no cap.

    Returns:
        ``(boxes (N, 4) float64 (row0, col0, row1, col1), scores (N,) float64)``, by decreasing
        score = contrast (blob minus surroundings, intensities 0..1); the box centre is the blob
        centre (up to clipping at the image border).
    """
    from skimage.feature import blob_dog, blob_log
    from skimage.transform import downscale_local_mean

    if method not in ("log", "dog"):
        raise ValueError(f"method must be 'log' or 'dog', got {method!r}.")
    img = _grey(np.asarray(rgb), polarity)
    h, w = img.shape
    if diameter is None:
        diameter = estimate_diameter(img)
    if not diameter > 0 or not 0 < diameter_range[0] <= diameter_range[1]:
        raise ValueError(f"diameter={diameter} and diameter_range={diameter_range} must be positive, low <= high.")
    # sigma of a disk of radius r for the LoG is r / sqrt(2)
    smin = diameter * diameter_range[0] / 2 / math.sqrt(2)
    smax = diameter * diameter_range[1] / 2 / math.sqrt(2)
    # work at a coarser grid when objects are large: same blobs, far fewer pixels
    f = max(1, int(smin // 2))
    small = downscale_local_mean(img, (f, f)) if f > 1 else img
    noise = noise_level(img) if min_snr else 0.0
    if min_snr:
        # responses within 3 sd of what the pixel noise gives are not worth a blob (and noise
        # has very many of them): raise the threshold to that, at the finest scale searched
        threshold = max(float(threshold), 3.0 * noise / f * _log_noise_gain(smin / f))
    if method == "log":
        blobs = blob_log(small, min_sigma=smin / f, max_sigma=smax / f, num_sigma=max(1, num_sigma), threshold=threshold, overlap=overlap)
    else:
        blobs = blob_dog(small, min_sigma=smin / f, max_sigma=smax / f, threshold=threshold, overlap=overlap)
    if len(blobs) == 0:
        return np.zeros((0, 4)), np.zeros(0)
    centres = (blobs[:, :2] + 0.5) * f - 0.5
    radius = blobs[:, 2] * f * math.sqrt(2)
    scores, snr = blob_contrast(img, centres, radius, noise)
    if min_snr:
        keep = snr >= float(min_snr)
        centres, radius, scores = centres[keep], radius[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")
    if max_det is not None:
        order = order[: max(0, int(max_det))]
    centres, radius, scores = centres[order], radius[order], scores[order]
    half = (radius * box_scale)[:, None]
    boxes = np.concatenate([centres - half, centres + half], 1)
    boxes = np.clip(boxes, 0, [h, w, h, w])
    return boxes, scores.astype(np.float64)


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
) -> Generator[tuple[int, int], None, list[ObjectMask]]:
    """The generator's whole-frame pass (``crop_n_layers=0``) with each mask computed only around itself.

    Same steps as ``SamAutomaticMaskGenerator._process_batch`` + ``_process_crop``: the point
    grid, three masks per point, predicted IoU ``> min_score``, stability ``>= min_stability``
    (of the full-resolution logits, thresholded at ±``stability_offset``; each filter only when
    its threshold is > 0), box NMS; empty masks are left out. The full-size
    logit maps (4 MB per mask for a 1024² frame) never exist: each mask's full-resolution logits
    are computed in the window where they can exceed ``threshold - offset`` (:class:`MaskUpsampler`).
    """
    from segment_anything.utils.amg import build_point_grid
    from torchvision.ops.boxes import batched_nms

    size = tuple(rgb.shape[:2])
    predictor.set_image(rgb, key=key)
    up = predictor._upsampler()
    thr = predictor.model.mask_threshold
    points = build_point_grid(points_per_side) * np.array(size)[None, ::-1]  # (x, y)
    step = int(points_per_batch or 64)
    total = math.ceil(len(points) / step)
    objects: list[ObjectMask] = []
    boxes: list[tuple[int, int, int, int]] = []
    for k in range(total):
        xy = predictor.transform.apply_coords(points[k * step : (k + 1) * step], size)
        coords = torch.as_tensor(xy, dtype=torch.float32, device=predictor.device)[:, None]
        labels = torch.ones(len(xy), 1, dtype=torch.int, device=predictor.device)
        with torch.inference_mode():
            sparse, _ = predictor.model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        low, iou = predictor._decode_batches(sparse, None, True)
        low, iou = low.flatten(0, 1).cpu().numpy(), iou.flatten(0, 1).cpu().numpy()
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
            objects.append(ObjectMask(crop, (top, left), size, float(iou[j]), stability, int(j % 3), None))
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
    if int(crop_n_layers) == 0:
        return (yield from _iter_grid_fast(predictor, rgb, key, int(points_per_side), points_per_batch, min_score, min_stability, box_nms_thresh))
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
        objects.append(ObjectMask(crop, (int(rows[0]), int(cols[0])), size, float(iou), float(stab), -1, None))
    objects.sort(key=lambda o: -o.score)
    return objects
