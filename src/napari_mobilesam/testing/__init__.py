"""Synthetic cells for functional tests (never imported by the package's main path)."""

from .synthetic import render_cells, sample_cells, synthetic_cells, synthetic_stack

__all__ = ["render_cells", "sample_cells", "synthetic_cells", "synthetic_stack"]
