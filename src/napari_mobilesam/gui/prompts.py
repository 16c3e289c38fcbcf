"""Prompt-layer contents -> one :class:`ObjectPrompt` per object, grouped by frame (numpy only).

Semantics (shown in the widget tooltip and the README):

- every shape (rectangle, or the bounding box of any other shape type) is one object;
- every positive point (``label`` feature 1) is one object, unless its ``object`` feature is
  > 0: all points (positive and negative) with the same ``object`` value in one frame form one
  object;
- a negative point (``label`` 0) with no group refines the object whose positive point or box
  is nearest in the same frame (distance 0 inside a box);
- a prompt's frame is given by its leading (non-spatial) coordinates, rounded; a prompt layer
  with only two dimensions applies to the frame being viewed.

All coordinates here are (row, col) in the image layer's data coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..engine.predictor import Prompt

__all__ = ["ObjectPrompt", "PromptTable", "collect_objects", "outside_prompts", "select_of"]

Frame = tuple[int, ...]


@dataclass
class PromptTable:
    """The contents of one Points layer and one Shapes layer, already in image data coordinates.

    Attributes:
        points: ``(N, D)`` float coordinates (leading dims then row, col).
        point_labels: ``(N,)`` int, 1 positive / 0 negative.
        point_groups: ``(N,)`` int ``object`` feature, <= 0 means no group.
        point_ids: ``(N,)`` int label id already given to the point's object (0 = none).
        point_masks: ``(N,)`` int mask choice (0 = best by predicted IoU, 1-3 = that mask).
        shapes: list of ``(V, D)`` vertex arrays.
        shape_ids, shape_masks: ``(S,)`` int, as for points.
    """

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    point_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    point_groups: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    point_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    point_masks: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    shapes: Sequence[np.ndarray] = ()
    shape_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    shape_masks: np.ndarray = field(default_factory=lambda: np.zeros(0, int))


@dataclass
class ObjectPrompt:
    """One object to segment.

    Attributes:
        frame: leading indices of its frame (``()`` for a single 2D image).
        prompt: the engine prompt, (row, col) in the frame.
        label_id: its label in the output layer (0 until one is assigned).
        point_rows / shape_rows: rows of the prompt layers that make it (to store ``label_id``).
        select: "best" or 0-2 (which of the three multimask outputs).
        multimask: decode three masks (single click: ambiguous) or one.
    """

    frame: Frame
    prompt: Prompt
    label_id: int
    point_rows: list[int]
    shape_rows: list[int]
    select: str | int = "best"

    @property
    def multimask(self) -> bool:
        p = self.prompt
        single_click = p.box is None and p.points is not None and len(p.points) == 1
        return single_click or self.select != "best"

    @property
    def signature(self) -> tuple:
        """Changes whenever the prompt would give another mask (to skip unchanged objects)."""
        p = self.prompt
        pts = () if p.points is None else tuple(np.round(p.points, 2).ravel()) + tuple(p.labels)
        box = () if p.box is None else tuple(np.round(p.box, 2))
        return (self.frame, pts, box, self.select)


def select_of(mask_choice: int) -> str | int:
    """Feature value (0 = best, 1-3) -> ``Predictor.predict_objects`` ``select``."""
    return "best" if mask_choice not in (1, 2, 3) else int(mask_choice) - 1


def _frames(coords: np.ndarray, n_lead: int, current: Frame, lead_shape: Sequence[int]) -> list[Frame]:
    """Frame of each row; layers without leading dims use ``current``; out-of-range -> None."""
    if coords.shape[1] == 2 or n_lead == 0:
        return [tuple(current)] * len(coords)
    lead = np.round(coords[:, coords.shape[1] - 2 - n_lead : coords.shape[1] - 2]).astype(int)
    out = []
    for row in lead:
        ok = all(0 <= v < s for v, s in zip(row, lead_shape, strict=True))
        out.append(tuple(int(v) for v in row) if ok else None)
    return out


def _check_dims(name: str, ndim: int, n_lead: int) -> None:
    if ndim not in (2, n_lead + 2):
        fits = "2" if n_lead == 0 else f"2 or {n_lead + 2}"
        box = {"Points": "points", "Shapes": "boxes"}.get(name, name.lower())
        raise ValueError(
            f"The {name} layer has {ndim} dimensions but the image has {n_lead + 2} (without colour): "
            f"pick 'new' as '{box}' layer (prompt layers need {fits} dimensions)."
        )


def _inside_point(rc: np.ndarray, spatial: Sequence[int]) -> bool:
    """A (row, col) falls on a pixel of an ``(H, W)`` frame (pixel centres at integers)."""
    return bool(-0.5 <= rc[0] < spatial[0] - 0.5 and -0.5 <= rc[1] < spatial[1] - 0.5)


def _box_of(verts) -> np.ndarray:
    yx = np.asarray(verts, float)[:, -2:]
    return np.concatenate([yx.min(0), yx.max(0)])


def _inside_box(box: np.ndarray, spatial: Sequence[int]) -> bool:
    """The box overlaps the frame (a box partly outside is clipped to it) and is at least 1 pixel high and wide
    (the engine refuses smaller boxes; here they are skipped and named, like boxes outside)."""
    return bool(box[2] >= -0.5 and box[3] >= -0.5 and box[0] < spatial[0] - 0.5 and box[1] < spatial[1] - 0.5
                and box[2] - box[0] >= 1 and box[3] - box[1] >= 1)


def outside_prompts(table: PromptTable, spatial: Sequence[int]) -> list[str]:
    """Descriptions of the points and boxes of ``table`` that lie outside an ``(H, W)`` frame
    (``collect_objects`` skips them), e.g. ``"point at row 10, col 278"``."""
    out = []
    for p in np.asarray(table.points, float).reshape(len(table.points), -1) if len(table.points) else ():
        if not _inside_point(p[-2:], spatial):
            out.append(f"point at row {p[-2]:.0f}, col {p[-1]:.0f}")
    for v in table.shapes:
        b = _box_of(v)
        if not _inside_box(b, spatial):
            out.append(f"box at rows {b[0]:.0f}–{b[2]:.0f}, cols {b[1]:.0f}–{b[3]:.0f}")
    return out


def _box_distance(p: np.ndarray, box: np.ndarray) -> float:
    dr = max(box[0] - p[0], 0.0, p[0] - box[2])
    dc = max(box[1] - p[1], 0.0, p[1] - box[3])
    return float(np.hypot(dr, dc))


def collect_objects(
    table: PromptTable,
    n_lead: int,
    lead_shape: Sequence[int],
    current: Frame,
    frames: Sequence[Frame] | None = None,
    spatial: Sequence[int] | None = None,
) -> list[ObjectPrompt]:
    """Group the prompts of ``table`` into objects.

    Args:
        n_lead, lead_shape: number and sizes of the image's leading (stack) dimensions.
        current: the frame being viewed (for 2D prompt layers on a stack).
        frames: keep only objects in these frames (None: all frames).
        spatial: ``(H, W)`` of a frame: points outside it and boxes not touching it are skipped
            (:func:`outside_prompts` names them); boxes partly outside are clipped to it.

    Returns:
        Objects ordered by frame, then boxes, groups and single points in layer order.
    """
    pts = np.asarray(table.points, dtype=float).reshape(len(table.points), -1) if len(table.points) else np.zeros((0, n_lead + 2))
    if len(pts):
        _check_dims("Points", pts.shape[1], n_lead)
    for v in table.shapes:
        _check_dims("Shapes", np.asarray(v).shape[1], n_lead)
    keep = None if frames is None else {tuple(f) for f in frames}
    pframes = _frames(pts, n_lead, current, lead_shape) if len(pts) else []
    sframes = [_frames(np.asarray(v, float)[:1], n_lead, current, lead_shape)[0] for v in table.shapes]
    objects: dict[tuple, ObjectPrompt] = {}
    anchors: dict[Frame, list[tuple[ObjectPrompt, np.ndarray, bool]]] = {}  # frame -> (obj, pos or box, is_box)
    # boxes
    for j, verts in enumerate(table.shapes):
        f = sframes[j]
        if f is None or (keep is not None and f not in keep):
            continue
        box = _box_of(verts)
        if spatial is not None:
            if not _inside_box(box, spatial):
                continue
            box = np.clip(box, 0, [spatial[0] - 1, spatial[1] - 1] * 2)
        ob = ObjectPrompt(f, Prompt(box=box), int(table.shape_ids[j]), [], [j], select_of(int(table.shape_masks[j])))
        objects[("box", j)] = ob
        anchors.setdefault(f, []).append((ob, box, True))
    # points: groups and single positives
    members: dict[tuple, list[int]] = {}
    loose_neg: list[int] = []
    for i in range(len(pts)):
        f = pframes[i]
        if f is None or (keep is not None and f not in keep):
            continue
        if spatial is not None and not _inside_point(pts[i, -2:], spatial):
            continue
        g = int(table.point_groups[i])
        if g > 0:
            members.setdefault(("group", f, g), []).append(i)
        elif int(table.point_labels[i]) == 1:
            members[("point", i)] = [i]
        else:
            loose_neg.append(i)
    for key, rows in members.items():
        pos = [i for i in rows if int(table.point_labels[i]) == 1]
        if not pos:  # a group of negative points alone describes no object
            continue
        f = pframes[rows[0]]
        ids = [int(table.point_ids[i]) for i in rows if int(table.point_ids[i]) > 0]
        choice = max(int(table.point_masks[i]) for i in pos)
        ob = ObjectPrompt(f, Prompt(points=pts[rows, -2:], labels=table.point_labels[rows]), max(ids, default=0), list(rows), [], select_of(choice))
        objects[key] = ob
        for i in pos:
            anchors.setdefault(f, []).append((ob, pts[i, -2:], False))
    for i in loose_neg:
        cands = anchors.get(pframes[i], [])
        if not cands:
            continue
        p = pts[i, -2:]
        dist = [_box_distance(p, a) if is_box else float(np.hypot(*(p - a))) for _, a, is_box in cands]
        ob = cands[int(np.argmin(dist))][0]
        pr = ob.prompt
        new_pts = p[None] if pr.points is None else np.vstack([pr.points, p])
        new_lab = np.array([0]) if pr.labels is None else np.append(pr.labels, 0)
        ob.prompt = Prompt(points=new_pts, labels=new_lab, box=pr.box)
        ob.point_rows.append(i)
    return sorted(objects.values(), key=lambda o: o.frame)
