"""Annotation sessions: everything needed to redo the labels, as napari-native files in one folder.

A session folder (``NAME.mobilesam``) holds:

- ``points.csv`` and ``boxes.csv``: the prompt layers in napari's own CSV layout (``File > Open``
  reads them; so do ``mobilesam segment --points/--boxes``), points with their features
  (``label``, ``object``, ``label_id``, ``mask``);
- ``labels.tif``: the labels as written (uint32, one page per frame);
- ``session.json``: the format and version, the image it was made on (name, shape, dtype, a hash of
  every frame segmented in it), the model (weights, decoder, the same model hash embedding stores record), how the
  model saw the image (contrast limits, channels, channel axis), the boxes' ids and mask choices
  (napari's shapes CSV holds no features), the settings of each run, and per label id what the widget
  wrote (``objects``: the prompt signature and a hash of the mask written, so that *Segment* after a
  resume knows which objects are as written and which labels were edited by hand; and the write that
  wrote it, ``generation`` 0, 1, ... with that write's ``overwrite``, so that a replay paints the objects
  write by write as the widget did: :func:`object_generations`, ``engine.labels.paint_writes``).
  Version 1 sessions (before generations) still load; their objects replay as one write.
  A *Segment everything* run is recorded as ``{"everything": {...}}`` in ``runs``: sampler,
  options, link mode, frames, the id shift the widget applied and, for a time-linked run, the
  lineage (``parents``); :func:`replay_everything` redoes those runs (same labels, same tracks).

Nothing in a session runs code: JSON, CSV and TIFF only. Saving is atomic (a new folder is written
beside the old one and swapped in), so an interrupted save leaves the previous session as it was.
numpy, tifffile and json only.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError

__all__ = ["FORMAT", "VERSION", "Session", "check_model", "everything_runs", "load_session", "object_generations", "replay_everything",
           "save_session", "saved_difference"]

FORMAT = "napari-mobilesam session"
VERSION = 2  # 2: objects record their write (generation); 1 still loads (one write)
SUFFIX = ".mobilesam"


class SessionError(UserError):
    """A session folder that cannot be used, with the reason and the fix."""


@dataclass
class Session:
    """A session as saved.

    Attributes:
        folder: the session folder.
        image: ``{"name", "shape", "dtype", "frame_hashes"}`` of the image it was made on (``frame_hashes``:
            flat frame number -> hash, for the frames segmented in it).
        model: ``{"weights", "decoder", "model_hash"}`` (``model_hash`` as embedding stores record it).
        preprocess: ``Predictor.set_image`` options (``contrast_limits``, ``channels``) and ``channel_axis``.
        points: ``(N, D)`` float coordinates and ``point_features`` (columns -> lists), or None.
        shapes: list of ``(V, D)`` vertex arrays, ``shape_types``, ``shape_ids``, ``shape_masks``.
        labels: the labels array (lazy-free numpy), or None.
        runs: the settings of each run, oldest first.
        objects: label id (str) -> ``{"signature": [...], "mask": hash, "generation": int, "overwrite": bool}``
            of the mask the widget wrote (version 1: no ``generation`` / ``overwrite``).
    """

    folder: Path
    image: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    preprocess: dict = field(default_factory=dict)
    points: np.ndarray | None = None
    point_features: dict = field(default_factory=dict)
    shapes: list = field(default_factory=list)
    shape_types: list = field(default_factory=list)
    shape_ids: list = field(default_factory=list)
    shape_masks: list = field(default_factory=list)
    labels: np.ndarray | None = None
    runs: list = field(default_factory=list)
    objects: dict = field(default_factory=dict)

    @property
    def points_csv(self) -> Path | None:
        p = self.folder / "points.csv"
        return p if p.is_file() else None

    @property
    def boxes_csv(self) -> Path | None:
        p = self.folder / "boxes.csv"
        return p if p.is_file() else None


def _write_points(path: Path, coords: np.ndarray, features: dict) -> None:
    names = [f"axis-{i}" for i in range(coords.shape[1])]
    cols = [k for k in features if len(features[k]) == len(coords)]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", *names, *cols])
        for i, row in enumerate(coords):
            w.writerow([i, *(repr(float(v)) for v in row), *(_cell(features[k][i]) for k in cols)])


def _cell(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "True" if v else "False"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return str(int(v)) if float(v).is_integer() else repr(float(v))
    return str(v)


def _write_shapes(path: Path, shapes: Sequence[np.ndarray], types: Sequence[str]) -> None:
    ndim = max(np.asarray(v).shape[1] for v in shapes)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "shape-type", "vertex-index", *(f"axis-{i}" for i in range(ndim))])
        for i, (verts, kind) in enumerate(zip(shapes, types, strict=True)):
            for j, row in enumerate(np.asarray(verts, float)):
                w.writerow([i, kind, j, *(repr(float(v)) for v in row)])


def save_session(
    folder: str | os.PathLike,
    *,
    image: dict,
    model: dict,
    preprocess: dict,
    points: np.ndarray | None = None,
    point_features: dict | None = None,
    shapes: Sequence[np.ndarray] = (),
    shape_types: Sequence[str] | None = None,
    shape_ids: Sequence[int] | None = None,
    shape_masks: Sequence[int] | None = None,
    labels: np.ndarray | None = None,
    runs: Sequence[dict] = (),
    objects: dict | None = None,
) -> Path:
    """Write a session folder (see the module docstring); an existing session there is replaced
    atomically. Returns the folder. A folder that exists and is not a session is refused."""
    import tifffile

    folder = Path(folder)
    if folder.exists() and not (folder / "session.json").is_file() and any(folder.iterdir()):
        raise SessionError(f"{folder} exists and is not a MobileSAM session; pick a new folder name (e.g. ending in {SUFFIX}).")
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.saving")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n_shapes = len(shapes)
    meta = {
        "format": FORMAT, "version": VERSION, "image": image, "model": model, "preprocess": preprocess,
        "shape_ids": [int(v) for v in (shape_ids if shape_ids is not None else [0] * n_shapes)],
        "shape_masks": [int(v) for v in (shape_masks if shape_masks is not None else [0] * n_shapes)],
        "runs": list(runs), "objects": dict(objects or {}),
    }
    if points is not None and len(points):
        _write_points(tmp / "points.csv", np.asarray(points, float), point_features or {})
    if n_shapes:
        _write_shapes(tmp / "boxes.csv", shapes, list(shape_types or ["rectangle"] * n_shapes))
    if labels is not None:
        tifffile.imwrite(tmp / "labels.tif", np.asarray(labels, np.uint32), photometric="minisblack", compression="zlib")
    (tmp / "session.json").write_text(json.dumps(meta, indent=1, default=_jsonable))
    old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (np.ndarray, tuple)):
        return list(np.asarray(v).tolist())
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")


def is_session(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "session.json").is_file()


def load_session(folder: str | os.PathLike) -> Session:
    """Read a session folder (no code is run: JSON, CSV, TIFF).

    Raises:
        SessionError: not a session, another format version, or unreadable files (naming the file)."""
    import tifffile

    folder = Path(folder)
    meta_path = folder / "session.json"
    if not meta_path.is_file():
        raise SessionError(f"{folder} is not a MobileSAM session (no session.json); save one with File > Save Layers... > MobileSAM session.")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise SessionError(f"{meta_path} cannot be read ({err}); the session is damaged.") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SessionError(f"{meta_path} is not a MobileSAM session file.")
    _check_types(meta, meta_path)
    if int(meta.get("version", 0)) > VERSION:
        raise SessionError(f"{folder} was saved by a newer napari-mobilesam (session version {meta.get('version')}; this one reads "
                           f"up to {VERSION}); update the plugin (pip install -U napari-mobilesam).")
    s = Session(folder, meta.get("image", {}), meta.get("model", {}), meta.get("preprocess", {}),
                shape_ids=meta.get("shape_ids", []), shape_masks=meta.get("shape_masks", []), runs=meta.get("runs", []),
                objects=meta.get("objects", {}))
    from .csv_prompts import read_points_csv, read_shapes_csv  # the one reader of napari's CSV layout

    if s.points_csv is not None:
        s.points, feats, _ = read_points_csv(s.points_csv)
        s.point_features = {k: v.tolist() for k, v in feats.items()}
    if s.boxes_csv is not None:
        s.shapes, s.shape_types, _ = read_shapes_csv(s.boxes_csv)
    if len(s.shape_ids) != len(s.shapes):
        raise SessionError(f"{folder}: boxes.csv holds {len(s.shapes)} shapes but session.json {len(s.shape_ids)} box ids; the session is damaged.")
    lab = folder / "labels.tif"
    if lab.is_file():
        try:
            s.labels = np.asarray(tifffile.imread(lab))
        except Exception as err:  # noqa: BLE001 - any decoding error of a damaged file
            raise SessionError(f"{lab} cannot be read ({err}); the session is damaged.") from err
        want = s.image.get("shape")
        if want is not None and list(s.labels.shape) != list(want):
            raise SessionError(f"{lab} holds labels of shape {tuple(s.labels.shape)}, but the session's image is {tuple(want)}: "
                               "the file is damaged (truncated?). Save the session again from napari.")
    return s


_TYPES = {"image": dict, "model": dict, "preprocess": dict, "shape_ids": list, "shape_masks": list, "runs": list, "objects": dict}


def _check_types(meta: dict, path: Path) -> None:
    """Refuse a hand-edited or damaged session.json whose entries have the wrong types (naming them)."""
    bad = [f"'{k}' is {type(meta[k]).__name__}, not {t.__name__}" for k, t in _TYPES.items() if k in meta and not isinstance(meta[k], t)]
    for k in ("shape_ids", "shape_masks"):
        if isinstance(meta.get(k), list) and not all(isinstance(v, int) and not isinstance(v, bool) for v in meta[k]):
            bad.append(f"'{k}' holds values that are not whole numbers")
    image: dict = meta["image"] if isinstance(meta.get("image"), dict) else {}
    if "shape" in image and not (isinstance(image["shape"], list) and all(isinstance(v, int) for v in image["shape"])):
        bad.append("'image.shape' is not a list of whole numbers")
    if "frame_hashes" in image and not isinstance(image["frame_hashes"], dict):
        bad.append("'image.frame_hashes' is not a mapping")
    objects = meta["objects"] if isinstance(meta.get("objects"), dict) else {}
    if any(isinstance(r, dict) and "generation" in r and not (isinstance(r["generation"], int) and not isinstance(r["generation"], bool)
                                                               and r["generation"] >= 0) for r in objects.values()):
        bad.append("'objects' holds a 'generation' that is not a whole number >= 0")
    if "version" in meta and not isinstance(meta["version"], int):
        bad.append("'version' is not a whole number")
    if bad:
        raise SessionError(f"{path} is damaged: {'; '.join(bad)}. Save the session again from napari, or fix session.json.")


def check_model(session: Session, model_hash: str) -> None:
    """Refuse a session made with other weights (as embedding stores are refused)."""
    saved = session.model.get("model_hash")
    if saved and saved != model_hash:
        raise SessionError(
            f"{session.folder} was made with other weights ({session.model.get('weights') or 'unknown'}, model hash {saved[:12]}…); "
            f"this model's hash is {model_hash[:12]}…. Pick the weights the session was made with (--weights), or segment anew."
        )


def check_image(session: Session, shape: Sequence[int], read: Callable[[int], np.ndarray]) -> None:
    """Refuse a session made for another image: its shape, or the hash of a frame it was segmented on
    (``read(t)``: flat frame ``t``), differs. Only those frames are read."""
    from .store import frame_hash

    want = session.image.get("shape")
    if want is not None and list(want) != [int(v) for v in shape]:
        raise SessionError(f"{session.folder} was made on an image of shape {tuple(want)}, not {tuple(shape)}; open the image it was made on.")
    saved = session.image.get("frame_hashes") or {}
    bad = sorted(int(t) for t, h in saved.items() if frame_hash(read(int(t))) != int(h))
    if bad:
        raise SessionError(f"{session.folder} was made on another image: frame(s) {', '.join(map(str, bad[:5]))} differ; open the image it was made on.")


def object_generations(session: Session) -> dict[int, tuple[int, bool]]:
    """Label id -> ``(generation, overwrite)``: which write of the widget wrote each object (0 first) and
    whether that write covered existing labels. Empty for a session that records no generation (version
    1): its objects replay as one write, as they always did. A replay paints the objects of each frame
    write by write with ``engine.labels.paint_writes``; objects the session does not record as written
    (prompts added after the last *Segment*, labels refined with *Refine label*) come after every recorded write."""
    out = {}
    for lid, rec in session.objects.items():
        if isinstance(rec, dict) and isinstance(rec.get("generation"), int) and str(lid).isdigit():
            out[int(lid)] = (int(rec["generation"]), rec.get("overwrite") is True)
    return out


def saved_difference(session: Session, t: int, labels: np.ndarray) -> tuple[int, list[int]]:
    """How flat frame ``t``'s replayed ``(H, W)`` ``labels`` differ from the session's ``labels.tif``: the
    number of pixels, and the labels at those pixels (either side, sorted). ``(0, [])`` without saved labels.
    What a prompt replay does not redo (hand edits, Refine, Propagate, *Segment everything*) shows here."""
    saved = session.labels
    labels = np.asarray(labels)
    if saved is None or saved.size % max(labels.size, 1) or not 0 <= t < saved.size // max(labels.size, 1):
        return 0, []
    frame = saved.reshape((-1, *labels.shape))[t]
    diff = frame != labels
    n = int(diff.sum())
    return n, (sorted((set(np.unique(frame[diff]).tolist()) | set(np.unique(labels[diff]).tolist())) - {0}) if n else [])


def everything_runs(session: Session) -> list[dict]:
    """The *Segment everything* runs recorded in ``session`` (oldest first): dicts with ``sampler``,
    ``detector`` (path or None), ``options``, ``link`` ("none", "3d", "time"), ``frames`` ("all" or
    flat frame numbers), ``overwrite``, ``id_shift`` and, for ``link="time"``, ``parents``
    (``{track id (str): parent id}``)."""
    return [dict(r["everything"]) for r in session.runs if isinstance(r, dict) and isinstance(r.get("everything"), dict)]


def replay_everything(session: Session, image: Any, predictor: Any, detector: Any = None) -> tuple[np.ndarray, Any]:
    """Redo the session's *Segment everything* runs on ``image`` (the image it was made on).

    Args:
        image: the ``leading + (H, W[, C])`` stack (numpy, dask, zarr).
        predictor: a :class:`~.predictor.Predictor` (or ``Sam``) with the session's weights.
        detector: for an ``object-aware`` run, a loaded detector (default: the recorded path).

    Returns:
        ``(labels, links)``: the ``leading + (H, W)`` uint32 labels the runs wrote, and the
        :class:`~.link.Links` of the last linked run (None without one), its ids shifted as the
        widget shifted them.

    Raises:
        SessionError: the session records no *Segment everything* run.
    """
    from .everything import EverythingProgress, iter_segment_everything

    runs = everything_runs(session)
    if not runs:
        raise SessionError(f"{session.folder} records no Segment everything run to replay.")
    prep = {k: v for k, v in session.preprocess.items() if k in ("contrast_limits", "channels", "channel_axis") and v is not None}
    shape = tuple(session.labels.shape) if session.labels is not None else tuple(np.shape(image))[: len(session.image.get("shape", [])) or None]
    labels = np.zeros(shape, np.uint32)
    links = None
    for run in runs:
        frames = None if run.get("frames", "all") == "all" else [int(t) for t in run["frames"]]  # flat frame numbers
        rgb = None if prep.get("channel_axis") is not None else np.ndim(image) > len(shape)
        gen = iter_segment_everything(image, predictor, run["sampler"], detector or run.get("detector"), rgb=rgb, frames=frames,
                                      labels=labels, overwrite=bool(run.get("overwrite")), link=run.get("link", "none"),
                                      **dict(run.get("options") or {}), **prep)
        before = labels
        while True:
            try:
                item = next(gen)
            except StopIteration as stop:
                labels = np.asarray(stop.value, np.uint32)
                break
            if isinstance(item, EverythingProgress) and item.links is not None:
                links = item.links
        shift = int(run.get("id_shift") or 0)
        if shift:
            new = labels != before
            labels = np.where(new & (labels > 0), labels + np.uint32(shift), labels).astype(np.uint32)
            if links is not None and run.get("link") != "none":
                _shift_links(links, shift)
    return labels, links


def _shift_links(links: Any, shift: int) -> None:
    """Add ``shift`` to every id of ``links`` (tracks, parents, centroids), as the widget does."""
    links.tracks = links.tracks.copy()
    links.tracks[:, 0] += shift
    links.tracks[links.tracks[:, 3] > 0, 3] += shift
    links.centroids = links.centroids.copy()
    links.centroids[:, 0] += shift
