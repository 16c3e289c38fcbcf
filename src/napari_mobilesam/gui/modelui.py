"""The 'Model' group: which weights, decoder and device, and the embeddings store; the model is
built once (in a job) and kept in the widget's state."""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import ComboBox, FileEdit

from ..engine.predictor import Predictor
from ..model.weights import registry_names
from .jobs import load_model
from .layout import group
from .sections import Action
from .state import WidgetState
from .stores import StoreUse

__all__ = ["CHOOSE_FILE", "OWN_DECODER", "STORE_HELP", "ModelSection"]

CHOOSE_FILE = "choose file…"
OWN_DECODER = "the checkpoint's"
STORE_HELP = (
    "Optional: an embeddings store (a .zarr folder) for this image and model, made by "
    "`mobilesam embed IMAGE -o EMB.zarr` or by this widget: type a new path and every frame embedded "
    "here is saved there. Frames found there skip the image encoder; a store of another image or model "
    "is refused. While a store is set, the model sees the image as the store was made (automatic "
    "contrast, or `mobilesam embed --channels/--contrast`), not through the layer's contrast limits."
)


class ModelSection:
    """The model controls, and the model they name: :meth:`model_step` builds it (or returns the one
    built), :meth:`set_model` keeps it (``state.sam``, ``state.sam_key``, ``state.pred``)."""

    actions: tuple[Action, ...] = ()

    def __init__(self, state: WidgetState, image_box: ComboBox) -> None:
        self.state = state
        self.model_box = ComboBox(label="model", choices=[*registry_names("model", "encoder"), CHOOSE_FILE], value="mobile_sam",
                                  tooltip="Registry weights (downloaded once) or a checkpoint file")
        self.model_file = FileEdit(label="checkpoint", mode="r", filter="*.pt *.pth", visible=False)
        self.decoder_box = ComboBox(label="decoder", choices=[OWN_DECODER, *registry_names("decoder"), CHOOSE_FILE], value=OWN_DECODER,
                                    tooltip="The checkpoint's prompt encoder and mask decoder, or MobileSAMv2's prompt-guided "
                                    "decoder (mobilesamv2, downloaded once; needed by efficientvit_l2 / l2.pt)")
        self.decoder_file = FileEdit(label="decoder file", mode="r", filter="*.pt *.pth", visible=False)
        self.device_box = ComboBox(label="device", choices=["auto", "cpu", "cuda", "mps"], value="auto")
        self.embeddings = FileEdit(label="embeddings", mode="d", tooltip=STORE_HELP)
        self.stores = StoreUse(state, self.embeddings, image_box)
        self.box, self.inner = group("Model", self.model_box, self.model_file, self.decoder_box, self.decoder_file,
                                     self.device_box, self.embeddings)
        self.model_box.changed.connect(lambda v: setattr(self.model_file, "visible", v == CHOOSE_FILE))
        self.decoder_box.changed.connect(lambda v: setattr(self.decoder_file, "visible", v == CHOOSE_FILE))
        self.embeddings.changed.connect(self.stores.unlink)

    @property
    def controls(self) -> tuple:
        """Every control whose change may make an error shown before obsolete."""
        return (self.model_box, self.model_file, self.decoder_box, self.decoder_file, self.device_box, self.embeddings)

    def on_image(self, image) -> None:
        """Another image: a store checked against the previous one no longer backs the cache."""
        if self.state.store is not None and self.state.store.image is not image:
            self.stores.unlink()

    def model_source(self) -> str | Path:
        if self.model_box.value == CHOOSE_FILE:
            text = str(self.model_file.line_edit.value or "").strip()  # (.value makes "" the current folder)
            if text in ("", "."):
                raise ValueError("No checkpoint chosen: pick a .pt file next to 'checkpoint', or a registry model under 'model'.")
            path = Path(text).expanduser()
            if not path.is_file():
                what = "is a folder, not a file" if path.is_dir() else "is not a file"
                raise ValueError(f"Checkpoint {str(path)!r} {what}: pick a .pt file next to 'checkpoint'.")
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
                raise ValueError(f"Decoder {str(path)!r} is not a file: pick a Prompt_guided_Mask_Decoder.pt next to 'decoder file'.")
            return path
        return self.decoder_box.value

    def model_step(self) -> object:
        """The built model, or a generator (run inside a job) that builds it and checks the
        embeddings store, if one is set, against it and the image."""
        st = self.state
        decoder = self.decoder_source()
        key = (str(self.model_source()), self.device_box.value) + ((str(decoder),) if decoder is not None else ())
        model = st.sam if st.sam is not None and key == st.sam_key else load_model(self.model_source(), self.device_box.value, decoder)
        return self.stores.with_store(model)

    def set_model(self, sam, key: tuple) -> None:
        st = self.state
        if st.store is not None and st.store.sam is not sam:
            self.stores.unlink()
        if key != st.sam_key:
            st.cache.clear()
            st.decoders.clear()
        st.sam, st.sam_key = sam, key
        st.pred = Predictor(sam)
        st.pred.cache = st.cache
