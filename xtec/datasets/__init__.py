"""Synthetic temperature series of reciprocal-space volumes with known classes.

Two kinds of series (``make_series(kind=...)``):

* ``"separated"`` (the default, :func:`make_series`): every feature family at
  its own reciprocal-lattice positions, so every kept voxel has one class.  Fast
  and unambiguous; the old tests are built on it.
* ``"realistic"`` (:func:`make_realistic_series`): halos around the peaks as in
  measured volumes (thermal diffuse scattering around every Bragg peak, critical
  diffuse scattering around every superlattice peak), overlapping families, a
  structured background with an amorphous ring, Poisson counting at about 200
  counts per unit intensity, monitor-normalised transforms and detector gaps.
  Its truth is the *dominant* family per voxel plus per-family contribution
  maps; see the function's docstring.
* ``"measured"`` (:func:`make_measured_series`): the realistic series with what
  measured series add: thermal expansion (peaks move through the voxels),
  orientation drift, per-temperature normalisation errors and bad frames,
  each with its truth (``frame_scale``, ``bad_frames``).

The separated generator plants the features XTEC is meant to separate, each with
the temperature dependence of its physics:

===========  ==========================================  ==========================
class        where (r.l.u.)                              intensity vs temperature
===========  ==========================================  ==========================
BRAGG (1)    integer (h, k, l), sharp                    Debye-Waller, falls with T
CDW (2)      (h+1/2, k+1/2, l), sharp                    order parameter below Tc
CRITICAL (3) broad, at (h, k+1/2, l)                      peaks at Tc
TDS (4)      broad, at (h+1/2, k, l) (soft phonon)        phonon population, grows with T
===========  ==========================================  ==========================

on a Q-dependent background with Poisson noise, with detector gaps (planes of
voxels that are zero at every temperature).  The ground truth is the class of
the feature that dominates a voxel's mean intensity; a voxel counts as *signal*
only where that feature is at least ``signal_ratio`` times the background, so
that "signal" means something a threshold can be expected to keep.

The series is written in either NeXus layout that :mod:`xtec.io.nexus` reads.

Modules: :mod:`~xtec.datasets.series` (the series, class codes, the grid),
:mod:`~xtec.datasets.separated` and :mod:`~xtec.datasets.realistic` (one per
kind), :mod:`~xtec.datasets.nexus_files` (writing the series and reading its
truth back).
"""

from xtec.datasets.measured import make_measured_series
from xtec.datasets.nexus_files import read_truth, write_nxrefine, write_xtec, write_xtec_large
from xtec.datasets.realistic import REALISTIC_FAMILIES, make_realistic_series
from xtec.datasets.separated import make_series
from xtec.datasets.series import (
    BACKGROUND,
    BRAGG,
    CDW,
    CLASS_NAMES,
    CRITICAL,
    GAP,
    TDS,
    Grid,
    SyntheticSeries,
)

__all__ = [
    "BACKGROUND", "BRAGG", "CDW", "CLASS_NAMES", "CRITICAL", "GAP", "REALISTIC_FAMILIES", "TDS",
    "Grid", "SyntheticSeries", "make_measured_series", "make_realistic_series", "make_series", "read_truth",
    "write_nxrefine", "write_xtec", "write_xtec_large",
]
