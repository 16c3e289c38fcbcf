"""'Refine a label' section: correct an existing label (hand-painted, cellpose, stardist, an earlier run).

The user picks the label (the *refine label* field, or Ctrl+click on it in the labels layer). Points
placed while it is picked name it (their ``label_id`` is its id). *Refine* then prompts SAM with the
label's own mask (as mask input), its box and those points (:mod:`napari_mobilesam.engine.refine`),
and writes the result over that label only, with its id, as one Ctrl+Z step. Segment leaves the
points of a label being refined (or refined before) to Refine (``state.refining``).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Hashable
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox, PushButton, SpinBox
from napari.layers import Labels, Points

from ..engine.jobs import decode_objects
from ..engine.prompts import ObjectPrompt
from ..engine.refine import REFINE_RULE, refine_objects, refinement, split_refinements
from . import layers as L
from .jobs import FrameDone, Progress, built, worker_predictor
from .layout import Section
from .sections import Action
from .writer import frame_view, object_pixels, write_masks

if TYPE_CHECKING:
    from .sections import Context

__all__ = ["RefineSection", "refine_frame"]

HELP = (
    "Refine an existing label: type its id or Ctrl+click it in the labels layer (pan/zoom mode; or click it in "
    "napari's picker mode), add positive points (to grow it) "
    "and negative points (to cut it) on this frame, then press Refine. The label's own mask (as SAM's mask input) "
    "and its box are the prompt, with the points placed while it is picked (they get its id as label_id). The result replaces only that label's "
    "pixels (it never covers other labels) and keeps its id; one Ctrl+Z undoes it. Rule: " + REFINE_RULE + "."
)


def refine_frame(
    model, cache, frame: Callable, key: Callable[[tuple], Hashable], image_kwargs: dict, f: tuple,
    objects: list[ObjectPrompt], labels_frame: np.ndarray,
) -> Generator[Progress | FrameDone, None, None]:
    """Job: embed frame ``f`` (cached), add each object's label mask and box (:func:`refine_objects`)
    and decode; yields one :class:`FrameDone` with the refined objects and their masks."""
    pred = worker_predictor((yield from built(model)), cache)
    yield Progress(0, 1, "image embedding" if key(f) not in cache else "decoding")
    pred.set_image(frame(f), key=key(f), **image_kwargs)
    refined = refine_objects(objects, labels_frame, pred)
    yield FrameDone(f, refined, decode_objects(pred, refined))
    yield Progress(1, 1, "done")


class RefineSection:
    """The section's controls. The labels whose points are Refine's (the picked one and those refined
    before) are kept in ``state.refining``, where the widget's ``objects()`` leaves them to Refine
    (:func:`~napari_mobilesam.engine.prompts.segment_objects`)."""

    def __init__(self, ctx: Context, points_box: ComboBox) -> None:
        self.w = ctx
        self.label = SpinBox(label="refine label", value=0, min=0, max=2**31 - 1,
                             tooltip="Id of the label to refine (0: off); Ctrl+click a label in the labels layer picks it. " + HELP)
        self.label.native.setButtonSymbols(self.label.native.ButtonSymbols.NoButtons)  # 10 digits fit the narrow dock
        self.button = PushButton(text="Refine label")
        self.button.tooltip = HELP
        self.section = Section("Refine a label", self.label, self.button)
        self.box, self.inner = self.section.box, self.section.inner
        self.box.setToolTip(HELP)
        self.actions: tuple[Action, ...] = (Action("", "Refine", self.button, self.run),)
        self.refined: set[int] = set()  # ids refined before: Segment keeps leaving their points to Refine
        self._watched: Labels | None = None
        self._points: Points | None = None
        self.label.changed.connect(self._on_label)
        self.button.changed.connect(self.run)
        ctx.labels_box.changed.connect(self._watch)
        self._watch(ctx.labels_box.value)
        points_box.changed.connect(self._watch_points)
        self._watch_points(points_box.value)

    def on_image(self, image) -> None:  # (the labels layer it watches follows 'labels out')
        pass

    def _publish(self) -> None:
        self.w.state.refining = self.ids()

    # ------------------------------------------------------------------ picking
    def ids(self) -> set[int]:
        """Labels whose points belong to Refine: the picked one and those refined before."""
        k = int(self.label.value)
        return self.refined | ({k} if k > 0 else set())

    def _watch(self, layer: Labels | None) -> None:
        if self._watched is not None and self._pick in self._watched.mouse_drag_callbacks:
            self._watched.mouse_drag_callbacks.remove(self._pick)
        self._watched = layer
        self.refined = set()  # ids of another layer
        self._publish()
        if layer is not None:
            layer.mouse_drag_callbacks.append(self._pick)

    def _pick(self, layer: Labels, event) -> None:
        """Ctrl+click on the labels layer (Cmd+click on macOS), or a click in its picker mode: the label
        under the cursor becomes the refine label. (Alt is napari's: zoom box, brush size.)"""
        if "Control" not in event.modifiers and str(layer.mode) != "pick":  # vispy keys compare equal to names
            return
        value = layer.get_value(event.position, world=True)
        if value is not None and int(value) > 0:
            self.label.value = int(value)

    def _on_label(self, value: int) -> None:
        self._publish()
        self._watch_points(self._points)  # after every handler connected meanwhile (the widget's resets new rows' ids)
        if value > 0:
            self.w.release(value)  # live mode must not clear it now that its prompts are Refine's
            self.w.status.value = f"Refine label {value}: add points (T toggles positive/negative), then press Refine label."

    def _watch_points(self, layer: Points | None) -> None:
        if self._points is not None:
            self._points.events.data.disconnect(self._on_points_added)
        self._points = layer
        if layer is not None:
            layer.events.data.connect(self._on_points_added, position="last")

    def _on_points_added(self, event) -> None:
        """Points added while a label is picked name it (label_id k; object k keeps them one group)."""
        k = int(self.label.value)
        action = str(getattr(event, "action", "")).split(".")[-1].lower()
        layer = event.source
        if k <= 0 or action != "added" or "label_id" not in layer.features:
            return
        rows = sorted(len(layer.data) + int(i) for i in (getattr(event, "data_indices", None) or ()) if int(i) < 0)
        if rows:
            layer.features.loc[rows, ["label_id", "object"]] = k

    # ------------------------------------------------------------------ run
    def run(self, _=None) -> None:
        self.w.guard(self._run)

    def _run(self) -> None:
        w = self.w
        k = int(self.label.value)
        if k <= 0:
            raise ValueError("No label to refine: type its id in 'refine label' or Ctrl+click it in the labels layer.")
        layer = w.labels_box.value
        if layer is None:
            raise ValueError("No labels layer: pick the layer that holds the label under 'labels out'.")
        image, geo, cur = w.context()
        existing = frame_view(layer, cur).copy()
        if not (existing == k).any():
            where = f" on frame {cur}" if cur else ""
            raise ValueError(f"Label {k} is not in '{layer.name}'{where}: pick a label that is there (Ctrl+click it).")
        table = L.prompt_table(w.points_layer, w.shapes_layer, image)
        found, _ = split_refinements(table, lambda f: existing, geo.n_lead, geo.lead_shape, cur, [cur], geo.spatial, ids={k})
        objects = found or [refinement(cur, k)]
        self.refined.add(k)
        self._publish()
        frame, key, kw = w.frame_reader(image)
        result: list = []
        empty: list = []

        def on_msg(msg) -> None:
            if isinstance(msg, FrameDone):
                kept = [(o.label_id, m) for o, m in zip(msg.objects, msg.masks, strict=True) if m.area]  # nothing found: label kept
                ids, masks = [i for i, _ in kept], [m for _, m in kept]
                if kept:
                    write_masks(layer, tuple(msg.frame), masks, ids, overwrite=False, replace_ids=ids)
                    result.extend(zip(ids, object_pixels(layer, tuple(msg.frame), masks, ids), strict=True))
                else:
                    empty.append(k)

        def on_finish() -> None:
            if result:
                (lid, n), = result
                before = int((existing == lid).sum())
                w.end_status(f"Refine: label {lid} {before} → {n} pixels in '{layer.name}'; Ctrl+Z undoes.")
            elif empty:
                w.end_status(f"Refine: the model found no object for label {k}; the label is kept as it was. Add or move points.")
            else:
                w.end_status("Refine: cancelled, label unchanged." if w.state.job_cancelled else "Refine: nothing written.")

        w.run_job(refine_frame(w.model_step(), w.state.cache, frame, key, kw, cur, objects, existing), on_msg, on_finish, title="Refine")
