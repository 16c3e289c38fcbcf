"""Decode a frame's prompted objects: the one function the widget (Segment, live, Refine) and
``mobilesam segment`` (inline and on dask workers) both call, so that both paint the same masks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .predictor import ObjectMask, Predictor
    from .prompts import ObjectPrompt

__all__ = ["decode_objects"]


def decode_objects(pred: Predictor, objects: Sequence[ObjectPrompt], multimask_all: bool = False,
                   progress: Callable[[int], None] | None = None) -> list[ObjectMask]:
    """Masks (``ObjectMask``) of :class:`~.prompts.ObjectPrompt` objects on the predictor's current frame,
    in input order, each decoded as its rule says (single clicks: best of three; ``mask`` 1-3: that one),
    batched by mask mode. The widget and ``mobilesam segment`` both decode through here. On a frame
    more than twice the encoder's input (e.g. 4096²), clicks and boxes are decoded in full-resolution
    windows around them (:mod:`.windows`).

    ``multimask_all``: every object takes the best of three masks (``mobilesam segment --multimask``).
    ``progress``: called with the number of objects decoded after each batch of ``pred.batch_size``."""
    groups: dict[tuple, list[int]] = {}
    for i, o in enumerate(objects):
        multimask = o.multimask or multimask_all
        groups.setdefault((multimask, o.select if multimask else "best"), []).append(i)
    out: list = [None] * len(objects)  # ObjectMask per object, filled group by group
    for (multimask, select), idx in groups.items():
        step = len(idx) if progress is None else pred.batch_size  # predict_objects batches the same way
        for start in range(0, len(idx), step):
            part = idx[start : start + step]
            masks = pred.predict_objects([objects[i].prompt for i in part], multimask_output=multimask, select=select, windows=True)
            for i, m in zip(part, masks, strict=True):
                out[i] = m
            if progress is not None:
                progress(len(part))
    return out
