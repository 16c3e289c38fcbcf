"""Keep glibc from handing the encoder's working memory back to the kernel after every frame.

glibc serves every allocation above 128 KiB-32 MiB with a fresh ``mmap`` and unmaps it on free,
so each 1024² frame through the encoder (about 250 MB of short-lived activations) faults its
memory in again, page by page: here ~90,000 page faults and ~0.3 s of kernel time per frame,
measured with ``Predictor.set_image`` on eight new 1024² frames (0.8-1.2 s -> 0.63-0.68 s per
frame). ``benchmarks/bench_encoder.py --malloc``, which encodes one frame over and over, did not
show the gain.

:func:`tune_allocator` serves large blocks from the heap instead and keeps up to
:data:`TRIM_BYTES` of freed memory for the next frame (what PyTorch's CPU tuning guide gets by
preloading jemalloc or tcmalloc, without a second allocator). The cost is memory: up to that much
freed memory stays with the process. The ``mobilesam`` command and its dask workers call it; the
napari widget does not (a viewer opens and closes big images, whose memory should go back), unless
``NAPARI_MOBILESAM_MALLOC=on``. ``NAPARI_MOBILESAM_MALLOC=off`` turns it off everywhere.
Not glibc (macOS, Windows, musl): nothing is changed.
"""

from __future__ import annotations

import ctypes
import logging
import os

__all__ = ["ENV", "TRIM_BYTES", "tune_allocator"]

log = logging.getLogger("napari_mobilesam")

ENV = "NAPARI_MOBILESAM_MALLOC"
TRIM_BYTES = 256 << 20
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's malloc.h
_done: bool | None = None


def tune_allocator(default: bool = True) -> bool:
    """Tune glibc's allocator for repeated large tensors (once per process); True if it is tuned.

    ``default``: whether to tune when ``NAPARI_MOBILESAM_MALLOC`` is unset ("on"/"off" decide
    otherwise).
    """
    global _done
    setting = os.environ.get(ENV, "").strip().lower()
    if setting in ("off", "0", "no", "false") or (not default and setting not in ("on", "1", "yes", "true")):
        return bool(_done)
    if _done is not None:
        return _done
    _done = False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: other allocators have other knobs
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # no mmap for large blocks (glibc still falls back to mmap when the heap cannot grow)
    _done = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES))
    log.debug("glibc malloc tuned for large tensors: %s", _done)
    return _done
