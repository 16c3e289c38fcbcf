"""Masks -> instance labels, with deterministic overlap rules and respect for existing labels.

Rules (documented in the README):
- **Overlaps between new objects:** masks are painted largest first, so a smaller object lying
  on a larger one stays visible (as the official MobileSAMv2 code does); ties are broken by the
  order given. ``order="given"`` paints in the given order (later wins).
- **Existing labels:** a new label only fills background (0) pixels, unless ``overwrite=True``.
  Pixels of ``replace_ids`` (an object being re-segmented) are released first, so re-running a
  prompt replaces its own previous mask and nothing else.
- **Writes in order (generations):** each *Segment* (or live write) is one write, painted with the two
  rules above (:func:`write_changes`); a later write only fills background. A session records which
  write (generation 0, 1, ...) wrote each object, and its replay paints them write by write
  (:func:`paint_writes`), so that it gives what the widget wrote.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import SettingsError
from .predictor import ObjectMask

__all__ = ["check_ids", "filter_objects", "label_changes", "next_free_id", "paint_writes", "render_labels", "write_changes",
           "write_labels"]


def next_free_id(labels: np.ndarray) -> int:
    """One more than the largest label in ``labels`` (1 for an empty array)."""
    return int(labels.max()) + 1 if labels.size else 1


def filter_objects(
    objects: Sequence[ObjectMask],
    min_score: float = 0.0,
    min_stability: float = 0.0,
    min_area: int = 1,
    max_area: int | None = None,
) -> list[ObjectMask]:
    """Objects whose predicted IoU, stability score and pixel area pass the thresholds."""
    keep = []
    for o in objects:
        area = o.area
        if o.score >= min_score and o.stability >= min_stability and area >= min_area and (max_area is None or area <= max_area):
            keep.append(o)
    return keep


def render_labels(
    objects: Sequence[ObjectMask],
    shape: tuple[int, int],
    ids: Sequence[int] | None = None,
    order: str = "largest_first",
    dtype: np.dtype | type = np.uint32,
) -> np.ndarray:
    """Paint objects into a new ``shape`` label image (0 = background).

    Args:
        objects: cropped masks of one frame.
        ids: the label of each object (default 1..n in the given order).
        order: "largest_first" (smaller objects on top) or "given" (later on top).
    """
    if ids is None:
        ids = range(1, len(objects) + 1)
    ids = list(ids)
    if len(ids) != len(objects):
        raise SettingsError(f"{len(objects)} objects but {len(ids)} ids.")
    if order not in ("largest_first", "given"):
        raise SettingsError(f"order must be 'largest_first' or 'given', got {order!r}.")
    check_ids(ids, np.dtype(dtype))
    shape = tuple(int(v) for v in shape)  # type: ignore[assignment]
    for i, o in enumerate(objects):
        if tuple(o.shape) != shape:
            raise SettingsError(f"Object {i} was segmented on a frame of {tuple(o.shape)} pixels, not {shape}; "
                             "give render_labels the shape of the frame the objects come from.")
    out = np.zeros(shape, dtype=dtype)
    idx = range(len(objects))
    if order == "largest_first":
        idx = sorted(idx, key=lambda i: -objects[i].area)  # stable: ties keep the given order
    for i in idx:
        o = objects[i]
        r0, c0, r1, c1 = o.bbox
        out[r0:r1, c0:c1][o.mask] = ids[i]
    return out


def check_ids(ids: Sequence[int], dtype: np.dtype, what: str = "labels") -> None:
    """ValueError unless every id is a whole number in 1..(the largest value of ``dtype``)."""
    if not len(ids):
        return
    arr = np.asarray(list(ids), dtype=object)
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in arr):
        raise SettingsError(f"Label ids must be whole numbers, got {[v for v in arr if not isinstance(v, (int, np.integer))][:3]}.")
    hi = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 2**53
    bad = [int(v) for v in arr if not 1 <= int(v) <= hi]
    if bad:
        raise SettingsError(f"Label id {bad[0]} does not fit {what} of dtype {dtype.name} (ids are 1..{hi}); "
                         + ("use smaller ids." if hi >= 2**32 - 1 else "convert the labels to uint32 first, or use smaller ids."))


def label_changes(
    existing: np.ndarray,
    new: np.ndarray,
    overwrite: bool = False,
    replace_ids: Sequence[int] = (),
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Which pixels of ``existing`` change, and to what, when ``new`` is merged in.

    Returns:
        ``(index, values)``: a tuple of coordinate arrays (as from ``np.nonzero``) and the new
        value at each; only pixels whose value actually changes are listed.
    """
    if existing.shape != new.shape:
        raise SettingsError(f"Labels of shape {existing.shape} cannot take results of shape {new.shape}.")
    released = np.isin(existing, np.asarray(list(replace_ids), dtype=existing.dtype)) if len(replace_ids) else np.zeros(existing.shape, bool)
    free = (existing == 0) | released
    target = np.where(released, 0, existing)
    take = new > 0
    if np.issubdtype(existing.dtype, np.integer) and take.any():
        check_ids([int(new[take].max())], existing.dtype)
    if not overwrite:
        take &= free
    target = np.where(take, new.astype(existing.dtype, copy=False), target)
    index = np.nonzero(target != existing)
    return index, target[index]


def write_labels(existing: np.ndarray, new: np.ndarray, overwrite: bool = False, replace_ids: Sequence[int] = ()) -> int:
    """Merge ``new`` into ``existing`` in place (see :func:`label_changes`); returns pixels changed."""
    index, values = label_changes(existing, new, overwrite, replace_ids)
    existing[index] = values
    return len(values)


def write_changes(
    existing: np.ndarray,
    masks: Sequence[ObjectMask],
    ids: Sequence[int],
    overwrite: bool = False,
    replace_ids: Sequence[int] = (),
    keep_ids: Sequence[int] = (),
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """One write (one *Segment* of one frame): the pixels of ``existing`` that change, and to what.

    The one paint rule of the widget's writes and of a session's replay: the masks are rendered
    largest first (:func:`render_labels`), then merged as :func:`label_changes` says (background only
    unless ``overwrite``; ``replace_ids`` released first); pixels of ``keep_ids`` (labels edited by
    hand) never change, even with ``overwrite``.

    Args:
        existing: ``(H, W)`` labels (any integer dtype); not modified.
        masks: :class:`ObjectMask` of frames of ``existing.shape`` (``mask.shape == existing.shape``).
        ids: the label of each mask.

    Returns:
        ``(index, values)`` as :func:`label_changes`.
    """
    new = render_labels(masks, existing.shape, ids=list(ids), dtype=existing.dtype)
    index, values = label_changes(existing, new, overwrite=overwrite, replace_ids=replace_ids)
    if len(keep_ids) and len(values):
        free = ~np.isin(existing[index], np.asarray(list(keep_ids)))
        index, values = tuple(i[free] for i in index), values[free]
    return index, values


def paint_writes(
    masks: Sequence[ObjectMask],
    ids: Sequence[int],
    shape: tuple[int, int],
    generations: Sequence[int] | None = None,
    overwrite: Sequence[bool] | None = None,
    base: np.ndarray | None = None,
) -> np.ndarray:
    """Redo a frame's writes in order: the masks of generation 0 as one :func:`write_changes`, then those of
    generation 1, and so on (each write replaces its own ids' pixels; without ``overwrite`` it only
    fills background, so an earlier write keeps the pixels it holds).

    Args:
        masks, ids: the objects of one ``(H, W)`` frame and their labels.
        generations: the write of each object (default: all in one write, i.e. :func:`render_labels`).
        overwrite: per object, whether its write covered existing labels (default: none did).
        base: ``(H, W)`` labels to write into (default: zeros, uint32); not modified.

    Returns:
        ``(H, W)`` labels (``base``'s dtype, or uint32).
    """
    n = len(masks)
    gens = [0] * n if generations is None else [int(g) for g in generations]
    over = [False] * n if overwrite is None else [bool(v) for v in overwrite]
    if not len(ids) == len(gens) == len(over) == n:
        raise SettingsError(f"{n} masks but {len(ids)} ids, {len(gens)} generations and {len(over)} overwrite flags.")
    out = np.zeros(shape, np.uint32) if base is None else np.array(base, copy=True)
    for g in sorted(set(gens)):
        part = [i for i in range(n) if gens[i] == g]
        mine = [int(ids[i]) for i in part]
        index, values = write_changes(out, [masks[i] for i in part], mine, overwrite=any(over[i] for i in part), replace_ids=mine)
        out[index] = values
    return out
