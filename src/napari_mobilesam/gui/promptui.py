"""The prompt layers in the widget: T / Shift+T on the points layer, the mask choice of the
selection, and following the chosen Points / Shapes layers' events."""

from __future__ import annotations

from napari.layers import Points, Shapes
from napari.utils.events import Event

from . import layers as L

__all__ = ["PromptControls"]


class PromptControls:
    """Mixin for :class:`~napari_mobilesam.gui.widget.MobileSAMWidget` (uses ``mode``,
    ``mask_choice``, ``status`` and ``prompts_changed``)."""

    _points: Points | None = None
    _shapes: Shapes | None = None

    @property
    def points_layer(self) -> Points | None:
        """The Points layer whose points are prompts (None: none chosen)."""
        return self._points

    @property
    def shapes_layer(self) -> Shapes | None:
        """The Shapes layer whose rectangles are prompts (None: none chosen)."""
        return self._shapes

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
        self.prompts_changed(f"Flipped {len(rows)} point(s) between positive and negative: press Segment (Shift+S).")

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
            self.prompts_changed("Mask choice set for the selection: press Segment (Shift+S).")
        else:
            self.status.value = "Select a point or box (select mode, S) to choose its mask."
