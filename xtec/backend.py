"""Array namespaces: NumPy, CuPy, or any array-API library (array-api-strict in tests).

Nothing here imports CuPy at module load; ``device="gpu"`` imports it on demand.
"""

from __future__ import annotations

import os

import numpy as np

from xtec.errors import ParameterError
from xtec.optional import require


def namespace(x):
    """The array-API namespace of ``x`` (NumPy for plain Python/NumPy input).

    CuPy goes through array-api-compat (part of the ``gpu`` extra), which fills
    the gaps between CuPy's NumPy-style API and the array API.
    """
    if type(x).__module__.startswith("cupy"):
        import array_api_compat

        return array_api_compat.array_namespace(x)
    if hasattr(x, "__array_namespace__"):
        return x.__array_namespace__()
    return np


def is_numpy(x) -> bool:
    return isinstance(x, np.ndarray)


def to_numpy(x) -> np.ndarray:
    """Copy any array (NumPy, CuPy, array-API) to host NumPy."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "get") and type(x).__module__.startswith("cupy"):
        return x.get()
    try:
        return np.from_dlpack(x)
    except (TypeError, RuntimeError, BufferError, AttributeError):
        return np.asarray(x)


def get_device_module(device: str):
    """Array module for ``device``: NumPy for ``cpu``, CuPy for ``gpu``."""
    if device == "cpu":
        return np
    if device == "gpu":
        cupy = require("cupy", "gpu", "device='gpu'", " on a machine with CUDA")
        try:
            cupy.cuda.runtime.getDeviceCount()
        except Exception:
            raise ParameterError("device='gpu': no CUDA device is available here") from None
        return cupy
    raise ParameterError(f"device must be 'cpu' or 'gpu' (got {device!r})")


# ---------------------------------------------------------------- compiled or not
#: What runs NumPy blocks on the CPU: the numba kernels ("numba", compiled once
#: per node into numba's cache) or their NumPy twins ("numpy", nothing to
#: compile; what a run on a node with an empty cache uses, see
#: :mod:`xtec.runtime.kernel_cache`).  "auto" is resolved per run.
CPU_ENGINES = ("auto", "numba", "numpy")
CPU_ENGINE_ENV = "XTEC_ENGINE"


def compiled_kernels() -> bool:
    """Do NumPy blocks go through the numba kernels (the default) or their NumPy twins?

    Read from the environment, where a run puts its choice before it starts its
    Dask workers, so every task of the run, in any process, computes alike.
    """
    return os.environ.get(CPU_ENGINE_ENV, "numba") != "numpy"
