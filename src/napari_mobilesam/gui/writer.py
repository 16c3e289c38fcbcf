"""Undoable writes into a napari Labels layer.

Every write goes through ``Labels.data_setitem`` inside ``Labels.block_history()``, so one call
of :func:`write_frames` is one Ctrl+Z in the Labels layer, and only pixels that change are stored
in the history (memory scales with the change, not with the stack).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np
from napari.layers import Labels

from ..engine.errors import SettingsError
from ..engine.labels import label_changes, write_changes

__all__ = ["check_ids_fit", "frame_view", "object_pixels", "write_frames", "write_masks"]

Frame = tuple[int, ...]


def frame_view(labels: Labels, frame: Frame) -> np.ndarray:
    """The ``(H, W)`` label image of ``frame`` (a copy for non-numpy data)."""
    return np.asarray(labels.data[tuple(frame)])


def check_ids_fit(labels: Labels, max_id: int) -> None:
    """Raise a clear error when the layer's dtype cannot hold ``max_id``."""
    dtype = np.dtype(labels.data.dtype)
    if np.iinfo(dtype).max < max_id:
        raise SettingsError(
            f"Labels layer {labels.name!r} has dtype {dtype} and cannot hold label {max_id}; "
            "choose 'new' as output layer (uint32) or convert this layer to a larger integer type."
        )


def write_frames(
    labels: Labels,
    items: Iterable[tuple[Frame, np.ndarray]],
    overwrite: bool = False,
    replace_ids: Sequence[int] | str = (),
) -> int:
    """Merge new label images into their frames as one undoable step.

    Args:
        items: ``(frame, new)`` pairs, ``new`` an ``(H, W)`` label image (0 = nothing new).
        overwrite: new labels may cover existing labels (default: only background is filled).
        replace_ids: labels released first (the previous masks of re-segmented objects); "new":
            in each frame, the labels that ``new`` brings.

    Returns:
        Number of pixels changed.
    """
    if isinstance(replace_ids, str) and replace_ids != "new":
        raise SettingsError(f"replace_ids must be label ids or 'new', not {replace_ids!r}.")
    n = 0
    with labels.block_history():
        for frame, new in items:
            existing = frame_view(labels, frame)
            release = np.unique(new[new > 0]).tolist() if isinstance(replace_ids, str) else replace_ids
            index, values = label_changes(existing, new, overwrite=overwrite, replace_ids=release)
            if not len(values):
                continue
            full = tuple(np.full(len(values), f, dtype=np.intp) for f in frame) + index
            labels.data_setitem(full, values)
            n += len(values)
    return n


def write_masks(
    labels: Labels,
    frame: Frame,
    masks: Sequence,
    ids: Sequence[int],
    overwrite: bool = False,
    replace_ids: Sequence[int] = (),
    keep_ids: Sequence[int] = (),
) -> int:
    """Paint cropped masks (``ObjectMask``) with ``ids`` into ``frame`` as one undoable step.

    Same result as rendering the masks on the whole frame and calling :func:`write_frames`, but
    only the region the change can touch (the masks' boxes and the pixels of ``replace_ids``) is
    processed, so a live click costs little on large frames. Pixels of ``keep_ids`` (labels edited by
    hand) are never changed, even with ``overwrite``.
    """
    existing = frame_view(labels, frame)
    h, w = existing.shape
    boxes = [m.bbox for m in masks]
    if len(replace_ids):
        hit = existing == replace_ids[0]
        for i in replace_ids[1:]:
            hit |= existing == i
        rows, cols = np.flatnonzero(hit.any(1)), np.flatnonzero(hit.any(0))
        if len(rows):
            boxes.append((rows[0], cols[0], rows[-1] + 1, cols[-1] + 1))
    if not boxes:
        return 0
    r0, c0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    r1, c1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    shifted = [replace(m, offset=(m.offset[0] - r0, m.offset[1] - c0), shape=(r1 - r0, c1 - c0)) for m in masks]
    # the engine's one paint rule for a write (a session's replay paints with it too)
    index, values = write_changes(existing[r0:r1, c0:c1], shifted, ids, overwrite, replace_ids, keep_ids)
    if not len(values):
        return 0
    full = tuple(np.full(len(values), f, dtype=np.intp) for f in frame) + (index[0] + r0, index[1] + c0)
    with labels.block_history():
        labels.data_setitem(full, values)
    return len(values)


def object_pixels(labels: Labels, frame: Frame, masks: Sequence, ids: Sequence[int]) -> list[int]:
    """Pixels each object holds in ``frame`` after :func:`write_masks` (only a mask's own pixels
    can carry its id: a written object's old pixels were released first)."""
    view = frame_view(labels, frame)
    out = []
    for m, lid in zip(masks, ids, strict=True):
        r0, c0, r1, c1 = m.bbox
        out.append(int((view[r0:r1, c0:c1][m.mask] == lid).sum()))
    return out
