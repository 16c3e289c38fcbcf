"""The output Labels layer as the widget keeps it: which object owns which id, what is written.

The rule (README "Where the labels go", and the Segment tooltip): *Segment* decodes and writes only
the objects whose prompt is new or changed since their mask was written (or whose mask is no
longer in the layer, e.g. after Ctrl+Z). A written object keeps its pixels: a new mask fills only
background, unless *overwrite* is ticked, and a re-segmented object replaces only its own pixels.

What was written is remembered per output layer (and, before the layer exists, per image), so
switching images and back keeps every object as it was.
"""

from __future__ import annotations

from napari.layers import Labels

from . import layers as L
from .feedback import ids_note
from .session import check_session_model, stamp
from ..engine.prompts import ObjectPrompt, assign_ids
from .writer import check_ids_fit, frame_view, object_pixels, write_masks

__all__ = ["OutputState"]


class OutputState:
    """Mixin for :class:`~napari_mobilesam.gui.widget.MobileSAMWidget` (uses ``labels_box``,
    ``image_box``, ``overwrite``, the prompt layers and ``labels_layer()``)."""

    _written: dict  # output key -> {label id: prompt signature of its written mask}
    _issued_by: dict  # output key -> highest label id given out

    def _out_key(self) -> tuple:
        layer = self.labels_box.value if hasattr(self, "labels_box") else None
        if layer is not None:
            return ("layer", layer.unique_id)
        image = self.image_box_value()
        return ("new", None if image is None else image.name)

    @property
    def _signatures(self) -> dict[int, tuple]:
        """Label id -> prompt signature of its written mask, for the current output layer."""
        return self._written.setdefault(self._out_key(), {})

    @property
    def issued(self) -> int:
        """The highest label id given out to prompts for the current output layer (0: none yet)."""
        return self._issued

    @property
    def _issued(self) -> int:
        return self._issued_by.get(self._out_key(), 0)

    @_issued.setter
    def _issued(self, value: int) -> None:
        self._issued_by[self._out_key()] = int(value)

    def _adopt_new_layer(self, image, layer: Labels) -> None:
        """The layer created for ``image`` takes over what was recorded before it existed."""
        key = ("new", image.name)
        self._written[("layer", layer.unique_id)] = self._written.pop(key, {})
        self._issued_by[("layer", layer.unique_id)] = self._issued_by.pop(key, 0)

    def _forget_output(self) -> None:
        self._written.pop(self._out_key(), None)
        self._issued_by.pop(self._out_key(), None)

    def next_id(self) -> int:
        """One more than any label in the output layer, any id on a prompt, and any id issued before
        (an id whose prompt was deleted is not reused: Ctrl+Z may bring its mask back)."""
        return max(L.next_free_label(self.labels_box.value, (self._points, self._shapes)), self._issued + 1)

    def release(self, label_id: int) -> None:
        """Forget that this widget wrote ``label_id`` (it is being refined: its prompts no longer make
        it), so that neither Segment nor live mode redoes or clears it."""
        self._signatures.pop(int(label_id), None)

    def is_written(self, o: ObjectPrompt) -> bool:
        """``o``'s mask is in the layer as its prompt now asks (nothing to decode)."""
        layer = self.labels_box.value
        if o.label_id <= 0 or layer is None or self._signatures.get(o.label_id) != o.signature:
            return False
        return bool((frame_view(layer, o.frame) == o.label_id).any())

    def assign_ids(self, objects: list[ObjectPrompt]) -> str:
        """Give objects without a label id the next free ids, stored on their prompt rows.

        Returns a note for the status line when the ids continue after labels the user made.
        """
        layer = self.labels_box.value
        top = L.next_free_label(layer, ()) - 1
        first = self.next_id()
        issued = self._issued
        nxt = assign_ids(objects, first)  # the engine's rule, as in mobilesam segment
        for o in objects:
            self._issued = max(self._issued, o.label_id)
            if self._points is not None and o.point_rows:
                self._points.features.loc[o.point_rows, "label_id"] = o.label_id
            if self._shapes is not None and o.shape_rows:
                self._shapes.features.loc[o.shape_rows, "label_id"] = o.label_id
        if objects:
            check_ids_fit(self.labels_layer(), max(o.label_id for o in objects))
        return ids_note(first, top, layer.name) if nxt > first and layer is not None and top > issued else ""

    def write_objects(self, frame, objects: list[ObjectPrompt], masks, also_clear=()) -> list[tuple[int, int, int]]:
        """Paint the masks of ``objects`` on ``frame`` as one undoable step; ``also_clear``: ids
        whose prompt was deleted (their pixels are released).

        Returns ``(label id, pixels it now holds, mask area)`` per object.
        """
        layer = self.labels_layer()
        image = self.image_box_value()
        if objects:
            check_session_model(self, layer)  # labels of a session made with other weights are not mixed
        ids = [o.label_id for o in objects]
        write_masks(layer, tuple(frame), masks, ids, self.overwrite.value, ids + list(also_clear))
        if image is not None:
            stamp(self, layer, image, self.frame_reader(image)[2], tuple(frame))  # what a saved session needs (gui/session.py)
        for o in objects:
            self._signatures[o.label_id] = o.signature
        for lid in also_clear:
            self._signatures.pop(lid, None)
        return list(zip(ids, object_pixels(layer, tuple(frame), masks, ids), [m.area for m in masks], strict=True))
