"""'Segment everything' section: automatic instance segmentation of a frame or the whole stack."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FileEdit,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
)

from ..engine.errors import SettingsError
from ..engine.tiles import tile_settings
from . import layers as L
from .feedback import cancelled, ids_note
from .jobs import Progress, built, worker_predictor
from .layout import Section
from .sections import Action
from .session import record_everything
from .writer import write_frames

if TYPE_CHECKING:
    from .sections import Context

__all__ = ["EverythingSection"]



def sampler_choices() -> list[tuple[str, str]]:
    """(label, name) of every registered sampler (engine/samplers/), for the sampler control."""
    from ..engine.samplers import get_sampler, sampler_names

    return [(get_sampler(n).label, n) for n in sampler_names()]


def sampler_help() -> str:
    from ..engine.samplers import get_sampler, sampler_names

    return ("Finds all objects without prompts. " + "; ".join(f"'{n}': {get_sampler(n).help}" for n in sampler_names())
            + ". Each finished frame is written at once (one Ctrl+Z per frame); Cancel stops within a batch of "
            "prompts and keeps what is done (a partial frame says so). Key: Shift+E.")


def option_controls() -> dict[str, object]:
    """One control per sampler option with ``gui`` metadata (engine/samplers/; an option that defaults
    to None, i.e. automatic, shows 0 for it), by option name."""
    from ..engine.samplers import default_sampler, option_specs

    out: dict[str, object] = {}
    first = default_sampler()
    for name, spec in option_specs().items():
        g = spec.gui
        if not g:
            continue
        default = spec.defaults.get(first, next(iter(spec.defaults.values())))
        kw = {"label": g.get("label", name), "tooltip": g.get("tooltip", spec.help)}
        if spec.choices:
            out[name] = ComboBox(choices=list(spec.choices), value=default, **kw)
        else:
            cls = SpinBox if spec.type is int or (spec.type is float and float(g.get("step", 1)) == int(g.get("step", 1))) else FloatSpinBox
            out[name] = cls(value=default or 0, min=g.get("min", 0), max=g.get("max", 10000), step=g.get("step", 1), **kw)
    return out

LINKS = [("auto (from the axis name: z -> 3d, t -> time)", "auto"), ("none", "none"), ("3d (one id per object through z)", "3d"),
         ("time (tracks, divisions)", "time")]
LINK_HELP = (
    "With 'all frames' on a stack with one stack axis: 3d gives one id per object through the slices, time one id "
    "per track (a division ends the mother and starts two daughters) and a Tracks layer. SAM fills in objects the "
    "sampler missed on a frame; then laptrack links by mask overlap (see docs/stacks.md). Same result as "
    "`mobilesam everything --link`."
)
TRUST = "trust file (runs code)"  # short: the dock is ~230 px wide at 1280 x 720
TRUST_HELP = (
    "A detector .pt is read safely by default (torch.load(weights_only=True) with an allow-list of the classes a "
    "YOLO checkpoint holds), so it cannot run code; .onnx exports hold no code at all. Tick this only for a file "
    "from a source you trust that the safe reader refuses: it is then fully unpickled, which can run any code."
)


def load_detector(path: Path, trust: bool):
    """The detector at ``path`` (a generator run in the job: loading takes a few seconds), read safely
    unless ``trust``; a file the safe reader refuses gets an error that names the trust option."""
    from ..model.detector import DetectorError
    from ..model.detector import load_detector as load

    yield Progress(0, 0, f"loading detector {path.name}" + (" (trusted: fully unpickled)" if trust else ""))
    try:
        return load(path, trust=trust)
    except DetectorError as err:
        if trust:
            raise
        raise DetectorError(f"{err} In this widget: tick '{TRUST}' under Segment everything, only if you trust "
                            "where the file comes from.") from None


def detector_input_size(det, chosen: int = 0) -> tuple[int, str]:
    """The detector's inference size and where it comes from: ``chosen`` (> 0) by the user, else
    ``Detector.imgsz`` (the size an ONNX export fixes, or the training size the file records, else
    MobileSAMv2's 1024: one rule, in model/detector.py, also used by the CLI and the API)."""
    if chosen > 0:
        return int(chosen), "set under 'input px'"
    why = {"recorded in the file": "the size the detector was trained at",
           "fixed by the ONNX export": "fixed by the ONNX export"}.get(det.imgsz_source, "the default; the detector file records none")
    return int(det.imgsz), why


class EverythingSection:
    def __init__(self, ctx: Context) -> None:
        self.w = ctx
        from ..engine.samplers import default_sampler

        help_text = sampler_help()
        self.sampler = ComboBox(label="sampler", choices=sampler_choices(), value=default_sampler(), tooltip=help_text)
        self.detector = FileEdit(label="detector", mode="r", filter="*.pt *.onnx",
                                 tooltip="YOLO detect/segment checkpoint (e.g. ObjectAwareModel.pt) or its .onnx export")
        self.trust = CheckBox(text=TRUST, value=False, tooltip=TRUST_HELP)
        self.hint = Label(value="")
        self.hint.native.setWordWrap(True)
        self.controls = option_controls()  # the samplers' options with a control (engine/samplers/), e.g. diameter, tile
        self.all_frames = CheckBox(text="all frames", value=False)
        self.link = ComboBox(label="link frames", choices=LINKS, value="auto", tooltip=LINK_HELP)
        self.button = PushButton(text="Run (Shift+E)")
        self.section = Section(
            "Segment everything", self.sampler, self.detector, self.trust, self.hint, *self._sampler_controls(),
            *self._common_controls(), self.all_frames, self.link, self.button,
        )
        self.box, self.inner = self.section.box, self.section.inner
        self.box.setToolTip(help_text)
        self.button.tooltip = help_text
        self.sampler.changed.connect(self._update)
        self.sampler.changed.connect(self._default_score)
        self.detector.changed.connect(self._update)
        self.button.changed.connect(self.run)
        self.actions: tuple[Action, ...] = (Action("Shift-E", "Segment everything", self.button, self.run),)
        self._update()

    def on_image(self, image) -> None:  # (nothing follows the image)
        pass

    def __getattr__(self, name: str):  # the generated controls by option name: self.diameter, self.tile, ...
        controls = self.__dict__.get("controls") or {}
        if name in controls:
            return controls[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def _common_names(self) -> list[str]:
        from ..engine.samplers import CommonOptions

        return [f.name for f in fields(CommonOptions) if f.name in self.controls]

    def _common_controls(self) -> list:
        return [self.controls[n] for n in self._common_names()]

    def _sampler_controls(self) -> list:
        common = set(self._common_names())
        return [c for n, c in self.controls.items() if n not in common]

    def _own_names(self, sampler: str) -> set[str]:
        """The sampler's options that have a control."""
        from ..engine.samplers import get_sampler

        return {f.name for f in fields(get_sampler(sampler).options)} & set(self.controls)

    def _default_score(self, sampler: str) -> None:
        # the sampler's own default (the grid keeps SAM's quality filter; proposed boxes are objects already)
        from ..engine.samplers import get_sampler

        self.controls["min_score"].value = get_sampler(sampler).score_defaults[0]

    def _detector_path(self) -> Path | None:
        p = Path(str(self.detector.value))
        return p if str(self.detector.value) not in ("", ".") and p.is_file() else None

    def _update(self, _=None) -> None:
        from ..engine.samplers import get_sampler

        s = self.sampler.value
        needs = get_sampler(s).needs_detector
        self.detector.visible = self.trust.visible = needs
        own, common = self._own_names(s), set(self._common_names())
        for name, control in self.controls.items():
            if name not in common:
                control.visible = name in own
        if needs and self._detector_path() is None:
            self.hint.value = "Pick a detector file."  # short: the dock is narrow; the control's tooltip says which
            self.hint.tooltip = "A .pt or .onnx file: MobileSAMv2's ObjectAwareModel.pt or any YOLO detect/segment model."
            self.button.enabled = False
        else:
            self.hint.value = ""
            self.button.enabled = True
        self.hint.visible = bool(self.hint.value)

    def options(self) -> dict:
        """Engine options (``iter_segment_everything`` keywords) from the controls."""
        from ..engine.samplers import option_specs

        specs = option_specs()
        opts: dict = {}
        for name in [*self._common_names(), *sorted(self._own_names(self.sampler.value))]:
            value = self.controls[name].value
            auto = (specs[name].gui or {}).get("auto", True)
            if specs[name].choices is None and not value and None in specs[name].defaults.values() and auto:
                continue  # 0: automatic (the option's None)
            opts[name] = specs[name].type(value)
        if opts.get("tile"):
            try:
                opts["tile"], _ = tile_settings(opts["tile"])
            except ValueError as err:
                raise SettingsError(f"{err} Use 0 (off) or a tile such as 1024.") from None
        return opts

    def link_mode(self, image, geo) -> str:
        """The link mode for a run over all frames of ``image`` (auto: from its axis label)."""
        from ..engine.linkpass import axes_link

        mode = self.link.value
        if mode == "auto":
            names = [str(n) for n in (getattr(image, "axis_labels", ()) or ())][: geo.n_lead]
            letters = "".join(n[:1].upper() if n and not n.lstrip("-").isdigit() else "?" for n in names)
            return axes_link(letters + "YX", geo.n_lead)
        if mode != "none" and geo.n_lead != 1:
            raise SettingsError(f"link frames '{mode}' needs an image with one stack axis (this one has {geo.n_lead}); choose none.")
        return mode

    def show_tracks(self, labels, links, shift: int) -> None:
        """A napari Tracks layer with the labels' track ids (``shift`` added, as in the Labels layer)."""
        from ..engine.tracks import tracks_layer_data

        data, graph = tracks_layer_data(links)
        data[:, 0] += shift
        graph = {d + shift: [p + shift for p in ps] for d, ps in graph.items()}
        name = f"{labels.name} tracks"
        viewer = self.w.viewer
        if name in viewer.layers:
            viewer.layers.remove(name)
        viewer.add_tracks(data, graph=graph, name=name)

    def run(self, _=None) -> None:
        self.w.guard(self._run)

    def _run(self) -> None:
        from ..engine.everything import EverythingProgress, iter_segment_everything

        w = self.w
        image, geo, cur = w.context()
        every = self.all_frames.value and geo.n_lead > 0
        link = self.link_mode(image, geo) if every else "none"
        labels = w.labels_layer(create=False)  # created with the first frame written (not when the model fails to load)
        data = L.frame_data(image)  # with a chosen channel axis: frames with their channels last
        sampler = self.sampler.value
        detector = self._detector_path() if sampler == "object-aware" else None
        trust = bool(self.trust.value)
        read, key, kw = w.frame_reader(image)
        opts = {**self.options(), **kw, "key": key}
        imgsz = int(opts.pop("imgsz", 0) or 0)
        # Cancel stops within one batch of prompts and keeps what is done: a partial frame, said in the status line
        opts["stop"] = lambda: w.state.job_cancelled
        existing = None if labels is None else labels.data

        def gen():
            pred = worker_predictor((yield from built(w.model_step())), w.state.cache)
            det = None if detector is None else (yield from load_detector(detector, trust))
            if det is not None:
                opts["imgsz"], why = detector_input_size(det, imgsz)
                notes.append(f"detector input {opts['imgsz']} px ({why})")
            return (yield from iter_segment_everything(
                data, pred, sampler=sampler, detector=det, rgb=geo.rgb, frames=None if every else [cur],
                labels=existing, overwrite=w.overwrite.value, link=link, **opts,
            ))

        done: list = []
        last = [""]
        notes: list[str] = []
        top, issued = int(np.max(labels.data)) if labels is not None and labels.data.size else 0, w.issued
        link_shift = max(0, w.next_id() - (top + 1))  # linked ids start after ``top``: keep clear of issued ids
        out = [labels]
        got_links: list = [None]
        linked: list = []  # (frame, linked labels) until the link pass ends

        def on_msg(msg) -> None:
            if isinstance(msg, EverythingProgress):
                last[0] = msg.message
                # write before updating the progress bars: napari's activity bar may process events,
                # and with them the job's end, before this function returns
                if msg.labels is not None and out[0] is None:
                    out[0] = w.labels_layer()
                layer = out[0]
                # the link pass is over: all linked frames in one write, so a Cancel before leaves the per-frame ids,
                # never a mix (a cancelled pass can still end with the links it made: they are not written)
                if msg.links is not None and layer is not None and not w.state.job_cancelled:
                    write_frames(layer, linked, overwrite=True)
                    got_links[0] = msg.links
                    if link == "time":
                        self.show_tracks(layer, msg.links, link_shift)
                if msg.linked:  # the frame's linked ids replace its per-frame ones (same pixels, plus fill-ins)
                    linked.append((tuple(msg.index), np.where(msg.labels > 0, msg.labels + link_shift, 0).astype(msg.labels.dtype)))
                elif msg.labels is not None:  # a finished frame: one undoable write
                    new = msg.labels
                    if new.any():  # keep clear of ids already given to prompts (not yet in the layer)
                        first = w.next_id()
                        shift = max(0, first - int(new[new > 0].min()))
                        new = np.where(new > 0, new + shift, 0).astype(new.dtype) if shift else new
                        if top > issued and not any(t.startswith("new ids") for t in notes):
                            notes.append(ids_note(int(new[new > 0].min()), top, layer.name))
                    write_frames(layer, [(tuple(msg.index), new)], overwrite=w.overwrite.value)
                    done.append(msg.index)
                w.show_progress(msg.done, msg.total, f"Everything: {msg.message}")

        def on_finish() -> None:
            n = geo.n_frames if every else 1
            if w.state.job_cancelled:
                text = f"Segment everything {cancelled(len(done), n)}" + (f" ({last[0]})" if "partial" in last[0] else "")
            else:
                text = f"Segment everything: {len(done)} of {n} frame(s) written" + (f" ({last[0]})" if done else "")
                if done and out[0] is not None:  # what a saved session needs to replay this run (gui/session.py)
                    record_everything(w, out[0], image, kw, tuple(done[0]), {
                        "sampler": sampler, "detector": str(detector) if detector else None, "options": self.options(), "link": link,
                        "frames": "all" if every else [int(np.ravel_multi_index(cur, geo.lead_shape)) if geo.n_lead else 0],
                        "overwrite": bool(w.overwrite.value), "id_shift": link_shift if link != "none" else 0}, got_links[0])
            w.end_status(text + "".join(f"; {t}" for t in notes if t) + (". Ctrl+Z undoes each frame." if done else "."))

        if w.run_job(gen(), on_msg, on_finish, title="Everything") is not None:
            w.state.soft_cancel = "stop" in opts
