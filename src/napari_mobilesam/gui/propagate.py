"""'Propagate' section: segment the selected objects through neighbouring frames of a stack."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox, FloatSpinBox, PushButton

from .._progress import relay
from ..engine.propagate import PropagationStep, iter_propagate
from . import layers as L
from .jobs import built, worker_predictor
from .writer import frame_view, write_frames

if TYPE_CHECKING:
    from .widget import MobileSAMWidget

__all__ = ["PropagateSection"]

HELP = (
    "Segments the selected objects (every selected point or box of this frame, else the Labels layer's "
    "selected label) on the next and previous frames, each prompted by the previous frame's mask (its "
    "box + mask input). Each object stops in a direction when its predicted IoU or its overlap with the "
    "previous frame drops below the thresholds, or it vanishes. Frame embeddings are computed once for "
    "all objects. One Ctrl+Z undoes a whole run."
)


class PropagateSection:
    def __init__(self, widget: MobileSAMWidget) -> None:
        from .widget import _group

        self.w = widget
        self.axis = ComboBox(label="along axis", choices=self._axes, tooltip="Stack axis to propagate along")
        self.min_score = FloatSpinBox(label="min pred. IoU", value=0.5, min=0.0, max=1.0, step=0.05)
        self.min_overlap = FloatSpinBox(label="min overlap", value=0.3, min=0.0, max=1.0, step=0.05,
                                        tooltip="IoU with the previous frame's mask")
        self.button = PushButton(text="Propagate selected objects")
        self.box, self.inner = _group("Propagate through the stack", self.axis, self.min_score, self.min_overlap, self.button)
        self.box.setToolTip(HELP)
        self.button.tooltip = HELP
        self.button.changed.connect(self.run)

    def _axes(self, _widget=None) -> list:
        image = self.w.image_box_value()
        if image is None:
            return []
        n = L.FrameGeometry.of(image).n_lead
        names = list(self.w.viewer.dims.axis_labels)[-(n + 2) :][:n] if n else []
        return [(f"{names[i] if i < len(names) else i} ({i})", i) for i in range(n)]

    def reset_axes(self) -> None:
        self.axis.reset_choices()
        self.box.setEnabled(bool(self.axis.choices))

    def selected_ids(self, frame) -> list[int]:
        """Label ids of the selected prompts on ``frame``, else the Labels layer's selected label."""
        rows_p = set(self.w._points.selected_data) if self.w._points is not None else set()
        rows_s = set(self.w._shapes.selected_data) if self.w._shapes is not None else set()
        ids = [o.label_id for o in self.w.objects([frame])
               if o.label_id > 0 and (set(o.point_rows) & rows_p or set(o.shape_rows) & rows_s)]
        if ids:
            return ids
        labels = self.w.labels_box.value
        return [int(labels.selected_label)] if labels is not None else []

    def run(self, _=None) -> None:
        self.w._guard(self._run)

    def _run(self) -> None:
        w = self.w
        image, geo, cur = w.context()
        if not geo.n_lead:
            raise ValueError(f"Image {image.name!r} is a single frame: propagation needs a stack.")
        labels = w.labels_box.value
        here = frame_view(labels, cur) if labels is not None else None
        starts = {lid: here == lid for lid in self.selected_ids(cur) if lid > 0 and here is not None}
        missing = [lid for lid, m in starts.items() if not m.any()]
        if not starts or missing:
            which = f"Label {missing[0]} is" if missing else "No selected label is"
            raise ValueError(
                f"{which} not on this frame: segment the object here first, then select its point/box "
                "(or pick the label in the Labels layer) and press Propagate."
            )
        ax = int(self.axis.value)
        read, key, kw = w._frame_reader(image)

        def frame_at(i: int) -> tuple[int, ...]:
            f = list(cur)
            f[ax] = i
            return tuple(f)

        def gen():
            pred = worker_predictor((yield from built(w.model_step())), w.cache)  # embeddings cached: computed once for all objects
            for lid, mask in starts.items():
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
                w.show_progress(k * step.total + step.done, len(ids) * step.total,
                                f"Propagate label {lid}: frame {step.index} (pred. IoU {step.score:.2f}, overlap {step.overlap:.2f})")

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
            w.status.value = (f"Propagated label(s) {', '.join(map(str, done)) or '-'} to {len(results)} frame(s)"
                              + (f"; stopped: {'; '.join(stops)}" if stops else ""))

        w.run_job(gen(), on_msg, on_finish, title="Propagate")
