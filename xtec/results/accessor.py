"""``.xtec`` accessors: follow-up analysis of results and loaded volumes in xarray.

Importing this module registers

* ``Dataset.xtec`` for a result store (``xtec.open_result`` / ``xr.open_zarr``)::

      ds = xr.open_zarr("result.zarr")
      ds.xtec.cluster_mask(2)                 # (Ql, Qk, Qh) bool
      ds.xtec.voxels(2)                       # Q coordinates of its voxels
      ds.xtec.trajectories(2)                 # lazy (temperature, voxel), re-read from the sources
      ds.xtec.plot_trajectories([0, 2])
      ds.xtec.plot_slice(Ql=0.0)
      ds.xtec.order_parameter_cluster()       # which cluster switches on below a transition
      fit = ds.xtec.fit_order_parameter(2)    # fit.tc, fit.tc_err, fit.beta, fit.beta_err

* ``DataArray.xtec`` for a loaded volume series (``xtec.io.nexus.open_nexus``):
  ``rescale``, ``mean_intensity``, ``trajectories(mask)``, ``plot_slice``.

Only NumPy and xarray are imported here; Matplotlib, SciPy and the NeXus reader
are imported by the methods that need them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import xarray as xr

# The module, not its names: xarray's import registers this accessor, and
# that import can come from xtec.io.result itself (``from xtec.io.result
# import ...`` as a program's first line), still half-initialised then.
import xtec.io.result as result_format
from xtec.errors import InputError, ParameterError
from xtec.results.order_parameter import (  # noqa: F401  (re-exported: the accessor's fit)
    OrderParameterFit,
    fit_order_parameter,
    order_parameter_model,
)


def _decoded(attrs: dict, key: str, default=None):
    return result_format.decode_value(attrs.get(key, default))


# --------------------------------------------------------------------------- Dataset
@xr.register_dataset_accessor("xtec")
class XtecDatasetAccessor:
    """Follow-up analysis of an xtec result store (see the module docstring)."""

    def __init__(self, ds: xr.Dataset):
        # A store read with xr.open_zarr proves it is whole before it is used: Zarr
        # would read a missing chunk as fill values (cluster 0).
        from xtec.io.store import verify_source

        verify_source(ds)
        self._ds = ds

    # -- basics
    def _require(self, *names):
        missing = [n for n in names if n not in self._ds.variables]
        if missing:
            raise InputError(f"this dataset is not an xtec result (no {', '.join(missing)})")

    @property
    def attrs(self) -> dict:
        """The provenance attributes, JSON strings decoded."""
        return result_format.decode_attrs(self._ds.attrs)

    @property
    def clusters(self) -> np.ndarray:
        self._require("cluster_mean")
        ds = self._ds
        return (
            np.asarray(ds["cluster"].values)
            if "cluster" in ds.coords
            else np.arange(ds.sizes["cluster"])
        )

    @property
    def palette(self) -> np.ndarray:
        """(k, 3) colours in [0, 1], as in every figure."""
        self._require("palette")
        return np.asarray(self._ds["palette"].values, np.float64) / 255.0

    def color(self, cluster: int):
        """The palette colour of one cluster, as an RGB tuple in [0, 1]."""
        return tuple(self.palette[self._index(cluster)])

    def _index(self, cluster: int) -> int:
        ids = list(self.clusters)
        if cluster not in ids:
            raise ParameterError(f"no cluster {cluster!r}; clusters are {ids}")
        return ids.index(cluster)

    def cluster_mask(self, cluster: int | Sequence[int]) -> xr.DataArray:
        """Boolean (Ql, Qk, Qh) mask of the voxels of one cluster (or several)."""
        self._require("labels")
        cs = [cluster] if np.ndim(cluster) == 0 else list(cluster)
        for c in cs:
            self._index(c)
        lab = self._ds["labels"]
        m = lab.isin(cs)
        m.name = f"cluster_{'_'.join(map(str, cs))}"
        return m

    def voxels(self, cluster: int | Sequence[int]) -> xr.Dataset:
        """Q coordinates (and indices) of a cluster's voxels along a ``voxel`` dimension."""
        mask = np.asarray(self.cluster_mask(cluster).values)
        idx = np.nonzero(mask)
        dims = result_format.Q_DIMS
        data = {f"i{d[1]}": ("voxel", i.astype(np.int64)) for d, i in zip(dims, idx)}
        coords = {d: ("voxel", np.asarray(self._ds[d].values)[i]) for d, i in zip(dims, idx)}
        return xr.Dataset(data, coords=coords)

    # -- trajectories from the source files
    def source(self, chunks=None) -> xr.DataArray:
        """The input series (temperature, Ql, Qk, Qh), re-opened lazily from the
        provenance, as it was clustered: frames left out by ``drop_temperatures``
        left out, frames the run normalised divided by ``frame_correction``."""
        from xtec.io.nexus import open_nexus

        files = _decoded(self._ds.attrs, "source_files")
        if not files:
            raise InputError("this result does not record its source files")
        ranges = _decoded(self._ds.attrs, "ranges") or {}
        params = _decoded(self._ds.attrs, "parameters") or {}
        kw = {}
        for d in result_format.Q_DIMS:
            r = ranges.get(d) if isinstance(ranges, dict) else None
            if r is None and isinstance(params, dict):
                r = params.get(d.lower())
            kw[d.lower()] = tuple(r) if r is not None else None
        try:
            arr = open_nexus(files, chunks=chunks, **kw)
        except InputError as exc:
            raise InputError(
                f"cannot re-open the source files recorded in the result: {exc}"
            ) from None
        if arr.sizes["temperature"] != self._ds.sizes.get("temperature", arr.sizes["temperature"]):
            # frames left out by drop_temperatures
            arr = arr.sel(temperature=np.asarray(self._ds["temperature"].values), method="nearest")
        if "frame_correction" in self._ds and not np.allclose(self._ds["frame_correction"], 1.0):
            # frames the run normalised (--normalize): the input as it was clustered
            corr = xr.DataArray(np.asarray(self._ds["frame_correction"].values, np.float32),
                                dims="temperature")
            arr = (arr / corr).astype(np.float32).assign_attrs(arr.attrs)
        for d in result_format.Q_DIMS:
            if d in self._ds.coords and (
                arr.sizes[d] != self._ds.sizes[d]
                or not np.allclose(arr[d].values, self._ds[d].values, atol=1e-6)
            ):
                raise InputError(f"the source files' {d} axis no longer matches the result")
        return arr

    def trajectories(
        self,
        cluster: int | Sequence[int],
        rescale: str | None = "none",
        source: xr.DataArray | None = None,
    ) -> xr.DataArray:
        """Trajectories of a cluster's voxels, lazily: (temperature, voxel).

        Parameters
        ----------
        cluster : cluster id or ids
        rescale : "none" (raw intensity, default), "mean", "zscore", "log-mean", or
            None / "result" for the rescaling the result was clustered with
        source : the opened series, if already at hand (default: :meth:`source`)

        The ``voxel`` dimension carries the Ql, Qk, Qh of each voxel.  Nothing is
        read until ``.compute()`` / ``.values``.
        """
        if rescale in (None, "result"):
            rescale = self._ds.attrs.get("rescale", "mean")
        arr = self.source() if source is None else source
        mask = np.asarray(self.cluster_mask(cluster).values)
        return _gather(arr, mask, rescale)

    def mean_trajectory(self, cluster: int, rescale: str | None = "none") -> xr.DataArray:
        """Mean (and ``std`` / ``sem`` coords) over a cluster's voxels, computed."""
        tr = self.trajectories(cluster, rescale=rescale)
        m, s = (x.compute() for x in (tr.mean("voxel"), tr.std("voxel")))
        n = tr.sizes["voxel"]
        out = m.assign_coords(
            std=("temperature", s.values), sem=("temperature", s.values / math.sqrt(max(n, 1)))
        )
        out.attrs.update(cluster=int(cluster), n_voxels=int(n), rescale=str(rescale))
        return out

    # -- plots
    def plot_trajectories(
        self,
        clusters: int | Iterable[int] | None = None,
        ax=None,
        band: bool = True,
        voxels: int = 0,
        seed: int = 0,
    ):
        """Mean trajectories with +-1 sigma bands; ``voxels=n`` adds n single voxels (read
        from the source files) of each cluster as thin lines."""
        from xtec.results import figures

        self._require("cluster_mean", "cluster_std", "palette")
        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
        cs = (
            None if clusters is None else ([clusters] if np.ndim(clusters) == 0 else list(clusters))
        )
        figures.plot_trajectories(self._ds, cs, ax=ax, band=band)
        if voxels:
            arr = self.source()
            rng = np.random.default_rng(seed)
            for c in self.clusters if cs is None else cs:
                tr = self.trajectories(c, rescale="result", source=arr)
                n = tr.sizes["voxel"]
                pick = np.sort(rng.choice(n, size=min(voxels, n), replace=False))
                lines = tr.isel(voxel=pick).values
                ax.plot(tr.temperature.values, lines, color=self.color(c), lw=0.5, alpha=0.5)
        return ax

    def plot_slice(self, dim: str | None = None, value: float | None = None, ax=None, **plane):
        """One HKL plane coloured by cluster, e.g. ``plot_slice(Ql=0.0)``."""
        from xtec.results import figures

        self._require("labels", "palette")
        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(5.6, 5.0), layout="constrained")
        return figures.plot_slice(self._ds, dim, value, ax=ax, **plane)

    def plot_counts(self, ax=None):
        from xtec.results import figures

        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(5, 3.6), layout="constrained")
        return figures.plot_counts(self._ds, ax=ax)

    def plot_threshold(self, ax=None):
        from xtec.results import figures

        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
        return figures.plot_threshold(self._ds, ax=ax)

    def plot_bic(self, ax=None):
        """The BIC curve if the store carries one, else None."""
        from xtec.results import figures

        if figures.bic_curve(self._ds) is None:
            return None
        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(5, 3.6), layout="constrained")
        return figures.plot_bic(self._ds, ax=ax)

    def report(self, out_dir=None, planes=None):
        """Write the HTML report of the store this dataset was opened from."""
        from xtec.results.report import write_report

        path = self._ds.encoding.get("source") or _decoded(self._ds.attrs, "parameters", {}).get(
            "out"
        )
        if not path:
            raise InputError(
                "cannot tell which store this dataset came from; use xtec.results.report.write_report(path)"
            )
        return write_report(path, out_dir=out_dir, planes=planes)

    # -- frames
    def flagged_temperatures(self) -> list[float]:
        """Temperatures the run flagged as bad frames (empty for results made
        before frames were checked)."""
        if "frame_flagged" not in self._ds:
            return []
        t = np.asarray(self._ds["temperature"].values, np.float64)
        return [float(v) for v in t[np.asarray(self._ds["frame_flagged"].values, bool)]]

    def plot_frames(self, ax=None):
        """Per-temperature statistics of the input, flagged frames marked (None if
        the store has none)."""
        from xtec.results import figures

        if "frame_flagged" not in self._ds:
            return None
        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
        return figures.plot_frames(self._ds, ax=ax)

    # -- order parameter
    def order_parameter_cluster(self) -> int:
        """The cluster whose mean trajectory looks like an order parameter.

        Among clusters whose mean falls on warming, the one that is flattest in
        the warmest third relative to its total fall (it has switched off above
        a transition), rather than falling steadily (Debye-Waller) or rising.
        """
        self._require("cluster_mean")
        t = np.asarray(self._ds["temperature"].values, np.float64)
        m = np.asarray(self._ds["cluster_mean"].values, np.float64)
        order = np.argsort(t)
        t, m = t[order], m[:, order]
        warm = t >= t.min() + 2 * (t.max() - t.min()) / 3
        cold = t <= t.min() + (t.max() - t.min()) / 4
        best, best_score = None, math.inf
        for j, y in enumerate(m):
            total = float(np.mean(y[cold]) - np.mean(y[warm]))
            if total <= 0:
                continue
            score = float(np.ptp(y[warm])) / total
            if score < best_score:
                best, best_score = j, score
        if best is None:
            raise ParameterError("no cluster's mean trajectory falls on warming")
        return int(self.clusters[best])

    def fit_order_parameter(
        self, cluster: int | None = None, source: str = "mean", exclude_flagged: bool = True,
        **kwargs
    ) -> OrderParameterFit:
        """Fit ``A (1 - T/Tc)^(2 beta) + B`` to a cluster's mean trajectory.

        Parameters
        ----------
        cluster : int, optional
            Default :meth:`order_parameter_cluster`.
        source : "mean" or "raw"
            "mean": the stored rescaled mean (no file read), weighted by its
            standard error; "raw": the mean raw intensity of the cluster's
            voxels, read from the source files.
        exclude_flagged : bool
            Leave the temperatures the run flagged as bad frames out of the fit
            (default; they show as "not fitted" in the plot).
        **kwargs : passed to :func:`fit_order_parameter` (``critical``, ``t_range``,
            ``slope``, ``tc``, ``beta``, ``loss``).
        """
        if cluster is None:
            cluster = self.order_parameter_cluster()
        j = self._index(cluster)
        if source == "mean":
            ds = self._ds
            t = np.asarray(ds["temperature"].values, np.float64)
            y = np.asarray(ds["cluster_mean"].values[j], np.float64)
            sd = np.asarray(ds["cluster_std"].values[j], np.float64)
            n = float(ds["cluster_count"].values[j]) if "cluster_count" in ds else 1.0
            sigma = sd / math.sqrt(max(n, 1.0))
        elif source == "raw":
            mt = self.mean_trajectory(cluster, rescale="none")
            t, y, sigma = (
                np.asarray(v, np.float64) for v in (mt.temperature.values, mt.values, mt.sem.values)
            )
        else:
            raise ParameterError(f"source must be 'mean' or 'raw' (got {source!r})")
        if exclude_flagged and "frame_flagged" in self._ds:
            bad = np.isin(t, self.flagged_temperatures())
            y = np.where(bad, np.nan, y)
        fit = fit_order_parameter(t, y, sigma, **kwargs)
        fit.cluster = int(cluster)
        fit.source = source
        return fit


def _gather(arr: xr.DataArray, mask: np.ndarray, rescale: str) -> xr.DataArray:
    """(temperature, voxel) trajectories of ``arr`` at ``mask``, lazily, rescaled."""
    from xtec.preprocess import RESCALE_METHODS, clean_block, rescale_block

    if rescale not in RESCALE_METHODS:
        raise ParameterError(f"rescale must be one of {RESCALE_METHODS} (got {rescale!r})")
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != tuple(arr.sizes[d] for d in result_format.Q_DIMS):
        raise ParameterError(
            f"mask of shape {mask.shape} does not fit the volume "
            f"{tuple(arr.sizes[d] for d in result_format.Q_DIMS)}"
        )
    idx = np.nonzero(mask)
    sel = {d: xr.DataArray(i, dims="voxel") for d, i in zip(result_format.Q_DIMS, idx)}
    tr = arr.transpose("temperature", *result_format.Q_DIMS).isel(sel)
    data = tr.data
    if hasattr(data, "map_blocks"):  # dask: whole trajectories per block
        data = data.rechunk({0: -1})
        data = data.map_blocks(lambda x: rescale_block(clean_block(x), rescale), dtype=np.float32)
    else:
        data = rescale_block(clean_block(np.asarray(data)), rescale)
    out = tr.copy(data=data)
    out.name = "trajectories"
    out.attrs = {"rescale": rescale}
    return out


# --------------------------------------------------------------------------- DataArray
@xr.register_dataarray_accessor("xtec")
class XtecDataArrayAccessor:
    """Helpers for a loaded series (temperature, Ql, Qk, Qh), e.g. from ``open_nexus``."""

    def __init__(self, arr: xr.DataArray):
        self._arr = arr

    def _check(self):
        missing = [d for d in ("temperature", *result_format.Q_DIMS) if d not in self._arr.dims]
        if missing:
            raise ParameterError(f"expected dims temperature, Ql, Qk, Qh (missing {missing})")

    def rescale(self, method: str = "mean") -> xr.DataArray:
        """Rescaled along temperature, lazily (the pipeline's ``--rescale`` methods)."""
        from xtec.preprocess import RESCALE_METHODS, clean_block, rescale_block

        self._check()
        if method not in RESCALE_METHODS:
            raise ParameterError(f"rescale must be one of {RESCALE_METHODS} (got {method!r})")
        a = self._arr.transpose("temperature", *result_format.Q_DIMS)
        data = a.data
        if hasattr(data, "map_blocks"):
            data = data.rechunk({0: -1}).map_blocks(
                lambda x: rescale_block(clean_block(x), method), dtype=np.float32
            )
        else:
            data = rescale_block(clean_block(np.asarray(data)), method)
        return a.copy(data=data)

    def mean_intensity(self) -> xr.DataArray:
        """Mean over temperature (lazy)."""
        self._check()
        return self._arr.mean("temperature")

    def trajectories(self, mask, rescale: str = "none") -> xr.DataArray:
        """(temperature, voxel) trajectories at a boolean (Ql, Qk, Qh) mask, e.g.
        ``result.xtec.cluster_mask(2)``."""
        self._check()
        return _gather(self._arr, np.asarray(getattr(mask, "values", mask)), rescale)

    def plot_slice(
        self,
        ax=None,
        temperature: float | None = None,
        log: bool = True,
        cmap: str = "viridis",
        **plane,
    ):
        """Intensity on one plane, e.g. ``arr.xtec.plot_slice(Ql=0, temperature=30)``;
        without a temperature, the mean over temperature."""
        self._check()
        if len(plane) != 1:
            raise ParameterError("give one plane, e.g. Ql=0.0")
        ((dim, value),) = plane.items()
        if dim not in result_format.Q_DIMS:
            raise ParameterError(f"the plane's dimension must be one of {result_format.Q_DIMS}")
        a = self._arr.sel({dim: value}, method="nearest")
        if temperature is None:
            img = a.mean("temperature")
            what = "mean intensity"
        else:
            img = a.sel(temperature=temperature, method="nearest")
            what = f"T = {float(img.temperature):g} K"
        ydim, xdim = [d for d in result_format.Q_DIMS if d != dim]
        img = img.transpose(ydim, xdim).compute()
        if log:
            img = np.log1p(img.clip(min=0))
        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(5.6, 5.0), layout="constrained")
        img.plot.imshow(
            ax=ax, x=xdim, y=ydim, cmap=cmap, cbar_kwargs={"label": "log(1 + I)" if log else "I"}
        )
        ax.set_title(f"{dim} = {float(a[dim]):g}, {what}")
        return ax
