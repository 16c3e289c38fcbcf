"""napari GUI: the only package that imports napari, qtpy or magicgui.

Importing this package first keeps *triton* out of the napari process (:func:`block_triton`).
"""

from __future__ import annotations

import os
import sys

__all__ = ["block_triton"]

ALLOW_TRITON_ENV = "NAPARI_MOBILESAM_ALLOW_TRITON"


def block_triton() -> bool:
    """Make ``import triton`` fail in this process, unless it is already loaded; True if blocked.

    Why: PyTorch's CUDA wheels bring triton, which bundles its own LLVM. segment-anything imports
    torchvision, which imports ``torch._dynamo``, which imports triton. When napari has already
    created its OpenGL context on Mesa (llvmpipe, and the Mesa drivers of AMD and Intel GPUs, all
    of which load Mesa's libLLVM), loading triton's LLVM on top of it segfaults (exit 139 in
    ``triton/knobs.py``): opening the widget from *Plugins* in a running napari crashed. Loading torch
    before the GL context is not possible from a plugin, and avoiding the torchvision import is not
    possible with segment-anything, so the fix is here: this plugin never uses triton (it is only
    needed by ``torch.compile``'s GPU backend), and torch treats a missing triton as "not installed"
    (``torch.utils._triton.has_triton()`` is False; CUDA inference is unaffected).

    A ``None`` entry in ``sys.modules`` is Python's documented way to make an import raise
    ImportError. Set ``NAPARI_MOBILESAM_ALLOW_TRITON=1`` to keep triton importable (e.g. with
    hardware OpenGL that does not load LLVM, for another plugin that needs ``torch.compile``).
    """
    if os.environ.get(ALLOW_TRITON_ENV, "") not in ("", "0") or "triton" in sys.modules:
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]
    return True


block_triton()
from .._threads import configure_openmp

configure_openmp()  # before the widget imports torch (see napari_mobilesam._threads)
