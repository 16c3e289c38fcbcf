"""'Propagate' section: segment one object through neighbouring frames of a stack."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox, FloatSpinBox, PushButton

from ..engine.propagate import PropagationStep, iter_propagate
from . import layers as L
from .jobs import worker_predictor
from .writer import frame_view, write_frames

if TYPE_CHECKING:
    from .widget import MobileSAMWidget

__all__ = ["PropagateSection"]

HELP = (
    "Segments the selected object (selected point or box, else the Labels layer's selected label) "
    "on the next and previous frames, each prompted by the previous frame's mask (its box + mask input). "
    "Stops in a direction when the predicted IoU or the overlap with the previous frame drops below "
    "the thresholds, or the object vanishes. One Ctrl+Z undoes a whole run."
)


class PropagateSection:
    def __init__(self, widget: MobileSAMWidget) -> None:
        from .widget import _group

        self.w = widget
        self.axis = ComboBox(label="along axis", choices=self._axes, tooltip="Stack axis to propagate along")
        self.min_score = FloatSpinBox(label="min pred. IoU", value=0.5, min=0.0, max=1.0, step=0.05)
        self.min_overlap = FloatSpinBox(label="min overlap", value=0.3, min=0.0, max=1.0, step=0.05,
                                        tooltip="IoU with the previous frame's mask")
        self.button = PushButton(text="Propagate selected object")
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

    def selected_id(self, frame) -> int:
        """Label id of the selected prompt on ``frame``, else the Labels layer's selected label."""
        for o in self.w.objects([frame]):
            rows_p = self.w._points.selected_data if self.w._points is not None else set()
            rows_s = self.w._shapes.selected_data if self.w._shapes is not None else set()
            if o.label_id > 0 and (set(o.point_rows) & set(rows_p) or set(o.shape_rows) & set(rows_s)):
                return o.label_id
        labels = self.w.labels_box.value
        return int(labels.selected_label) if labels is not None else 0

    def run(self, _=None) -> None:
        self.w._guard(self._run)

    def _run(self) -> None:
        w = self.w
        image, geo, cur = w.context()
        if not geo.n_lead:
            raise ValueError(f"Image {image.name!r} is a single frame: propagation needs a stack.")
        labels = w.labels_box.value
        lid = self.selected_id(cur)
        mask = frame_view(labels, cur) == lid if labels is not None and lid > 0 else None
        if mask is None or not mask.any():
            raise ValueError(
                f"Label {lid} is not on this frame: segment the object here first, then select its point/box "
                "(or pick the label in the Labels layer) and press Propagate."
            )
        ax = int(self.axis.value)
        read, key, kw = w._frame_reader(image)

        def frame_at(i: int) -> tuple[int, ...]:
            f = list(cur)
            f[ax] = i
            return tuple(f)

        def gen():
            model = w.model_step()
            sam = (yield from model) if not hasattr(model, "image_encoder") else model
            pred = worker_predictor(sam, w.cache)
            return (yield from iter_propagate(
                pred, lambda i: read(frame_at(i)), geo.lead_shape[ax], cur[ax], mask, key=lambda i: key(frame_at(i)),
                min_score=self.min_score.value, min_overlap=self.min_overlap.value, image_kwargs=kw,
            ))

        results: dict[int, np.ndarray] = {}
        stops: list[str] = []

        def on_msg(msg) -> None:
            if isinstance(msg, PropagationStep):
                if msg.mask is not None:
                    results[msg.index] = msg.mask
                w.show_progress(msg.done, msg.total, f"Propagate: frame {msg.index} (pred. IoU {msg.score:.2f}, overlap {msg.overlap:.2f})")
                if msg.mask is None:
                    stops.append(msg.stopped)

        def on_finish() -> None:
            # one undoable write for the whole run (also after Cancel: the frames done are kept)
            if results:
                items = [(frame_at(i), np.where(m, lid, 0).astype(labels.data.dtype)) for i, m in sorted(results.items())]
                write_frames(labels, items, overwrite=w.overwrite.value, replace_ids=(lid,))
            w.status.value = f"Propagated label {lid} to {len(results)} frame(s)" + (f"; stopped: {'; '.join(stops)}" if stops else "")

        w.run_job(gen(), on_msg, on_finish, title="Propagate")
