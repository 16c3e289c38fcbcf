"""napari-mobilesam: MobileSAM / MobileSAMv2 for microscopy, in napari and headless.

This module imports no napari, Qt or magicgui, so the engine can run on headless machines.
Public names are imported on first use (PEP 562), so ``mobilesam --help`` and the napari
manifest do not pay for importing torch.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("napari-mobilesam")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

# public name -> submodule that defines it
_EXPORTS = {
    "Embedding": ".engine.embeddings",
    "EmbeddingCache": ".engine.embeddings",
    "iter_segment_everything": ".engine.everything",
    "segment_everything": ".engine.everything",
    "to_rgb_uint8": ".engine.image",
    "ObjectMask": ".engine.predictor",
    "Predictor": ".engine.predictor",
    "Prompt": ".engine.predictor",
    "iter_propagate": ".engine.propagate",
    "render_labels": ".engine.labels",
    "write_labels": ".engine.labels",
    "optimize_encoder": ".model.accelerate",
    "CheckpointError": ".model.build",
    "build_mobilesam": ".model.build",
    "TinyViT": ".model.tiny_vit",
    "REGISTRY": ".model.weights",
    "WeightsUnavailableError": ".model.weights",
    "download_weights": ".model.weights",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # for type checkers and IDEs
    from .engine.embeddings import Embedding, EmbeddingCache
    from .engine.everything import iter_segment_everything, segment_everything
    from .engine.image import to_rgb_uint8
    from .engine.labels import render_labels, write_labels
    from .engine.predictor import ObjectMask, Predictor, Prompt
    from .engine.propagate import iter_propagate
    from .model.accelerate import optimize_encoder
    from .model.build import CheckpointError, build_mobilesam
    from .model.tiny_vit import TinyViT
    from .model.weights import REGISTRY, WeightsUnavailableError, download_weights
