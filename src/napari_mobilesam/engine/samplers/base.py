"""What a segment-everything sampler is, and the registry that the engine, the CLI and the widget read.

A sampler proposes the objects of one frame (or tile) whose embedding is set on the predictor. It is
an object with (see :class:`Sampler`):

- ``name`` (``--sampler NAME``, ``sampler="NAME"``), ``label`` (the widget's choice), ``help`` and
  ``empty_hint`` (what to try when a frame gives no object);
- ``options``: a dataclass of its own options. Each field's type and default are the option's; its
  ``metadata`` (made by :func:`opt`) holds the help text, which makes it a ``mobilesam everything``
  flag, and optionally ``gui`` (a widget control: label, range, step);
- ``score_defaults``: ``(min_score, min_stability)`` used when the user sets none;
- ``needs_detector``;
- ``propose(ctx, rgb, key, options)``: a generator that yields ``(fraction done 0..1, message)``
  and returns the frame's masks (:class:`~..predictor.ObjectMask`). It polls ``ctx.stop()`` between
  decode batches; when it stops early it sets ``ctx.partial`` (what was done) and returns the masks
  decoded so far.

:func:`register_sampler` adds one; from then on it is a choice of the engine, of ``mobilesam everything``
(with its flags) and of the widget. The registry is the one mutable table of the engine, on purpose: it
is what makes a sampler pluggable (as segment-anything's ``sam_model_registry``).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Generator, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ..errors import SettingsError

if TYPE_CHECKING:
    from ..predictor import ObjectMask, Predictor

__all__ = [
    "CommonOptions", "OptionSpec", "Sampler", "SamplerContext", "decode_boxes", "default_sampler", "get_sampler",
    "opt", "option_specs", "register_sampler", "sampler_names", "unregister_sampler",
]


def opt(default: Any, help: str = "", *, gui: dict | None = None, choices: Sequence[str] | None = None,
        metavar: str | None = None, kind: str | None = None) -> Any:
    """A sampler option: a dataclass field with ``default`` and, in its metadata, ``help`` (a non-empty
    help makes it a ``mobilesam everything --flag``), ``choices``, ``metavar``, ``kind`` ("fraction":
    0..1) and ``gui`` (a widget control: ``label``, ``min``, ``max``, ``step``, ``tooltip``; an option
    whose default is None shows 0 for it, and 0 means None (automatic) unless ``auto`` is False)."""
    meta = {"help": help, "gui": gui, "choices": tuple(choices) if choices else None, "metavar": metavar, "kind": kind}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class CommonOptions:
    """Options of every sampler: the labels rule's filters and tiling (see ``iter_segment_everything``).
    ``min_score`` / ``min_stability`` None: the sampler's ``score_defaults``."""

    min_score: float | None = opt(None, "drop masks with predicted IoU below this", metavar="S",
                                  gui={"label": "min IoU", "min": 0.0, "max": 1.0, "step": 0.05, "auto": False,
                                       "tooltip": "Drop masks whose predicted IoU (the model's own quality score) is lower"})
    min_stability: float | None = opt(None, "drop masks with stability score below this", metavar="S")
    min_area: int = opt(1, "drop objects smaller than this", metavar="PX")
    max_area: int | None = opt(None, "drop objects larger than this", metavar="PX")
    min_visible: float = opt(0.5, "drop objects less than this fraction visible, 0..1", metavar="F", kind="fraction")
    tile: int | None = opt(None, "segment frames larger than PX pixels tile by tile (e.g. 1024)", metavar="PX",
                           gui={"label": "tile", "min": 0, "max": 100000, "step": 256,
                                "tooltip": "Tile size in pixels. Frames larger than this are segmented tile by tile at the model's "
                                "resolution (tiles overlap by a quarter; objects cut by a tile come from its neighbour); 0 = off"})
    tile_overlap: int | None = opt(None, "overlap of neighbouring tiles, at least the largest object (default tile/4)", metavar="PX")


@dataclass
class SamplerContext:
    """What ``propose`` works with: the predictor (its frame set), the loaded detector (samplers that
    need one), ``stop`` (polled between decode batches) and ``partial``, which ``propose`` sets to what
    it finished (e.g. ``"3 of 16 point batches"``) when it stopped early."""

    predictor: Predictor
    detector: Any = None
    stop: Callable[[], bool] = lambda: False
    min_score: float = 0.0  # the run's filters (the sampler's score_defaults unless the user set them), for samplers
    min_stability: float = 0.0  # that filter while they decode (the grid); the engine filters every mask afterwards too
    partial: str | None = None


@runtime_checkable
class Sampler(Protocol):
    """A segment-everything sampler (see the module docstring)."""

    name: str
    label: str
    help: str
    empty_hint: str
    options: type
    score_defaults: tuple[float, float]
    needs_detector: bool

    def propose(self, ctx: SamplerContext, rgb: np.ndarray, key: Hashable | None,
                options: Any) -> Generator[tuple[float, str], None, list[ObjectMask]]:
        """Masks of the objects of ``rgb`` (``(H, W, 3)`` uint8, already set on ``ctx.predictor`` under
        ``key``); yields ``(fraction done, message)``."""
        ...


_REGISTRY: dict[str, Sampler] = {}


def register_sampler(sampler: Any, replace: bool = False) -> Any:
    """Add ``sampler`` (an instance, or a class made with no arguments) to the registry: the engine,
    ``mobilesam everything`` and the widget offer it from then on. Returns its argument, so that it can
    decorate a class. A name already taken raises unless ``replace``."""
    given, sampler = sampler, sampler() if isinstance(sampler, type) else sampler
    if not isinstance(sampler, Sampler) or not dataclasses.is_dataclass(sampler.options):
        raise TypeError(f"{sampler!r} is not a Sampler: it needs name, label, help, empty_hint, an options dataclass, "
                        "score_defaults, needs_detector and propose().")
    clash = set(f.name for f in dataclasses.fields(sampler.options)) & set(f.name for f in dataclasses.fields(CommonOptions))
    if clash:
        raise TypeError(f"sampler {sampler.name!r}: options {sorted(clash)} are common to every sampler (CommonOptions).")
    if sampler.name in _REGISTRY and not replace:
        raise SettingsError(f"A sampler named {sampler.name!r} is registered already; pass replace=True to replace it.")
    _REGISTRY[sampler.name] = sampler
    return given


def unregister_sampler(name: str) -> None:
    """Remove a sampler added by :func:`register_sampler` (tests, plugins that unload)."""
    _REGISTRY.pop(name, None)


def sampler_names() -> tuple[str, ...]:
    """The registered samplers' names, in registration order (the built-ins first)."""
    return tuple(_REGISTRY)


def get_sampler(name: str) -> Sampler:
    """The sampler called ``name``; an unknown name raises :class:`SettingsError` naming the choices."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise SettingsError(f"sampler must be one of {', '.join(map(repr, _REGISTRY))}; got {name!r}.") from None


def default_sampler(detector: Any = None) -> str:
    """The sampler used when none is named, in the engine, the CLI and the widget alike: ``"object-aware"``
    (MobileSAMv2) when a detector is given, else ``"blobs"`` (no extra weights; made for the compact
    objects of microscopy, and far faster than SAM's 32 x 32 grid)."""
    return "object-aware" if detector is not None and detector != "" else "blobs"


@dataclass(frozen=True)
class OptionSpec:
    """One option as the CLI and the widget see it: its ``name``, Python ``type`` (int, float, str),
    ``default`` per sampler (``defaults``), ``help``, ``choices``, ``metavar``, ``kind`` and ``gui``."""

    name: str
    type: type
    defaults: dict[str, Any]
    help: str
    choices: tuple[str, ...] | None
    metavar: str | None
    kind: str | None
    gui: dict | None

    @property
    def samplers(self) -> tuple[str, ...]:
        return tuple(self.defaults)


def _plain_type(hint: Any) -> type | None:
    """int / float / str / bool from a field's type (``float | None`` -> float); None for others."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return args[0] if len(args) == 1 and args[0] in (int, float, str, bool) else None


def option_specs(samplers: Sequence[str] | None = None) -> dict[str, OptionSpec]:
    """Every option with help text, of the common options and of ``samplers`` (default: all registered),
    by name; an option several samplers share is one entry (``defaults`` per sampler)."""
    names = list(samplers) if samplers is not None else list(_REGISTRY)
    out: dict[str, OptionSpec] = {}
    for owner, cls in [("", CommonOptions)] + [(n, get_sampler(n).options) for n in names]:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            meta, typ = f.metadata, _plain_type(hints[f.name])
            if not meta.get("help") or typ is None:
                continue  # API-only option
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc,operator]
            defaults = {n: default for n in names} if not owner else {owner: default}
            if f.name in out:
                defaults = {**out[f.name].defaults, **defaults}
            out[f.name] = OptionSpec(f.name, typ, defaults, meta["help"], meta.get("choices"), meta.get("metavar"),
                                     meta.get("kind"), meta.get("gui"))
    return out


def decode_boxes(ctx: SamplerContext, boxes: np.ndarray, with_point: bool = False) -> Generator[tuple[float, str], None, list[ObjectMask]]:
    """Masks of box prompts ``(N, 4)`` (row0, col0, row1, col1), single-mask mode, ``batch_size`` at a
    time (the box samplers' shared second half); ``with_point``: the box's centre as a click too.
    Degenerate boxes (under 1 px wide or high) are left out. Yields ``(fraction, message)``."""
    from ..predictor import Prompt

    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    boxes = boxes[(boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)]
    prompts = [Prompt(points=((b[:2] + b[2:]) / 2)[None], box=b) if with_point else Prompt(box=b) for b in boxes]
    yield 0.1, f"{len(prompts)} boxes"
    objects: list[ObjectMask] = []
    pred = ctx.predictor
    step = pred.batch_size
    for start in range(0, len(prompts), step):
        if ctx.stop():  # cancelled: the boxes decoded so far count (a partial frame)
            ctx.partial = f"{start} of {len(prompts)} boxes"
            break
        batch = pred.predict_objects(prompts[start : start + step], multimask_output=False)
        for o in batch:  # 256 KiB each, not needed here: keep a frame's objects small
            o.low_res_logits = None  # type: ignore[assignment]  # ObjectMask allows None (not kept)
        objects += batch
        n = min(start + step, len(prompts))
        yield 0.1 + 0.9 * n / len(prompts), f"decoded {n}/{len(prompts)} boxes"
    return objects


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    """Raise :class:`SettingsError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise SettingsError(f"{name} must be {' or '.join(map(repr, choices))}, got {value!r}.")
