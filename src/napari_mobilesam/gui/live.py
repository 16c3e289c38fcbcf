"""Live mode: a click or a finished rectangle updates that object's mask at once.

The GUI thread only collects the prompts that changed and, when the decoder returns, writes their
masks (one undoable step). The decoder itself runs on the widget's model thread (``threads.py``: at once,
or between two steps of a running job), so the viewer stays responsive. A frame's embedding (and
the decoder's per-frame state) is computed once in a background job and cached. At most one decode
is in flight: prompts changed meanwhile are decoded when it returns, and a result whose prompt
changed or vanished meanwhile is dropped.
Objects whose prompt did not change are skipped, and deleting a prompt removes its mask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import QObject, Signal

from .feedback import held_note, objects_summary
from .jobs import FrameReady, decode_objects, segment_frames, worker_predictor
from .output import USERS, OutputRecords

if TYPE_CHECKING:
    from magicgui.widgets import CheckBox

    from .sections import Context
    from .threads import ModelThread

__all__ = ["LiveMode"]

MAX_DECODERS = 4  # per-frame decoder states kept for quick returns to recent frames


class _Relay(QObject):
    """Carries an urgent call's result (as a closure to run) from the model thread to the GUI thread."""

    result = Signal(object)


class LiveMode:
    """Live decoding for the Prompts section, through the widget's public :class:`~.sections.Context`
    (``output``: what was written; ``enabled``: the *live* check box; ``model_thread``: the widget's).
    What it remembers between two events lives in ``ctx.state`` (``live_*``, ``decoders``, ``pred``)."""

    def __init__(self, ctx: Context, output: OutputRecords, enabled: CheckBox, model_thread: ModelThread) -> None:
        self.ctx, self.state, self.output, self.enabled, self.model_thread = ctx, ctx.state, output, enabled, model_thread
        self._relay: _Relay | None = None

    @property
    def pending(self) -> bool:
        """A live decode is in flight or queued."""
        return self.state.live_worker is not None or self.state.live_again

    def _remember_decoder(self, key, decoder) -> None:
        decoders = self.state.decoders
        decoders[key] = decoder
        decoders.move_to_end(key)
        while len(decoders) > MAX_DECODERS:
            decoders.popitem(last=False)

    def prepare(self) -> None:
        """Compute the viewed frame's embedding in the background (if needed), then update."""
        image = self.ctx.image_box.value
        if image is not None and image in self.ctx.viewer.layers:
            self.ctx.guard(lambda: self._update(force_embedding=True))

    def update(self) -> None:
        """Decode (in a worker) the objects of the current frame whose prompts changed."""
        self.ctx.guard(self._update)

    def _update(self, force_embedding: bool = False) -> None:
        if self.state.live_worker is not None:  # one decode at a time: the newest prompts follow it
            self.state.live_again = True
            return
        image, geo, cur = self.ctx.context()
        objs = self.ctx.objects([cur])
        alive = {o.label_id for o in objs}
        moved = [o for o in objs if o.label_id <= 0 or self.output.records.get(o.label_id, (None,))[0] != o.signature]
        held = [] if self.ctx.overwrite.value else [o for o in moved if self.output.ownership(o) == USERS]  # edited by hand: the user's
        changed = [o for o in moved if not any(o is h for h in held)]
        gone = [lid for lid, rec in self.output.records.items() if rec[0][0] == cur and lid not in alive]
        for lid in self.output.hand_edited(gone, cur):  # a label edited by hand stays when its prompt is deleted
            self.output.release(lid)
            gone.remove(lid)
        if held and not changed and not gone:
            self.ctx.status.value = f"Live: {held_note(held)}."
        if self.state.outside and (changed or gone):
            self.ctx.status.value = f"Live: {self.ctx.outside_note()}."
        if not changed and not gone and not force_embedding:
            return
        frame, key, kw = self.ctx.frame_reader(image)
        k = key(cur)
        step = self.ctx.model_step()
        model_ready = self.state.sam is not None and step is self.state.sam
        if not model_ready or k not in self.state.cache:
            if self.ctx.busy and model_ready:
                self._embed_urgently(frame, k, cur, kw)  # between two steps of the running job
                return
            if self.ctx.busy:  # a job (maybe loading the model) runs: update when it ends
                if self.update not in self.state.after_job:
                    self.state.after_job.append(self.update)
                return
            # embedding (and maybe the model) first, in the background; then come back here
            def keep_decoder(msg) -> None:
                if isinstance(msg, FrameReady):
                    self._remember_decoder(msg.key, msg.decoder)

            self.ctx.run_job(segment_frames(step, self.state.cache, frame, key, [(cur, [])], kw), keep_decoder,
                             on_finish=lambda: self.state.sam is not None and k in self.state.cache and self.update(),
                             title="Live")
            return
        if not changed and not gone:
            return
        self.state.live_note = self.output.assign_ids(changed) or self.state.live_note
        if not changed:  # only deletions: nothing to decode
            self.ctx.write_objects(cur, [], [], also_clear=gone)
            self._live_status([], gone)
            return
        self._start_decode(image, cur, k, changed, gone)

    def _live_status(self, counts: list, gone: list) -> None:
        """One line per live result: each object's pixels (or why none), removed objects."""
        parts = [objects_summary(counts)] if counts else []
        if gone:
            parts.append(f"object{'s' if len(gone) > 1 else ''} {', '.join(map(str, gone))} removed (its prompt was deleted)")
        if self.state.live_note:
            parts.append(self.state.live_note)
            self.state.live_note = ""
        if self.state.outside:
            parts.append(self.ctx.outside_note())
        self.ctx.status.value = "; ".join(parts)

    def _relay_to_gui(self) -> _Relay:
        """Carries calls from the model thread to the GUI thread."""
        if self._relay is None:
            self._relay = _Relay()
            self._relay.result.connect(lambda call: call())
        return self._relay

    def _embed_urgently(self, frame, k, cur, kw: dict) -> None:
        """While a job holds the model thread: embed the viewed frame between two of its steps,
        then update (clicks made meanwhile are decoded then)."""
        if self.state.embedding == k:
            return
        self.state.embedding = k
        sam, cache, relay = self.state.sam, self.state.cache, self._relay_to_gui()

        def embed():
            if self.state.embedding != k:  # the user moved on to another frame meanwhile
                return
            try:
                pred = worker_predictor(sam, cache)
                pred.set_image(frame(cur), key=k, **kw)
                result = pred.frame_decoder
            except Exception as err:  # noqa: BLE001 - shown as a notification
                result = err
            relay.result.emit(lambda: self._embedded(k, result))

        self.ctx.status.value = f"Live: embedding frame {cur} between two steps of the running job"
        self.model_thread.submit_urgent(embed)

    def _embedded(self, k, result) -> None:
        self.state.embedding = None
        if isinstance(result, Exception):
            self.ctx.report_error(result)
            return
        self._remember_decoder(k, result)
        if self.enabled.value:
            self.update()

    def _start_decode(self, image, cur, k, changed: list, gone: list) -> None:
        pred, cache, decoder = self.state.pred, self.state.cache, self.state.decoders.get(k)
        ticket = (image, self.ctx.labels_layer(), self.state.prompt_gen)

        def decode():
            try:
                if pred.key != k:  # the decoder state was built in the embedding job, or on an earlier visit
                    pred.set_embedding(cache.get(k), k, frame_decoder=decoder)  # may read an embeddings store
                return pred.frame_decoder, decode_objects(pred, changed)
            except Exception as err:  # noqa: BLE001 - returned, not raised: shown as a notification
                return err

        if not self.state.live_threaded:
            self._decoded(decode(), ticket, cur, k, changed, gone)
            return
        relay = self._relay_to_gui()

        def on_model_thread() -> None:
            result = decode()
            relay.result.emit(lambda: self._decoded(result, ticket, cur, k, changed, gone))

        self.state.live_worker = on_model_thread
        self.model_thread.submit_urgent(on_model_thread)  # a running job decodes it between two of its steps
        if not self.ctx.busy:
            self.model_thread.drain()  # else the model thread is free: now

    def _decoded(self, result, ticket: tuple, cur, k, changed: list, gone: list) -> None:
        """GUI thread: write a live decode's masks, unless their prompts changed meanwhile."""
        self.state.live_worker = None
        try:
            if isinstance(result, Exception):
                self.ctx.report_error(result)
                return
            decoder, masks = result
            self._remember_decoder(k, decoder)
            image, labels, gen = ticket
            if image is not self.ctx.image_box.value or labels is not self.ctx.labels_box.value:
                self.state.live_again = True  # another image or output layer: start over
                return
            if gen != self.state.prompt_gen:  # keep only results whose prompt is unchanged
                self.state.live_again = True
                try:
                    now = {o.label_id: o.signature for o in self.ctx.objects([cur])}
                except ValueError:  # the prompt layers no longer fit the image: write nothing
                    now = {}
                keep = [i for i, o in enumerate(changed) if now.get(o.label_id) == o.signature]
                changed, masks = [changed[i] for i in keep], [masks[i] for i in keep]
                gone = [lid for lid in gone if lid not in now]
            if changed or gone:
                counts = self.ctx.guard(lambda: self.ctx.write_objects(cur, changed, masks, also_clear=gone))
                if counts is not None:
                    self._live_status(counts, gone)
        finally:
            if self.state.live_again and self.state.live_worker is None:
                self.state.live_again = False
                if self.enabled.value:
                    self.update()
