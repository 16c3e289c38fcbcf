"""The one prompt model (engine/prompts.py, numpy only): objects, ids and mask choices from points and shapes."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mobilesam.engine.prompts import PromptTable, assign_ids, select_of
from napari_mobilesam.engine.prompts import collect_objects as collect


def collect_objects(*args, **kwargs):
    return collect(*args, **kwargs).objects


def table(points=(), labels=(), groups=None, ids=None, masks=None, shapes=(), shape_ids=None):
    pts = np.asarray(points, float).reshape(len(points), -1) if len(points) else np.zeros((0, 2))
    n, s = len(pts), len(shapes)
    z = lambda k, v: np.zeros(k, int) if v is None else np.asarray(v, int)  # noqa: E731
    return PromptTable(pts, np.asarray(labels, int), z(n, groups), z(n, ids), z(n, masks), [np.asarray(v, float) for v in shapes], z(s, shape_ids), np.zeros(s, int))


def test_each_positive_point_and_each_shape_is_one_object():
    rect = [[10, 10], [10, 30], [40, 30], [40, 10]]
    ellipse_like = [[50, 5], [60, 25], [55, 40]]  # any shape: its bounding box
    objs = collect_objects(table([[5, 5], [70, 70]], [1, 1], shapes=[rect, ellipse_like]), 0, (), ())
    boxes = [o.prompt.box.tolist() for o in objs if o.prompt.box is not None]
    assert boxes == [[10, 10, 40, 30], [50, 5, 60, 40]]
    singles = [o for o in objs if o.prompt.box is None]
    assert [o.prompt.points.tolist() for o in singles] == [[[5, 5]], [[70, 70]]]
    assert all(o.multimask for o in singles) and not any(o.multimask for o in objs if o.prompt.box is not None)
    assert [o.shape_rows for o in objs][:2] == [[0], [1]] and [o.point_rows for o in singles] == [[0], [1]]


def test_object_feature_groups_points_and_negatives_refine_nearest():
    pts = [[10, 10], [12, 14], [11, 30], [80, 80], [82, 83], [45, 45]]
    lab = [1, 1, 0, 1, 0, 0]
    grp = [3, 3, 3, 0, 0, 0]
    box = [[40, 40], [40, 60], [60, 60], [60, 40]]
    objs = collect_objects(table(pts, lab, grp, shapes=[box]), 0, (), ())
    by_rows = {tuple(sorted(o.point_rows)): o for o in objs}
    group = by_rows[(0, 1, 2)]
    assert group.prompt.labels.tolist() == [1, 1, 0] and group.prompt.box is None
    assert by_rows[(3, 4)].prompt.labels.tolist() == [1, 0]  # negative 4 is nearest to point 3
    boxed = [o for o in objs if o.prompt.box is not None][0]
    assert boxed.point_rows == [5] and boxed.prompt.labels.tolist() == [0]  # inside the box: distance 0
    assert len(objs) == 3


def test_negative_alone_or_negative_group_makes_no_object():
    assert collect_objects(table([[5, 5], [9, 9]], [0, 0], [0, 2]), 0, (), ()) == []


def test_frames_from_leading_coordinates_any_number_of_leading_dims():
    pts = [[0, 1, 10, 10], [1, 0, 20, 20], [1, 0, 22, 25], [2, 2, 5, 5], [5, 0, 5, 5]]  # last: outside
    objs = collect_objects(table(pts, [1, 1, 0, 1, 1]), 2, (3, 3), (0, 0))
    assert [o.frame for o in objs] == [(0, 1), (1, 0), (2, 2)]
    assert objs[1].prompt.labels.tolist() == [1, 0]  # negative in the same frame
    only = collect_objects(table(pts, [1, 1, 0, 1, 1]), 2, (3, 3), (0, 0), frames=[(1, 0)])
    assert [o.frame for o in only] == [(1, 0)]


def test_two_d_prompt_layer_on_a_stack_uses_the_viewed_frame_and_bad_dims_fail():
    objs = collect_objects(table([[10, 10]], [1]), 1, (4,), (2,))
    assert [o.frame for o in objs] == [(2,)]
    with pytest.raises(ValueError, match="Points layer has 3 dimensions"):
        collect_objects(table([[0, 0, 1]], [1]), 2, (2, 2), (0, 0))


def test_ids_mask_choice_and_signature():
    objs = collect_objects(table([[5, 5], [6, 6]], [1, 1], groups=[4, 4], ids=[0, 7], masks=[2, 0]), 0, (), ())
    (o,) = objs
    assert o.label_id == 7 and o.select == 1 and o.multimask  # mask 2 chosen -> index 1, needs 3 masks
    assert select_of(0) == "best" and select_of(3) == 2
    moved = collect_objects(table([[5, 5], [6, 7]], [1, 1], groups=[4, 4], ids=[0, 7], masks=[2, 0]), 0, (), ())[0]
    assert moved.signature != o.signature


def test_prompts_outside_the_frame_are_skipped_and_named():
    pts = [[10, 278], [20, 20], [-3, 5]]  # col 278 of a 256-wide frame; a row above it
    inside_box = [[10, 10], [40, 40]]
    partly = [[200, 240], [230, 300]]  # clipped to the frame
    away = [[300, 300], [320, 330]]
    sliver = [[100, 255.2], [120, 270]]  # overlaps the last column by 0.3 px: less than a pixel
    t = table(pts, [1, 1, 1], shapes=[inside_box, partly, away, sliver])
    found = collect(t, 0, (), (), spatial=(256, 256))
    objs = found.objects
    assert [o.point_rows for o in objs if o.prompt.box is None] == [[1]]
    assert [o.prompt.box.tolist() for o in objs if o.prompt.box is not None] == [[10, 10, 40, 40], [200, 240, 230, 255]]
    assert [(p.kind, p.row, p.where) for p in found.problems] == [
        ("shape", 2, "box at rows 300–320, cols 300–330"), ("shape", 3, "box at rows 100–120, cols 255.2–270"),
        ("point", 0, "point at row 10, col 278"), ("point", 2, "point at row -3, col 5")]
    assert "outside the 256 x 256 frame" in found.problems[0].why and "less than 1 pixel" in found.problems[1].why
    assert len(collect_objects(t, 0, (), ())) == 7  # without a frame size nothing is skipped


def test_stray_negatives_and_negative_groups_are_named():
    found = collect(table([[5, 5], [9, 9], [20, 20]], [0, 0, 1], [0, 2, 0], shapes=[]), 1, (3,), (0,), frames=None)
    assert len(found.objects) == 1  # the positive point of frame 0 takes the loose negative
    found = collect(table([[1, 5, 5], [0, 9, 9], [0, 20, 20]], [0, 0, 1], [0, 2, 0]), 1, (3,), (0,))
    assert [(p.row, p.why.split(";")[0]) for p in found.problems] == [
        (1, "object 2 has only negative points"), (0, "a negative point with no object in its frame to refine")]
    assert [o.point_rows for o in found.objects] == [[2]]


def test_ids_follow_the_largest_in_use_boxes_first_and_groups_share_one_id_over_frames():
    box = [[0, 10, 10], [0, 30, 30]]
    pts = [[0, 50, 50], [1, 5, 5], [0, 60, 60], [1, 6, 6], [2, 7, 7], [0, 70, 70]]
    grp = [0, 4, 4, 4, 0, 0]
    objs = collect_objects(table(pts, [1] * 6, grp, ids=[0, 0, 0, 0, 0, 9], shapes=[box]), 1, (3,), (0,))
    assert [(o.frame, o.point_rows, o.shape_rows) for o in objs] == [
        ((0,), [], [0]), ((0,), [0], []), ((0,), [2], []), ((0,), [5], []), ((1,), [1, 3], []), ((2,), [4], [])]
    assert assign_ids(objs, 3) == 10
    assert [o.label_id for o in objs] == [3, 4, 5, 9, 5, 6]  # row 5 keeps its 9; group 4 is 5 in frames 0 and 1
    # a group's id, once given on one frame, is its id on every frame (the widget stores it on the rows)
    later = collect_objects(table([[0, 60, 60], [1, 6, 6]], [1, 1], [4, 4], ids=[5, 0]), 1, (3,), (0,))
    assert [o.label_id for o in later] == [5, 5]


def test_wrong_dimensions_message_names_the_fix():
    with pytest.raises(ValueError) as err:
        collect_objects(table([[0, 0, 1]], [1]), 0, (), ())
    msg = str(err.value)
    assert "2 or 2" not in msg and "prompt layers need 2 dimensions" in msg and "pick 'new' as 'points' layer" in msg
    with pytest.raises(ValueError, match="need 2 or 3 dimensions"):
        collect_objects(table(shapes=[[[0, 0, 0, 1], [0, 0, 2, 2]]]), 1, (2,), (0,))


def test_a_negative_point_stays_with_the_object_it_refined():
    """Issue 24 item 2: a newer positive click nearer to an assigned negative point does not take it."""
    # object 3 at (10, 10) was refined by the negative at (10, 30); a new click at (10, 35) is nearer to it
    pts = [[10, 10], [10, 30], [10, 35]]
    found = collect_objects(table(pts, [1, 0, 1], ids=[3, 3, 0]), 0, (), ())
    by_id = {o.label_id: o for o in found}
    assert by_id[3].point_rows == [0, 1] and by_id[3].prompt.labels.tolist() == [1, 0]
    assert by_id[0].point_rows == [2] and by_id[0].prompt.labels.tolist() == [1]
    # a never-assigned negative still goes to the nearest object
    found = collect_objects(table(pts, [1, 0, 1], ids=[3, 0, 0]), 0, (), ())
    assert [o.point_rows for o in found] == [[0], [2, 1]]
    # its object's prompt deleted (no object holds id 3): the nearest object takes it, as a never-assigned one
    found = collect_objects(table(pts[1:], [0, 1], ids=[3, 0]), 0, (), ())
    assert [o.point_rows for o in found] == [[1, 0]]


def test_segment_objects_leaves_the_points_of_a_label_being_refined_to_refine():
    """The refine split (engine.prompts.segment_objects): Segment's objects without the point rows
    that name a label being refined; without a label being refined, collect_objects' objects."""
    from napari_mobilesam.engine.prompts import segment_objects

    labels = np.zeros((40, 40), np.uint16)
    labels[5:15, 5:15] = 7
    # rows 0 and 2 name label 7 (on it); row 1 is a new click; row 3 names id 3, which is no label here
    table = PromptTable.of(points=[[8, 8], [30, 30], [10, 12], [35, 5]], labels=[1, 1, 0, 0], ids=[7, 0, 7, 3])
    refined = segment_objects(table, 0, (), spatial=(40, 40), labels=lambda f: labels, refining={7})
    assert [(o.point_rows, o.label_id) for o in refined.objects] == [([1, 3], 3)]
    # nothing being refined (or no output layer yet): every point is Segment's, as collect_objects groups them
    for kw in ({"labels": lambda f: labels, "refining": set()}, {"labels": None, "refining": {7}}):
        plain = segment_objects(table, 0, (), spatial=(40, 40), **kw)
        assert [o.point_rows for o in plain.objects] == [o.point_rows for o in collect(table, 0, (), spatial=(40, 40)).objects]
        assert sorted(r for o in plain.objects for r in o.point_rows) == [0, 1, 2, 3]
    # a refinement point off the frame is still named as a problem
    off = PromptTable.of(points=[[12, 12], [50, 5]], labels=[0, 0], ids=[7, 7])
    found = segment_objects(off, 0, (), spatial=(40, 40), labels=lambda f: labels, refining={7})
    assert found.objects == [] and [p.row for p in found.problems] == [1]
