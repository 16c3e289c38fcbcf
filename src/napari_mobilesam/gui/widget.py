"""The MobileSAM dock widget: controls and wiring only (no tensor code).

Long work (weights download, image embeddings, segmenting frames, propagation, segment
everything) runs on the model thread with a progress bar and Cancel. Live mode decodes the
objects a click changed there too; the GUI thread only collects prompts and writes labels.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, ProgressBar, PushButton
from napari.layers import Image, Labels, Points, Shapes
from napari.utils.events import Event
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QSize, QTimer
from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

from ..engine.embeddings import EmbeddingCache
from ..engine.errors import SettingsError
from ..engine.predictor import Predictor
from ..engine.prompts import RULE_LINES, ObjectPrompt
from ..model.weights import registry_names
from . import layers as L
from .channels import ChannelAxis, check_frames
from .everything import EverythingSection
from .feedback import cancelled, held_note, objects_summary
from .jobs import FrameDone, segment_frames
from .layout import StatusLine, default_width, group, scrolled
from .live import LiveMode
from .modelui import CHOOSE_FILE, OWN_DECODER, ModelControls
from .output import CHANGED, NEW, USERS, OutputState
from .promptui import PromptControls
from .propagate import PropagateSection
from .refine import RefineSection
from .runner import JobHost
from .session import check_session_model, restore_model
from .stores import StoreUse

__all__ = ["KEYS", "MobileSAMWidget", "PROMPT_HELP"]

MASK_CHOICES = [("best (predicted IoU)", 0), ("mask 1", 1), ("mask 2", 2), ("mask 3", 3)]
# viewer-wide keys (none of them is a napari layer key); T / Shift+T are bound on the points layer
KEYS = (("Shift-S", "Segment"), ("Shift-F", "Propagate"), ("Shift-E", "Segment everything"), ("Escape", "Cancel"))
KEY_HINT = "Keys: Shift+S Segment · Shift+F Propagate · Shift+E Segment everything · Esc Cancel · T / Shift+T (points layer) positive/negative"
OWNERSHIP = (
    "Objects stay as written: Segment decodes only prompts that are new or changed since their object was "
    "written; a new mask fills background only, unless 'overwrite' is ticked; a re-segmented object "
    "replaces only its own pixels."
)
PROMPT_HELP = (
    "Prompts → one label per object (the same rules as mobilesam segment):\n"
    + "".join(f"• {line};\n" for line in RULE_LINES)
    + "• press T on the Points layer to toggle positive/negative for new points, Shift+T to flip the selected points;\n"
    "• prompts belong to the frame of their leading coordinates; RGB images are colour, not a stack.\n"
    f"{OWNERSHIP}\nCtrl+Z in the Labels layer undoes each write.\n{KEY_HINT}"
)
STORE_HELP = (
    "Optional: an embeddings store (a .zarr folder) for this image and model, made by "
    "`mobilesam embed IMAGE -o EMB.zarr` or by this widget: type a new path and every frame embedded "
    "here is saved there. Frames found there skip the image encoder; a store of another image or model "
    "is refused. While a store is set, the model sees the image as the store was made (automatic "
    "contrast, or `mobilesam embed --channels/--contrast`), not through the layer's contrast limits."
)


class MobileSAMWidget(LiveMode, StoreUse, PromptControls, ModelControls, OutputState, JobHost):
    """Dock widget: image + prompt layers -> instance labels with MobileSAM."""

    CHOOSE_FILE = CHOOSE_FILE

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.cache = EmbeddingCache(1 << 30)
        self.sam = None
        self._sam_key: tuple | None = None
        self._pred: Predictor | None = None  # live-mode predictor (used by one decode worker at a time)
        self._decoders: OrderedDict = OrderedDict()  # frame key -> FrameDecoder (a few recent frames)
        self._written, self._issued_by = {}, {}  # per output layer: see output.py
        self._labels_prev: Labels | None = None
        self._switching = False  # picking the layers of another image
        self._outside: list[str] = []  # prompts of the last objects() call that lie outside the image

        # -- input
        self.image_box = ComboBox(label="image", choices=self._choices(Image, new=None), tooltip="Image to segment (2D, stack, RGB)")
        self.points_box = ComboBox(label="points", choices=self._choices(Points, new="new"), tooltip=PROMPT_HELP)
        self.shapes_box = ComboBox(label="boxes", choices=self._choices(Shapes, new="new"), tooltip=PROMPT_HELP)
        self.labels_box = ComboBox(label="labels out", choices=self._choices(Labels, new="new layer"),
                                   tooltip="Labels layer that receives the masks (same spatial shape as the image; "
                                   "'new layer': created on the first result); "
                                   "new ids continue after its largest label")
        # -- model
        self.model_box = ComboBox(label="model", choices=[*registry_names("model", "encoder"), CHOOSE_FILE], value="mobile_sam",
                                  tooltip="Registry weights (downloaded once) or a checkpoint file")
        self.model_file = FileEdit(label="checkpoint", mode="r", filter="*.pt *.pth", visible=False)
        self.decoder_box = ComboBox(label="decoder", choices=[OWN_DECODER, *registry_names("decoder"), CHOOSE_FILE], value=OWN_DECODER,
                                    tooltip="The checkpoint's prompt encoder and mask decoder, or MobileSAMv2's prompt-guided "
                                    "decoder (mobilesamv2, downloaded once; needed by efficientvit_l2 / l2.pt)")
        self.decoder_file = FileEdit(label="decoder file", mode="r", filter="*.pt *.pth", visible=False)
        self.device_box = ComboBox(label="device", choices=["auto", "cpu", "cuda", "mps"], value="auto")
        self.embeddings = FileEdit(label="embeddings", mode="d", tooltip=STORE_HELP)
        # -- prompts
        self.mode = ComboBox(label="new points", choices=["positive", "negative"], value="positive",
                             tooltip="Sign of new points: T on the Points layer toggles, Shift+T flips the selected points")
        self.live = CheckBox(text="live (on each click)", value=False,
                             tooltip="Live: a click or a finished rectangle updates that object's mask at once")
        self.all_frames = CheckBox(text="all frames", value=False, tooltip="Segment the prompts of every frame, not only the viewed one")
        self.overwrite = CheckBox(text="overwrite labels", value=False, tooltip=OWNERSHIP)
        self.mask_choice = ComboBox(label="mask", choices=MASK_CHOICES, value=0,
                                    tooltip="For the selected point/box: best by predicted IoU or one of SAM's 3 masks")
        self.segment_btn = PushButton(text="Segment (Shift+S)")
        self.segment_btn.tooltip = PROMPT_HELP
        # -- progress
        self.progress = ProgressBar(value=0, min=0, max=1, visible=False, label="")
        self.status = StatusLine("Ready.")
        self.cancel_btn = PushButton(text="Cancel (Esc)", enabled=False)

        content = QWidget()
        root = QVBoxLayout(content)
        root.setContentsMargins(0, 0, 0, 0)
        self.channel_axis = ChannelAxis(self)
        self.input_box, self.input_inner = group("Input", self.image_box, self.channel_axis.box, self.points_box, self.shapes_box, self.labels_box)
        self.model_group, self.model_inner = group("Model", self.model_box, self.model_file, self.decoder_box, self.decoder_file, self.device_box, self.embeddings)
        self.prompt_group, _ = group(
            "Prompts", self.mode, self.live, self.all_frames, self.overwrite, self.mask_choice, self.segment_btn,
            note="Click objects (points layer) or draw rectangles (boxes layer), then Segment. Hover for the rules.",
        )
        self.prompt_group.setToolTip(PROMPT_HELP)
        self.propagate = PropagateSection(self)
        self.everything = EverythingSection(self)
        self.refine = RefineSection(self)
        self.job_buttons = [self.segment_btn, self.propagate.button, self.everything.button, self.refine.button]
        keys = QLabel(KEY_HINT)
        keys.setWordWrap(True)
        for box in (self.input_box, self.model_group, self.prompt_group, self.refine.box, self.propagate.box, self.everything.box, keys):
            root.addWidget(box)
        root.addStretch(1)
        # the progress bar, the status line and Cancel stay in view below the scrolling controls
        progress_box, inner = group("", self.progress, self.cancel_btn)
        inner.native.layout().insertWidget(1, self.status.native)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scrolled(content), 1)
        outer.addWidget(progress_box)

        # -- wiring
        self.model_box.changed.connect(lambda v: setattr(self.model_file, "visible", v == CHOOSE_FILE))
        self.decoder_box.changed.connect(lambda v: setattr(self.decoder_file, "visible", v == CHOOSE_FILE))
        self.image_box.changed.connect(self._on_image)
        self.embeddings.changed.connect(self._unlink_store)
        self.points_box.changed.connect(self._on_points)
        self.shapes_box.changed.connect(self._on_shapes)
        self.labels_box.changed.connect(self._on_labels)
        self.mode.changed.connect(self._on_mode)
        self.mask_choice.changed.connect(self._on_mask_choice)
        self.live.changed.connect(lambda v: v and self.prepare_live())
        self.viewer.dims.events.current_step.connect(lambda e: self.live.value and self.prepare_live())
        for control in (self.image_box, self.points_box, self.shapes_box, self.labels_box, self.model_box, self.model_file,
                        self.decoder_box, self.decoder_file, self.device_box, self.embeddings):
            control.changed.connect(self._clear_error)  # the problem an error named may be gone now
        self.segment_btn.changed.connect(self.segment)
        self.cancel_btn.changed.connect(self.cancel)
        ev = self.viewer.layers.events
        for e in (ev.inserted, ev.removed, ev.reordered):
            e.connect(self._reset_choices)
        ev.inserted.connect(self._on_inserted)
        self._bind_keys()
        self._on_image(self.image_box.value)

    def _clear_error(self, _=None) -> None:
        if self.status.value.startswith("Error:") and not self.busy:
            self.status.value = "Ready."

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt): the dock's default width, see layout.default_width
        return QSize(default_width(self), 600)

    # ------------------------------------------------------------------ keys
    def _bind_keys(self) -> None:
        actions = {"Segment": (self.segment_btn, self.segment), "Propagate": (self.propagate.button, self.propagate.run),
                   "Segment everything": (self.everything.button, self.everything.run)}
        viewer = self.viewer

        def press(name: str) -> None:
            if name == "Cancel":
                if self.busy:
                    self.cancel()
                return
            button, run = actions[name]
            if self.busy:
                self.status.value = f"{name}: wait for the running job, or press Esc to cancel it."
            elif not button.enabled or not button.native.isEnabled():
                self.status.value = f"{name} is not available now: {button.tooltip.splitlines()[0][:120]}"
            else:
                run()

        for key, name in KEYS:
            viewer.bind_key(key, lambda _v, name=name: press(name), overwrite=True)

        def unbind(*_) -> None:  # the widget closed: its keys go with it
            for key, _name in KEYS:
                try:
                    viewer.bind_key(key, None)
                except (KeyError, ValueError, TypeError):
                    pass

        self._unbind_keys = unbind  # also when the dock is closed (JobHost.shutdown)
        self.destroyed.connect(unbind)

    # ------------------------------------------------------------------ layer choices
    def _choices(self, kind: type, new: str | None) -> Callable:
        def get(_widget=None) -> list:
            items = [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, kind)]
            if kind is Labels and self.image_box_value() is not None:  # same stack + spatial shape
                geo = L.FrameGeometry.of(self.image_box_value())
                items = [(n, la) for n, la in items if tuple(la.data.shape) == geo.lead_shape + geo.spatial]
            return items + ([(new, None)] if new else [])

        return get

    def image_box_value(self) -> Image | None:
        box = getattr(self, "image_box", None)
        return None if box is None else box.value

    def _reset_choices(self, event: Event | None = None) -> None:
        for box in (self.image_box, self.points_box, self.shapes_box, self.labels_box):
            box.reset_choices()
        self.propagate.reset_axes()

    def _pick(self, box: ComboBox, kind: str) -> None:
        """Prefer the layer this plugin made for the current image, else keep / 'new'."""
        image = self.image_box.value
        for layer in self.viewer.layers:
            if image is not None and layer.metadata.get(L.MARK) == kind and layer.metadata.get("image") == image.name:
                if any(layer is v for v in box.choices):
                    box.value = layer
                    return
        if box.value is not None and box.value.metadata.get(L.MARK) and box.value.metadata.get("image") != image.name:
            box.value = None  # a prompt/labels layer made for another image

    def _on_inserted(self, event: Event) -> None:
        """A layer made by this plugin for the current image (e.g. an opened session) is picked up."""
        layer, image = event.value, self.image_box.value
        kind = layer.metadata.get(L.MARK) if hasattr(layer, "metadata") else None
        box = {"labels": self.labels_box, "shapes": self.shapes_box, "points": self.points_box}.get(kind)
        if box is not None and image is not None and layer.metadata.get("image") == image.name and box.value is not layer:
            old = box.value
            self._switching = True  # its prompts keep their ids
            try:
                box.reset_choices()
                if any(layer is v for v in box.choices):
                    box.value = layer
            finally:
                self._switching = False
            if box.value is layer and old is not None and kind != "labels" and old.metadata.get(L.MARK) == kind and not len(old.data):
                name = old.name  # the empty prompt layer made for the image gives way to the session's
                self.viewer.layers.remove(old)
                layer.name = name
            if box is self.points_box and box.value is layer:
                self._ready_points()
            if kind == "labels" and box.value is layer and not self.busy:
                self.status.value = restore_model(self, layer) or self.status.value

    def _on_image(self, image: Image | None) -> None:
        self._switching = True  # the prompt and labels layers change together: each keeps its ids
        try:
            self.channel_axis.on_image(image)
            self._reset_choices()
            if self._store is not None and self._store.image is not image:
                self._unlink_store()
            if image is None:
                return
            self._pick(self.labels_box, "labels")
            self._pick(self.shapes_box, "shapes")
            self._pick(self.points_box, "points")
            if self.shapes_box.value is None:
                self.shapes_box.value = self.viewer.add_layer(L.new_shapes_layer(image))
            if self.points_box.value is None:
                self.points_box.value = self.viewer.add_layer(L.new_points_layer(image))
            self.propagate.on_image(image)
            self._ready_points()
        finally:
            self._switching = False
            self._labels_prev = self.labels_box.value

    def _ready_points(self) -> None:
        """Select the points layer in add mode, so the next click on the canvas adds a point; also after
        napari has selected a layer it just inserted (an image opened after the widget)."""
        def ready() -> None:
            try:
                layer = self.points_box.value
            except RuntimeError:  # the widget was closed meanwhile
                return
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.selection.active = layer
                layer.mode = "add"

        ready()
        QTimer.singleShot(0, ready)

    def _on_labels(self, layer: Labels | None) -> None:
        # another output layer for the same prompts: their ids referred to the previous layer
        if not self._switching and layer is not self._labels_prev and self._labels_prev is not None:
            for pl in (self._points, self._shapes):
                if pl is not None and "label_id" in pl.features:
                    pl.features["label_id"] = 0
            self._forget_output()
        self._labels_prev = layer

    # ------------------------------------------------------------------ context
    def context(self) -> tuple[Image, L.FrameGeometry, tuple[int, ...]]:
        """(image, geometry, current frame) or a ValueError with the fix."""
        image = self.image_box.value
        if image is None:
            raise SettingsError("No image layer: open an image (or File → Open Sample → MobileSAM) and pick it as 'image'.")
        check_frames(image)  # an ambiguous shape: the user says which axis holds channels
        return image, L.FrameGeometry.of(image), L.current_frame(self.viewer.dims.point, image)

    def objects(self, frames=None) -> list[ObjectPrompt]:
        """The objects of ``frames`` (None: all), by :mod:`napari_mobilesam.engine.prompts`' rules;
        prompts that describe no object are skipped and named in ``self._outside``."""
        for layer in (self._points, self._shapes):
            L.dedupe_ids(layer)
        image, geo, cur = self.context()
        table = L.prompt_table(self._points, self._shapes, image)
        _, found = self.refine.split(table, geo, cur, frames)  # points naming a label being refined are Refine's
        self._outside = [str(p) for p in found.problems]
        return found.objects

    def outside_note(self) -> str:
        if not self._outside:
            return ""
        n = len(self._outside)
        return (f"skipped {n} prompt{'s' if n > 1 else ''}: {'; '.join(self._outside[:3])}{' …' if n > 3 else ''} "
                f"— move or delete {'them' if n > 1 else 'it'}")

    def labels_layer(self, create: bool = True) -> Labels | None:
        layer = self.labels_box.value
        if layer is None and create:
            image = self.image_box.value
            self._labels_prev = layer = L.new_labels_layer(image)
            self._adopt_new_layer(image, layer)
            # just above the image, so the prompt layers stay visible on top
            self.viewer.layers.insert(self.viewer.layers.index(image) + 1, layer)
            self.labels_box.value = layer
            self.viewer.layers.selection.active = self._points or layer
        return layer

    def frame_reader(self, image: Image) -> tuple[Callable, Callable, dict]:
        """``(read, key, image_kwargs)`` for jobs on ``image``: ``read(frame)`` -> that frame's pixels
        (safe to call from the model thread), ``key(frame)`` -> its embedding-cache key, and the
        ``Predictor.set_image`` keywords (contrast, channels) as the model sees the image."""
        data = L.frame_data(image)  # read from the worker: plain arrays (or the engine's channels-last view) only
        kw, ident = self.store_view(L.image_kwargs(image), L.image_key(image, ()))
        return (lambda f: np.asarray(data[tuple(f)])), (lambda f: (*ident[:2], tuple(f), ident[3])), kw

    # ------------------------------------------------------------------ segment
    def segment(self, _=None) -> None:
        """Segment the objects of the current frame (or of all frames) that are new or changed."""
        self.guard(self._segment)

    def _segment(self) -> None:
        image, geo, cur = self.context()
        objs = self.objects(None if self.all_frames.value else [cur])
        skipped = self.outside_note()
        if skipped:
            show_warning(f"MobileSAM: {skipped}.")
        if not objs:
            where = "in any frame" if self.all_frames.value else "in this frame"
            msg = f"No prompts {where}: click objects in the points layer or draw rectangles in the boxes layer."
            self.status.value = f"Segment: {skipped}." if skipped else msg
            if not skipped:
                show_info(f"MobileSAM: {msg}")
            return
        own = {id(o): self.ownership(o) for o in objs}
        held = [] if self.overwrite.value else [o for o in objs if own[id(o)] == USERS]  # edited by hand: the user's
        todo = [o for o in objs if own[id(o)] in (NEW, CHANGED) or (own[id(o)] == USERS and self.overwrite.value)]
        kept = len(objs) - len(todo)
        moved = [o for o in held if (self._records.get(o.label_id) or (None,))[0] != o.signature]
        if moved:
            skipped = "; ".join(p for p in (held_note(moved), skipped) if p)
        if not todo:
            if moved:  # the user's reason first: the status line shows three lines
                self.status.value = f"Segment: {skipped}; the others are as written."
            else:
                self.status.value = (f"Segment: nothing to do — all {kept} object(s) are as written; move or add a prompt"
                                     + (f"; {skipped}" if skipped else "") + ".")
            return
        if self.labels_box.value is not None:
            check_session_model(self, self.labels_box.value)  # a session's labels take only its own weights
        note = self.assign_ids(todo)
        work: dict = {}
        for o in todo:
            work.setdefault(o.frame, []).append(o)
        frame, key, kw = self.frame_reader(image)
        counts: list = []
        frames_done: list = []

        def on_msg(msg) -> None:
            if isinstance(msg, FrameDone):
                counts.extend(self.write_objects(msg.frame, msg.objects, msg.masks))
                frames_done.append(msg.frame)

        def on_finish() -> None:
            name = self.labels_box.value.name if self.labels_box.value is not None else "labels"
            if self.job_cancelled:
                head = f"Segment {cancelled(len(frames_done), len(work))}"
            else:
                head = f"Segment: {len(counts)} object(s) → '{name}'" + (f" on {len(frames_done)} frames" if len(frames_done) > 1 else "")
            parts = [head, f"{kept} unchanged kept" if kept else "", note, skipped, "Ctrl+Z undoes" if counts else "",
                     objects_summary(counts) if counts else ""]
            self.end_status("; ".join(p for p in parts if p) + ".")

        self.run_job(segment_frames(self.model_step(), self.cache, frame, key, list(work.items()), kw), on_msg, on_finish, title="Segment")
