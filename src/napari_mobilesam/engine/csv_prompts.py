"""napari Points/Shapes CSV files (File > Save Layers) -> engine prompts per frame, in (row, col)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from .io import ImageSource, InputError
from .predictor import Prompt
from .prompt_checks import box_problem, fmt, point_problem

__all__ = ["read_prompts"]


def _read_table(path: Path, required: tuple[str, ...], what: str) -> tuple[list[str], list[list[str]]]:
    if not path.is_file():
        raise InputError(f"{what} file {path} does not exist.")
    try:
        with open(path, newline="") as fh:
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
    return header, rows[1:]


def _axes(header: list[str], path: Path) -> list[int]:
    axes = sorted((int(h[5:]), i) for i, h in enumerate(header) if h.startswith("axis-") and h[5:].isdigit())
    if len(axes) < 2:
        raise InputError(f"{path} has {len(axes)} coordinate column(s); points need at least axis-0 and axis-1.")
    return [i for _, i in axes]


def _flag(value: str, path: Path, row: int) -> int:
    v = value.strip().lower()
    if v in ("1", "1.0", "true", "positive", "pos", "+"):
        return 1
    if v in ("0", "0.0", "false", "negative", "neg", "-", "-1", "-1.0"):
        return 0
    raise InputError(f"{path} row {row + 2}: label {value!r} must be 1/0 (or True/False).")


def _frame_of(coords: np.ndarray, source: ImageSource, path: Path, row: int) -> int:
    """Flat frame number from the leading coordinates; checks (row, col) lie inside the frame."""
    lead = source.leading_shape
    if len(coords) != len(lead) + 2:
        raise InputError(
            f"{path} has {len(coords)}D coordinates but {source.path} has {len(lead) + 2} dims "
            f"(frames {lead or 'none'} + rows, cols); save the layer drawn on this image."
        )
    if not np.isfinite(coords).all():
        raise InputError(f"{path} row {row + 2}: position {fmt(coords)} is not a number (NaN or infinite); fix or delete that row.")
    idx = tuple(int(round(c)) for c in coords[:-2])
    h, w = source.hw
    if any(not 0 <= i < n for i, n in zip(idx, lead)) or point_problem(coords[-2:], (h, w)):
        shape = " x ".join(str(int(n)) for n in source.shape[: len(lead) + 2])
        raise InputError(f"{path} row {row + 2}: position {fmt(coords)} is outside the image ({shape}).")
    return int(np.ravel_multi_index(idx, lead)) if lead else 0


def read_prompts(source: ImageSource, points: str | os.PathLike | None = None, boxes: str | os.PathLike | None = None) -> dict[int, list[tuple[int, Prompt]]]:
    """napari CSV prompts -> ``{frame t: [(label id, Prompt), ...]}``.

    Rules (same as the widget): every rectangle is one object; every positive point is one object;
    points sharing a value in an ``object`` column form one object (its value becomes the label id,
    so an object keeps its id across frames); a ``label`` column gives 1 (positive) / 0 (negative);
    a negative point without ``object`` refines the nearest object of its frame. Other shape types
    are used by their bounding box. Ids of ungrouped objects follow the largest ``object`` id.
    """
    grouped: dict[tuple[int, int], list] = {}
    singles: list[tuple[int, Prompt]] = []
    negatives: list[tuple[int, np.ndarray]] = []
    if points is not None:
        path = Path(points)
        header, rows = _read_table(path, ("index",), "Points")
        ax = _axes(header, path)
        li = header.index("label") if "label" in header else None
        oi = header.index("object") if "object" in header else None
        for r, row in enumerate(rows):
            if not row:
                continue
            try:
                coords = np.array([float(row[i]) for i in ax])
                obj = int(float(row[oi])) if oi is not None and row[oi].strip() not in ("", "nan") else None
            except (ValueError, IndexError) as err:
                raise InputError(f"{path} row {r + 2}: cannot read numbers ({err}).") from err
            lab = _flag(row[li], path, r) if li is not None else 1
            t = _frame_of(coords, source, path, r)
            if obj is not None:
                if obj < 1:
                    raise InputError(f"{path} row {r + 2}: object id {obj} must be a positive integer (it becomes the label id).")
                grouped.setdefault((t, obj), []).append((coords[-2:], lab))
            elif lab:
                singles.append((t, Prompt(points=coords[None, -2:], labels=[1])))
            else:
                negatives.append((t, coords[-2:]))
    if boxes is not None:
        path = Path(boxes)
        header, rows = _read_table(path, ("index", "shape-type", "vertex-index"), "Shapes")
        ax, ii = _axes(header, path), header.index("index")
        shapes: dict[str, list[np.ndarray]] = {}
        for r, row in enumerate(rows):
            try:
                shapes.setdefault(row[ii], []).append(np.array([float(row[i]) for i in ax]))
            except (ValueError, IndexError) as err:
                raise InputError(f"{path} row {r + 2}: cannot read numbers ({err}).") from err
        for k, verts in shapes.items():
            v = np.stack(verts)
            t = _frame_of(v[0], source, path, 0)
            h, w = source.hw
            lo, hi = v[:, -2:].min(0), v[:, -2:].max(0)
            if hi[0] < 0 or hi[1] < 0 or lo[0] > h or lo[1] > w:
                raise InputError(f"{path}: shape {k} lies outside the image ({h} x {w}).")
            box = np.concatenate([np.clip(lo, 0, [h, w]), np.clip(hi, 0, [h, w])])
            problem = box_problem(box, (h, w))
            if problem:
                raise InputError(f"{path}: shape {k}: {problem}.")
            singles.append((t, Prompt(box=box)))
    out: dict[int, list[tuple[int, Prompt]]] = {}
    for (t, obj), pts in sorted(grouped.items()):
        if not any(lab for _, lab in pts):
            raise InputError(f"{points}: object {obj} in frame {t} has only negative points; add a positive point.")
        out.setdefault(t, []).append((obj, Prompt(points=np.stack([p for p, _ in pts]), labels=[lab for _, lab in pts])))
    next_id = max((obj for _, obj in grouped), default=0) + 1
    for t, prompt in singles:
        out.setdefault(t, []).append((next_id, prompt))
        next_id += 1
    for t, point in negatives:
        objs = out.get(t)
        if not objs:
            raise InputError(f"{points}: a negative point in frame {t} has no object to refine; add a positive point or a box.")
        j = int(np.argmin([_distance(point, p) for _, p in objs]))
        p = objs[j][1]
        pts = point[None] if p.points is None else np.concatenate([p.points, point[None]])
        labs = np.array([0]) if p.labels is None else np.concatenate([p.labels, [0]])
        objs[j] = (objs[j][0], Prompt(points=pts, labels=labs, box=p.box))
    return out


def _distance(point: np.ndarray, prompt: Prompt) -> float:
    """Distance from a point to an object's positive points or box (0 inside the box)."""
    d = np.inf
    if prompt.points is not None:
        pos = prompt.points[prompt.labels > 0]
        if len(pos):
            d = float(np.min(np.linalg.norm(pos - point, axis=1)))
    if prompt.box is not None:
        gap = np.maximum(np.maximum(prompt.box[:2] - point, point - prompt.box[2:]), 0)
        d = min(d, float(np.linalg.norm(gap)))
    return d
