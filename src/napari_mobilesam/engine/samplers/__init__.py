"""Segment-everything samplers, in one place: the :class:`Sampler` protocol, its registry and the built-ins.

- ``"blobs"`` (:mod:`.blobs`): boxes from scale-space blob detection; no extra weights. The default
  sampler when no detector is given (:func:`default_sampler`).
- ``"object-aware"`` (:mod:`.objectaware`): MobileSAMv2's YOLO detector proposes boxes. The default
  when a detector is given.
- ``"grid"`` (:mod:`.pointgrid`): segment-anything's 32 x 32 point grid on the fast decoder.

A new sampler is one file: a class with the attributes of :class:`Sampler`, an options dataclass whose
fields use :func:`opt`, and ``@register_sampler``. The engine (``iter_segment_everything(sampler=...)``),
``mobilesam everything`` (``--sampler`` and one flag per option with help text) and the widget (its
sampler choice and one control per option with ``gui``) all read the registry.
"""

from __future__ import annotations

from .base import (
    CommonOptions,
    OptionSpec,
    Sampler,
    SamplerContext,
    decode_boxes,
    default_sampler,
    get_sampler,
    opt,
    option_specs,
    register_sampler,
    sampler_names,
    unregister_sampler,
)
from .blobs import BlobsOptions, BlobsSampler, _grey, blob_boxes, blob_contrast, estimate_diameter, noise_level
from .objectaware import ObjectAwareOptions, ObjectAwareSampler
from .pointgrid import GridOptions, GridSampler, grid_batch_size, iter_grid_objects

__all__ = [
    "BlobsOptions", "BlobsSampler", "CommonOptions", "GridOptions", "GridSampler", "ObjectAwareOptions", "ObjectAwareSampler",
    "OptionSpec", "Sampler", "SamplerContext", "blob_boxes", "blob_contrast", "decode_boxes", "default_sampler",
    "estimate_diameter", "get_sampler", "grid_batch_size", "iter_grid_objects", "noise_level", "opt", "option_specs",
    "register_sampler", "sampler_names", "unregister_sampler",
]
_ = _grey  # re-exported for the tests that import it from the old module path
