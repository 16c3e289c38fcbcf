"""The 'channel axis' control: which axis of an image layer holds channels (like ``channel_axis=`` of
the API and ``--channel-axis`` of the CLI).

napari shows an ``(H, W, 5)`` or ``(5, H, W)`` array as a stack with a slider; only the user knows
whether that axis is frames or channels. The choice is kept in the image layer's metadata
(:data:`~.layers.CHANNELS`), so every part of the widget reads frames the same way
(:func:`~.layers.frame_data`: the engine's ``channels_last`` view). With "auto", a shape the engine
finds ambiguous (a last axis of at most 16 that is not colour) is refused with both readings
(the engine's rule, :func:`~..engine.everything._frame_layout`), instead of guessing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import ComboBox
from napari.layers import Image

from . import layers as L

if TYPE_CHECKING:
    from .sections import Context

__all__ = ["ChannelAxis", "axis_choices", "check_frames"]

FRAMES = "frames"
HELP = (
    "Which axis of the image holds channels (fluorescence channels, not a stack): 'auto' takes RGB(A) as colour "
    "and every other axis as frames, and asks when a small last axis could be either; 'none (frames)': every "
    "axis is frames. With a channel axis, a frame is all its channels (the first three go to R, G, B), prompts "
    "and labels have no channel axis, and new prompt/labels layers line up with the image when the channel "
    "axis is its first axis, as in (C, H, W) or (C, T, H, W)."
)


def axis_choices(image: Image | None) -> list[tuple[str, object]]:
    """``(text, value)`` choices for ``image``: auto (None), frames, and each axis that can hold channels."""
    choices: list[tuple[str, object]] = [("auto", None)]
    if image is None or image.rgb:
        return choices
    shape = tuple((image.data[0] if image.multiscale else image.data).shape)
    if len(shape) < 3:
        return choices
    choices.append(("none (frames)", FRAMES))
    # any axis but the rows (the one before the last): the last, or one before the rows and columns
    choices += [(f"axis {i} ({shape[i]} channels)", i) for i in range(len(shape)) if i != len(shape) - 2]
    return choices


def check_frames(image: Image) -> None:
    """Raise ``ValueError`` naming both readings when ``image``'s frames are ambiguous ('auto' only)."""
    from ..engine.everything import _frame_layout  # the engine's rule for an ambiguous shape

    if image.rgb or image.metadata.get(L.CHANNELS) == FRAMES or L.channel_axis(image) is not None:
        return
    shape = tuple((image.data[0] if image.multiscale else image.data).shape)
    try:
        _frame_layout(shape, None)
    except ValueError as err:
        readings = str(err).split(" Pass channel_axis")[0]  # the API's advice is replaced by the widget's
        raise ValueError(f"Image layer {image.name!r}: {readings} Set 'channel axis' to axis {len(shape) - 1} "
                         "for channels, or to 'none (frames)'.") from None


class ChannelAxis:
    """The control, bound to the widget's current image."""

    def __init__(self, ctx: Context, image_box: ComboBox) -> None:
        self.w, self.image_box = ctx, image_box
        self._syncing = False
        self.box = ComboBox(label="channel axis", choices=self._choices, tooltip=HELP)
        self.box.changed.connect(self._changed)

    def _choices(self, _widget=None) -> list:
        return axis_choices(self.image_box.value)

    def on_image(self, image: Image | None) -> None:
        """Show ``image``'s choice (kept in its metadata)."""
        self._syncing = True
        try:
            self.box.reset_choices()
            value = None if image is None else image.metadata.get(L.CHANNELS)
            self.box.value = value if any(v == value for _, v in axis_choices(image)) else None
        finally:
            self._syncing = False
        self.box.enabled = len(self.box.choices) > 1

    def _changed(self, value) -> None:
        image = self.image_box.value
        if self._syncing or image is None:
            return
        if value is None:
            image.metadata.pop(L.CHANNELS, None)
        else:
            image.metadata[L.CHANNELS] = value
        # frames changed: another embedding-store check, and labels layers of the new frame shape
        self.w.unlink_store()
        self.w.reset_choices()
