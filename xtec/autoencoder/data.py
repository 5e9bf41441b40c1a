"""Patterns and spectra as xarray: where notebooks and scripts import them from.

The readers and the writer live in :mod:`xtec.io.curves` (shared with the
classifier), the generators in :mod:`xtec.autoencoder.synthetic`; this module
re-exports both so that ``from xtec.autoencoder.data import load_curves`` and
the like keep working.  NumPy/xarray only (no PyTorch).
"""

from __future__ import annotations

from xtec.autoencoder.synthetic import (
    EXAFS_DESCRIPTORS,
    SPECTRUM_DESCRIPTORS,
    reflection_positions,
    synthetic_alloy_series,
    synthetic_exafs_xanes,
    synthetic_spectra,
)
from xtec.io.curves import DIMS, load_curves, save_curves

__all__ = [
    "DIMS",
    "EXAFS_DESCRIPTORS",
    "SPECTRUM_DESCRIPTORS",
    "load_curves",
    "reflection_positions",
    "save_curves",
    "synthetic_alloy_series",
    "synthetic_exafs_xanes",
    "synthetic_spectra",
]
