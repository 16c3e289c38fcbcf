"""Model code (torch only): TinyViT encoder, builder, weights registry, detector."""

from .build import CheckpointError, build_mobilesam, resolve_device
from .tiny_vit import TinyViT
from .weights import REGISTRY, WeightsUnavailableError, download_weights

__all__ = [
    "REGISTRY",
    "CheckpointError",
    "TinyViT",
    "WeightsUnavailableError",
    "build_mobilesam",
    "download_weights",
    "resolve_device",
]
