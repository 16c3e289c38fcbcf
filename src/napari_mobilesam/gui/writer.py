"""Undoable writes into a napari Labels layer.

Every write goes through ``Labels.data_setitem`` inside ``Labels.block_history()``, so one call
of :func:`write_frames` is one Ctrl+Z in the Labels layer, and only pixels that change are stored
in the history (memory scales with the change, not with the stack).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from napari.layers import Labels

from ..engine.labels import label_changes

__all__ = ["check_ids_fit", "frame_view", "write_frames"]

Frame = tuple[int, ...]


def frame_view(labels: Labels, frame: Frame) -> np.ndarray:
    """The ``(H, W)`` label image of ``frame`` (a copy for non-numpy data)."""
    return np.asarray(labels.data[tuple(frame)])


def check_ids_fit(labels: Labels, max_id: int) -> None:
    """Raise a clear error when the layer's dtype cannot hold ``max_id``."""
    dtype = np.dtype(labels.data.dtype)
    if np.iinfo(dtype).max < max_id:
        raise ValueError(
            f"Labels layer {labels.name!r} has dtype {dtype} and cannot hold label {max_id}; "
            "choose 'new' as output layer (uint32) or convert this layer to a larger integer type."
        )


def write_frames(
    labels: Labels,
    items: Iterable[tuple[Frame, np.ndarray]],
    overwrite: bool = False,
    replace_ids: Sequence[int] = (),
) -> int:
    """Merge new label images into their frames as one undoable step.

    Args:
        items: ``(frame, new)`` pairs, ``new`` an ``(H, W)`` label image (0 = nothing new).
        overwrite: new labels may cover existing labels (default: only background is filled).
        replace_ids: labels released first (the previous masks of re-segmented objects).

    Returns:
        Number of pixels changed.
    """
    n = 0
    with labels.block_history():
        for frame, new in items:
            existing = frame_view(labels, frame)
            index, values = label_changes(existing, new, overwrite=overwrite, replace_ids=replace_ids)
            if not len(values):
                continue
            full = tuple(np.full(len(values), f, dtype=np.intp) for f in frame) + index
            labels.data_setitem(full, values)
            n += len(values)
    return n
