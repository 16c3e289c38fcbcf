"""napari-mobilesam: MobileSAM / MobileSAMv2 for microscopy, in napari and headless.

This module imports no napari, Qt or magicgui, so the engine can run on headless machines.
"""

from importlib.metadata import PackageNotFoundError, version

from .model import REGISTRY, CheckpointError, TinyViT, WeightsUnavailableError, build_mobilesam, download_weights

try:
    __version__ = version("napari-mobilesam")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "REGISTRY",
    "CheckpointError",
    "TinyViT",
    "WeightsUnavailableError",
    "__version__",
    "build_mobilesam",
    "download_weights",
]
