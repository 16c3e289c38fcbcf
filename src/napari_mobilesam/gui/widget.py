"""The MobileSAM dock widget: controls and wiring only (no tensor code).

Long work (weights download, image embeddings, segmenting frames, propagation, segment
everything) runs in napari's ``thread_worker`` with a progress bar and Cancel. Live mode decodes the
objects a click changed in a worker too; the GUI thread only collects prompts and writes labels.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, ProgressBar, PushButton, RadioButtons
from napari.layers import Image, Labels, Points, Shapes
from napari.utils.events import Event
from napari.utils.notifications import show_info
from qtpy.QtWidgets import QGroupBox, QLabel, QVBoxLayout

from ..engine.embeddings import EmbeddingCache
from ..engine.predictor import Predictor
from ..model.weights import REGISTRY
from . import layers as L
from .jobs import FrameDone, load_model, segment_frames
from .live import LiveMode
from .runner import JobHost
from .stores import StoreUse
from .prompts import ObjectPrompt, collect_objects
from .propagate import PropagateSection
from .everything import EverythingSection
from .writer import check_ids_fit, write_masks

__all__ = ["MobileSAMWidget", "PROMPT_HELP"]

CHOOSE_FILE = "choose file…"
MASK_CHOICES = [("best (predicted IoU)", 0), ("mask 1", 1), ("mask 2", 2), ("mask 3", 3)]
PROMPT_HELP = (
    "Prompts → one label per object:\n"
    "• every rectangle in the Shapes layer is one object (other shapes: their bounding box);\n"
    "• every positive point (green, feature label=1) is one object;\n"
    "• points sharing an 'object' feature value > 0 form one object (positive and negative);\n"
    "• a negative point (magenta, label=0) refines the nearest positive point or box of its frame;\n"
    "• press T on the Points layer to toggle positive/negative for new points,\n"
    "  Shift+T to flip the selected points;\n"
    "• prompts belong to the frame of their leading coordinates; RGB images are colour, not a stack.\n"
    "New masks fill background only (unless 'overwrite'); re-running a prompt replaces its own mask;\n"
    "Ctrl+Z in the Labels layer undoes each write."
)


STORE_HELP = (
    "Optional: an embeddings store (a .zarr folder) for this image and model, made by "
    "`mobilesam embed IMAGE -o EMB.zarr` or by this widget: type a new path and every frame embedded "
    "here is saved there. Frames found there skip the image encoder; a store of another image or model "
    "is refused. While a store is set, the model sees the image as the store was made (automatic "
    "contrast, or `mobilesam embed --channels/--contrast`), not through the layer's contrast limits."
)


def _group(title: str, *widgets, note: str = "") -> tuple[QGroupBox, Container]:
    box = QGroupBox(title)
    lay = QVBoxLayout(box)
    lay.setContentsMargins(4, 4, 4, 4)
    if note:  # full-width hint above the controls
        hint = QLabel(note)
        hint.setWordWrap(True)
        lay.addWidget(hint)
    inner = Container(widgets=list(widgets), labels=True)
    inner.margins = (0, 0, 0, 0)
    lay.addWidget(inner.native)
    return box, inner


class MobileSAMWidget(LiveMode, StoreUse, JobHost):
    """Dock widget: image + prompt layers -> instance labels with MobileSAM."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.cache = EmbeddingCache(1 << 30)
        self.sam = None
        self._sam_key: tuple | None = None
        self._pred: Predictor | None = None  # live-mode predictor (used by one decode worker at a time)
        self._decoders: OrderedDict = OrderedDict()  # frame key -> FrameDecoder (a few recent frames)
        self._signatures: dict[int, tuple] = {}  # label id -> prompt signature of its current mask
        self._issued = 0  # highest label id given out for the current output layer
        self._points: Points | None = None
        self._shapes: Shapes | None = None
        self._labels_prev: Labels | None = None

        # -- input
        self.image_box = ComboBox(label="image", choices=self._choices(Image, new=None), tooltip="Image to segment (2D, stack, RGB)")
        self.points_box = ComboBox(label="points", choices=self._choices(Points, new="new"), tooltip=PROMPT_HELP)
        self.shapes_box = ComboBox(label="boxes", choices=self._choices(Shapes, new="new"), tooltip=PROMPT_HELP)
        self.labels_box = ComboBox(label="labels out", choices=self._choices(Labels, new="new (created on first result)"),
                                   tooltip="Labels layer that receives the masks (same spatial shape as the image)")
        self.model_box = ComboBox(label="model", choices=[*REGISTRY, CHOOSE_FILE], value="mobile_sam",
                                  tooltip="Registry weights (downloaded once) or a checkpoint file")
        self.model_file = FileEdit(label="checkpoint", mode="r", filter="*.pt *.pth", visible=False)
        self.device_box = ComboBox(label="device", choices=["auto", "cpu", "cuda", "mps"], value="auto")
        self.embeddings = FileEdit(label="embeddings", mode="d", tooltip=STORE_HELP)
        # -- prompts
        self.mode = RadioButtons(label="new points", choices=["positive", "negative"], value="positive",
                                 orientation="horizontal", tooltip="T on the Points layer toggles")
        self.live = CheckBox(text="live: update a mask on each click / rectangle", value=False)
        self.all_frames = CheckBox(text="all frames (Segment)", value=False)
        self.overwrite = CheckBox(text="overwrite existing labels", value=False)
        self.mask_choice = ComboBox(label="mask of selected", choices=MASK_CHOICES, value=0,
                                    tooltip="For the selected point/box: best by predicted IoU or one of SAM's 3 masks")
        self.segment_btn = PushButton(text="Segment")
        self.segment_btn.tooltip = PROMPT_HELP
        # -- progress
        self.progress = ProgressBar(value=0, min=0, max=1, visible=False, label="")
        self.status = Label(value="Ready.")
        self.cancel_btn = PushButton(text="Cancel", enabled=False)

        root = QVBoxLayout(self)
        for title, ws, note in (
            ("Input", (self.image_box, self.points_box, self.shapes_box, self.labels_box, self.model_box, self.model_file,
                       self.device_box, self.embeddings), ""),
            ("Prompts", (self.mode, self.live, self.all_frames, self.overwrite, self.mask_choice, self.segment_btn),
             "Click objects in the points layer (T: positive/negative for new points, Shift+T flips the selected) "
             "or draw rectangles in the boxes layer, "
             "then press Segment. Hover for the rules."),
        ):
            box, _ = _group(title, *ws, note=note)
            box.setToolTip(PROMPT_HELP)
            root.addWidget(box)
        self.propagate = PropagateSection(self)
        root.addWidget(self.propagate.box)
        self.everything = EverythingSection(self)
        root.addWidget(self.everything.box)
        self.job_buttons = [self.segment_btn, self.propagate.button, self.everything.button]
        _, bottom = _group("Progress", self.progress, self.status, self.cancel_btn)
        root.addWidget(bottom.native.parentWidget())
        root.addStretch(1)

        # -- wiring
        self.model_box.changed.connect(lambda v: setattr(self.model_file, "visible", v == CHOOSE_FILE))
        self.image_box.changed.connect(self._on_image)
        self.embeddings.changed.connect(self._unlink_store)
        self.points_box.changed.connect(self._on_points)
        self.shapes_box.changed.connect(self._on_shapes)
        self.labels_box.changed.connect(self._on_labels)
        self.mode.changed.connect(self._on_mode)
        self.mask_choice.changed.connect(self._on_mask_choice)
        self.live.changed.connect(lambda v: v and self.prepare_live())
        self.viewer.dims.events.current_step.connect(lambda e: self.live.value and self.prepare_live())
        self.segment_btn.changed.connect(self.segment)
        self.cancel_btn.changed.connect(self.cancel)
        ev = self.viewer.layers.events
        for e in (ev.inserted, ev.removed, ev.reordered):
            e.connect(self._reset_choices)
        self._on_image(self.image_box.value)

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

    def _on_image(self, image: Image | None) -> None:
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
            layer = self.viewer.add_layer(L.new_points_layer(image))
            self.points_box.value = layer
            layer.mode = "add"

    def _on_points(self, layer: Points | None) -> None:
        if self._points is not None:
            self._points.events.data.disconnect(self._on_prompt_data)
            self._points.events.highlight.disconnect(self._sync_mask_choice)
        self._points = layer
        if layer is None:
            return
        L.ensure_point_features(layer)
        layer.events.data.connect(self._on_prompt_data)
        layer.events.highlight.connect(self._sync_mask_choice)
        layer.bind_key("t", self._toggle_mode, overwrite=True)
        layer.bind_key("Shift-T", self._flip_selected, overwrite=True)
        self._on_mode(self.mode.value)

    def _on_shapes(self, layer: Shapes | None) -> None:
        if self._shapes is not None:
            self._shapes.events.data.disconnect(self._on_prompt_data)
            self._shapes.events.highlight.disconnect(self._sync_mask_choice)
        self._shapes = layer
        if layer is not None:
            L.ensure_shape_features(layer)
            layer.events.data.connect(self._on_prompt_data)
            layer.events.highlight.connect(self._sync_mask_choice)

    def _on_labels(self, layer: Labels | None) -> None:
        # label ids stored on prompts refer to the previous output layer: forget them
        if layer is not self._labels_prev and self._labels_prev is not None:
            for pl in (self._points, self._shapes):
                if pl is not None and "label_id" in pl.features:
                    pl.features["label_id"] = 0
            self._signatures.clear()
            self._issued = 0
        self._labels_prev = layer

    def _on_mode(self, value: str) -> None:
        if self._points is not None:
            fd = self._points.feature_defaults
            fd["label"] = 1 if value == "positive" else 0
            self._points.feature_defaults = fd

    def _toggle_mode(self, layer=None) -> None:
        self.mode.value = "negative" if self.mode.value == "positive" else "positive"

    def _flip_selected(self, layer=None) -> None:
        """Shift+T: flip the selected points between positive and negative."""
        pts = self._points
        rows = sorted(i for i in pts.selected_data if i < len(pts.features)) if pts is not None else []
        if not rows:
            self.status.value = "Select points first (S on the points layer), then Shift+T flips their sign."
            return
        f = pts.features
        f.loc[rows, "label"] = 1 - f.loc[rows, "label"].to_numpy()
        # an ungrouped point becomes another object (its own, or a refinement of the nearest one)
        loose = [r for r in rows if "object" not in f or int(f.at[r, "object"]) <= 0]
        f.loc[loose, ["label_id", "mask"]] = 0
        pts.refresh_colors(update_color_mapping=False)
        self.prompts_changed(f"Flipped {len(rows)} point(s) between positive and negative: press Segment.")

    def _sync_mask_choice(self, event: Event | None = None) -> None:
        """Show the mask choice of the selected prompt."""
        layer = getattr(event, "source", None)
        if layer is None or "mask" not in layer.features:
            return
        rows = [i for i in layer.selected_data if i < len(layer.features)]  # stale while rows are removed
        if not rows:
            return
        value = int(layer.features["mask"].iloc[min(rows)])
        with self.mask_choice.changed.blocked():
            self.mask_choice.value = value if value in (0, 1, 2, 3) else 0

    def _on_mask_choice(self, value: int) -> None:
        changed = False
        for layer in (self._points, self._shapes):
            if layer is not None and layer.selected_data and "mask" in layer.features:
                rows = sorted(layer.selected_data)
                layer.features.loc[rows, "mask"] = int(value)
                changed = True
        if changed:
            self.prompts_changed("Mask choice set for the selection: press Segment.")
        else:
            self.status.value = "Select a point or box (select mode, S) to choose its mask."

    # ------------------------------------------------------------------ context
    def context(self) -> tuple[Image, L.FrameGeometry, tuple[int, ...]]:
        """(image, geometry, current frame) or a ValueError with the fix."""
        image = self.image_box.value
        if image is None:
            raise ValueError("No image layer: open an image (or File → Open Sample → MobileSAM) and pick it as 'image'.")
        return image, L.FrameGeometry.of(image), L.current_frame(self.viewer.dims.point, image)

    def objects(self, frames=None) -> list[ObjectPrompt]:
        for layer in (self._points, self._shapes):
            L.dedupe_ids(layer)
        image, geo, cur = self.context()
        table = L.prompt_table(self._points, self._shapes, image)
        return collect_objects(table, geo.n_lead, geo.lead_shape, cur, frames)

    def labels_layer(self, create: bool = True) -> Labels | None:
        layer = self.labels_box.value
        if layer is None and create:
            image = self.image_box.value
            self._labels_prev = layer = L.new_labels_layer(image)
            # just above the image, so the prompt layers stay visible on top
            self.viewer.layers.insert(self.viewer.layers.index(image) + 1, layer)
            self.labels_box.value = layer
            self.viewer.layers.selection.active = self._points or layer
        return layer

    def next_id(self) -> int:
        """One more than any label in the output layer, any id on a prompt, and any id issued before
        (an id whose prompt was deleted is not reused: Ctrl+Z may bring its mask back)."""
        return max(L.next_free_label(self.labels_box.value, (self._points, self._shapes)), self._issued + 1)

    def assign_ids(self, objects: list[ObjectPrompt]) -> None:
        """Give objects without a label id the next free ids, stored on their prompt rows."""
        nxt = self.next_id()
        for o in objects:
            if o.label_id <= 0:
                o.label_id, nxt = nxt, nxt + 1
            self._issued = max(self._issued, o.label_id)
            if self._points is not None and o.point_rows:
                self._points.features.loc[o.point_rows, "label_id"] = o.label_id
            if self._shapes is not None and o.shape_rows:
                self._shapes.features.loc[o.shape_rows, "label_id"] = o.label_id
        if objects:
            check_ids_fit(self.labels_layer(), max(o.label_id for o in objects))

    def write_objects(self, frame, objects: list[ObjectPrompt], masks, also_clear=()) -> int:
        """Paint the masks of ``objects`` on ``frame`` as one undoable step."""
        layer = self.labels_layer()
        replace = [o.label_id for o in objects] + list(also_clear)
        n = write_masks(layer, tuple(frame), masks, [o.label_id for o in objects], self.overwrite.value, replace)
        for o in objects:
            self._signatures[o.label_id] = o.signature
        for lid in also_clear:
            self._signatures.pop(lid, None)
        return n

    # ------------------------------------------------------------------ model
    def model_source(self) -> str | Path:
        if self.model_box.value == CHOOSE_FILE:
            path = Path(self.model_file.value)
            if not path.is_file():
                raise ValueError(f"Checkpoint {str(path)!r} is not a file: pick a .pt file next to 'checkpoint'.")
            return path
        return self.model_box.value

    def model_step(self) -> object:
        """The built model, or a generator (run inside a job) that builds it and checks the
        embeddings store, if one is set, against it and the image."""
        key = (str(self.model_source()), self.device_box.value)
        model = self.sam if self.sam is not None and key == self._sam_key else load_model(self.model_source(), self.device_box.value)
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

    def _frame_reader(self, image: Image) -> tuple[Callable, Callable, dict]:
        data = image.data[0] if image.multiscale else image.data  # read from the worker: plain arrays only
        kw, ident = self.store_view(L.image_kwargs(image), L.image_key(image, ()))
        return (lambda f: np.asarray(data[tuple(f)])), (lambda f: (*ident[:2], tuple(f), ident[3])), kw

    # ------------------------------------------------------------------ segment
    def segment(self, _=None) -> None:
        """Segment every object of the current frame (or of all frames), in a worker."""
        self._guard(self._segment)

    def _segment(self) -> None:
        image, geo, cur = self.context()
        objs = self.objects(None if self.all_frames.value else [cur])
        if not objs:
            where = "in any frame" if self.all_frames.value else "in this frame"
            show_info(f"MobileSAM: no prompts {where}. Click on objects in the Points layer or draw rectangles in the boxes layer.")
            return
        self.assign_ids(objs)
        work: dict = {}
        for o in objs:
            work.setdefault(o.frame, []).append(o)
        frame, key, kw = self._frame_reader(image)

        written: list[int] = []

        def on_msg(msg) -> None:
            if isinstance(msg, FrameDone):
                self.write_objects(msg.frame, msg.objects, msg.masks)
                written.append(len(msg.objects))

        def on_finish() -> None:
            if written:
                layer = self.labels_box.value
                self.status.value = (
                    f"Segment: {sum(written)} object(s) on {len(written)} frame(s) → '{layer.name}' (Ctrl+Z undoes)"
                )

        self.run_job(segment_frames(self.model_step(), self.cache, frame, key, list(work.items()), kw), on_msg, on_finish, title="Segment")
