"""Refine labels that already exist (hand-painted, cellpose, stardist, an earlier run).

A label being refined is an object whose prompt is its own mask, given to SAM as the mask input
(``(256, 256)`` logits made by :func:`.propagate.mask_to_logits`), plus the mask's bounding box,
plus every point that names it (its ``label_id`` is the label's id). Positive points add to it,
negative points cut it away. The result replaces only that label's pixels (it fills background,
it never covers other labels) and keeps its id.

The widget (its *refine label* field) and ``mobilesam segment --refine LABELS`` both split the
prompt table with :func:`split_refinements` and add the mask input with :func:`refine_objects`.
Coordinates are (row, col) in the image's data coordinates, leading (stack) indices first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from collections.abc import Collection as AnyCollection
from dataclasses import replace

import numpy as np

from .prompts import Collection, ObjectPrompt, PromptTable, _frame_of, collect_objects
from .propagate import _bbox, mask_to_logits

__all__ = ["REFINE_RULE", "open_labels", "read_refinements", "refine_objects", "refinement", "split_refinements"]

Frame = tuple[int, ...]

REFINE_RULE = (
    "a point whose label_id names an existing label being refined (the widget's 'refine label'; every label "
    "of mobilesam segment --refine LABELS) corrects that label: its mask (as SAM's mask input) and its box are "
    "the prompt, with every point that names it; the result replaces only that label's pixels and keeps its id"
)


def refinement(frame: Frame, label_id: int) -> ObjectPrompt:
    """A refinement of ``label_id`` on ``frame`` with no points: its mask and box only. Its placeholder
    box is replaced by :func:`refine_objects`."""
    from .objects import Prompt

    return ObjectPrompt(tuple(frame), Prompt(box=np.zeros(4)), int(label_id), [], [])


def _subset(table: PromptTable, rows: np.ndarray) -> PromptTable:
    return PromptTable(table.points[rows] if len(table.points) else table.points, table.point_labels[rows],
                       table.point_groups[rows], table.point_ids[rows], table.point_masks[rows],
                       table.shapes, table.shape_ids, table.shape_masks)


def split_refinements(
    table: PromptTable,
    labels: Callable[[Frame], np.ndarray],
    n_lead: int,
    lead_shape: Sequence[int],
    current: Frame = (),
    frames: Sequence[Frame] | None = None,
    spatial: Sequence[int] | None = None,
    ids: AnyCollection[int] | None = None,
) -> tuple[list[ObjectPrompt], Collection]:
    """The refinements the points name, and the other prompts' objects (:func:`.prompts.collect_objects`).

    A point row whose ``label_id`` k (> 0, and in ``ids`` unless None) is a label of ``labels(frame)``
    in the point's frame belongs to the refinement of k in that frame, whatever its ``object`` value
    or sign. The other rows and every shape are collected by the usual rules; their point rows keep
    their index in ``table``.

    Args:
        labels: ``labels(frame)`` -> the ``(H, W)`` existing labels of that frame.
        ids: the labels that may be refined (None: every label of ``labels``).
        others: as :func:`.prompts.collect_objects`.

    Returns:
        ``(refinements, collection)``: one :class:`ObjectPrompt` per (frame, label) with its
        points (no box or mask input yet: see :func:`refine_objects`), in frame and id order; and
        the collection of the other prompts, with the refinement rows' problems (e.g. a point off the
        frame) added.
    """
    from .objects import Prompt

    pts = np.asarray(table.points, float).reshape(len(table.points), -1) if len(table.points) else np.zeros((0, n_lead + 2))
    taken = np.zeros(len(pts), bool)
    present: dict[Frame, set[int]] = {}
    for i, p in enumerate(pts):
        k = int(table.point_ids[i])
        if k <= 0 or (ids is not None and k not in ids) or pts.shape[1] not in (2, n_lead + 2):
            continue
        f = _frame_of(p, n_lead, current, lead_shape)
        if f is None:
            continue  # collect_objects names it
        if f not in present:
            present[f] = {int(v) for v in np.unique(labels(f))} - {0}
        taken[i] = k in present[f]  # else no such label there: an ordinary prompt with that id
    # the refinement rows as point groups (one per label id and frame), checked by the usual rules;
    # all positive here only so that a label corrected by negative points alone is still an object
    ref_rows, rest_rows = np.flatnonzero(taken), np.flatnonzero(~taken)
    ref = _subset(table, ref_rows)
    ref.point_groups, ref.point_labels = ref.point_ids.copy(), np.ones(len(ref_rows), int)
    ref.shapes, ref.shape_ids, ref.shape_masks = [], np.zeros(0, int), np.zeros(0, int)  # the shapes are the rest's
    found = collect_objects(ref, n_lead, lead_shape, current, frames, spatial)
    rest = collect_objects(_subset(table, rest_rows), n_lead, lead_shape, current, frames, spatial)
    refinements = []
    for o in found.objects:
        r = [int(ref_rows[i]) for i in o.point_rows]
        prompt = Prompt(points=pts[r, -2:], labels=table.point_labels[r])
        refinements.append(ObjectPrompt(o.frame, prompt, int(table.point_ids[r[0]]), r, []))
    refinements.sort(key=lambda o: (o.frame, o.label_id))
    for o in rest.objects:
        o.point_rows = [int(rest_rows[i]) for i in o.point_rows]
    problems = [replace(p, row=int(rows[p.row])) if p.kind == "point" else p
                for col, rows in ((rest, rest_rows), (found, ref_rows)) for p in col.problems]
    return refinements, Collection(rest.objects, problems)


def refine_objects(objects: Sequence[ObjectPrompt], labels_frame: np.ndarray, predictor, ids: AnyCollection[int] | None = None) -> list[ObjectPrompt]:
    """``objects`` with, for each one whose ``label_id`` is a label of ``labels_frame`` (and in ``ids``
    unless None), that label's mask as mask input and its bounding box added to its points.

    Call after ``predictor.set_image`` of the objects' frame (the mask input is made in that
    frame's geometry). The other objects are returned as they are; none is changed in place.

    Args:
        labels_frame: ``(H, W)`` integer labels of the frame.
        predictor: :class:`~.predictor.Predictor` holding the frame's embedding.
    """
    from .objects import Prompt

    out = []
    for o in objects:
        k = int(o.label_id)
        mask = labels_frame == k if k > 0 and (ids is None or k in ids) else None
        if mask is None or not mask.any():
            out.append(o)
            continue
        p = o.prompt
        prompt = Prompt(points=p.points, labels=p.labels, box=_bbox(mask),
                        mask_input=mask_to_logits(mask, predictor))
        out.append(replace(o, prompt=prompt, select="best"))
    return out


def open_labels(path: str, source):
    """The labels file ``path`` (TIFF, zarr, PNG) opened for the frames of the image ``source``
    (:class:`~.io.ImageSource`): its array must have the image's leading and ``(H, W)`` shape.

    Raises:
        InputError: missing, not integer, or of another shape (the message names the fix).
    """
    from .io import InputError, open_image

    labels = open_image(path)
    if labels.channel_first:  # a (3, H, W) or (4, H, W) stack that tifffile saved as planar colour: frames here
        sh = labels.shape
        labels = replace(labels, shape=(*sh[:-3], sh[-1], sh[-3], sh[-2]), channel_first=False)
    want = tuple(source.leading_shape) + tuple(source.hw)
    if labels.shape != want:
        raise InputError(f"--refine {path}: labels of shape {labels.shape} do not fit the image's frames {want}; "
                         "give the labels made for this image.")
    if not np.issubdtype(np.dtype(labels.dtype), np.integer):
        raise InputError(f"--refine {path}: labels must be integers, not {labels.dtype}; save the label image as integers.")
    return replace(labels, frame_ndim=2)  # a (T, H, 3) stack is not colour here


def read_refinements(source, points, boxes, labels) -> dict[int, list[ObjectPrompt]]:
    """``mobilesam segment --refine``: napari CSV prompts + existing labels -> ``{flat frame t:
    [ObjectPrompt, ...]}``. Points whose ``label_id`` is a label of their frame refine it (see
    :func:`split_refinements`); the other prompts are objects by the usual rules, with new ids after
    the largest label of the file.

    Args:
        source: the image; labels: the labels from :func:`open_labels`.

    Raises:
        InputError: prompts describe no object (each named by its CSV row).
    """
    from .csv_prompts import read_prompt_table
    from .io import InputError
    from .prompts import assign_ids

    lead = tuple(source.leading_shape)

    def frame_labels(f: Frame) -> np.ndarray:
        return np.asarray(labels.read(int(np.ravel_multi_index(f, lead)) if lead else 0))

    table, p_where, s_where = read_prompt_table(source, points, boxes)
    try:
        found, rest = split_refinements(table, frame_labels, len(lead), lead, (), spatial=source.hw)
    except ValueError as err:
        raise InputError(str(err)) from err
    if rest.problems:
        shown = [f"{(p_where if p.kind == 'point' else s_where)[p.row]}: {p}" for p in rest.problems[:5]]
        raise InputError(f"{'; '.join(shown)}. Fix or delete {'these rows' if len(rest.problems) > 1 else 'that row'}.")
    top = max((int(labels.read(t).max()) for t in range(labels.n_frames)), default=0)
    assign_ids(rest.objects, top + 1, taken=[*table.point_ids.tolist(), *np.asarray(table.shape_ids).tolist()])
    hi = int(np.iinfo(np.uint32).max)  # the output's dtype; refused here, before the model loads
    over = [o.label_id for o in rest.objects if o.label_id > hi]
    if top > hi:
        raise InputError(f"--refine {labels.path}: it holds label {top}, beyond uint32's {hi} (the output's ids); "
                         "relabel the file with smaller ids (e.g. skimage.segmentation.relabel_sequential).")
    if over:
        raise InputError(f"--refine {labels.path}: its largest label is {top}, so the new object gets id {over[0]}, "
                         f"beyond uint32's {hi}; relabel the file with smaller ids (e.g. skimage.segmentation.relabel_sequential).")
    out: dict[int, list[ObjectPrompt]] = {}
    for ob in sorted(found + rest.objects, key=lambda o: o.frame):
        out.setdefault(int(np.ravel_multi_index(ob.frame, lead)) if lead else 0, []).append(ob)
    return out
