"""'Segment everything' section: automatic instance segmentation of a frame or the whole stack."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import CheckBox, ComboBox, FileEdit, FloatSpinBox, Label, PushButton, SpinBox

from . import layers as L
from .jobs import worker_predictor
from .writer import write_frames

if TYPE_CHECKING:
    from .widget import MobileSAMWidget

__all__ = ["EverythingSection"]

SAMPLERS = [
    ("blobs (no extra weights)", "blobs"),
    ("object-aware (YOLO detector)", "object-aware"),
    ("grid (SAM 32×32 points)", "grid"),
]
HELP = (
    "Finds all objects without prompts. 'blobs': scale-space blob detection proposes one box per roundish "
    "object (no extra weights); 'object-aware': MobileSAMv2's YOLO detector proposes boxes (needs a detector "
    ".pt file); 'grid': SAM's 32×32 point grid (slow, generic). Each finished frame is written at once "
    "(one Ctrl+Z per frame); Cancel keeps the frames already done."
)


class EverythingSection:
    def __init__(self, widget: MobileSAMWidget) -> None:
        from .widget import _group

        self.w = widget
        self.sampler = ComboBox(label="sampler", choices=SAMPLERS, value="blobs", tooltip=HELP)
        self.detector = FileEdit(label="detector", mode="r", filter="*.pt", tooltip="YOLO detect/segment checkpoint (e.g. ObjectAwareModel.pt)")
        self.hint = Label(value="")
        self.diameter = SpinBox(label="diameter (px)", value=0, min=0, max=10000, tooltip="Expected object diameter; 0 = automatic")
        self.polarity = ComboBox(label="objects are", choices=["bright", "dark"], value="bright", tooltip="blobs: brighter (fluorescence) or darker (brightfield) than background")
        self.min_score = FloatSpinBox(label="min pred. IoU", value=0.5, min=0.0, max=1.0, step=0.05)
        self.all_frames = CheckBox(text="all frames", value=False)
        self.button = PushButton(text="Segment everything")
        self.box, self.inner = _group(
            "Segment everything", self.sampler, self.detector, self.hint, self.diameter, self.polarity,
            self.min_score, self.all_frames, self.button,
        )
        self.box.setToolTip(HELP)
        self.button.tooltip = HELP
        self.sampler.changed.connect(self._update)
        self.detector.changed.connect(self._update)
        self.button.changed.connect(self.run)
        self._update()

    def _detector_path(self) -> Path | None:
        p = Path(str(self.detector.value))
        return p if str(self.detector.value) not in ("", ".") and p.is_file() else None

    def _update(self, _=None) -> None:
        s = self.sampler.value
        self.detector.visible = s == "object-aware"
        self.diameter.visible = self.polarity.visible = s == "blobs"
        if s == "object-aware" and self._detector_path() is None:
            self.hint.value = "Pick a detector .pt file (MobileSAMv2's ObjectAwareModel.pt or any YOLO model)."
            self.button.enabled = False
        else:
            self.hint.value = ""
            self.button.enabled = True
        self.hint.visible = bool(self.hint.value)

    def options(self, func) -> dict:
        """The section's options that ``func`` accepts (the engine's keyword names)."""
        opts = {"min_score": self.min_score.value}
        if self.sampler.value == "blobs":
            opts["polarity"] = self.polarity.value
            if self.diameter.value > 0:
                opts["diameter"] = float(self.diameter.value)
        params = inspect.signature(func).parameters
        return {k: v for k, v in opts.items() if k in params}

    def run(self, _=None) -> None:
        self.w._guard(self._run)

    def _run(self) -> None:
        from ..engine.everything import EverythingProgress, iter_segment_everything

        w = self.w
        image, geo, cur = w.context()
        frames = geo.frames if (self.all_frames.value and geo.n_lead) else [cur]
        labels = w.labels_layer()
        data = image.data[0] if image.multiscale else image.data
        sub = data if frames == geo.frames else data[tuple(cur)]
        frame_list = frames if frames == geo.frames else [cur]
        sampler = self.sampler.value
        detector = self._detector_path() if sampler == "object-aware" else None
        kw = self.options(iter_segment_everything)
        start_id = w.next_id()

        def gen():
            model = w.model_step()
            sam = (yield from model) if not hasattr(model, "image_encoder") else model
            pred = worker_predictor(sam, w.cache)
            import numpy as np

            offset = np.zeros((), dtype=np.uint32) + (start_id - 1)
            return (yield from iter_segment_everything(
                np.asarray(sub), pred, sampler=sampler, detector=detector, rgb=image.rgb, labels=offset, **kw
            ))

        done: list = []

        def on_msg(msg) -> None:
            if isinstance(msg, EverythingProgress):
                w.progress.max, w.progress.value = max(msg.total, 0), min(msg.done, msg.total)
                w.status.value = f"Everything: {msg.message}"
                if msg.labels is not None:
                    f = frame_list[msg.frame] if len(frame_list) > 1 else cur
                    write_frames(labels, [(f, msg.labels)], overwrite=w.overwrite.value)
                    done.append(f)

        def on_finish() -> None:
            w.status.value = f"Segment everything: {len(done)} of {len(frame_list)} frame(s) written"

        w.run_job(gen(), on_msg, on_finish, title="Everything")
