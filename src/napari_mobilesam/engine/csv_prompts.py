"""napari Points/Shapes CSV files (File > Save Layers) -> the objects of :mod:`.prompts`, per frame.

This module only reads the files into a :class:`~.prompts.PromptTable`; which objects, label ids
and masks the prompts give is decided by :func:`~.prompts.collect_objects` and
:func:`~.prompts.assign_ids`, exactly as in the widget. numpy only.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import InputError
from .prompt_checks import fmt
from .prompts import ObjectPrompt, PromptTable, assign_ids, collect_objects

if TYPE_CHECKING:  # io imports this module on use; importing io here would make a cycle
    from .io import ImageSource

__all__ = ["POINT_FEATURES", "read_objects", "read_points_csv", "read_prompt_table", "read_prompts", "read_shapes_csv"]


def _read_table(path: Path, required: tuple[str, ...], what: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and ``(CSV line number, row)`` of the non-empty rows."""
    if not path.is_file():
        raise InputError(f"{what} file {path} does not exist.")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: Excel's byte-order mark
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"Cannot read {what} file {path}: {err}.") from err
    header = [h.strip() for h in rows[0]] if rows else []
    missing = [c for c in required if c not in header] + ([] if any(h.startswith("axis-") for h in header) else ["axis-0, axis-1, ..."])
    if missing:
        raise InputError(
            f"{path} is not a napari {what} CSV: columns {', '.join(missing)} missing (found {', '.join(header) or 'nothing'}). "
            f"Save the {what} layer from napari with File > Save Selected Layers... as .csv."
        )
    kept = [(n + 2, r) for n, r in enumerate(rows[1:]) if r and any(c.strip() for c in r)]
    for line, r in kept:
        if len(r) < len(header):
            raise InputError(f"{path} row {line} has {len(r)} cells but the header has {len(header)} "
                             f"({', '.join(header[len(r):])} missing); fill them in (a feature may be left empty: 'x,y,')."
                             if len(r) else f"{path} row {line} is empty.")
    return header, kept


def _axes(header: list[str], path: Path) -> list[int]:
    axes = sorted((int(h[5:]), i) for i, h in enumerate(header) if h.startswith("axis-") and h[5:].isdigit())
    if len(axes) < 2:
        raise InputError(f"{path} has {len(axes)} coordinate column(s); points need at least axis-0 and axis-1.")
    return [i for _, i in axes]


def _flag(value: str, path: Path, line: int) -> int:
    v = value.strip().lower()
    if v in ("1", "1.0", "true", "positive", "pos", "+"):
        return 1
    if v in ("0", "0.0", "false", "negative", "neg", "-", "-1", "-1.0"):
        return 0
    raise InputError(f"{path} row {line}: label {value!r} must be 1/0 (or True/False).")


def _int(row: list[str], col: int | None, path: Path, line: int, name: str) -> int:
    """An integer feature cell (empty or nan: 0)."""
    if col is None or col >= len(row) or row[col].strip().lower() in ("", "nan", "none"):
        return 0
    try:
        v = float(row[col])
    except ValueError as err:
        raise InputError(f"{path} row {line}: {name} {row[col]!r} is not a number.") from err
    if not np.isfinite(v) or v != int(v):
        raise InputError(f"{path} row {line}: {name} {row[col]!r} must be a whole number.")
    return int(v)


def _coords(row: list[str], ax: list[int], path: Path, line: int) -> np.ndarray:
    try:
        return np.array([float(row[i]) for i in ax])
    except (ValueError, IndexError) as err:
        raise InputError(f"{path} row {line}: cannot read the coordinates ({err}).") from err


def _check_ndim(ndim: int, source: ImageSource, path: Path) -> None:
    lead = source.leading_shape
    if ndim != len(lead) + 2:
        raise InputError(
            f"{path} has {ndim}D coordinates but {source.path} has {len(lead) + 2} dims "
            f"(frames {lead or 'none'} + rows, cols); save the layer drawn on this image."
        )


POINT_FEATURES = ("label", "object", "label_id", "mask")
_ID_MAX = 2**32 - 1  # labels are written as uint32
_RANGES = {"object": (0, _ID_MAX), "label_id": (0, _ID_MAX), "mask": (0, 3)}
_MEANING = {"object": "0: none, else the points' object number", "label_id": "0: a new id, else the label to write (uint32)",
            "mask": "0: the best of three masks, 1-3: that mask"}


def _check_frames(coords: list[np.ndarray], where: list[str], n_lead: int, kind: str) -> None:
    """Frame coordinates (the columns before the last two) must be whole numbers, and one shape's vertices
    must share their frame: napari puts prompts drawn on a frame exactly there."""
    for c, w in zip(coords, where):
        lead = np.atleast_2d(c)[:, :n_lead]
        if lead.size and (not np.all(np.isfinite(lead)) or np.abs(lead - np.round(lead)).max() > 1e-6):
            bad = lead[np.abs(lead - np.round(lead)) > 1e-6] if np.all(np.isfinite(lead)) else lead[~np.isfinite(lead)]
            raise InputError(f"{w}: frame index {fmt(bad[0])} is not a whole number; a {kind} belongs to one frame "
                             "(napari saves the frame it was drawn on, e.g. 3.0).")
        if kind == "shape" and len(lead) and np.any(lead != lead[0]):
            raise InputError(f"{w}: its vertices lie on frames {', '.join(fmt(v) for v in np.unique(lead, axis=0))}; "
                             "a rectangle belongs to one frame: draw it on that frame (or fix the frame columns).")


def read_points_csv(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, np.ndarray], list[str]]:
    """A napari Points CSV -> ``(coordinates (N, D), {feature: (N,) int}, where each row is)``.

    The features are those of :data:`POINT_FEATURES` (``label`` 1/0, default 1; the others default 0);
    ``where[i]`` is ``"points.csv row 5"`` for messages."""
    path = Path(path)
    header, rows = _read_table(path, (), "Points")  # napari writes an index column; a hand-written file needs none
    ax = _axes(header, path)
    col = {c: header.index(c) if c in header else None for c in POINT_FEATURES}
    coords, feats, where = [], {c: [] for c in POINT_FEATURES}, []
    for line, row in rows:
        coords.append(_coords(row, ax, path, line))
        feats["label"].append(_flag(row[col["label"]], path, line) if col["label"] is not None else 1)
        for c in POINT_FEATURES[1:]:
            value = _int(row, col[c], path, line, c)
            lo, hi = _RANGES[c]
            if not lo <= value <= hi:
                raise InputError(f"{path} row {line}: {c} {row[col[c]].strip()} is outside {lo}..{hi} ({_MEANING[c]}).")
            feats[c].append(value)
        where.append(f"{path} row {line}")
    out = np.stack(coords) if coords else np.zeros((0, len(ax)))
    return out, {c: np.asarray(v, int) for c, v in feats.items()}, where


def read_shapes_csv(path: str | os.PathLike) -> tuple[list[np.ndarray], list[str], list[str]]:
    """A napari Shapes CSV -> ``(vertices per shape (V, D), shape types, where each shape is)``."""
    path = Path(path)
    header, rows = _read_table(path, ("index", "shape-type", "vertex-index"), "Shapes")
    ax, ii, ti = _axes(header, path), header.index("index"), header.index("shape-type")
    shapes: dict[str, list[np.ndarray]] = {}
    types, where = [], []
    for line, row in rows:
        if row[ii] not in shapes:
            where.append(f"{path} row {line} (shape {row[ii]})")
            types.append(row[ti].strip())
        shapes.setdefault(row[ii], []).append(_coords(row, ax, path, line))
    return [np.stack(v) for v in shapes.values()], types, where


def read_prompt_table(
    source: ImageSource, points: str | os.PathLike | None = None, boxes: str | os.PathLike | None = None,
    shape_ids: Sequence[int] | None = None, shape_masks: Sequence[int] | None = None,
) -> tuple[PromptTable, list[str], list[str]]:
    """Read napari CSV files into a :class:`~.prompts.PromptTable` (features ``label``, ``object``,
    ``label_id``, ``mask`` of the points; ``shape_ids`` / ``shape_masks``: the shapes' features, which
    napari's shapes CSV does not hold, e.g. from a session). Returns the table and, per point and per
    shape, where it is in its file (``"points.csv row 5"``) for messages."""
    table = PromptTable()
    p_where: list[str] = []
    s_where: list[str] = []
    if points is not None:
        coords, f, p_where = read_points_csv(points)
        if len(coords):
            _check_ndim(coords.shape[1], source, Path(points))
            _check_frames(list(coords), p_where, coords.shape[1] - 2, "point")
            table = PromptTable.of(coords, f["label"], f["object"], f["label_id"], f["mask"])
    if boxes is not None:
        verts, _, s_where = read_shapes_csv(boxes)
        if verts:
            _check_ndim(verts[0].shape[1], source, Path(boxes))
            _check_frames(verts, s_where, verts[0].shape[1] - 2, "shape")
        n = len(verts)
        for name, given in (("shape_ids", shape_ids), ("shape_masks", shape_masks)):
            if given is not None and len(given) != n:
                raise InputError(f"{boxes} holds {n} shapes but {len(given)} {name} were given.")
        table.shapes = verts
        table.shape_ids = np.zeros(n, int) if shape_ids is None else np.asarray(shape_ids, int)
        table.shape_masks = np.zeros(n, int) if shape_masks is None else np.asarray(shape_masks, int)
    return table, p_where, s_where


def read_objects(
    source: ImageSource, points: str | os.PathLike | None = None, boxes: str | os.PathLike | None = None,
    first_id: int = 1, shape_ids: Sequence[int] | None = None, shape_masks: Sequence[int] | None = None,
) -> dict[int, list[ObjectPrompt]]:
    """napari CSV prompts -> ``{flat frame t: [ObjectPrompt, ...]}`` with label ids, by the rules of
    :mod:`.prompts` (the widget's). New ids are the lowest from ``first_id`` on that no ``label_id``
    in the files holds.

    Raises:
        InputError: a file cannot be read, or prompts describe no object (off the image, a box under
            1 pixel, a negative point with nothing to refine, ...): each is named with its CSV row.
    """
    table, p_where, s_where = read_prompt_table(source, points, boxes, shape_ids, shape_masks)
    lead = tuple(source.leading_shape)
    try:
        found = collect_objects(table, len(lead), lead, (), spatial=source.hw)
    except ValueError as err:
        raise InputError(str(err)) from err
    if found.problems:
        shown = [f"{(p_where if p.kind == 'point' else s_where)[p.row]}: {p}" for p in found.problems[:5]]
        more = f" (and {len(found.problems) - 5} more)" if len(found.problems) > 5 else ""
        raise InputError(f"{'; '.join(shown)}{more}. Fix or delete {'these rows' if len(found.problems) > 1 else 'that row'}.")
    assign_ids(found.objects, first_id, taken=[*table.point_ids.tolist(), *np.asarray(table.shape_ids).tolist()])
    out: dict[int, list[ObjectPrompt]] = {}
    for ob in found.objects:
        t = int(np.ravel_multi_index(ob.frame, lead)) if lead else 0
        out.setdefault(t, []).append(ob)
    return out


def read_prompts(source: ImageSource, points: str | os.PathLike | None = None, boxes: str | os.PathLike | None = None) -> dict[int, list[tuple[int, object]]]:
    """``{frame t: [(label id, Prompt), ...]}``: :func:`read_objects` without the mask choices."""
    return {t: [(o.label_id, o.prompt) for o in objs] for t, objs in read_objects(source, points, boxes).items()}

