"""The preprocessing's kernels for NumPy blocks: the numba-compiled ones or their
NumPy twins, as the run chose (:func:`xtec.backend.compiled_kernels`)."""

from __future__ import annotations

import types

from xtec.backend import compiled_kernels


def kernels() -> types.ModuleType:
    """:mod:`xtec.preprocess._kernels`, or :mod:`xtec.preprocess._kernels_numpy`
    where this run does not use the compiled kernels.  Imported on first use:
    the compiled module imports numba."""
    if compiled_kernels():
        from xtec.preprocess import _kernels

        return _kernels
    from xtec.preprocess import _kernels_numpy

    return _kernels_numpy


def one_thread() -> None:
    """Run this thread's parallel kernels on one thread: Dask runs one task per
    core already, and nested numba threads would oversubscribe the cores (and
    spin-wait)."""
    if compiled_kernels():
        import numba

        numba.set_num_threads(1)
