"""The 'Input' section: the image (and its channel axis), the points and boxes layers that hold
prompts, and the Labels layer that receives the masks. It offers the viewer's layers that fit the
image and picks the layers made for it (by the widget, or opened from a session)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from magicgui.widgets import ComboBox
from napari.layers import Image, Labels, Points, Shapes
from napari.utils.events import Event
from qtpy.QtCore import QTimer

from . import layers as L
from .channels import ChannelAxis
from .layout import group
from .output import OutputRecords
from .sections import Action
from .session import restore_model

if TYPE_CHECKING:
    from .sections import Context

__all__ = ["InputSection"]


class InputSection:
    """The Input group's controls and how they follow the viewer's layers (``state.switching``,
    ``state.labels_prev``)."""

    actions: tuple[Action, ...] = ()

    def __init__(self, ctx: Context, output: OutputRecords) -> None:
        self.ctx, self.state, self.output = ctx, ctx.state, output
        self.image_box = ComboBox(label="image", choices=self._choices(Image, new=None), tooltip="Image to segment (2D, stack, RGB)")
        self.points_box = ComboBox(label="points", choices=self._choices(Points, new="new"))
        self.shapes_box = ComboBox(label="boxes", choices=self._choices(Shapes, new="new"))
        self.labels_box = ComboBox(label="labels out", choices=self._choices(Labels, new="new layer"),
                                   tooltip="Labels layer that receives the masks (same spatial shape as the image; "
                                   "'new layer': created on the first result); "
                                   "new ids continue after its largest label")
        self.channel_axis = ChannelAxis(ctx, self.image_box)
        self.box, self.inner = group("Input", self.image_box, self.channel_axis.box, self.points_box, self.shapes_box, self.labels_box)

    @property
    def controls(self) -> tuple[ComboBox, ...]:
        return (self.image_box, self.points_box, self.shapes_box, self.labels_box)

    def reset_choices(self) -> None:
        for box in self.controls:
            box.reset_choices()

    def on_image(self, image: Image | None) -> None:
        """Pick the prompt and labels layers made for ``image``; new prompt layers where there are none."""
        if image is None:
            return
        self._pick(self.labels_box, "labels")
        self._pick(self.shapes_box, "shapes")
        self._pick(self.points_box, "points")
        if self.shapes_box.value is None:
            self.shapes_box.value = self.ctx.viewer.add_layer(L.new_shapes_layer(image))
        if self.points_box.value is None:
            self.points_box.value = self.ctx.viewer.add_layer(L.new_points_layer(image))
        self.ready_points()

    def _choices(self, kind: type, new: str | None) -> Callable:
        def get(_widget=None) -> list:
            items = [(layer.name, layer) for layer in self.ctx.viewer.layers if isinstance(layer, kind)]
            if kind is Labels and self.image_box.value is not None:  # same stack + spatial shape
                geo = L.FrameGeometry.of(self.image_box.value)
                items = [(n, la) for n, la in items if tuple(la.data.shape) == geo.lead_shape + geo.spatial]
            return items + ([(new, None)] if new else [])

        return get

    def _pick(self, box: ComboBox, kind: str) -> None:
        """Prefer the layer this plugin made for the current image, else keep / 'new'."""
        image = self.image_box.value
        for layer in self.ctx.viewer.layers:
            if image is not None and layer.metadata.get(L.MARK) == kind and layer.metadata.get("image") == image.name:
                if any(layer is v for v in box.choices):
                    box.value = layer
                    return
        if box.value is not None and box.value.metadata.get(L.MARK) and box.value.metadata.get("image") != image.name:
            box.value = None  # a prompt/labels layer made for another image

    def on_inserted(self, event: Event) -> None:
        """A layer made by this plugin for the current image (e.g. an opened session) is picked up."""
        layer, image = event.value, self.image_box.value
        kind = layer.metadata.get(L.MARK) if hasattr(layer, "metadata") else None
        box = {"labels": self.labels_box, "shapes": self.shapes_box, "points": self.points_box}.get(kind)
        if box is not None and image is not None and layer.metadata.get("image") == image.name and box.value is not layer:
            old = box.value
            self.state.switching = True  # its prompts keep their ids
            try:
                box.reset_choices()
                if any(layer is v for v in box.choices):
                    box.value = layer
            finally:
                self.state.switching = False
            if box.value is layer and old is not None and kind != "labels" and old.metadata.get(L.MARK) == kind and not len(old.data):
                name = old.name  # the empty prompt layer made for the image gives way to the session's
                self.ctx.viewer.layers.remove(old)
                layer.name = name
            if box is self.points_box and box.value is layer:
                self.ready_points()
            if kind == "labels" and box.value is layer and not self.ctx.busy:
                self.ctx.status.value = restore_model(self.ctx, layer) or self.ctx.status.value

    def ready_points(self) -> None:
        """Select the points layer in add mode, so the next click on the canvas adds a point; also after
        napari has selected a layer it just inserted (an image opened after the widget)."""
        def ready() -> None:
            try:
                layer = self.points_box.value
            except RuntimeError:  # the widget was closed meanwhile
                return
            if layer is not None and layer in self.ctx.viewer.layers:
                self.ctx.viewer.layers.selection.active = layer
                layer.mode = "add"

        ready()
        QTimer.singleShot(0, ready)

    def on_labels(self, layer: Labels | None) -> None:
        # another output layer for the same prompts: their ids referred to the previous layer
        if not self.state.switching and layer is not self.state.labels_prev and self.state.labels_prev is not None:
            for pl in (self.state.points, self.state.shapes):
                if pl is not None and "label_id" in pl.features:
                    pl.features["label_id"] = 0
            self.output.forget()
        self.state.labels_prev = layer
