"""Clicks and boxes on frames much larger than the encoder's input, decoded in full-resolution windows.

SAM shrinks a frame so that its long side is 1024 pixels. On a 4096² frame that is a factor of 4: a
cell 40 pixels wide becomes 10, and a click gives a mask that is mostly background (issue 24: 30 %
of the mask on the cell). Tiling does not help prompts (it is for *segment everything*), so prompts
get their own rule, used by the widget and ``mobilesam segment`` alike (:func:`~.jobs.decode_objects`):

- a frame is *large* when its long side exceeds ``FACTOR`` (2) times the encoder's input side;
- on a large frame, each click / box prompt is decoded on the embedding of one window of the
  encoder's size (1024²) at full resolution. Windows come from a fixed grid (:func:`.tiles.tile_boxes`
  with half-window overlap), so neighbouring clicks share a window and its embedding is computed once
  (it is cached with the frame's embeddings). The window chosen is the grid window that holds the
  whole prompt farthest from its inner edges; a prompt closer than ``MARGIN`` to every grid window's
  inner edges (a large box, points far apart) gets a window centred on it, twice its size (then
  shrunk by the encoder, but far less than the whole frame);
- a mask that touches an inner edge of its window was cut by it: it is decoded once more in a
  window centred on that mask, twice its size;
- prompts with a ``mask_input`` (refine, propagate) are decoded on the whole frame as before: their
  logits belong to the whole frame's embedding. The masks of windowed prompts get whole-frame
  ``low_res_logits`` (:func:`frame_logits`), so they can be used as a later ``mask_input``.

The frame's pixels (RGB uint8, as the encoder saw them) are kept with its embedding for this
(:attr:`.embeddings.Embedding.pixels`); without them (an embedding read from a store and set with
``set_embedding``) prompts are decoded on the whole frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .objects import ObjectMask, Prompt
from .tiles import tile_boxes

if TYPE_CHECKING:
    from .predictor import Predictor

__all__ = ["FACTOR", "MARGIN", "choose_window", "frame_logits", "is_large", "predict_in_windows", "prompt_extent"]

FACTOR = 2.0  # frames whose long side exceeds FACTOR x the encoder input are decoded in windows
MARGIN = 0.25  # of the window side: the least distance from a prompt to a window's inner edge
LOGIT = 20.0  # magnitude of the mask-input logits made from a mask (as propagate's mask_to_logits)

Box = tuple[int, int, int, int]


def is_large(hw: Sequence[int], img_size: int = 1024) -> bool:
    """True for a frame ``(H, W)`` whose long side exceeds ``FACTOR`` times the encoder's input side."""
    return max(int(hw[0]), int(hw[1])) > FACTOR * img_size


def prompt_extent(p: Prompt) -> tuple[float, float, float, float]:
    """``(row0, col0, row1, col1)`` around every point and the box of ``p`` (frame pixels)."""
    parts = []
    if p.points is not None:
        parts.append(np.asarray(p.points, float))
    if p.box is not None:
        parts.append(np.asarray(p.box, float).reshape(2, 2))
    pts = np.concatenate(parts)
    return float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())


def _margin(ext: Sequence[float], box: Box, hw: Sequence[int]) -> float:
    """Least distance from ``ext`` to an inner edge of ``box`` (frame edges do not cut); -1 if outside."""
    r0, c0, r1, c1 = box
    if ext[0] < r0 or ext[1] < c0 or ext[2] >= r1 or ext[3] >= c1:
        return -1.0
    gaps = [ext[0] - r0 if r0 > 0 else np.inf, ext[1] - c0 if c0 > 0 else np.inf,
            r1 - 1 - ext[2] if r1 < hw[0] else np.inf, c1 - 1 - ext[3] if c1 < hw[1] else np.inf]
    return float(min(gaps))


def _centred(ext: Sequence[float], hw: Sequence[int], side: int) -> Box:
    """A window centred on ``ext``, of side ``side`` or twice the extent, whichever is larger, inside the frame."""
    h, w = int(hw[0]), int(hw[1])
    n = int(max(side, 2 * (ext[2] - ext[0] + 1), 2 * (ext[3] - ext[1] + 1)))
    sh, sw = min(n, h), min(n, w)
    r0 = int(np.clip(round((ext[0] + ext[2]) / 2 - sh / 2), 0, h - sh))
    c0 = int(np.clip(round((ext[1] + ext[3]) / 2 - sw / 2), 0, w - sw))
    return r0, c0, r0 + sh, c0 + sw


def choose_window(ext: Sequence[float], hw: Sequence[int], side: int = 1024) -> Box:
    """The window ``(row0, col0, row1, col1)`` in which to decode a prompt whose extent is ``ext``.

    The grid window (side ``side``, overlap ``side // 2``) that holds ``ext`` farthest from its inner
    edges, if that is at least ``MARGIN * side``; else a window centred on ``ext`` (:func:`_centred`).
    """
    grid = tile_boxes(hw, side, side // 2)
    best = max(grid, key=lambda b: _margin(ext, b, hw))
    if _margin(ext, best, hw) >= MARGIN * side:
        return best
    return _centred(ext, hw, side)


def _cut(m: ObjectMask, box: Box, hw: Sequence[int]) -> bool:
    """The mask (window coordinates) touches an inner edge of ``box``."""
    if not m.area:
        return False
    r0, c0, r1, c1 = box
    top, left = m.offset
    bottom, right = top + m.mask.shape[0], left + m.mask.shape[1]
    return (r0 > 0 and top == 0) or (c0 > 0 and left == 0) or (r1 < hw[0] and bottom == r1 - r0) or (c1 < hw[1] and right == c1 - c0)


def frame_logits(m: ObjectMask, input_size: Sequence[int], img_size: int = 1024, low: int = 256) -> np.ndarray:
    """``(low, low)`` float32 mask-input logits of a full-frame mask ``m`` for the whole frame's embedding
    (the frame resized to ``input_size``, padded to ``img_size``, reduced to ``low``): +LOGIT inside."""
    out = np.full((low, low), -LOGIT, np.float32)
    if not m.area:
        return out
    scale = (input_size[0] / m.shape[0] * low / img_size, input_size[1] / m.shape[1] * low / img_size)
    r0, c0 = int(np.floor(m.offset[0] * scale[0])), int(np.floor(m.offset[1] * scale[1]))
    r1 = min(low, int(np.ceil((m.offset[0] + m.mask.shape[0]) * scale[0])))
    c1 = min(low, int(np.ceil((m.offset[1] + m.mask.shape[1]) * scale[1])))
    if r1 <= r0 or c1 <= c0:
        return out
    crop = torch.as_tensor(m.mask, dtype=torch.float32)[None, None]
    small = F.interpolate(crop, (r1 - r0, c1 - c0), mode="area")[0, 0].numpy()
    out[r0:r1, c0:c1] = np.where(small > 0.5, LOGIT, -LOGIT)
    return out


def _decode(pred: Predictor, sub: Predictor, box: Box, prompts: Sequence[Prompt], multimask: bool, select, thr) -> list[ObjectMask]:
    """``prompts`` (frame coordinates) decoded on the embedding of window ``box``; masks in window coordinates."""
    r0, c0, r1, c1 = box
    key = None if pred.key is None else ("window", pred.key, box)
    assert pred.pixels is not None
    sub.set_image(pred.pixels[r0:r1, c0:c1], pred.model.image_format, key=key)  # pixels are in the model's order
    shift = np.array([r0, c0, r0, c0], float)
    local = [Prompt(points=None if p.points is None else p.points - shift[:2], labels=p.labels,
                    box=None if p.box is None else p.box - shift) for p in prompts]
    return sub.predict_objects(local, multimask_output=multimask, select=select, mask_threshold=thr)


def predict_in_windows(
    pred: Predictor, prompts: Sequence[Prompt], multimask_output: bool = False, select: str | int = "best",
    mask_threshold: float | None = None,
) -> list[ObjectMask]:
    """:meth:`Predictor.predict_objects` for prompts without ``mask_input`` on a large frame whose pixels
    the predictor holds: each decoded in its window (see the module's rules). Returns one
    :class:`ObjectMask` per prompt, in frame coordinates, with ``window`` set to the window used."""
    hw = (int(pred.original_size[0]), int(pred.original_size[1]))
    side = int(pred.model.image_encoder.img_size)
    sub = pred.window_predictor()
    chosen = [choose_window(prompt_extent(p), hw, side) for p in prompts]
    out: list[ObjectMask | None] = [None] * len(prompts)
    for box in dict.fromkeys(chosen):
        idx = [i for i, b in enumerate(chosen) if b == box]
        if box == (0, 0, *hw):  # the prompt spans the frame: the frame's own embedding
            for i, m in zip(idx, pred.predict_objects([prompts[i] for i in idx], multimask_output, select, mask_threshold), strict=True):
                out[i] = m
            continue
        masks = _decode(pred, sub, box, [prompts[i] for i in idx], multimask_output, select, mask_threshold)
        for i, m in zip(idx, masks, strict=True):
            if _cut(m, box, hw):  # cut by the window: once more, centred on the mask
                r0, c0 = box[0] + m.offset[0], box[1] + m.offset[1]
                ext = prompt_extent(prompts[i])
                ext = (min(ext[0], r0), min(ext[1], c0), max(ext[2], r0 + m.mask.shape[0] - 1), max(ext[3], c0 + m.mask.shape[1] - 1))
                again = _centred(ext, hw, side)
                if again != box and again != (0, 0, *hw):
                    box_i, m = again, _decode(pred, sub, again, [prompts[i]], multimask_output, select, mask_threshold)[0]
                else:
                    box_i = box
            else:
                box_i = box
            placed = replace(m, offset=(m.offset[0] + box_i[0], m.offset[1] + box_i[1]) if m.area else (0, 0), shape=hw, window=box_i)
            placed.low_res_logits = frame_logits(placed, pred.input_size, side)
            out[i] = placed
    return [o for o in out if o is not None]
