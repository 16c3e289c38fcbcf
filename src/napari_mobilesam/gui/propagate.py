"""'Propagate' section: segment the selected objects through neighbouring frames of a stack."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, PushButton

from .._progress import relay
from ..engine.errors import SettingsError
from ..engine.propagate import PropagationStep, iter_propagate, iter_propagate_labels, render_propagated
from . import layers as L
from .feedback import cancelled
from .jobs import Progress, built, worker_predictor
from .layout import Section
from .sections import Action
from .writer import frame_view, write_frames

if TYPE_CHECKING:
    from .sections import Context

__all__ = ["PropagateSection"]


def _frame_at(cur: tuple[int, ...], ax: int, i: int) -> tuple[int, ...]:
    """Frame ``cur`` with its index along leading axis ``ax`` set to ``i``."""
    f = list(cur)
    f[ax] = i
    return tuple(f)

HELP = (
    "Segments the selected objects (every selected point or box of this frame, else the Labels layer's "
    "selected label) on the next and previous frames, each prompted by the previous frame's mask (its "
    "box + mask input). Each object stops in a direction when its predicted IoU or its overlap with the "
    "previous frame drops below the thresholds, or it vanishes. Frame embeddings are computed once for "
    "all objects, and several objects are decoded in one batch per frame (where they overlap, the smaller "
    "keeps the pixel). With 'all labels of this frame', every label of this frame is propagated at once (one "
    "decode batch per frame; same as `mobilesam propagate`). One Ctrl+Z undoes a whole run (also a cancelled "
    "one: the frames done are written). Key: Shift+F."
)


def axis_names(image) -> list[str]:
    """``"t (axis 0, 5 frames)"`` per leading axis of ``image``, from the layer's axis labels
    (napari's default labels, "-3" and so on, give ``"axis 0 (5 frames)"``)."""
    geo = L.FrameGeometry.of(image)
    labels = list(getattr(image, "axis_labels", ()) or ())[: geo.n_lead]
    out = []
    for i, size in enumerate(geo.lead_shape):
        name = str(labels[i]) if i < len(labels) else ""
        default = name.lstrip("-").isdigit() or not name
        out.append(f"axis {i} ({size} frames)" if default else f"{name} (axis {i}, {size} frames)")
    return out


class PropagateSection:
    def __init__(self, ctx: Context) -> None:
        self.w = ctx
        self.axis = ComboBox(label="axis", choices=self._axes, tooltip="Stack axis to propagate along")
        self.min_score = FloatSpinBox(label="min IoU", value=0.5, min=0.0, max=1.0, step=0.05,
                                      tooltip="Stop where the predicted IoU (the model's own quality score) drops below this")
        self.min_overlap = FloatSpinBox(label="overlap", value=0.3, min=0.0, max=1.0, step=0.05,
                                        tooltip="Stop where the IoU with the previous frame's mask drops below this")
        self.all_labels = CheckBox(text="all labels of this frame", value=False,
                                   tooltip="Propagate every label of this frame at once, not only the selected objects")
        self.button = PushButton(text="Propagate (Shift+F)")
        self.section = Section("Propagate", self.axis, self.min_score, self.min_overlap, self.all_labels, self.button)
        self.box, self.inner = self.section.box, self.section.inner
        self.box.setToolTip(HELP)
        self.button.tooltip = HELP
        self.button.changed.connect(self.run)
        self.actions: tuple[Action, ...] = (Action("Shift-F", "Propagate", self.button, self.run),)

    def _axes(self, _widget=None) -> list:
        image = self.w.image_box_value()
        if image is None:
            return []
        return [(name, i) for i, name in enumerate(axis_names(image))]

    def reset_axes(self) -> None:
        self.axis.reset_choices()
        self.box.setEnabled(bool(self.axis.choices))
        self.section.header.setToolTip("" if self.axis.choices else "The image is a single frame: nothing to propagate through.")

    def on_image(self, image) -> None:
        """Open the section for a stack, fold it away for a single frame (None: no image, as it was)."""
        if image is not None:
            self.section.set_expanded(L.FrameGeometry.of(image).n_lead > 0)

    def selected_ids(self, frame) -> list[int]:
        """Label ids of the selected prompts on ``frame``, else the Labels layer's selected label."""
        points, shapes = self.w.points_layer, self.w.shapes_layer
        rows_p = set(points.selected_data) if points is not None else set()
        rows_s = set(shapes.selected_data) if shapes is not None else set()
        ids = [o.label_id for o in self.w.objects([frame])
               if o.label_id > 0 and (set(o.point_rows) & rows_p or set(o.shape_rows) & rows_s)]
        if ids:
            return ids
        labels = self.w.labels_box.value
        return [int(labels.selected_label)] if labels is not None else []

    def run(self, _=None) -> None:
        self.w.guard(self._run)

    def _run(self) -> None:
        w = self.w
        image, geo, cur = w.context()
        if not geo.n_lead:
            raise SettingsError(f"Image {image.name!r} is a single frame: propagation needs a stack.")
        labels = w.labels_box.value
        here = frame_view(labels, cur) if labels is not None else None
        if self.all_labels.value:
            self._run_all(image, geo, cur, labels, here)
            return
        starts = {lid: here == lid for lid in self.selected_ids(cur) if lid > 0 and here is not None}
        missing = [lid for lid, m in starts.items() if not m.any()]
        if not starts or missing:
            which = f"Label {missing[0]} is" if missing else "No selected label is"
            raise SettingsError(
                f"{which} not on this frame: segment the object here first, then select its point/box "
                "(or pick the label in the Labels layer) and press Propagate."
            )
        if len(starts) > 1:  # several objects: one decode batch per frame, as 'all labels of this frame'
            self._run_all(image, geo, cur, labels, np.where(np.isin(here, list(starts)), here, 0), ids=list(starts))
            return
        ax = int(self.axis.value)
        read, key, kw = w.frame_reader(image)

        def frame_at(i: int) -> tuple[int, ...]:
            return _frame_at(cur, ax, i)

        n_ax = geo.lead_shape[ax]
        axis = axis_names(image)[ax].split(" (")[0]
        where = f"from frame {cur[ax]} along {axis}"

        def gen():
            pred = worker_predictor((yield from built(w.model_step())), w.state.cache)  # embeddings cached: computed once for all objects
            for lid, mask in starts.items():
                yield Progress(0, 0, f"label {lid} {where}: embedding the next frame")
                yield from relay(iter_propagate(
                    pred, lambda i: read(frame_at(i)), geo.lead_shape[ax], cur[ax], mask, key=lambda i: key(frame_at(i)),
                    min_score=self.min_score.value, min_overlap=self.min_overlap.value, image_kwargs=kw,
                ), lambda step, lid=lid: (lid, step))
            return len(starts)

        results: dict[int, dict[int, np.ndarray]] = {}  # frame index -> {label id: mask}
        stops: list[str] = []
        ids = list(starts)

        def on_msg(msg) -> None:
            if isinstance(msg, tuple) and isinstance(msg[1], PropagationStep):
                lid, step = msg
                if step.mask is not None:
                    results.setdefault(step.index, {})[lid] = step.mask
                else:
                    stops.append(f"label {lid}: {step.stopped}" if len(ids) > 1 else step.stopped)
                k = ids.index(lid)
                what = f"stopped ({step.stopped})" if step.mask is None else f"pred. IoU {step.score:.2f}, overlap {step.overlap:.2f}"
                w.show_progress(k * step.total + step.done, len(ids) * step.total,
                                f"Propagate label {lid}: frame {step.index} ({step.done} of {step.total}; {what})")

        def on_finish() -> None:
            # one undoable write for the whole run (also after Cancel: the frames done are kept);
            # where propagated objects overlap, the first selected keeps the pixel
            items = []
            for i, masks in sorted(results.items()):
                new = np.zeros(here.shape, labels.data.dtype)
                for lid, m in masks.items():
                    new[m & (new == 0)] = lid
                items.append((frame_at(i), new))
            if items:
                write_frames(labels, items, overwrite=w.overwrite.value, replace_ids="new")  # each object's own previous mask
            done = sorted({lid for masks in results.values() for lid in masks})
            if w.state.job_cancelled:
                w.end_status(f"Propagate {cancelled(len(results), n_ax - 1)} (label(s) {', '.join(map(str, done)) or '-'}); Ctrl+Z undoes.")
                return
            w.end_status(f"Propagated label(s) {', '.join(map(str, done)) or '-'} {where} to {len(results)} frame(s)"
                         + (f"; stopped: {'; '.join(stops)}" if stops else "") + (". Ctrl+Z undoes." if results else "."))

        w.run_job(gen(), on_msg, on_finish, title="Propagate")

    def _run_all(self, image, geo, cur: tuple[int, ...], labels, here: np.ndarray | None, ids: list[int] | None = None) -> None:
        """Every label of ``here`` (frame ``cur``'s labels; with ``ids``: the selected ones only) at once
        (engine.propagate.iter_propagate_labels, as `mobilesam propagate`)."""
        w = self.w
        if here is None or not (here > 0).any():
            raise SettingsError("This frame has no labels to propagate: segment its objects first (or choose the Labels layer "
                             "that holds them), then press Propagate.")
        ax = int(self.axis.value)
        read, key, kw = w.frame_reader(image)

        def frame_at(i: int) -> tuple[int, ...]:
            return _frame_at(cur, ax, i)

        n_ax = geo.lead_shape[ax]
        n_ids = len(np.unique(here[here > 0]))
        where = f"from frame {cur[ax]} along {axis_names(image)[ax].split(' (')[0]}"
        start = np.array(here)

        def gen():
            pred = worker_predictor((yield from built(w.model_step())), w.state.cache)
            yield Progress(0, 0, f"{n_ids} labels {where}: embedding the next frame")
            yield from relay(iter_propagate_labels(
                pred, lambda i: read(frame_at(i)), n_ax, cur[ax], start, key=lambda i: key(frame_at(i)),
                min_score=self.min_score.value, min_overlap=self.min_overlap.value, image_kwargs=kw,
            ), lambda step: ("all", step))

        found: dict[int, dict[int, np.ndarray]] = {}  # label id -> {frame index: mask}, from the frames done

        def on_msg(msg) -> None:
            if isinstance(msg, tuple) and msg[0] == "all":
                i, going, done, text, kept = msg[1]
                for lid, m in kept.items():
                    found.setdefault(lid, {})[i] = m
                w.show_progress(done, max(n_ax - 1, 1), f"Propagate all: {text}")

        def on_finish() -> None:
            # one undoable write (also after Cancel: the frames done are kept); each object's own
            # previous mask on a frame is replaced; other labels stay unless overwrite
            frames = render_propagated(found, start.shape, labels.data.dtype)
            if frames:
                write_frames(labels, [(frame_at(i), new) for i, new in frames.items()], overwrite=w.overwrite.value,
                             replace_ids="new")
            names = f"label(s) {', '.join(map(str, sorted(found))) or '-'}" if ids else f"{len(found)} of {n_ids} label(s)"
            what = f"{names} {where} to {len(frames)} frame(s)"
            if w.state.job_cancelled:
                w.end_status(f"Propagate all {cancelled(len(frames), n_ax - 1)}: {what}; Ctrl+Z undoes.")
                return
            w.end_status(f"Propagated {what}" + (". Ctrl+Z undoes." if frames else "."))

        w.run_job(gen(), on_msg, on_finish, title="Propagate")
