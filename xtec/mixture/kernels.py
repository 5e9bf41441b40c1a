"""The EM start's and the profiles' kernels: the numba-compiled ones or their NumPy
twins, as the run chose (:func:`xtec.backend.compiled_kernels`; the E-step's
choice is :func:`xtec.mixture.engines.chunk_stats`'s engine)."""

from __future__ import annotations

import types

from xtec.backend import compiled_kernels


def start_kernels() -> types.ModuleType:
    """:mod:`xtec.mixture._start_kernels` or :mod:`xtec.mixture._kernels_numpy`."""
    if compiled_kernels():
        from xtec.mixture import _start_kernels

        return _start_kernels
    from xtec.mixture import _kernels_numpy

    return _kernels_numpy


def profile_kernels() -> types.ModuleType:
    """:mod:`xtec.mixture._kernels` (its ``label_stats``) or :mod:`xtec.mixture._kernels_numpy`."""
    if compiled_kernels():
        from xtec.mixture import _kernels

        return _kernels
    from xtec.mixture import _kernels_numpy

    return _kernels_numpy
