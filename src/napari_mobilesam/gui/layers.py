"""napari layers <-> engine data: frame geometry, prompt tables, prompt/label layer creation."""

from __future__ import annotations

import warnings
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from napari.layers import Image, Labels, Points, Shapes

from ..engine.image import channels_last
from ..engine.prompts import PromptTable

__all__ = [
    "POSITIVE_COLOR",
    "NEGATIVE_COLOR",
    "CHANNELS",
    "FrameGeometry",
    "channel_axis",
    "current_frame",
    "dedupe_ids",
    "next_free_label",
    "ensure_point_features",
    "ensure_shape_features",
    "frame_data",
    "frame_image",
    "image_key",
    "image_kwargs",
    "new_labels_layer",
    "new_points_layer",
    "new_shapes_layer",
    "prompt_table",
]

POSITIVE_COLOR = "lime"
NEGATIVE_COLOR = "magenta"
MARK = "napari-mobilesam"  # metadata key of layers this plugin created
CHANNELS = "napari-mobilesam channel axis"  # image metadata: the data axis the user chose as channels, or "frames"

Frame = tuple[int, ...]


@dataclass(frozen=True)
class FrameGeometry:
    """How an image layer splits into frames.

    Attributes:
        lead_shape: sizes of the leading (stack) dimensions, ``()`` for one 2D image.
        spatial: ``(H, W)``.
        rgb: frames carry a last colour/channel axis (napari's ``rgb``, or a chosen channel axis moved
            last, see :func:`frame_data`), not part of the stack.
    """

    lead_shape: tuple[int, ...]
    spatial: tuple[int, int]
    rgb: bool

    @property
    def n_lead(self) -> int:
        return len(self.lead_shape)

    @property
    def n_frames(self) -> int:
        return int(np.prod(self.lead_shape)) if self.lead_shape else 1

    @property
    def frames(self) -> list[Frame]:
        return [tuple(int(v) for v in f) for f in np.ndindex(*self.lead_shape)] if self.lead_shape else [()]

    @classmethod
    def of(cls, image: Image) -> FrameGeometry:
        data = frame_data(image)
        shape = tuple(int(s) for s in data.shape)
        rgb = bool(image.rgb) or channel_axis(image) is not None
        if rgb:
            shape = shape[:-1]
        if len(shape) < 2:
            raise ValueError(f"Image layer {image.name!r} has shape {data.shape}; it needs at least two spatial dimensions.")
        return cls(shape[:-2], shape[-2:], rgb)


def channel_axis(image: Image) -> int | None:
    """The axis of the layer's data chosen (in the widget) to hold channels, ``>= 0``; None: none chosen."""
    a = image.metadata.get(CHANNELS)
    ndim = len((image.data[0] if image.multiscale else image.data).shape)
    ok = isinstance(a, int) and not isinstance(a, bool) and not image.rgb and 0 <= a < ndim and a != ndim - 2 and ndim >= 3
    return a if ok else None


def frame_data(image: Image):
    """The layer's full-resolution data as frames ``(..., H, W)`` or ``(..., H, W, C)``: with a chosen
    channel axis, the engine's lazy view with that axis moved last (:func:`~..engine.image.channels_last`,
    as ``channel_axis=`` of the API and ``--channel-axis`` of the CLI)."""
    data = image.data[0] if image.multiscale else image.data
    a = channel_axis(image)
    return data if a is None else channels_last(data, a)


def frame_image(image: Image, frame: Frame) -> np.ndarray:
    """The ``(H, W)`` or ``(H, W, C)`` pixels of ``frame`` (full resolution for multiscale data)."""
    return np.asarray(frame_data(image)[tuple(frame)])


def image_kwargs(image: Image) -> dict:
    """``Predictor.set_image`` options so that the model sees what the user sees."""
    dtype = np.dtype((image.data[0] if image.multiscale else image.data).dtype)
    kw = {} if channel_axis(image) is None else {"channel_axis": -1}  # frames come with their channels last
    if dtype in (np.dtype(np.uint8), np.dtype(bool)):
        return kw
    return {**kw, "contrast_limits": tuple(float(v) for v in image.contrast_limits)}


def image_key(image: Image, frame: Frame) -> Hashable:
    """Embedding cache key: the layer (its data object and channel axis), the frame, and the contrast window."""
    clim = image_kwargs(image).get("contrast_limits")
    return ("napari", (image.unique_id, id(image.data), channel_axis(image)), tuple(frame), clim)


def current_frame(dims_point: np.ndarray, image: Image) -> Frame:
    """Leading indices of the frame the viewer shows for ``image`` (clipped to the stack)."""
    geo = FrameGeometry.of(image)
    if not geo.n_lead:
        return ()
    pos = np.round(image.world_to_data(np.asarray(dims_point)))
    a = channel_axis(image)
    pos = (pos if a is None else np.delete(pos, a))[: geo.n_lead].astype(int)
    return tuple(int(np.clip(v, 0, s - 1)) for v, s in zip(pos, geo.lead_shape, strict=True))


def _to_image(coords: np.ndarray, layer, image: Image) -> np.ndarray:
    """Layer data coordinates -> image data coordinates (same-dimensional layers only), without the
    coordinate of a chosen channel axis (a prompt belongs to all channels of its frame)."""
    if coords.size == 0 or layer.ndim != image.ndim:
        return coords
    fwd, inv = layer._data_to_world, image._data_to_world  # napari's own affine transforms
    if not np.allclose(fwd.affine_matrix, inv.affine_matrix):
        coords = np.asarray(inv.inverse(fwd(coords)))
    a = channel_axis(image)
    return coords if a is None else np.delete(coords, a, axis=-1)


def _column(features: pd.DataFrame, name: str, n: int, default: int) -> np.ndarray:
    if name not in features:
        return np.full(n, default, dtype=int)
    col = pd.to_numeric(features[name], errors="coerce").fillna(default)
    return col.to_numpy().astype(int)


def prompt_table(points: Points | None, shapes: Shapes | None, image: Image) -> PromptTable:
    """Read both prompt layers into image data coordinates (features as documented in prompts.py)."""
    t = PromptTable()
    if points is not None and len(points.data):
        n = len(points.data)
        f = points.features
        t.points = _to_image(np.asarray(points.data, float), points, image)
        t.point_labels = np.where(_column(f, "label", n, 1) > 0, 1, 0)
        t.point_groups = _column(f, "object", n, 0)
        t.point_ids = _column(f, "label_id", n, 0)
        t.point_masks = _column(f, "mask", n, 0)
    if shapes is not None and len(shapes.data):
        n = len(shapes.data)
        t.shapes = [_to_image(np.asarray(v, float), shapes, image) for v in shapes.data]
        t.shape_ids = _column(shapes.features, "label_id", n, 0)
        t.shape_masks = _column(shapes.features, "mask", n, 0)
    return t


def dedupe_ids(layer: Points | Shapes | None) -> None:
    """A new row may inherit the selected row's features: one label id per box / single positive point
    (negative points hold the id of the object they refine: engine/prompts.py)."""
    if layer is None or "label_id" not in layer.features or not len(layer.features):
        return
    f = layer.features
    single = (f["object"] <= 0) if "object" in f else np.ones(len(f), bool)
    if "label" in f:
        single &= f["label"] > 0
    ids = f["label_id"].where(single & (f["label_id"] > 0))
    dup = ids.duplicated() & ids.notna()
    if dup.any():
        f.loc[dup, ["label_id", "mask"]] = 0


def next_free_label(labels: Labels | None, prompt_layers) -> int:
    """One more than any label in ``labels`` and any ``label_id`` already given to a prompt."""
    top = int(np.max(labels.data)) if labels is not None and labels.data.size else 0
    for pl in prompt_layers:
        if pl is not None and "label_id" in pl.features and len(pl.features):
            top = max(top, int(pl.features["label_id"].max()))
    return top + 1


def _same_transform(image: Image) -> dict:
    a = channel_axis(image)  # layers made for the frames have no channel axis
    keep = [i for i in range(image.ndim) if i != a]
    return {"scale": np.asarray(image.scale)[keep], "translate": np.asarray(image.translate)[keep]}


def ensure_point_features(points: Points) -> None:
    """Give a Points layer the columns the widget uses (label, object, label_id, mask)."""
    n = len(points.data)
    f = points.features
    defaults = {"label": 1, "object": 0, "label_id": 0, "mask": 0}
    missing = {k: v for k, v in defaults.items() if k not in f}
    if missing:
        for k, v in missing.items():
            f[k] = np.full(n, v, dtype=int)
        points.features = f
    fd = points.feature_defaults
    for k, v in defaults.items():
        if k not in fd or pd.isna(fd[k].iloc[0]):
            fd[k] = v
    points.feature_defaults = fd


def ensure_shape_features(shapes: Shapes) -> None:
    f = shapes.features
    if "label_id" not in f or "mask" not in f:
        for k in ("label_id", "mask"):
            if k not in f:
                f[k] = np.zeros(len(shapes.data), dtype=int)
        shapes.features = f
    shapes.feature_defaults = {**{k: shapes.feature_defaults[k].iloc[0] for k in shapes.feature_defaults}, "label_id": 0, "mask": 0}


def new_points_layer(image: Image) -> Points:
    """Prompt points for ``image``: positive green, negative magenta; 3D+ for stacks."""
    ndim = FrameGeometry.of(image).n_lead + 2
    features = pd.DataFrame({"label": np.zeros(0, int), "object": np.zeros(0, int), "label_id": np.zeros(0, int), "mask": np.zeros(0, int)})
    size = min(12.0, max(3.0, 0.015 * max(FrameGeometry.of(image).spatial)))  # 12 px at most: a click must not hide a cell
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "label looks categorical": it is, by design
        layer = Points(
            np.zeros((0, ndim)),
            ndim=ndim,
            name=f"{image.name} points",
            features=features,
            feature_defaults={"label": 1, "object": 0, "label_id": 0, "mask": 0},
            face_color="label",
            face_color_cycle={1: POSITIVE_COLOR, 0: NEGATIVE_COLOR},
            border_color="white",
            size=size,
            canvas_size_limits=(6, 10000),  # zoomed out on a large frame, a 12 px click still shows as 6 screen px
            metadata={MARK: "points", "image": image.name},
            **_same_transform(image),
        )
    return layer


def new_shapes_layer(image: Image) -> Shapes:
    """Prompt boxes for ``image`` (rectangles; any other shape counts by its bounding box)."""
    ndim = FrameGeometry.of(image).n_lead + 2
    return Shapes(
        ndim=ndim,
        name=f"{image.name} boxes",
        features=pd.DataFrame({"label_id": np.zeros(0, int), "mask": np.zeros(0, int)}),
        feature_defaults={"label_id": 0, "mask": 0},
        edge_color=POSITIVE_COLOR,
        face_color="transparent",
        edge_width=max(1.0, 0.004 * max(FrameGeometry.of(image).spatial)),
        metadata={MARK: "shapes", "image": image.name},
        **_same_transform(image),
    )


def new_labels_layer(image: Image) -> Labels:
    """An empty uint32 Labels layer with the image's stack and spatial shape."""
    geo = FrameGeometry.of(image)
    return Labels(
        np.zeros(geo.lead_shape + geo.spatial, dtype=np.uint32),
        name=f"{image.name} labels",
        metadata={MARK: "labels", "image": image.name},
        **_same_transform(image),
    )
