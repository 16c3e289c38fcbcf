"""The MobileSAM dock widget: controls and wiring only (no tensor code).

The widget owns one :class:`~.state.WidgetState` and lays out its sections from one list
(:mod:`.sections`): Input, Model, Prompts (Segment, live mode), Refine, Propagate, Segment everything.
Each section works through the widget's public context (the state, ``objects()``, ``run_job()``,
``write_objects()``, ``frame_reader()``, ...); the viewer keys and the job buttons disabled while a
job runs come from the sections' actions.

Long work (weights download, image embeddings, segmenting frames, propagation, segment
everything) runs on the model thread with a progress bar and Cancel. Live mode decodes the
objects a click changed there too; the GUI thread only collects prompts and writes labels.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import numpy as np
from magicgui.widgets import ProgressBar, PushButton
from napari.layers import Image, Labels, Points, Shapes
from napari.utils.events import Event
from qtpy.QtCore import QEvent, QSize
from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

from ..engine.prompts import ObjectPrompt, segment_objects
from . import layers as L
from .channels import check_frames
from .everything import EverythingSection
from .inputs import InputSection
from .layout import StatusLine, default_width, group, scrolled
from .modelui import CHOOSE_FILE, ModelSection
from .output import OutputRecords
from .promptui import PROMPT_RULES, PromptSection
from .propagate import PropagateSection
from .refine import RefineSection
from .runner import JobRunner
from .sections import CANCEL_KEY, Action, Section, key_hint
from .state import WidgetState
from .writer import frame_view

__all__ = ["MobileSAMWidget"]


def _unbind(viewer, keys) -> None:
    """The widget closed: its keys go with it."""
    for key, _name in keys:
        try:
            viewer.bind_key(key, None)
        except (KeyError, ValueError, TypeError):
            pass


class MobileSAMWidget(QWidget):
    """Dock widget: image + prompt layers -> instance labels with MobileSAM."""

    CHOOSE_FILE = CHOOSE_FILE

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.state = st = WidgetState()

        # -- progress, jobs, what was written
        self.progress = ProgressBar(value=0, min=0, max=1, visible=False, label="")
        self.status = StatusLine("Ready.")
        self.cancel_btn = PushButton(text="Cancel (Esc)", enabled=False)
        self.jobs = JobRunner(st, self.progress, self.status, self.cancel_btn, lambda: [a.button for a in self.job_actions],
                              on_model=lambda sam, key: self.model.set_model(sam, key))
        self.model_thread = self.jobs.model_thread
        self.output = OutputRecords(self)

        # -- sections, laid out in this order
        self.inputs = InputSection(self, self.output)
        i = self.inputs
        self.image_box, self.points_box, self.shapes_box, self.labels_box = i.image_box, i.points_box, i.shapes_box, i.labels_box
        self.channel_axis = i.channel_axis
        self.model = ModelSection(st, self.image_box)
        self.model_box, self.model_file, self.device_box = self.model.model_box, self.model.model_file, self.model.device_box
        self.decoder_box, self.decoder_file, self.embeddings = self.model.decoder_box, self.model.decoder_file, self.model.embeddings
        self.prompts = PromptSection(self, self.output, self.model_thread)
        p = self.prompts
        self.mode, self.live, self.all_frames, self.overwrite = p.mode, p.live, p.all_frames, p.overwrite
        self.mask_choice, self.segment_btn = p.mask_choice, p.segment_btn
        self.refine = RefineSection(self, self.points_box)
        self.propagate = PropagateSection(self)
        self.everything = EverythingSection(self)
        self.sections: list[Section] = [self.inputs, self.model, self.prompts, self.refine, self.propagate, self.everything]
        self.job_actions: tuple[Action, ...] = tuple(a for s in self.sections for a in s.actions)
        hint = key_hint(self.job_actions)
        help_text = f"{PROMPT_RULES}\n{hint}"
        self.prompts.set_help(help_text)
        self.points_box.tooltip = self.shapes_box.tooltip = help_text

        content = QWidget()
        root = QVBoxLayout(content)
        root.setContentsMargins(0, 0, 0, 0)
        keys = QLabel(hint)
        keys.setWordWrap(True)
        for box in [s.box for s in self.sections] + [keys]:
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
        self.image_box.changed.connect(self._on_image)
        self.points_box.changed.connect(self.prompts.watch_points)
        self.shapes_box.changed.connect(self.prompts.watch_shapes)
        self.labels_box.changed.connect(self.inputs.on_labels)
        for control in (*self.inputs.controls, *self.model.controls):
            control.changed.connect(self._clear_error)  # the problem an error named may be gone now
        self.cancel_btn.changed.connect(self.cancel)
        ev = self.viewer.layers.events
        for e in (ev.inserted, ev.removed, ev.reordered):
            e.connect(self.reset_choices)
        ev.inserted.connect(self.inputs.on_inserted)
        self._bind_keys()
        self.destroyed.connect(lambda *_, thread=self.model_thread: thread.close())  # not self: it is gone then
        self._on_image(self.image_box.value)

    def _clear_error(self, _=None) -> None:
        if self.status.value.startswith("Error:") and not self.busy:
            self.status.value = "Ready."

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt): the dock's default width, see layout.default_width
        return QSize(default_width(self), 600)

    def event(self, ev: QEvent) -> bool:  # noqa: D102 (Qt)
        if ev.type() == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self.state.docked = True
            elif self.state.docked:  # un-docked: napari never docks the same widget again
                self.shutdown()
        return super().event(ev)

    def shutdown(self) -> None:
        """Stop the running job after its current step and end the model thread (the widget is
        unusable afterwards). Done when the widget is taken out of its dock (napari's 'x' button:
        ``remove_dock_widget``) or destroyed (the viewer closes). Its keys go with it, and a job that
        was running says that it stopped."""
        self._unbind_keys()
        self.jobs.close()

    # ------------------------------------------------------------------ keys
    @property
    def keys(self) -> list[tuple[str, str]]:
        """``(napari key, action name)`` of the viewer-wide keys: the sections' actions, then Cancel."""
        return [(a.key, a.name) for a in self.job_actions if a.key] + [CANCEL_KEY]

    def _bind_keys(self) -> None:
        actions = {a.name: a for a in self.job_actions}

        def press(name: str) -> None:
            if name == CANCEL_KEY[1]:
                if self.busy:
                    self.cancel()
                return
            button = actions[name].button
            if self.busy:
                self.status.value = f"{name}: wait for the running job, or press Esc to cancel it."
            elif not button.enabled or not button.native.isEnabled():
                self.status.value = f"{name} is not available now: {button.tooltip.splitlines()[0][:120]}"
            else:
                actions[name].run()

        for key, name in self.keys:
            self.viewer.bind_key(key, lambda _v, name=name: press(name), overwrite=True)
        self.destroyed.connect(lambda *_, viewer=self.viewer, keys=tuple(self.keys): _unbind(viewer, keys))  # not self: it is gone then

    def _unbind_keys(self) -> None:
        _unbind(self.viewer, self.keys)

    # ------------------------------------------------------------------ the image and its layers
    def image_box_value(self) -> Image | None:
        return self.image_box.value

    def reset_choices(self, event: Event | None = None) -> None:
        """Offer the viewer's layers again (a layer came, went or changed shape)."""
        self.inputs.reset_choices()
        self.propagate.reset_axes()

    def _on_image(self, image: Image | None) -> None:
        self.state.switching = True  # the prompt and labels layers change together: each keeps its ids
        try:
            self.channel_axis.on_image(image)
            self.reset_choices()
            for section in self.sections:
                section.on_image(image)  # first Input: it picks the layers made for the image
        finally:
            self.state.switching = False
            self.state.labels_prev = self.labels_box.value

    # ------------------------------------------------------------------ the context sections work through
    def context(self) -> tuple[Image, L.FrameGeometry, tuple[int, ...]]:
        """(image, geometry, current frame) or a ValueError with the fix."""
        image = self.image_box.value
        if image is None:
            raise ValueError("No image layer: open an image (or File → Open Sample → MobileSAM) and pick it as 'image'.")
        check_frames(image)  # an ambiguous shape: the user says which axis holds channels
        return image, L.FrameGeometry.of(image), L.current_frame(self.viewer.dims.point, image)

    def objects(self, frames=None) -> list[ObjectPrompt]:
        """The objects of ``frames`` (None: all), by :mod:`napari_mobilesam.engine.prompts`' rules;
        prompts that describe no object are skipped and named in ``state.outside``; the points of a
        label being refined (``state.refining``) are Refine's."""
        st = self.state
        for layer in (st.points, st.shapes):
            L.dedupe_ids(layer)
        image, geo, cur = self.context()
        table = L.prompt_table(st.points, st.shapes, image)
        layer = self.labels_box.value
        labels = None if layer is None else (lambda f: frame_view(layer, f))
        found = segment_objects(table, geo.n_lead, geo.lead_shape, cur, frames, geo.spatial, labels=labels, refining=st.refining)
        st.outside = [str(p) for p in found.problems]
        return found.objects

    def outside_note(self) -> str:
        outside = self.state.outside
        if not outside:
            return ""
        n = len(outside)
        return (f"skipped {n} prompt{'s' if n > 1 else ''}: {'; '.join(outside[:3])}{' …' if n > 3 else ''} "
                f"— move or delete {'them' if n > 1 else 'it'}")

    def labels_layer(self, create: bool = True) -> Labels | None:
        layer = self.labels_box.value
        if layer is None and create:
            image = self.image_box.value
            self.state.labels_prev = layer = L.new_labels_layer(image)
            self.output.adopt_new_layer(image, layer)
            # just above the image, so the prompt layers stay visible on top
            self.viewer.layers.insert(self.viewer.layers.index(image) + 1, layer)
            self.labels_box.value = layer
            self.viewer.layers.selection.active = self.state.points or layer
        return layer

    def frame_reader(self, image: Image) -> tuple[Callable, Callable, dict]:
        """``(read, key, image_kwargs)`` for jobs on ``image``: ``read(frame)`` -> that frame's pixels
        (safe to call from the model thread), ``key(frame)`` -> its embedding-cache key, and the
        ``Predictor.set_image`` keywords (contrast, channels) as the model sees the image."""
        data = L.frame_data(image)  # read from the worker: plain arrays (or the engine's channels-last view) only
        kw, ident = self.model.stores.store_view(L.image_kwargs(image), L.image_key(image, ()))
        return (lambda f: np.asarray(data[tuple(f)])), (lambda f: (*ident[:2], tuple(f), ident[3])), kw

    def write_objects(self, frame, objects: list[ObjectPrompt], masks, also_clear=()) -> list:
        """Paint the masks of ``objects`` on ``frame`` as one undoable step (:meth:`.OutputRecords.write_objects`)."""
        return self.output.write_objects(frame, objects, masks, also_clear)

    def run_job(self, gen: Generator, on_msg: Callable | None = None, on_finish: Callable | None = None, title: str = ""):
        """Run ``gen`` on the model thread (:meth:`.JobRunner.run_job`); None when a job runs already."""
        return self.jobs.run_job(gen, on_msg, on_finish, title)

    @property
    def busy(self) -> bool:
        return self.state.busy

    @property
    def live_pending(self) -> bool:
        """A live decode is in flight or queued."""
        return self.prompts.live_mode.pending

    @property
    def points_layer(self) -> Points | None:
        """The Points layer whose points are prompts (None: none chosen)."""
        return self.state.points

    @property
    def shapes_layer(self) -> Shapes | None:
        """The Shapes layer whose rectangles are prompts (None: none chosen)."""
        return self.state.shapes

    @property
    def issued(self) -> int:
        """The highest label id given out to prompts for the current output layer (0: none yet)."""
        return self.output.issued

    def segment(self, _=None) -> None:
        """Segment the objects of the current frame (or of all frames) that are new or changed."""
        self.prompts.segment()

    def model_step(self) -> object:
        return self.model.model_step()

    def set_model(self, sam, key: tuple) -> None:
        self.model.set_model(sam, key)

    def unlink_store(self, _=None) -> None:
        self.model.stores.unlink()

    def next_id(self) -> int:
        return self.output.next_id()

    def release(self, label_id: int) -> None:
        self.output.release(label_id)

    def guard(self, fn: Callable) -> object:
        return self.jobs.guard(fn)

    def report_error(self, err: Exception) -> None:
        self.jobs.report_error(err)

    def show_progress(self, done: int, total: int, message: str) -> None:
        self.jobs.show_progress(done, total, message)

    def end_status(self, text: str) -> None:
        self.jobs.end_status(text)

    def cancel(self, _=None) -> None:
        self.jobs.cancel()
