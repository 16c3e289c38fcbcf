"""The widget's model controls: which weights and decoder, built once and kept (a mixin)."""

from __future__ import annotations

from pathlib import Path

from ..engine.errors import SettingsError
from ..engine.predictor import Predictor
from .jobs import load_model

__all__ = ["CHOOSE_FILE", "OWN_DECODER", "ModelControls"]

CHOOSE_FILE = "choose file…"
OWN_DECODER = "the checkpoint's"


class ModelControls:
    """Mixin for :class:`~napari_mobilesam.gui.widget.MobileSAMWidget` (uses ``model_box``,
    ``model_file``, ``decoder_box``, ``decoder_file``, ``device_box``, ``cache`` and the store)."""

    def model_source(self) -> str | Path:
        if self.model_box.value == CHOOSE_FILE:
            text = str(self.model_file.line_edit.value or "").strip()  # (.value makes "" the current folder)
            if text in ("", "."):
                raise SettingsError("No checkpoint chosen: pick a .pt file next to 'checkpoint', or a registry model under 'model'.")
            path = Path(text).expanduser()
            if not path.is_file():
                what = "is a folder, not a file" if path.is_dir() else "is not a file"
                raise SettingsError(f"Checkpoint {str(path)!r} {what}: pick a .pt file next to 'checkpoint'.")
            return path
        return self.model_box.value

    def decoder_source(self) -> str | Path | None:
        """None (the checkpoint's decoder), a registry name or a decoder file."""
        if self.decoder_box.value == OWN_DECODER:
            return None
        if self.decoder_box.value == CHOOSE_FILE:
            text = str(self.decoder_file.line_edit.value or "").strip()
            path = Path(text).expanduser()
            if text in ("", ".") or not path.is_file():
                raise SettingsError(f"Decoder {str(path)!r} is not a file: pick a Prompt_guided_Mask_Decoder.pt next to 'decoder file'.")
            return path
        return self.decoder_box.value

    def model_step(self) -> object:
        """The built model, or a generator (run inside a job) that builds it and checks the
        embeddings store, if one is set, against it and the image."""
        decoder = self.decoder_source()
        key = (str(self.model_source()), self.device_box.value) + ((str(decoder),) if decoder is not None else ())
        model = self.sam if self.sam is not None and key == self._sam_key else load_model(self.model_source(), self.device_box.value, decoder)
        return self.with_store(model)

    def set_model(self, sam, key: tuple) -> None:
        if self._store is not None and self._store.sam is not sam:
            self._unlink_store()
        if key != self._sam_key:
            self.cache.clear()
            self._decoders.clear()
        self.sam, self._sam_key = sam, key
        self._pred = Predictor(sam)
        self._pred.cache = self.cache
