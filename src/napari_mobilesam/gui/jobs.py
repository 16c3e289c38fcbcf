"""Long work for the widget, as generators run in napari's ``thread_worker`` (no napari here).

Each job yields messages; the widget applies them on the GUI thread:
:class:`Progress` (progress bar), :class:`ModelReady` (keep the built model),
:class:`FrameDone` (write one frame's masks). Scripts and tests can run them inline.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from segment_anything.modeling import Sam

from .._progress import relay
from ..engine.decode import decode_objects
from ..engine.embeddings import EmbeddingCache
from ..engine.objects import ObjectMask
from ..engine.predictor import Predictor
from ..engine.prompts import ObjectPrompt
from ..model.build import build_mobilesam
from ..model.weights import REGISTRY, iter_fetch

__all__ = [
    "FrameDone", "FrameReady", "ModelReady", "Progress", "built", "decode_objects", "frame_step", "load_model", "segment_frames", "worker_predictor",
]

Frame = tuple[int, ...]


@dataclass
class Progress:
    done: int
    total: int  # 0: unknown (busy indicator)
    message: str


@dataclass
class ModelReady:
    sam: Sam
    key: tuple


@dataclass
class FrameReady:
    """A frame's embedding is cached; ``decoder`` is its prompt-independent decoder state, built in
    the worker so that the first live click on the frame does not pay for it on the GUI thread."""

    frame: Frame
    key: Hashable
    decoder: object


@dataclass
class FrameDone:
    """Masks of one frame: ``masks[i]`` belongs to ``objects[i]``."""

    frame: Frame
    objects: list[ObjectPrompt]
    masks: list[ObjectMask]


def load_model(source: str | Path, device: str, decoder: str | Path | None = None) -> Generator[Progress | ModelReady, None, Sam]:
    """Download registry weights if needed (with byte progress), then build the model; ``decoder``:
    MobileSAMv2's decoder (registry name or path) replacing the checkpoint's. The model's key is
    ``(source, device)``, plus the decoder when one is given."""

    def fetch(name: str | Path) -> Generator[Progress, None, Path]:
        if isinstance(name, str) and name in REGISTRY:
            return (yield from relay(iter_fetch(name), lambda p: Progress(p[0], p[1], f"downloading {name} weights")))
        return Path(name)

    path = yield from fetch(source)
    decoder_path = None if decoder is None else (yield from fetch(decoder))
    yield Progress(0, 0, f"loading model {Path(path).name}" + (f" with decoder {Path(decoder_path).name}" if decoder_path else ""))
    from .._malloc import tune_allocator

    tune_allocator(default=False)  # in napari only with NAPARI_MOBILESAM_MALLOC=on (see _malloc)
    sam = build_mobilesam(path, device=device, decoder=decoder_path)
    yield ModelReady(sam, (str(source), device) + ((str(decoder),) if decoder is not None else ()))
    return sam


def built(model: Sam | Generator) -> Generator[Progress | ModelReady, None, Sam]:
    """The model of the widget's ``model_step()`` inside a job: as it is, or built by running its
    generator (download, load, store check), whose messages pass through."""
    return (yield from model) if isinstance(model, Generator) else model


def worker_predictor(sam: Sam, cache: EmbeddingCache) -> Predictor:
    """A predictor for a worker thread that shares the widget's embedding cache (thread-safe LRU)."""
    pred = Predictor(sam)
    pred.cache = cache
    return pred


def frame_step(f: Frame, embedding: bool, n_objects: int) -> str:
    """Progress text: "image embedding" / "decoding 3 objects", prefixed by "frame 4: " on a stack."""
    what = "image embedding" if embedding else f"decoding {n_objects} object{'s' if n_objects != 1 else ''}"
    return f"frame {', '.join(str(int(v)) for v in f)}: {what}" if f else what


def segment_frames(
    model: Sam | Generator,
    cache: EmbeddingCache,
    frame: Callable[[Frame], np.ndarray],
    key: Callable[[Frame], Hashable],
    work: Sequence[tuple[Frame, list[ObjectPrompt]]],
    image_kwargs: dict,
) -> Generator[Progress | ModelReady | FrameDone, None, int]:
    """Embed each frame (cached) and decode its objects; ``work`` items with no objects only embed.

    ``model`` is a built ``Sam`` or a :func:`load_model` generator. Returns the frames done.
    """
    pred = worker_predictor((yield from built(model)), cache)
    n = len(work)
    for k, (f, objects) in enumerate(work):
        yield Progress(k, n, frame_step(f, key(f) not in cache, len(objects)))
        pred.set_image(frame(f), key=key(f), **image_kwargs)
        if objects:
            yield FrameDone(f, list(objects), decode_objects(pred, objects))
        else:
            yield FrameReady(f, key(f), pred.frame_decoder)
    yield Progress(n, n, "done")
    return n
