"""Masks -> instance labels, with deterministic overlap rules and respect for existing labels.

Rules (documented in the README):
- **Overlaps between new objects:** masks are painted largest first, so a smaller object lying
  on a larger one stays visible (as the official MobileSAMv2 code does); ties are broken by the
  order given. ``order="given"`` paints in the given order (later wins).
- **Existing labels:** a new label only fills background (0) pixels, unless ``overwrite=True``.
  Pixels of ``replace_ids`` (an object being re-segmented) are released first, so re-running a
  prompt replaces its own previous mask and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import SettingsError
from .predictor import ObjectMask

__all__ = ["check_ids", "filter_objects", "label_changes", "next_free_id", "render_labels", "write_labels"]


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
