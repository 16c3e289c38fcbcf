"""Live mode: a click or a finished rectangle updates that object's mask at once.

Only the decoder runs on the GUI thread; a frame's embedding (and the decoder's per-frame state) is
computed once in a background job and cached. Objects whose prompt did not change are skipped, and
deleting a prompt removes its mask.
"""

from __future__ import annotations

from napari.utils.events import Event

from .jobs import FrameReady, decode_objects, segment_frames

__all__ = ["LiveMode"]

MAX_DECODERS = 4  # per-frame decoder states kept for quick returns to recent frames


class LiveMode:
    """Mixin for :class:`~napari_mobilesam.gui.widget.MobileSAMWidget` (uses its layers, model and jobs)."""

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
                if f.loc[rows, ["label_id", "mask"]].to_numpy().any():
                    f.loc[rows, ["label_id", "mask"]] = 0
                want = 1 if self.mode.value == "positive" else 0
                if layer is self._points and (f.loc[rows, "label"].to_numpy() != want).any():
                    f.loc[rows, "label"] = want
                    layer.refresh_colors(update_color_mapping=False)
        if self.live.value and action in ("added", "changed", "removed"):
            self.live_update()

    def prepare_live(self) -> None:
        """Compute the viewed frame's embedding in the background (if needed), then update."""
        if self.image_box.value is not None and self.image_box.value in self.viewer.layers:
            self._guard(lambda: self._live_update(force_embedding=True))

    def live_update(self) -> None:
        """Decode the objects of the current frame whose prompts changed (GUI thread, decoder only)."""
        self._guard(self._live_update)

    def _live_update(self, force_embedding: bool = False) -> None:
        image, geo, cur = self.context()
        objs = self.objects([cur])
        alive = {o.label_id for o in objs}
        changed = [o for o in objs if o.label_id <= 0 or self._signatures.get(o.label_id) != o.signature]
        gone = [lid for lid, sig in self._signatures.items() if sig[0] == cur and lid not in alive]
        if not changed and not gone and not force_embedding:
            return
        frame, key, kw = self._frame_reader(image)
        if self.sam is None or key(cur) not in self.cache or self.model_step() is not self.sam:
            if self.busy:  # a job runs: update when it ends
                if self.live_update not in self._after_job:
                    self._after_job.append(self.live_update)
                return
            # embedding (and maybe the model) first, in the background; then come back here
            def keep_decoder(msg) -> None:
                if isinstance(msg, FrameReady):
                    self._remember_decoder(msg.key, msg.decoder)

            self.run_job(segment_frames(self.model_step(), self.cache, frame, key, [(cur, [])], kw), keep_decoder,
                         on_finish=lambda: self.sam is not None and key(cur) in self.cache and self.live_update(),
                         title="Live")
            return
        if not changed and not gone:
            return
        self.assign_ids(changed)
        k = key(cur)
        if self._pred.key != k:
            # the decoder state was built in the worker, or on an earlier visit
            self._pred.set_embedding(self.cache.get(k), k, frame_decoder=self._decoders.get(k))
        masks = decode_objects(self._pred, changed) if changed else []
        if changed:
            self._remember_decoder(k, self._pred.frame_decoder)
        self.write_objects(cur, changed, masks, also_clear=gone)
