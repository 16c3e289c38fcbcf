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

from napari.utils.events import Event
from qtpy.QtCore import QObject, Signal

from .feedback import held_note, objects_summary
from .jobs import FrameReady, decode_objects, segment_frames, worker_predictor
from .output import USERS

__all__ = ["LiveMode"]

MAX_DECODERS = 4  # per-frame decoder states kept for quick returns to recent frames


class _Relay(QObject):
    """Carries an urgent call's result (as a closure to run) from the model thread to the GUI thread."""

    result = Signal(object)


class LiveMode:
    """Mixin for :class:`~napari_mobilesam.gui.widget.MobileSAMWidget` (uses its layers, model and jobs)."""

    live_threaded = True  # decode in a worker; False: on the GUI thread (the benchmarks' baseline)
    _live_worker = None  # the decode in flight (queued for the model thread), if any
    _live_again = False  # prompts changed while decoding: update again when it returns
    _prompt_gen = 0  # bumped on every prompt change; a result decoded for an older one is checked
    _embedding = None  # frame key being embedded between a job's steps (the latest frame moved to)
    _relay: _Relay | None = None
    _live_note = ""  # said with the next live result (ids continuing after the user's labels)

    @property
    def live_pending(self) -> bool:
        """A live decode is in flight or queued."""
        return self._live_worker is not None or self._live_again

    def _remember_decoder(self, key, decoder) -> None:
        self._decoders[key] = decoder
        self._decoders.move_to_end(key)
        while len(self._decoders) > MAX_DECODERS:
            self._decoders.popitem(last=False)

    def _on_prompt_data(self, event: Event) -> None:
        action = str(getattr(event, "action", "")).split(".")[-1].lower()
        if action == "added":
            # napari copies the selected row's features to new rows: a new prompt is a new object
            layer = event.source
            # add() reports new rows as negative indices; a wholesale data replacement keeps its features
            rows = sorted(len(layer.data) + int(i) for i in (getattr(event, "data_indices", None) or ()) if int(i) < 0)
            f = layer.features
            if rows and "label_id" in f:
                if f["label_id"].to_numpy()[rows].any() or f["mask"].to_numpy()[rows].any():
                    f.loc[rows, ["label_id", "mask"]] = 0
                want = 1 if self.mode.value == "positive" else 0
                if layer is self._points and (f["label"].to_numpy()[rows] != want).any():
                    f.loc[rows, "label"] = want
                    layer.refresh_colors(update_color_mapping=False)
        if action in ("added", "changed", "removed"):
            self.prompts_changed()

    def prompts_changed(self, hint: str = "") -> None:
        """A prompt (or a feature of one: sign, mask choice) changed: live mode updates at once,
        otherwise ``hint`` goes to the status line."""
        self._prompt_gen += 1
        if self.live.value:
            self.live_update()
        elif hint:
            self.status.value = hint

    def prepare_live(self) -> None:
        """Compute the viewed frame's embedding in the background (if needed), then update."""
        if self.image_box.value is not None and self.image_box.value in self.viewer.layers:
            self.guard(lambda: self._live_update(force_embedding=True))

    def live_update(self) -> None:
        """Decode (in a worker) the objects of the current frame whose prompts changed."""
        self.guard(self._live_update)

    def _live_update(self, force_embedding: bool = False) -> None:
        if self._live_worker is not None:  # one decode at a time: the newest prompts follow it
            self._live_again = True
            return
        image, geo, cur = self.context()
        objs = self.objects([cur])
        alive = {o.label_id for o in objs}
        moved = [o for o in objs if o.label_id <= 0 or self._records.get(o.label_id, (None,))[0] != o.signature]
        held = [] if self.overwrite.value else [o for o in moved if self.ownership(o) == USERS]  # edited by hand: the user's
        changed = [o for o in moved if not any(o is h for h in held)]
        gone = [lid for lid, rec in self._records.items() if rec[0][0] == cur and lid not in alive]
        for lid in self.hand_edited(gone, cur):  # a label edited by hand stays when its prompt is deleted
            self.release(lid)
            gone.remove(lid)
        if held and not changed and not gone:
            self.status.value = f"Live: {held_note(held)}."
        if self._outside and (changed or gone):
            self.status.value = f"Live: {self.outside_note()}."
        if not changed and not gone and not force_embedding:
            return
        frame, key, kw = self.frame_reader(image)
        k = key(cur)
        step = self.model_step()
        model_ready = self.sam is not None and step is self.sam
        if not model_ready or k not in self.cache:
            if self.busy and model_ready:
                self._embed_urgently(frame, k, cur, kw)  # between two steps of the running job
                return
            if self.busy:  # a job (maybe loading the model) runs: update when it ends
                if self.live_update not in self._after_job:
                    self._after_job.append(self.live_update)
                return
            # embedding (and maybe the model) first, in the background; then come back here
            def keep_decoder(msg) -> None:
                if isinstance(msg, FrameReady):
                    self._remember_decoder(msg.key, msg.decoder)

            self.run_job(segment_frames(step, self.cache, frame, key, [(cur, [])], kw), keep_decoder,
                         on_finish=lambda: self.sam is not None and k in self.cache and self.live_update(),
                         title="Live")
            return
        if not changed and not gone:
            return
        self._live_note = self.assign_ids(changed) or self._live_note
        if not changed:  # only deletions: nothing to decode
            self.write_objects(cur, [], [], also_clear=gone)
            self._live_status([], gone)
            return
        self._start_decode(image, cur, k, changed, gone)

    def _live_status(self, counts: list, gone: list) -> None:
        """One line per live result: each object's pixels (or why none), removed objects."""
        parts = [objects_summary(counts)] if counts else []
        if gone:
            parts.append(f"object{'s' if len(gone) > 1 else ''} {', '.join(map(str, gone))} removed (its prompt was deleted)")
        if self._live_note:
            parts.append(self._live_note)
            self._live_note = ""
        if self._outside:
            parts.append(self.outside_note())
        self.status.value = "; ".join(parts)

    def _relay_to_gui(self) -> _Relay:
        """Carries calls from the model thread to the GUI thread."""
        if self._relay is None:
            self._relay = _Relay()
            self._relay.result.connect(lambda call: call())
        return self._relay

    def _embed_urgently(self, frame, k, cur, kw: dict) -> None:
        """While a job holds the model thread: embed the viewed frame between two of its steps,
        then update (clicks made meanwhile are decoded then)."""
        if self._embedding == k:
            return
        self._embedding = k
        sam, cache, relay = self.sam, self.cache, self._relay_to_gui()

        def embed():
            if self._embedding != k:  # the user moved on to another frame meanwhile
                return
            try:
                pred = worker_predictor(sam, cache)
                pred.set_image(frame(cur), key=k, **kw)
                result = pred.frame_decoder
            except Exception as err:  # noqa: BLE001 - shown as a notification
                result = err
            relay.result.emit(lambda: self._embedded(k, result))

        self.status.value = f"Live: embedding frame {cur} between two steps of the running job"
        self.model_thread.submit_urgent(embed)

    def _embedded(self, k, result) -> None:
        self._embedding = None
        if isinstance(result, Exception):
            self.report_error(result)
            return
        self._remember_decoder(k, result)
        if self.live.value:
            self.live_update()

    def _start_decode(self, image, cur, k, changed: list, gone: list) -> None:
        pred, cache, decoder = self._pred, self.cache, self._decoders.get(k)
        ticket = (image, self.labels_layer(), self._prompt_gen)

        def decode():
            try:
                if pred.key != k:  # the decoder state was built in the embedding job, or on an earlier visit
                    pred.set_embedding(cache.get(k), k, frame_decoder=decoder)  # may read an embeddings store
                return pred.frame_decoder, decode_objects(pred, changed)
            except Exception as err:  # noqa: BLE001 - returned, not raised: shown as a notification
                return err

        if not self.live_threaded:
            self._decoded(decode(), ticket, cur, k, changed, gone)
            return
        relay = self._relay_to_gui()

        def on_model_thread() -> None:
            result = decode()
            relay.result.emit(lambda: self._decoded(result, ticket, cur, k, changed, gone))

        self._live_worker = on_model_thread
        self.model_thread.submit_urgent(on_model_thread)  # a running job decodes it between two of its steps
        if not self.busy:
            self.model_thread.drain()  # else the model thread is free: now

    def _decoded(self, result, ticket: tuple, cur, k, changed: list, gone: list) -> None:
        """GUI thread: write a live decode's masks, unless their prompts changed meanwhile."""
        self._live_worker = None
        try:
            if isinstance(result, Exception):
                self.report_error(result)
                return
            decoder, masks = result
            self._remember_decoder(k, decoder)
            image, labels, gen = ticket
            if image is not self.image_box.value or labels is not self.labels_box.value:
                self._live_again = True  # another image or output layer: start over
                return
            if gen != self._prompt_gen:  # keep only results whose prompt is unchanged
                self._live_again = True
                try:
                    now = {o.label_id: o.signature for o in self.objects([cur])}
                except ValueError:  # the prompt layers no longer fit the image: write nothing
                    now = {}
                keep = [i for i, o in enumerate(changed) if now.get(o.label_id) == o.signature]
                changed, masks = [changed[i] for i in keep], [masks[i] for i in keep]
                gone = [lid for lid in gone if lid not in now]
            if changed or gone:
                counts = self.guard(lambda: self.write_objects(cur, changed, masks, also_clear=gone))
                if counts is not None:
                    self._live_status(counts, gone)
        finally:
            if self._live_again and self._live_worker is None:
                self._live_again = False
                if self.live.value:
                    self.live_update()
