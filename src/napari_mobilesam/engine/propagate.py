"""Propagate one object's mask through neighbouring frames of a stack (numpy in, numpy out).

From a start frame's mask, each next frame is prompted with the previous frame's mask: its
bounding box plus its low-resolution logits as SAM's mask input. Propagation runs forward,
then backward, and stops in a direction when the predicted IoU falls below ``min_score``, the
new mask overlaps the previous one by less than ``min_overlap`` (IoU of the two masks), or the
object vanishes (fewer than ``min_area`` pixels).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Hashable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import SettingsError
from .predictor import ObjectMask, Predictor, Prompt

__all__ = ["PropagationStep", "iter_propagate", "iter_propagate_labels", "mask_to_logits", "render_propagated"]

LOGIT = 8.0  # magnitude of the logits standing for a binary mask (sigmoid(8) ~ 0.9997)


@dataclass
class PropagationStep:
    """One propagated frame.

    Attributes:
        index: frame index along the propagation axis.
        mask: the object's ``(H, W)`` bool mask there, or None when propagation stopped here.
        score: predicted IoU; overlap: IoU with the previous frame's mask.
        done, total: frames visited so far / at most.
        stopped: why this direction ended ("" while it goes on).
    """

    index: int
    mask: np.ndarray | None
    score: float
    overlap: float
    done: int
    total: int
    stopped: str = ""


def mask_to_logits(mask: np.ndarray, predictor: Predictor) -> np.ndarray:
    """A full-frame bool mask -> ``(256, 256)`` float32 mask input for the current frame.

    The mask is resized like the image (longest side to the encoder size), padded, and reduced to
    256² (SAM's mask-input grid); inside -> +LOGIT, outside -> -LOGIT.
    """
    h, w = predictor.input_size
    size = predictor.model.image_encoder.img_size
    m = torch.as_tensor(np.asarray(mask, np.float32))[None, None]
    m = F.interpolate(m, (h, w), mode="bilinear", align_corners=False)
    m = F.pad(m, (0, size - w, 0, size - h))
    m = F.interpolate(m, (256, 256), mode="bilinear", align_corners=False)[0, 0]
    return np.where(m.numpy() > 0.5, LOGIT, -LOGIT).astype(np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def step_check(obj: ObjectMask, prev: np.ndarray, min_score: float, min_overlap: float, min_area: int) -> tuple[np.ndarray, float, str]:
    """*Propagate*'s stop rule, the one used by :func:`iter_propagate`, :func:`iter_propagate_labels`
    and the link pass's fill-ins: ``(full (H, W) bool mask, IoU with prev, why it stops or "")``."""
    new = obj.full()
    overlap = _iou(new, prev)
    if obj.area < min_area:
        return new, overlap, "object vanished"
    if obj.score < min_score:
        return new, overlap, f"predicted IoU {obj.score:.2f} < {min_score:.2f}"
    if overlap < min_overlap:
        return new, overlap, f"overlap with the previous frame {overlap:.2f} < {min_overlap:.2f}"
    return new, overlap, ""


def _bbox(mask: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    return np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], float)


def iter_propagate(
    predictor: Predictor,
    frame: Callable[[int], np.ndarray],
    n_frames: int,
    start: int,
    mask: np.ndarray,
    *,
    key: Callable[[int], Hashable] | None = None,
    directions: tuple[int, ...] = (1, -1),
    min_score: float = 0.5,
    min_overlap: float = 0.3,
    min_area: int = 4,
    max_frames: int | None = None,
    image_kwargs: dict | None = None,
) -> Generator[PropagationStep, None, dict[int, np.ndarray]]:
    """Segment the object of ``mask`` (on frame ``start``) in the following and preceding frames.

    Args:
        predictor: computes (or fetches from its cache) each frame's embedding in this thread.
        frame: ``frame(i)`` -> the ``(H, W[, C])`` image of frame ``i`` (0 <= i < n_frames).
        mask: ``(H, W)`` bool mask of the object on frame ``start`` (e.g. from a Labels layer).
        key: ``key(i)`` -> embedding cache key of frame ``i`` (None: hash of the pixels).
        directions: +1 forward, -1 backward, in this order.
        min_score / min_overlap / min_area: stop criteria (see the module docstring).
        max_frames: at most this many frames per direction.
        image_kwargs: passed to ``Predictor.set_image`` (e.g. ``contrast_limits``).

    Yields:
        :class:`PropagationStep` per visited frame (``mask`` None where it stopped).

    Returns:
        ``{frame index: (H, W) bool mask}`` of the frames segmented (the start frame excluded).
    """
    mask = np.asarray(mask, bool)
    if mask.ndim != 2 or not mask.any():
        raise SettingsError("The start mask must be a non-empty 2D (H, W) array; segment the object on this frame first.")
    if not 0 <= start < n_frames:
        raise SettingsError(f"start={start} is outside the stack of {n_frames} frames.")
    image_kwargs = image_kwargs or {}
    limit = n_frames if max_frames is None else max_frames
    total = sum(min(limit, n_frames - 1 - start if d > 0 else start) for d in directions)
    done = 0
    result: dict[int, np.ndarray] = {}
    start_logits: np.ndarray | None = None
    for d in directions:
        prev, logits = mask, start_logits
        i, steps = start + d, 0
        while 0 <= i < n_frames and steps < limit:
            predictor.set_image(frame(i), key=None if key is None else key(i), **image_kwargs)
            if logits is None:  # first step: the start mask as logits in this frame's geometry
                logits = mask_to_logits(prev, predictor)
                if d == directions[0]:
                    start_logits = logits
            obj: ObjectMask = predictor.predict_objects([Prompt(box=_bbox(prev), mask_input=logits)])[0]
            new, overlap, reason = step_check(obj, prev, min_score, min_overlap, min_area)
            done += 1
            steps += 1
            if reason:
                yield PropagationStep(i, None, obj.score, overlap, done, total, f"{reason} on frame {i}")
                break
            result[i] = new
            yield PropagationStep(i, new, obj.score, overlap, done, total)
            prev, logits = new, obj.low_res_logits
            i += d
    return result


def iter_propagate_labels(
    predictor: Predictor,
    frame: Callable[[int], np.ndarray],
    n_frames: int,
    start: int,
    labels: np.ndarray,
    *,
    key: Callable[[int], Hashable] | None = None,
    directions: tuple[int, ...] = (1, -1),
    min_score: float = 0.5,
    min_overlap: float = 0.3,
    min_area: int = 4,
    max_frames: int | None = None,
    image_kwargs: dict | None = None,
) -> Generator[tuple[int, int, int, str, dict[int, np.ndarray]], None, dict[int, dict[int, np.ndarray]]]:
    """Propagate every object of frame ``start``'s ``(H, W)`` ``labels`` at once.

    As :func:`iter_propagate` for each object (same prompts, same stop criteria, each object stops
    on its own), but each frame is embedded once for all objects and the objects still going are
    decoded in one batch per frame.

    Yields:
        ``(frame index, objects still going, frames visited, message, {label id: (H, W) bool mask})``
        per visited frame (the masks kept on that frame: a cancelled run keeps the frames done).

    Returns:
        ``{label id: {frame index: (H, W) bool mask}}`` (the start frame excluded).
    """
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise SettingsError(f"labels must be one (H, W) frame, got shape {lab.shape}.")
    ids = [int(i) for i in np.unique(lab) if i > 0]
    if not ids:
        raise SettingsError(f"Frame {start} has no labels to propagate; segment its objects first.")
    if not 0 <= start < n_frames:
        raise SettingsError(f"start={start} is outside the stack of {n_frames} frames.")
    image_kwargs = image_kwargs or {}
    limit = n_frames if max_frames is None else max_frames
    result: dict[int, dict[int, np.ndarray]] = {i: {} for i in ids}
    done = 0
    for d in directions:
        # per object: previous mask and its logits (None: the start mask, turned into logits per frame)
        going: dict[int, tuple[np.ndarray, np.ndarray | None]] = {i: (lab == i, None) for i in ids}
        i, steps = start + d, 0
        while going and 0 <= i < n_frames and steps < limit:
            predictor.set_image(frame(i), key=None if key is None else key(i), **image_kwargs)
            order = list(going)
            prompts = [
                Prompt(box=_bbox(going[o][0]), mask_input=going[o][1] if going[o][1] is not None else mask_to_logits(going[o][0], predictor))
                for o in order
            ]
            objs = predictor.predict_objects(prompts)
            kept: dict[int, np.ndarray] = {}
            for o, obj in zip(order, objs):
                new, _, reason = step_check(obj, going[o][0], min_score, min_overlap, min_area)
                if reason:
                    del going[o]
                    continue
                result[o][i] = kept[o] = new
                going[o] = (new, obj.low_res_logits)
            done += 1
            steps += 1
            yield i, len(going), done, f"frame {i}: {len(going)} of {len(ids)} objects going", kept
            i += d
    return result


def render_propagated(found: dict[int, dict[int, np.ndarray]], shape: tuple[int, int], dtype=np.uint32) -> dict[int, np.ndarray]:
    """The label image each frame gets from :func:`iter_propagate_labels`' result (the one rule of
    the widget's *Propagate all* and ``mobilesam propagate``).

    Args:
        found: ``{label id: {frame index: (H, W) bool mask}}``.
        shape: ``(H, W)``; dtype: of the label images.

    Returns:
        ``{frame index: (H, W) label image}`` (0 = nothing new). Where propagated objects overlap,
        the smaller object (fewer pixels over all its frames) is on top.
    """
    out: dict[int, np.ndarray] = {}
    for lid in sorted(found, key=lambda i: (-sum(int(m.sum()) for m in found[i].values()), i)):  # larger first, smaller on top
        for t, mask in found[lid].items():
            frame = out.get(t)
            if frame is None:
                frame = out[t] = np.zeros(shape, dtype)
            frame[mask] = lid
    return dict(sorted(out.items()))
