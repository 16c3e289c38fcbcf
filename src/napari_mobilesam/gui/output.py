"""The output Labels layer as the widget keeps it: which object owns which id, what is written.

The rule (README "Where the labels go", and the Segment tooltip): *Segment* decodes and writes only
the objects whose prompt is new or changed since their mask was written (or whose mask is no
longer in the layer, e.g. after Ctrl+Z). A written object keeps its pixels: a new mask fills only
background, unless *overwrite* is ticked, and a re-segmented object replaces only its own pixels.
A label edited by hand (its pixels differ from the mask written) is the user's: no Segment, live or
not, rewrites it unless its prompt changed **and** *overwrite* is ticked; nor do other objects' masks
cover it, nor does deleting its prompt clear it.

What was written (per label id: the prompt signature, a hash of the mask written, and which write wrote
it: its *generation*, 0, 1, ... per write, with that write's *overwrite*) is remembered per
output layer (and, before the layer exists, per image), so switching images and back keeps every
object as it was; it is also stored in the layer's session metadata (``objects``), so a saved session
resumed in a new napari knows the same (Segment then has nothing to do), and its replay paints the
objects write by write (``engine.labels.paint_writes``), as they were written here.
"""

from __future__ import annotations

import hashlib

import numpy as np
from napari.layers import Labels

from ..engine.prompts import ObjectPrompt, assign_ids
from . import layers as L
from .feedback import ids_note
from .sections import Context
from .session import INFO, check_session_model, stamp
from .writer import check_ids_fit, frame_view, object_pixels, write_masks

__all__ = ["OutputRecords", "mask_hash"]

# what Segment does with an object (OutputRecords.ownership)
NEW, WRITTEN, CHANGED, USERS = "new", "written", "changed", "user's"


def mask_hash(view: np.ndarray, label_id: int) -> str:
    """A short hash of where ``label_id`` is in the ``(H, W)`` label image ``view``."""
    m = np.asarray(view) == label_id
    h = hashlib.blake2b(np.asarray(m.shape, np.int64).tobytes(), digest_size=8)
    h.update(np.packbits(m).tobytes())
    return h.hexdigest()


def _choice(o: ObjectPrompt) -> str:
    return "the best mask" if o.select == "best" else f"mask {int(o.select) + 1}"


def _sig_json(sig: tuple) -> list:
    frame, pts, box, select = sig
    return [[int(v) for v in frame], [float(v) for v in pts], [float(v) for v in box], select if isinstance(select, str) else int(select)]


def _sig_of_json(v) -> tuple | None:
    try:
        frame, pts, box, select = v
        return (tuple(int(x) for x in frame), tuple(float(x) for x in pts), tuple(float(x) for x in box),
                select if isinstance(select, str) else int(select))
    except (TypeError, ValueError):
        return None  # a damaged record: the object is treated as not written by this widget


class OutputRecords:
    """What was written into the output layer (``state.written`` / ``state.issued_by``) and the
    rule that follows from it; works through the widget's public :class:`~.sections.Context`."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.state = ctx.state

    def _out_key(self) -> tuple:
        layer = self.ctx.labels_box.value
        if layer is not None:
            return ("layer", layer.unique_id)
        image = self.ctx.image_box_value()
        return ("new", None if image is None else image.name)

    @property
    def records(self) -> dict[int, tuple]:
        """Label id -> (prompt signature, mask hash, generation, overwrite) of its written mask, for the current
        output layer (for a layer opened from a session: what the session recorded; a session saved before
        generations were recorded: all generation 0, one write, as its replay paints them)."""
        key = self._out_key()
        written = self.state.written
        if key not in written:
            layer = self.ctx.labels_box.value if key[0] == "layer" else None
            saved = ((layer.metadata.get(INFO) or {}).get("objects") or {}) if layer is not None else {}
            recs = {}
            for lid, rec in saved.items() if isinstance(saved, dict) else ():
                sig = _sig_of_json(rec.get("signature")) if isinstance(rec, dict) else None
                if sig is not None and str(lid).isdigit():
                    gen = rec.get("generation", 0)
                    recs[int(lid)] = (sig, str(rec.get("mask", "")), gen if isinstance(gen, int) else 0, rec.get("overwrite") is True)
            written[key] = recs
        return written[key]

    def _save_records(self, layer: Labels) -> None:
        """Mirror the records into the layer's session metadata (a saved session carries them)."""
        info = layer.metadata.get(INFO)
        if info is None:
            info = layer.metadata[INFO] = {}
        info["objects"] = {str(lid): {"signature": _sig_json(sig), "mask": h, "generation": int(gen), "overwrite": bool(over)}
                           for lid, (sig, h, gen, over) in self.records.items()}

    def ownership(self, o: ObjectPrompt) -> str:
        """What Segment does with ``o``: ``NEW`` (decode: no id yet, or its label is not in the layer,
        e.g. after Ctrl+Z), ``WRITTEN`` (its prompt is as when its mask was written: keep),
        ``CHANGED`` (its prompt changed and its pixels are as written: decode, replacing its own
        pixels) or ``USERS`` (its label was edited by hand, or was not written by this widget from
        a prompt: keep unless its prompt changed and 'overwrite' is ticked)."""
        layer = self.ctx.labels_box.value
        if o.label_id <= 0 or layer is None:
            return NEW
        view = frame_view(layer, o.frame)
        if not (view == o.label_id).any():
            return NEW
        rec = self.records.get(o.label_id)
        if rec is None:
            return USERS
        if rec[0] == o.signature:
            return WRITTEN
        return USERS if rec[0][0] == tuple(o.frame) and rec[1] != mask_hash(view, o.label_id) else CHANGED

    def hand_edited(self, label_ids, frame) -> list[int]:
        """Those of ``label_ids`` whose pixels in ``frame`` differ from the mask this widget wrote."""
        layer = self.ctx.labels_box.value
        if layer is None:
            return []
        view = frame_view(layer, frame)
        out = []
        for lid in label_ids:
            rec = self.records.get(int(lid))
            if rec is not None and rec[0][0] == tuple(frame) and rec[1] != mask_hash(view, int(lid)):
                out.append(int(lid))
        return out

    @property
    def issued(self) -> int:
        """The highest label id given out to prompts for the current output layer (0: none yet)."""
        return self._issued

    @property
    def _issued(self) -> int:
        return self.state.issued_by.get(self._out_key(), 0)

    @_issued.setter
    def _issued(self, value: int) -> None:
        self.state.issued_by[self._out_key()] = int(value)

    def adopt_new_layer(self, image, layer: Labels) -> None:
        """The layer created for ``image`` takes over what was recorded before it existed."""
        key = ("new", image.name)
        st = self.state
        st.written[("layer", layer.unique_id)] = st.written.pop(key, {})
        st.issued_by[("layer", layer.unique_id)] = st.issued_by.pop(key, 0)

    def forget(self) -> None:
        """The prompts' ids were reset (another output layer): nothing of this output is known."""
        self.state.written[self._out_key()] = {}  # (not re-read from the layer's metadata: the prompts' ids were reset)
        self.state.issued_by.pop(self._out_key(), None)

    def next_id(self) -> int:
        """One more than any label in the output layer, any id on a prompt, and any id issued before
        (an id whose prompt was deleted is not reused: Ctrl+Z may bring its mask back)."""
        return max(L.next_free_label(self.ctx.labels_box.value, (self.state.points, self.state.shapes)), self._issued + 1)

    def release(self, label_id: int) -> None:
        """Forget that this widget wrote ``label_id`` (it is being refined: its prompts no longer make
        it), so that neither Segment nor live mode redoes or clears it."""
        self.records.pop(int(label_id), None)
        if self.ctx.labels_box.value is not None:
            self._save_records(self.ctx.labels_box.value)

    def is_written(self, o: ObjectPrompt) -> bool:
        """``o``'s mask is in the layer as its prompt now asks (nothing to decode)."""
        return self.ownership(o) == WRITTEN

    def assign_ids(self, objects: list[ObjectPrompt]) -> str:
        """Give objects without a label id the next free ids, stored on their prompt rows.

        Returns a note for the status line when the ids continue after labels the user made.
        """
        layer = self.ctx.labels_box.value
        top = L.next_free_label(layer, ()) - 1
        first = self.next_id()
        issued = self._issued
        nxt = assign_ids(objects, first)  # the engine's rule, as in mobilesam segment
        for o in objects:
            self._issued = max(self._issued, o.label_id)
            if self.state.points is not None and o.point_rows:
                self.state.points.features.loc[o.point_rows, "label_id"] = o.label_id
            if self.state.shapes is not None and o.shape_rows:
                self.state.shapes.features.loc[o.shape_rows, "label_id"] = o.label_id
        if objects and layer is not None:  # a new layer (uint32) is made with the first result, not before the model loads
            check_ids_fit(layer, max(o.label_id for o in objects))
        return ids_note(first, top, layer.name) if nxt > first and layer is not None and top > issued else ""

    def write_objects(self, frame, objects: list[ObjectPrompt], masks, also_clear=()) -> list[tuple[int, int, int]]:
        """Paint the masks of ``objects`` on ``frame`` as one undoable step; ``also_clear``: ids
        whose prompt was deleted (their pixels are released).

        Returns ``(label id, pixels it now holds, mask area)`` per object, and for an object already
        in the layer whose mask came out empty (e.g. an empty "mask 1" chosen), which is kept as it
        was, ``(label id, pixels it holds, 0, "mask 1")``.
        """
        layer = self.ctx.labels_layer()
        image = self.ctx.image_box_value()
        view = frame_view(layer, tuple(frame))
        empty = [i for i, (o, m) in enumerate(zip(objects, masks, strict=True)) if m.area == 0 and o.label_id > 0 and (view == o.label_id).any()]
        kept = [(objects[i].label_id, int((view == objects[i].label_id).sum()), 0, _choice(objects[i])) for i in empty]
        objects = [o for i, o in enumerate(objects) if i not in empty]
        masks = [m for i, m in enumerate(masks) if i not in empty]
        if objects:
            check_session_model(self.ctx, layer)  # labels of a session made with other weights are not mixed
        ids = [o.label_id for o in objects]
        mine = set(ids)
        keep = [lid for lid in self.records if lid not in mine]
        keep = self.hand_edited(keep, frame) if self.ctx.overwrite.value else []  # (without overwrite only background is filled)
        write_masks(layer, tuple(frame), masks, ids, self.ctx.overwrite.value, ids + list(also_clear), keep_ids=keep)
        if image is not None:
            stamp(self.ctx, layer, image, self.ctx.frame_reader(image)[2], tuple(frame))  # what a saved session needs (gui/session.py)
        view = frame_view(layer, tuple(frame)) if objects else None
        gen = 1 + max((rec[2] for rec in self.records.values()), default=-1)  # this write's generation (a session replays in order)
        for o in objects:
            self.records[o.label_id] = (o.signature, mask_hash(view, o.label_id), gen, bool(self.ctx.overwrite.value))
        for lid in also_clear:
            self.records.pop(lid, None)
        self._save_records(layer)
        return list(zip(ids, object_pixels(layer, tuple(frame), masks, ids), [m.area for m in masks], strict=True)) + kept
