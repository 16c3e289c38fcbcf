"""How torch's OpenMP threads wait: passive (sleep) instead of spinning, set before torch loads.

Why: torch's CPU kernels (and MKL's) run on an OpenMP pool (GNU libgomp in the PyPI wheels).
Between two parallel regions its threads spin-wait for the next one (libgomp: up to ~300,000
spins with the default ``OMP_WAIT_POLICY``). The decoder runs hundreds of small operations per
prompt; when another process holds a core, a spinning thread steals the time slice the working
thread needs, and every synchronisation waits for a thread that is not scheduled. Measured on a
2-core machine with one other busy process: a click took 1.0-3.4 s of wall time at 2 threads
against ~0.1 s of CPU (issue 25). With ``OMP_WAIT_POLICY=PASSIVE`` idle threads sleep at once
and the slowdown follows the lost CPU share instead.

libgomp reads these variables once, when the library is loaded (``import torch``), so
:func:`configure_openmp` must run before that: the ``mobilesam`` command calls it first thing and
the napari plugin when its GUI package is imported. If torch is already loaded (e.g. another
plugin imported it) nothing can be changed and it says so.

Overrides: ``NAPARI_MOBILESAM_OMP_WAIT=passive|active|off`` (off: leave OpenMP's defaults);
an ``OMP_WAIT_POLICY`` the user set themselves always wins. ``OMP_NUM_THREADS`` and
``torch.set_num_threads`` are untouched.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["ENV", "configure_openmp"]

log = logging.getLogger("napari_mobilesam")

ENV = "NAPARI_MOBILESAM_OMP_WAIT"


def configure_openmp(default: str = "passive") -> str | None:
    """Set OpenMP's wait policy for this process before torch is imported.

    Returns the policy now in the environment (``"PASSIVE"``/``"ACTIVE"``), or None when it was
    left alone (``NAPARI_MOBILESAM_OMP_WAIT=off``, or torch was already loaded, so that a change
    would not take effect).
    """
    choice = os.environ.get(ENV, default).strip().lower()
    if choice in ("off", "0", "no", "false", ""):
        return None
    if choice not in ("passive", "active"):
        log.warning("%s must be 'passive', 'active' or 'off', got %r: OpenMP's defaults are kept.", ENV, choice)
        return None
    if "torch" in sys.modules:
        log.debug("torch is already loaded: OpenMP's wait policy stays %s", os.environ.get("OMP_WAIT_POLICY", "default"))
        return None
    os.environ.setdefault("OMP_WAIT_POLICY", choice.upper())
    return os.environ["OMP_WAIT_POLICY"]
