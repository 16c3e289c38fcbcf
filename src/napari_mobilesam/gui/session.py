"""Sessions in napari: the npe2 writer ("Save MobileSAM session") and reader (open the folder).

The widget stamps what a session needs beyond the layers (the model, how it saw the image, each
run's settings) into the output Labels layer's ``metadata["napari-mobilesam-session"]`` whenever it
writes (:func:`stamp`). The writer saves the Labels layer with the Points / Shapes layers made for the
same image (:mod:`napari_mobilesam.engine.session`); the reader gives them back as layers the widget
picks up for that image, with every prompt's id and mask choice, so *Segment* finds them written.
"""

from __future__ import annotations

import os
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.errors import SettingsError
from ..engine.session import is_session, load_session, save_session
from . import layers as L

__all__ = [
    "INFO", "SESSION_PATTERN", "check_session_model", "on_activate", "prefer_session_reader", "read_session",
    "record_everything", "restore_model", "session_reader", "stamp", "write_session",
]

INFO = "napari-mobilesam-session"  # Labels metadata key
PLUGIN = "napari-mobilesam"
# napari matches reader preferences against a folder's real path with a trailing separator
SESSION_PATTERN = "*.mobilesam" + os.sep


def _model_hash(widget) -> str | None:
    """The widget's model hash (as embedding stores and sessions record it), computed once per model."""
    from ..engine.store import model_fingerprint

    sam = widget.state.sam
    if sam is None:
        return None
    known = widget.state.model_hash
    if known is None or known[0] is not sam:
        widget.state.model_hash = known = (sam, model_fingerprint(sam))
    return known[1]


def check_session_model(widget, labels) -> None:
    """Refuse to write into the labels of a session made with other weights (as stores are refused)."""
    saved = ((labels.metadata.get(INFO) or {}).get("model") or {}).get("model_hash")
    now = _model_hash(widget)
    if saved and now and saved != now:
        weights = (labels.metadata[INFO]["model"].get("weights") or "other weights").split("/")[-1]
        raise SettingsError(
            f"'{labels.name}' is a session made with other weights ({weights}); pick those weights as 'model', "
            "or choose 'new' as labels layer to segment with this model."
        )


def stamp(widget, labels, image, kw: dict, frame: tuple) -> None:
    """Record on ``labels`` what a session of it needs: the image (and the hash of ``frame``, the one just
    written: one frame's hash per write, never the whole stack), the model and the pre-processing."""
    from ..engine.store import frame_hash

    key = widget.state.sam_key or ("", "")
    geo = L.FrameGeometry.of(image)
    data = L.frame_data(image)
    info = labels.metadata.get(INFO) or {}
    shape = [int(v) for v in data.shape]
    if info.get("image", {}).get("name") != image.name or info.get("image", {}).get("shape") != shape:
        info["image"] = {"name": image.name, "shape": shape, "dtype": str(np.dtype(data.dtype)), "frame_hashes": {}}
    t = str(int(np.ravel_multi_index(tuple(frame), geo.lead_shape)) if geo.n_lead else 0)
    hashes = info["image"].setdefault("frame_hashes", {})
    if t not in hashes:
        hashes[t] = frame_hash(np.asarray(data[tuple(frame)]))
    info["model"] = {"weights": str(key[0]), "decoder": str(key[2]) if len(key) > 2 else None, "model_hash": _model_hash(widget)}
    prep = {k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items() if k in ("contrast_limits", "channels")}
    prep["channel_axis"] = L.channel_axis(image)
    info["preprocess"] = prep
    runs = info.setdefault("runs", [])
    run = {"overwrite": bool(widget.overwrite.value), "all_frames": bool(widget.all_frames.value)}
    if not runs or runs[-1] != run:
        runs.append(run)
    labels.metadata[INFO] = info


def record_everything(widget, labels, image, kw: dict, frame: tuple, run: dict, links=None) -> None:
    """Record a finished *Segment everything* run on ``labels`` (:func:`stamp`, then ``run``: sampler,
    detector, options, link mode, frames, overwrite, id_shift; with ``links`` of a time-linked run, its
    lineage as ``parents``), so that ``engine.session.replay_everything`` redoes it."""
    stamp(widget, labels, image, kw, frame)
    run = dict(run)
    if links is not None and run.get("link") == "time":
        shift = int(run.get("id_shift") or 0)
        run["parents"] = {str(d + shift): p + shift for d, p in links.parents.items()}
    labels.metadata[INFO].setdefault("runs", []).append({"everything": run})


def restore_model(widget, labels) -> str:
    """Set the widget's model (and decoder) to what the session of ``labels`` was made with; returns a
    status line saying what was chosen, or why not ("" when the session records no model)."""
    from ..model.weights import registry_names

    model = (labels.metadata.get(INFO) or {}).get("model") or {}
    weights, decoder = str(model.get("weights") or ""), model.get("decoder")
    if not weights:
        return ""
    names = set(registry_names("model", "encoder"))
    if weights in names:
        widget.model_box.value = weights
    elif Path(weights).is_file():
        widget.model_box.value = widget.CHOOSE_FILE
        widget.model_file.value = weights
    else:
        return (f"Session '{labels.name}' was made with {weights}, which is not here: pick those weights under 'model' "
                "(other weights are refused for its labels).")
    if decoder and decoder != "None":
        if decoder in set(registry_names("decoder")):
            widget.decoder_box.value = decoder
        elif Path(decoder).is_file():
            widget.decoder_box.value = widget.CHOOSE_FILE
            widget.decoder_file.value = decoder
    return f"Session '{labels.name}': model set to {Path(weights).name if Path(weights).is_file() else weights}, as recorded."


# ---------------------------------------------------------------------------------------- writer
def write_session(path: str, layer_data: list[tuple[Any, dict, str]]) -> list[str]:
    """npe2 writer: the selected Labels layer (+ Points / Shapes) -> a session folder ``path``."""
    by_type: dict[str, list] = {}
    for data, meta, kind in layer_data:
        by_type.setdefault(kind, []).append((data, meta))
    if len(by_type.get("labels", [])) != 1:
        raise SettingsError("Select one Labels layer (with its points and boxes layers) to save a MobileSAM session.")
    labels, lmeta = by_type["labels"][0]
    info = (lmeta.get("metadata") or {}).get(INFO) or {}
    points = next(iter(by_type.get("points", [])), None)
    shapes = next(iter(by_type.get("shapes", [])), None)
    pf = {}
    if points is not None:
        feats = points[1].get("features")
        pf = {c: feats[c].tolist() for c in ("label", "object", "label_id", "mask") if feats is not None and c in feats}
    sf = shapes[1].get("features") if shapes is not None else None
    folder = Path(path)
    if folder.suffix != ".mobilesam":
        folder = folder.with_name(folder.name + ".mobilesam")
    save_session(
        folder,
        image=info.get("image", {"name": (lmeta.get("metadata") or {}).get("image")}),
        model=info.get("model", {}),
        preprocess=info.get("preprocess", {}),
        points=None if points is None else np.asarray(points[0], float),
        point_features=pf,
        shapes=[] if shapes is None else [np.asarray(v, float) for v in shapes[0]],
        shape_types=None if shapes is None else list(shapes[1].get("shape_type", [])),
        shape_ids=None if sf is None or "label_id" not in sf else sf["label_id"].tolist(),
        shape_masks=None if sf is None or "mask" not in sf else sf["mask"].tolist(),
        labels=np.asarray(labels),
        runs=info.get("runs", []),
        objects=info.get("objects", {}),
    )
    return [str(folder)]


# ---------------------------------------------------------------------------------------- reader
def prefer_session_reader(settings=None) -> bool:
    """Make this plugin napari's preferred reader for ``*.mobilesam`` folders; True if it was set now.

    Why: npe2 offers every reader that accepts directories for any folder (napari's builtins one
    reads any folder), so *File > Open Folder* on a session asked "Choose reader" every time, and its
    *Remember* box only remembers that one folder. A preference (``settings.plugins.extension2reader``,
    as napari's Preferences > Plugins shows it) lets napari open session folders with this reader.
    A preference the user already has for such folders (any pattern matching one) is kept.
    """
    if settings is None:
        from napari.settings import get_settings

        settings = get_settings()
    prefs = dict(settings.plugins.extension2reader)
    probe = os.path.join(os.path.abspath(os.sep), "data", "work.mobilesam") + os.sep
    if any(fnmatch(probe, pattern) for pattern in prefs):
        return False
    prefs[SESSION_PATTERN] = PLUGIN
    settings.plugins.extension2reader = prefs
    return True


def on_activate(ctx=None) -> None:
    """npe2 activation (the first time napari runs any of this plugin's commands: the widget, a sample,
    the session writer or reader): :func:`prefer_session_reader`."""
    try:
        prefer_session_reader()
    except Exception as exc:  # noqa: BLE001 - a settings problem must not stop the plugin from loading
        import logging

        logging.getLogger(__name__).warning("could not make MobileSAM the reader for *.mobilesam folders: %s", exc)


def session_reader(path: str | list[str]):
    """npe2 reader: a session folder -> :func:`read_session`; anything else -> None."""
    p = path[0] if isinstance(path, list) else path
    return read_session if is_session(p) else None


def read_session(path: str | list[str]) -> list[tuple[Any, dict, str]]:
    """A session folder -> its Labels, Points and Shapes layers, marked for the image it was made on."""
    import pandas as pd

    s = load_session(path[0] if isinstance(path, list) else path)
    image = s.image.get("name") or "image"
    out = []
    if s.labels is not None:
        info = {"image": s.image, "model": s.model, "preprocess": s.preprocess, "runs": s.runs, "objects": s.objects}
        out.append((s.labels, {"name": f"{image} labels", "metadata": {L.MARK: "labels", "image": image, INFO: info}}, "labels"))
    if s.shapes:
        feats = pd.DataFrame({"label_id": np.asarray(s.shape_ids, int), "mask": np.asarray(s.shape_masks, int)})
        out.append(([np.asarray(v, float) for v in s.shapes], {
            "name": f"{image} boxes", "shape_type": s.shape_types, "features": feats, "edge_color": L.POSITIVE_COLOR,
            "face_color": "transparent", "metadata": {L.MARK: "shapes", "image": image}}, "shapes"))
    if s.points is not None:
        n = len(s.points)
        cols = {c: np.asarray(s.point_features.get(c, [d] * n), int) for c, d in (("label", 1), ("object", 0), ("label_id", 0), ("mask", 0))}
        out.append((s.points, {
            "name": f"{image} points", "features": pd.DataFrame(cols), "face_color": "label",
            "face_color_cycle": {1: L.POSITIVE_COLOR, 0: L.NEGATIVE_COLOR}, "border_color": "white",
            "metadata": {L.MARK: "points", "image": image}}, "points"))
    return out
