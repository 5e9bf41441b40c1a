"""xtec: X-ray temperature clustering of reciprocal-space volume series.

The public API, imported on first use so that ``import xtec`` stays light::

    from xtec import open_nexus, GaussianMixture, ClusterConfig, run_cluster, open_result
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "open_nexus": "xtec.io.nexus",
    "open_result": "xtec.io.store",
    "load_result": "xtec.io.result",
    "GaussianMixture": "xtec.mixture",
    "SmoothedGaussianMixture": "xtec.smoothing",
    "fit_order_parameter": "xtec.order_parameter",
    "ClusterConfig": "xtec.config",
    "run_cluster": "xtec.pipeline",
    "make_series": "xtec.datasets",
    "write_xtec": "xtec.datasets",
    "write_nxrefine": "xtec.datasets",
    "dask_runtime": "xtec.runtime",
    "XtecError": "xtec.errors",
}

__all__ = sorted(_API)


# Registers the ``ds.xtec`` accessor (numpy and xarray only: cheap).
from xtec import accessor as _accessor  # noqa: E402, F401


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'xtec' has no attribute {name!r}")
