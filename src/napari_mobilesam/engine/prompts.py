"""The one prompt model: prompt-layer contents or napari CSV rows -> objects to segment (numpy only).

The widget (Points/Shapes layers) and ``mobilesam segment`` (the same layers saved as CSV) both
build a :class:`PromptTable` and call :func:`collect_objects` and :func:`assign_ids`, so the same
prompts give the same objects, label ids and mask choices in both. The rules (:data:`RULES`, shown
in the widget's tooltip and in the README):

- **Objects.** Every shape is one object: its box (a rectangle, or the bounding box of any other
  shape), clipped to the frame. Every positive point is one object, unless its ``object`` value is
  > 0: all points with the same ``object`` value in one frame form one object. A negative point
  with no ``object`` value that already refined an object (it holds that object's ``label_id``) stays
  with it; a never-assigned one (``label_id`` 0) refines the nearest object of its frame (its
  positive points or its box; distance 0 inside a box), as does one whose object no prompt of its
  frame holds any more (napari's shapes CSV drops the boxes' ids: the nearest box is its box).
- **Order and label ids.** Frame by frame; in a frame, boxes first, then point objects, each in the
  order they were drawn. An object keeps the ``label_id`` stored on any of its prompt rows (the
  widget stores it; napari's points CSV saves it, its shapes CSV does not). Point groups with the
  same ``object`` value share one id in every frame (a cell keeps its id over time). The others get
  new ids in this order: the lowest ids no prompt holds, after the largest label in the output (in
  the widget also after every id it gave before, so none is reused).
- **Masks.** A single positive click (one point, no box) is ambiguous: three masks are decoded and
  the one with the highest predicted IoU is kept. Any other prompt decodes one mask. A ``mask``
  value of 1-3 picks that one of the three masks instead.
- **Skipped prompts.** Points off the frame or not a number, boxes of less than one pixel or off the
  frame, prompts in frames the image does not have, groups with only negative points and negative
  points with no object in their frame describe no object. The widget skips them with a warning
  naming each; ``mobilesam segment`` refuses the file with the CSV row of each (exit 2). Either way
  the labels of the other objects are the same.

Coordinates are (row, col) in the image's data coordinates, leading (stack) indices first.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

import numpy as np

from .objects import Prompt
from .prompt_checks import clip_box, fmt, point_problem

__all__ = ["RULES", "RULE_LINES", "Collection", "ObjectPrompt", "Problem", "PromptTable", "assign_ids", "collect_objects", "segment_objects", "select_of"]

Frame = tuple[int, ...]

RULE_LINES = (
    "every box is one object (other shapes: their bounding box), clipped to the image",
    "every positive point is one object, unless points share an 'object' value > 0: those form one object "
    "per frame, with one label id in every frame",
    ("a negative point without an 'object' value refines the nearest object of its frame, and then stays with "
     "that object (it holds its label id)"),
    "an object keeps the label id stored on its prompts; new ids are the lowest free ones after the largest "
    "label in the output, frame by frame, boxes first, then points, in drawing order",
    "a single click keeps the best of three masks ('mask' 1-3 picks one); other prompts give one mask",
    "prompts off the image, boxes under 1 pixel, groups of only negative points and negative points with "
    "no object are skipped (the widget warns, mobilesam segment refuses the file)",
)
RULES = "; ".join(RULE_LINES) + "."  # the README and the widget's tooltip say this


@dataclass
class PromptTable:
    """The contents of one Points layer and one Shapes layer (or their CSV files) in image data coordinates.

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

    @classmethod
    def of(cls, points=None, labels=None, groups=None, ids=None, masks=None, shapes=(), shape_ids=None, shape_masks=None) -> PromptTable:
        """A table with defaults for what is not given (all points positive, no groups, ids or mask choices)."""
        pts = np.zeros((0, 2)) if points is None or not len(points) else np.asarray(points, float)
        n, s = len(pts), len(shapes)

        def col(v, k, default=0):
            return np.full(k, default, int) if v is None else np.asarray(v, float).astype(int).reshape(k)

        return cls(pts, col(labels, n, 1), col(groups, n), col(ids, n), col(masks, n),
                   [np.asarray(v, float) for v in shapes], col(shape_ids, s), col(shape_masks, s))


@dataclass
class ObjectPrompt:
    """One object to segment.

    Attributes:
        frame: leading indices of its frame (``()`` for a single 2D image).
        prompt: the engine prompt, (row, col) in the frame.
        label_id: its label in the output (0 until :func:`assign_ids` gives one).
        point_rows / shape_rows: rows of the prompt table that make it (to store ``label_id``).
        select: "best" or 0-2 (which of the three multimask outputs).
        group: the points' ``object`` value (0: not a group).
    """

    frame: Frame
    prompt: Prompt
    label_id: int
    point_rows: list[int]
    shape_rows: list[int]
    select: str | int = "best"
    group: int = 0

    @property
    def multimask(self) -> bool:
        """Decode three masks: a single click (ambiguous), or a chosen one of the three."""
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


@dataclass(frozen=True)
class Problem:
    """A prompt that describes no object: ``kind`` "point" or "shape", its ``row`` in the table,
    ``where`` (e.g. "point at row 10, col 278") and ``why`` (e.g. "outside the 256 x 256 frame")."""

    kind: str
    row: int
    where: str
    why: str

    def __str__(self) -> str:
        return f"{self.where}: {self.why}"


@dataclass
class Collection:
    """What :func:`collect_objects` found: the objects, and the prompts it skipped (why, per prompt)."""

    objects: list[ObjectPrompt]
    problems: list[Problem]


def select_of(mask_choice: int) -> str | int:
    """Feature value (0 = best, 1-3) -> ``Predictor.predict_objects`` ``select``."""
    return "best" if mask_choice not in (1, 2, 3) else int(mask_choice) - 1


def _frame_of(coords: np.ndarray, n_lead: int, current: Frame, lead_shape: Sequence[int]) -> Frame | None:
    """A row's frame; rows without leading dims use ``current``; a frame the image lacks -> None."""
    if len(coords) == 2 or n_lead == 0:
        return tuple(current)
    lead = coords[len(coords) - 2 - n_lead : len(coords) - 2]
    if not np.isfinite(lead).all():
        return None
    idx = tuple(int(v) for v in np.round(lead))
    return idx if all(0 <= v < s for v, s in zip(idx, lead_shape, strict=True)) else None


def _check_dims(name: str, ndim: int, n_lead: int) -> None:
    if ndim not in (2, n_lead + 2):
        fits = "2" if n_lead == 0 else f"2 or {n_lead + 2}"
        box = {"Points": "points", "Shapes": "boxes"}.get(name, name.lower())
        raise ValueError(
            f"The {name} layer has {ndim} dimensions but the image has {n_lead + 2} (without colour): "
            f"pick 'new' as '{box}' layer (prompt layers need {fits} dimensions)."
        )


def _box_of(verts) -> np.ndarray:
    yx = np.asarray(verts, float)[:, -2:]
    return np.concatenate([yx.min(0), yx.max(0)])


def _where_point(p: np.ndarray) -> str:
    lead = f" in frame {fmt(p[:-2])}" if len(p) > 2 else ""
    return f"point at row {fmt(p[-2])}, col {fmt(p[-1])}{lead}"


def _where_box(b: np.ndarray, lead: np.ndarray) -> str:
    frame = f" in frame {fmt(lead)}" if len(lead) else ""
    return f"box at rows {fmt(b[0])}–{fmt(b[2])}, cols {fmt(b[1])}–{fmt(b[3])}{frame}"


def _reason(why: str) -> str:
    """``"position (1, 2) is outside the ..."`` -> ``"outside the ..."`` (the location is named already)."""
    return re.sub(r"^(position|box) \([^)]*\) (is )?", "", why)


def _distance(p: np.ndarray, ob: ObjectPrompt) -> float:
    """From a point to an object's positive points or box (0 inside the box)."""
    d = np.inf
    pr = ob.prompt
    if pr.points is not None:
        pos = pr.points[pr.labels > 0]
        if len(pos):
            d = float(np.min(np.hypot(*(pos - p).T)))
    if pr.box is not None:
        gap = np.maximum(np.maximum(pr.box[:2] - p, p - pr.box[2:]), 0)
        d = min(d, float(np.hypot(*gap)))
    return d


def collect_objects(
    table: PromptTable,
    n_lead: int,
    lead_shape: Sequence[int],
    current: Frame = (),
    frames: Sequence[Frame] | None = None,
    spatial: Sequence[int] | None = None,
) -> Collection:
    """Group the prompts of ``table`` into objects by the rules of this module.

    Args:
        n_lead, lead_shape: number and sizes of the image's leading (stack) dimensions.
        current: the frame being viewed (for 2D prompt layers on a stack).
        frames: keep only objects in these frames (None: all frames).
        spatial: ``(H, W)`` of a frame: prompts that cannot be used on it are skipped and named in
            ``problems``; boxes partly outside are clipped to it. None: no frame-size check.

    Raises:
        ValueError: a layer's number of dimensions fits neither a frame nor the stack.
    """
    pts = np.asarray(table.points, float).reshape(len(table.points), -1) if len(table.points) else np.zeros((0, n_lead + 2))
    if len(pts):
        _check_dims("Points", pts.shape[1], n_lead)
    for v in table.shapes:
        _check_dims("Shapes", np.asarray(v).shape[1], n_lead)
    keep = None if frames is None else {tuple(f) for f in frames}
    problems: list[Problem] = []
    found: list[tuple[int, ObjectPrompt]] = []  # (0 box / 1 points, object) in drawing order
    for j, verts in enumerate(table.shapes):
        v = np.asarray(verts, float)
        f = _frame_of(v[0], n_lead, current, lead_shape)
        box = _box_of(v)
        if f is None:
            problems.append(Problem("shape", j, _where_box(box, v[0, :-2]), "in a frame the image does not have"))
            continue
        if keep is not None and f not in keep:
            continue
        if spatial is not None:
            clipped, why = clip_box(box, spatial)
            if why is not None:
                problems.append(Problem("shape", j, _where_box(box, v[0, :-2]), _reason(why)))
                continue
            box = clipped
        ob = ObjectPrompt(f, Prompt(box=box), int(table.shape_ids[j]), [], [j], select_of(int(table.shape_masks[j])))
        found.append((0, ob))
    # points: groups (per frame and object value) and single positives; loose negatives after
    group_ids: dict[int, int] = {}
    for i, g in enumerate(table.point_groups):
        if int(g) > 0 and int(table.point_ids[i]) > 0:
            group_ids[int(g)] = max(group_ids.get(int(g), 0), int(table.point_ids[i]))
    members: dict[tuple, list[int]] = {}
    loose_neg: list[int] = []
    row_frame = [_frame_of(p, n_lead, current, lead_shape) for p in pts]
    for i, p in enumerate(pts):
        f = row_frame[i]
        if f is None:
            problems.append(Problem("point", i, _where_point(p), "in a frame the image does not have"))
            continue
        if keep is not None and f not in keep:
            continue
        why = point_problem(p[-2:], spatial) if spatial is not None else None
        if why is not None:
            problems.append(Problem("point", i, _where_point(p), _reason(why)))
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
        if not pos:
            problems.extend(Problem("point", i, _where_point(pts[i]), f"object {key[2]} has only negative points; add a positive point") for i in rows)
            continue
        g = key[2] if key[0] == "group" else 0
        ids = [int(table.point_ids[i]) for i in rows if int(table.point_ids[i]) > 0]
        lid = group_ids.get(g, 0) if g else max(ids, default=0)
        choice = max(int(table.point_masks[i]) for i in pos)
        prompt = Prompt(points=pts[rows, -2:], labels=table.point_labels[rows])
        found.append((1, ObjectPrompt(row_frame[rows[0]], prompt, lid, list(rows), [], select_of(choice), g)))
    found.sort(key=lambda t: (t[1].frame, t[0]))  # stable: drawing order within boxes and within points
    objects = [ob for _, ob in found]
    for i in loose_neg:
        p = pts[i]
        f = row_frame[i]
        cands = [ob for ob in objects if ob.frame == f]
        held = int(table.point_ids[i])
        if held > 0 and any(ob.label_id == held for ob in cands):  # it refined this object before: it stays with it
            cands = [ob for ob in cands if ob.label_id == held]
        if not cands:
            problems.append(Problem("point", i, _where_point(p), "a negative point with no object in its frame to refine; add a positive point or a box"))
            continue
        ob = cands[int(np.argmin([_distance(p[-2:], c) for c in cands]))]
        pr = ob.prompt
        new_pts = p[None, -2:] if pr.points is None else np.vstack([pr.points, p[-2:]])
        new_lab = np.array([0]) if pr.labels is None else np.append(pr.labels, 0)
        ob.prompt = Prompt(points=new_pts, labels=new_lab, box=pr.box, mask_input=pr.mask_input)
        ob.point_rows.append(i)
        if ob.label_id <= 0 and int(table.point_ids[i]) > 0:  # the id stored on the negative's row is its object's
            ob.label_id = int(table.point_ids[i])
    return Collection(objects, problems)



def segment_objects(
    table: PromptTable,
    n_lead: int,
    lead_shape: Sequence[int],
    current: Frame = (),
    frames: Sequence[Frame] | None = None,
    spatial: Sequence[int] | None = None,
    labels: Callable[[Frame], np.ndarray] | None = None,
    refining: AbstractSet[int] = frozenset(),
) -> Collection:
    """The objects *Segment* decodes: :func:`collect_objects` of ``table``, less the point rows that
    belong to a label being refined (the refine split, :func:`.refine.split_refinements`: a row whose
    ``label_id`` is in ``refining`` and is a label of ``labels(frame)`` in the point's frame). Those
    rows are Refine's: Segment does not decode them (one off the frame is still named in ``problems``).

    Args:
        labels: ``labels(frame)`` -> the ``(H, W)`` output labels of that frame (None: no output yet,
            nothing is being refined).
        refining: ids of the labels being refined (the widget's *refine label* and those refined before).
        others: as :func:`collect_objects`.
    """
    if labels is None or not refining:
        return collect_objects(table, n_lead, lead_shape, current, frames, spatial=spatial)
    from .refine import split_refinements  # (refine builds on this module)

    return split_refinements(table, labels, n_lead, lead_shape, current, frames, spatial, ids=refining)[1]


def assign_ids(objects: Sequence[ObjectPrompt], first_free: int, taken: Sequence[int] = ()) -> int:
    """Give each object without a label id a new one, in order: the lowest id >= ``first_free`` that
    no object and no id in ``taken`` holds. Point groups with the same ``object`` value share one id in
    every frame. Returns one more than the largest id given or held.

    The widget passes the id after every label of its layer and every id it gave before (so nothing is
    reused); ``mobilesam segment`` passes 1 and the ids its files hold (napari's shapes CSV drops the
    boxes' ids: this gives them again the ids the widget gave them in one Segment)."""
    used = {int(v) for v in taken if int(v) > 0} | {o.label_id for o in objects if o.label_id > 0}
    nxt = int(first_free)
    by_group: dict[int, int] = {o.group: o.label_id for o in objects if o.group > 0 and o.label_id > 0}
    for o in objects:
        if o.label_id > 0:
            continue
        if o.group > 0 and o.group in by_group:
            o.label_id = by_group[o.group]
            continue
        while nxt in used:
            nxt += 1
        o.label_id = nxt
        used.add(nxt)
        if o.group > 0:
            by_group[o.group] = o.label_id
    return max([int(first_free), *(i + 1 for i in used)])
