"""xtec: X-ray temperature clustering of reciprocal-space volume series.

The public API, imported on first use so that ``import xtec`` stays light::

    from xtec import open_nexus, GaussianMixture, ClusterConfig, run_cluster, open_result
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.util

from xtec._version import __version__ as __version__

_API = {
    "open_nexus": "xtec.io.nexus",
    "open_result": "xtec.io.store",
    "load_result": "xtec.io.store",
    "write_report": "xtec.results.report",
    "GaussianMixture": "xtec.mixture.gaussian_mixture",
    "bic_scan": "xtec.mixture.select",
    "choose_k": "xtec.mixture.select",
    "SmoothedGaussianMixture": "xtec.spatial.smoothing",
    "fit_order_parameter": "xtec.results.order_parameter",
    "ClusterConfig": "xtec.config",
    "run_cluster": "xtec.pipeline",
    "make_series": "xtec.datasets",
    "write_xtec": "xtec.datasets",
    "write_nxrefine": "xtec.datasets",
    "dask_runtime": "xtec.runtime.clusters",
    "XtecError": "xtec.errors",
}

__all__ = sorted(_API)


def _register_accessor() -> None:
    """Register ``ds.xtec`` / ``da.xtec`` now if xarray is loaded, else once it is.

    Importing xarray takes about a second; the ``xtec`` command installs its
    SIGTERM/SIGINT handlers after ``import xtec`` and must not wait for it (a
    batch scheduler's signal in that second would end in a traceback).  A
    notebook's ``import xtec`` still gives every later Dataset its accessor: a
    one-shot import hook registers it right after xarray itself is imported.
    """
    import sys

    if "xarray" in sys.modules:
        importlib.import_module("xtec.results.accessor")
        return

    class _AfterXarray(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname != "xarray":
                return None
            with contextlib.suppress(ValueError):
                sys.meta_path.remove(self)
            spec = importlib.util.find_spec(fullname)
            if spec is None or spec.loader is None:
                return spec
            exec_module = spec.loader.exec_module

            def exec_then_register(module):
                exec_module(module)
                importlib.import_module("xtec.results.accessor")

            spec.loader.exec_module = exec_then_register
            return spec

    sys.meta_path.insert(0, _AfterXarray())


_register_accessor()


def _configure_kernel_cache() -> None:
    """Point numba at a writable kernel cache before anything imports it (a
    read-only install would otherwise compile in every process; see
    :mod:`xtec.runtime.kernel_cache`)."""
    from xtec.runtime.kernel_cache import configure

    with contextlib.suppress(OSError):
        configure()


_configure_kernel_cache()


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'xtec' has no attribute {name!r}")
