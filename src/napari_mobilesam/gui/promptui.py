"""The 'Prompts' section: the sign of new points (T / Shift+T on the points layer), the mask choice
of the selection, live mode, and *Segment*; it follows the chosen Points / Shapes layers' events."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import CheckBox, ComboBox, PushButton
from napari.layers import Points, Shapes
from napari.utils.events import Event
from napari.utils.notifications import show_info, show_warning

from ..engine.prompts import RULE_LINES
from . import layers as L
from .feedback import cancelled, held_note, objects_summary
from .jobs import FrameDone, segment_frames
from .layout import group
from .live import LiveMode
from .output import CHANGED, NEW, USERS, OutputRecords
from .sections import Action
from .session import check_session_model

if TYPE_CHECKING:
    from .sections import Context
    from .threads import ModelThread

__all__ = ["MASK_CHOICES", "OWNERSHIP", "PROMPT_RULES", "PromptSection"]

MASK_CHOICES = [("best (predicted IoU)", 0), ("mask 1", 1), ("mask 2", 2), ("mask 3", 3)]
OWNERSHIP = (
    "Objects stay as written: Segment decodes only prompts that are new or changed since their object was "
    "written; a new mask fills background only, unless 'overwrite' is ticked; a re-segmented object "
    "replaces only its own pixels."
)
PROMPT_RULES = (
    "Prompts → one label per object (the same rules as mobilesam segment):\n"
    + "".join(f"• {line};\n" for line in RULE_LINES)
    + "• press T on the Points layer to toggle positive/negative for new points, Shift+T to flip the selected points;\n"
    "• prompts belong to the frame of their leading coordinates; RGB images are colour, not a stack.\n"
    f"{OWNERSHIP}\nCtrl+Z in the Labels layer undoes each write."
)


class PromptSection:
    """The Prompts group; *Segment* (Shift+S) is its action. Works through the widget's public
    :class:`~.sections.Context`; the prompt layers it follows are ``state.points`` / ``state.shapes``."""

    def __init__(self, ctx: Context, output: OutputRecords, model_thread: ModelThread, help_text: str = PROMPT_RULES) -> None:
        self.ctx, self.state, self.output = ctx, ctx.state, output
        self.mode = ComboBox(label="new points", choices=["positive", "negative"], value="positive",
                             tooltip="Sign of new points: T on the Points layer toggles, Shift+T flips the selected points")
        self.live = CheckBox(text="live (on each click)", value=False,
                             tooltip="Live: a click or a finished rectangle updates that object's mask at once")
        self.all_frames = CheckBox(text="all frames", value=False, tooltip="Segment the prompts of every frame, not only the viewed one")
        self.overwrite = CheckBox(text="overwrite labels", value=False, tooltip=OWNERSHIP)
        self.mask_choice = ComboBox(label="mask", choices=MASK_CHOICES, value=0,
                                    tooltip="For the selected point/box: best by predicted IoU or one of SAM's 3 masks")
        self.segment_btn = PushButton(text="Segment (Shift+S)")
        self.box, self.inner = group(
            "Prompts", self.mode, self.live, self.all_frames, self.overwrite, self.mask_choice, self.segment_btn,
            note="Click objects (points layer) or draw rectangles (boxes layer), then Segment. Hover for the rules.",
        )
        self.set_help(help_text)
        self.actions: tuple[Action, ...] = (Action("Shift-S", "Segment", self.segment_btn, self.segment),)
        self.live_mode = LiveMode(ctx, output, self.live, model_thread)
        self.mode.changed.connect(self._on_mode)
        self.mask_choice.changed.connect(self._on_mask_choice)
        self.live.changed.connect(lambda v: v and self.live_mode.prepare())
        ctx.viewer.dims.events.current_step.connect(lambda e: self.live.value and self.live_mode.prepare())
        self.segment_btn.changed.connect(self.segment)

    def set_help(self, text: str) -> None:
        """The rules tooltip (the widget adds its key hint)."""
        self.segment_btn.tooltip = text
        self.box.setToolTip(text)

    def on_image(self, image) -> None:  # the widget picks the prompt layers (their events reach watch_*)
        pass

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
                if layer is self.state.points and (f["label"].to_numpy()[rows] != want).any():
                    f.loc[rows, "label"] = want
                    layer.refresh_colors(update_color_mapping=False)
        if action in ("added", "changed", "removed"):
            self.prompts_changed()

    def prompts_changed(self, hint: str = "") -> None:
        """A prompt (or a feature of one: sign, mask choice) changed: live mode updates at once,
        otherwise ``hint`` goes to the status line."""
        self.state.prompt_gen += 1
        if self.live.value:
            self.live_mode.update()
        elif hint:
            self.ctx.status.value = hint

    def watch_points(self, layer: Points | None) -> None:
        if self.state.points is not None:
            self.state.points.events.data.disconnect(self._on_prompt_data)
            self.state.points.events.highlight.disconnect(self._sync_mask_choice)
        self.state.points = layer
        if layer is None:
            return
        L.ensure_point_features(layer)
        layer.events.data.connect(self._on_prompt_data)
        layer.events.highlight.connect(self._sync_mask_choice)
        layer.bind_key("t", self.toggle_mode, overwrite=True)
        layer.bind_key("Shift-T", self.flip_selected, overwrite=True)
        self._on_mode(self.mode.value)

    def watch_shapes(self, layer: Shapes | None) -> None:
        if self.state.shapes is not None:
            self.state.shapes.events.data.disconnect(self._on_prompt_data)
            self.state.shapes.events.highlight.disconnect(self._sync_mask_choice)
        self.state.shapes = layer
        if layer is not None:
            L.ensure_shape_features(layer)
            layer.events.data.connect(self._on_prompt_data)
            layer.events.highlight.connect(self._sync_mask_choice)

    def _on_mode(self, value: str) -> None:
        if self.state.points is not None:
            fd = self.state.points.feature_defaults
            fd["label"] = 1 if value == "positive" else 0
            self.state.points.feature_defaults = fd

    def toggle_mode(self, layer=None) -> None:
        self.mode.value = "negative" if self.mode.value == "positive" else "positive"

    def flip_selected(self, layer=None) -> None:
        """Shift+T: flip the selected points between positive and negative."""
        pts = self.state.points
        rows = sorted(i for i in pts.selected_data if i < len(pts.features)) if pts is not None else []
        if not rows:
            self.ctx.status.value = "Select points first (S on the points layer), then Shift+T flips their sign."
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
        for layer in (self.state.points, self.state.shapes):
            if layer is not None and layer.selected_data and "mask" in layer.features:
                rows = sorted(layer.selected_data)
                layer.features.loc[rows, "mask"] = int(value)
                changed = True
        if changed:
            self.prompts_changed("Mask choice set for the selection: press Segment (Shift+S).")
        else:
            self.ctx.status.value = "Select a point or box (select mode, S) to choose its mask."

    # ------------------------------------------------------------------ segment
    def segment(self, _=None) -> None:
        """Segment the objects of the current frame (or of all frames) that are new or changed."""
        self.ctx.guard(self._segment)

    def _segment(self) -> None:
        ctx, out = self.ctx, self.output
        image, geo, cur = ctx.context()
        objs = ctx.objects(None if self.all_frames.value else [cur])
        skipped = ctx.outside_note()
        if skipped:
            show_warning(f"MobileSAM: {skipped}.")
        if not objs:
            where = "in any frame" if self.all_frames.value else "in this frame"
            msg = f"No prompts {where}: click objects in the points layer or draw rectangles in the boxes layer."
            ctx.status.value = f"Segment: {skipped}." if skipped else msg
            if not skipped:
                show_info(f"MobileSAM: {msg}")
            return
        own = {id(o): out.ownership(o) for o in objs}
        held = [] if self.overwrite.value else [o for o in objs if own[id(o)] == USERS]  # edited by hand: the user's
        todo = [o for o in objs if own[id(o)] in (NEW, CHANGED) or (own[id(o)] == USERS and self.overwrite.value)]
        kept = len(objs) - len(todo)
        moved = [o for o in held if (out.records.get(o.label_id) or (None,))[0] != o.signature]
        if moved:
            skipped = "; ".join(p for p in (held_note(moved), skipped) if p)
        if not todo:
            if moved:  # the user's reason first: the status line shows three lines
                ctx.status.value = f"Segment: {skipped}; the others are as written."
            else:
                ctx.status.value = (f"Segment: nothing to do — all {kept} object(s) are as written; move or add a prompt"
                                    + (f"; {skipped}" if skipped else "") + ".")
            return
        if ctx.labels_box.value is not None:
            check_session_model(ctx, ctx.labels_box.value)  # a session's labels take only its own weights
        note = out.assign_ids(todo)
        work: dict = {}
        for o in todo:
            work.setdefault(o.frame, []).append(o)
        frame, key, kw = ctx.frame_reader(image)
        counts: list = []
        frames_done: list = []

        def on_msg(msg) -> None:
            if isinstance(msg, FrameDone):
                counts.extend(ctx.write_objects(msg.frame, msg.objects, msg.masks))
                frames_done.append(msg.frame)

        def on_finish() -> None:
            name = ctx.labels_box.value.name if ctx.labels_box.value is not None else "labels"
            if self.state.job_cancelled:
                head = f"Segment {cancelled(len(frames_done), len(work))}"
            else:
                head = f"Segment: {len(counts)} object(s) → '{name}'" + (f" on {len(frames_done)} frames" if len(frames_done) > 1 else "")
            parts = [head, f"{kept} unchanged kept" if kept else "", note, skipped, "Ctrl+Z undoes" if counts else "",
                     objects_summary(counts) if counts else ""]
            ctx.end_status("; ".join(p for p in parts if p) + ".")

        ctx.run_job(segment_frames(ctx.model_step(), self.state.cache, frame, key, list(work.items()), kw), on_msg, on_finish, title="Segment")
