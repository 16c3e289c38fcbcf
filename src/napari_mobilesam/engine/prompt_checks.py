"""Prompt validation against a frame: the one rule for the API, the CLI's CSV reader and the widget.

Coordinates are napari's ``(row, col)`` pixels of one frame of ``(H, W)`` pixels:
- a point must be a number and lie on the frame: ``-0.5 <= row < H - 0.5`` and ``-0.5 <= col < W - 0.5``
  (the pixel areas, as napari draws them);
- a point label is 1 (object) or 0 (background);
- a box ``(row0, col0, row1, col1)`` must be numbers, at least 1 pixel high and wide (everything mode
  drops smaller boxes too) and overlap the frame.

Numbers in messages are printed plainly (``12.5``, ``nan``), never as ``np.float64(12.5)``. numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import SettingsError

__all__ = ["box_problem", "check_prompts", "clip_box", "fmt", "point_problem"]


def fmt(values: Any) -> str:
    """``(12.5, 3, nan)``: numbers as plain text, 4 significant decimals at most."""
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    text = ", ".join("nan" if np.isnan(v) else f"{v:.6g}" for v in flat)
    return f"({text})" if flat.size != 1 else text


def _size(hw: Sequence[int]) -> str:
    return f"{int(hw[0])} x {int(hw[1])}"


def point_problem(point: Any, hw: Sequence[int]) -> str | None:
    """Why a ``(row, col)`` point cannot be used on an ``(H, W)`` frame, or None when it can."""
    p = np.asarray(point, dtype=np.float64).reshape(-1)
    if not np.isfinite(p).all():
        return f"position {fmt(p)} is not a number (NaN or infinite)"
    h, w = int(hw[0]), int(hw[1])
    if not (-0.5 <= p[-2] < h - 0.5 and -0.5 <= p[-1] < w - 0.5):
        return f"position {fmt(p)} is outside the {_size(hw)} frame (rows 0..{h - 1}, columns 0..{w - 1})"
    return None


def box_problem(box: Any, hw: Sequence[int]) -> str | None:
    """Why a ``(row0, col0, row1, col1)`` box cannot be used on an ``(H, W)`` frame, or None when it can."""
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    if b.shape != (4,):
        return f"a box is 4 numbers (row0, col0, row1, col1), got {b.size}"
    if not np.isfinite(b).all():
        return f"box {fmt(b)} is not a number (NaN or infinite)"
    r0, c0, r1, c1 = min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])
    if r1 - r0 < 1 or c1 - c0 < 1:
        return f"box {fmt(b)} has zero size ({r1 - r0:.6g} x {c1 - c0:.6g} pixels); draw it at least 1 pixel high and wide"
    h, w = int(hw[0]), int(hw[1])
    if r1 <= 0 or c1 <= 0 or r0 >= h or c0 >= w:
        return f"box {fmt(b)} lies outside the {_size(hw)} frame"
    return None


def clip_box(box: Any, hw: Sequence[int]) -> tuple[np.ndarray | None, str | None]:
    """A drawn box clipped to the pixel centres of an ``(H, W)`` frame (rows 0..H-1, columns 0..W-1),
    or ``(None, why)`` when it is unusable (:func:`box_problem`) or overlaps the frame by less than
    one pixel. The rule for prompt layers and CSV files (widget and CLI)."""
    why = box_problem(box, hw)
    if why is not None:
        return None, why
    b = np.asarray(box, np.float64).reshape(-1)
    lo, hi = np.minimum(b[:2], b[2:]), np.maximum(b[:2], b[2:])
    lim = np.array([int(hw[0]) - 1, int(hw[1]) - 1], np.float64)
    lo, hi = np.clip(lo, 0, lim), np.clip(hi, 0, lim)
    if (hi - lo < 1).any():
        return None, f"box {fmt(b)} overlaps the {_size(hw)} frame by less than 1 pixel"
    return np.concatenate([lo, hi]), None


def _label_problem(labels: Any) -> str | None:
    lab = np.asarray(labels).reshape(-1)
    bad = [v for v in lab.tolist() if v not in (0, 1)]
    if bad:
        return f"point labels must be 1 (object) or 0 (background), got {', '.join(fmt(v) for v in bad[:5])}"
    return None


def check_prompts(prompts: Sequence[Any], hw: Sequence[int]) -> None:
    """Raise ``ValueError`` for the first prompt that cannot be used on an ``(H, W)`` frame.

    Args:
        prompts: :class:`~napari_mobilesam.engine.predictor.Prompt` objects (``points`` ``(N, 2)``
            (row, col), ``labels`` ``(N,)``, ``box`` ``(4,)``), any object with those attributes.
        hw: ``(H, W)`` of the frame.

    Raises:
        ValueError: naming the prompt (its number when there are several), the value and the frame size.
    """
    for i, p in enumerate(prompts):
        where = f"Prompt {i}" if len(prompts) > 1 else "Prompt"
        problems = []
        if getattr(p, "points", None) is not None:
            problems += [point_problem(q, hw) for q in np.asarray(p.points, np.float64).reshape(-1, 2)]
            if getattr(p, "labels", None) is not None:
                problems.append(_label_problem(p.labels))
        if getattr(p, "box", None) is not None:
            problems.append(box_problem(p.box, hw))
        first = next((x for x in problems if x), None)
        if first:
            raise SettingsError(f"{where}: {first}.")


def check_xy(point_coords: Any, point_labels: Any, box: Any, hw: Sequence[int]) -> None:
    """:func:`check_prompts` for ``SamPredictor.predict``'s arguments: ``(N, 2)`` (x, y) points, ``(N,)``
    labels and an ``(x0, y0, x1, y1)`` box, on an ``(H, W)`` frame; messages name them as given."""
    if point_coords is not None:
        for xy in np.asarray(point_coords, np.float64).reshape(-1, 2):
            problem = point_problem(xy[::-1], hw)
            if problem:
                raise SettingsError(f"Point (x, y) = {fmt(xy)}: {problem} (as (row, column)).")
    if point_labels is not None:
        problem = _label_problem(point_labels)
        if problem:
            raise SettingsError(f"{problem[0].upper()}{problem[1:]}.")
    if box is not None:
        b = np.asarray(box, np.float64).reshape(-1)
        problem = box_problem(b[[1, 0, 3, 2]] if b.size == 4 else b, hw)
        if problem:
            raise SettingsError(f"Box (x0, y0, x1, y1) = {fmt(b)}: {problem} (as (row0, col0, row1, col1)).")
