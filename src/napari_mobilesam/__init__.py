"""napari-mobilesam: MobileSAM / MobileSAMv2 for microscopy, in napari and headless.

This module imports no napari, Qt or magicgui, so the engine can run on headless machines.
"""

from importlib.metadata import PackageNotFoundError, version

from .engine.embeddings import Embedding, EmbeddingCache
from .engine.everything import iter_segment_everything, segment_everything
from .engine.image import to_rgb_uint8
from .engine.predictor import ObjectMask, Predictor, Prompt
from .model import REGISTRY, CheckpointError, TinyViT, WeightsUnavailableError, build_mobilesam, download_weights

try:
    __version__ = version("napari-mobilesam")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "REGISTRY",
    "CheckpointError",
    "Embedding",
    "EmbeddingCache",
    "ObjectMask",
    "Predictor",
    "Prompt",
    "TinyViT",
    "WeightsUnavailableError",
    "__version__",
    "build_mobilesam",
    "download_weights",
    "iter_segment_everything",
    "segment_everything",
    "to_rgb_uint8",
]
