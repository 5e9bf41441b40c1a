"""Result store -> NeXus file for NeXpy users.

One NXentry holds an NXdata group per volume of the store (``labels``, ``mask``,
``mean_intensity``, ``component`` for the peaks method) over ``Ql, Qk, Qh`` in
r.l.u., ``color`` (the RGB map, last dimension R, G, B), ``trajectories`` (one
signal per cluster over temperature, with ``cluster_std`` as its errors), the
threshold histogram, the BIC curve when the store has one, and the run's
provenance as an NXnote (the store's attributes as JSON, plus one HDF5 attribute
per leaf).  ``/@default -> entry``, ``entry/@default -> labels`` and each
NXdata's ``signal``/``axes``/``<axis>_indices`` follow the NeXus conventions, so
``nxload(path).plot()`` and NeXpy draw the label map with no clicks.

Written with h5py (every dtype and attribute exactly as the store has it), then
read back with :func:`nexusformat.nexus.nxload` -- the reader NeXpy uses -- and
checked by :func:`check_nexus` before the temporary ``OUT.nxs.partial`` is
renamed to ``OUT.nxs``: a failed export never leaves a file that looks complete.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from pathlib import Path

import numpy as np
import xarray as xr

from xtec.errors import InputError, ParameterError
from xtec.io.curves import NEXUS_SUFFIXES
from xtec.io.nexus import nexus_api
from xtec.io.output import check_target
from xtec.io.result import Q_DIMS  # the spatial dimensions of every volume, slowest first
from xtec.runtime.signals import raise_if_stopped

log = logging.getLogger(__name__)

#: file name endings accepted for the export
#: store variables the export needs
REQUIRED = ("labels", "color", "mask", "palette", "cluster_mean", "cluster_std")

_VOLUME_TEXT = {
    "labels": "cluster (-1: not clustered)",
    "mask": "kept by the threshold (1) or dropped (0)",
    "mean_intensity": "mean intensity over temperature",
    "component": "peak component (-1: none)",
}
_AXIS_TEXT = {"bic_k": "K (number of clusters)"}


# --------------------------------------------------------------------------- checks
def check_nexus_output(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Fail before any work if the export cannot be written at ``path``."""
    path = Path(path)
    if path.suffix.lower() not in NEXUS_SUFFIXES:
        raise ParameterError(
            f"the NeXus output must end in one of {', '.join(sorted(NEXUS_SUFFIXES))} (got {path})"
        )
    if path.is_dir():
        raise ParameterError(f"the NeXus output {path} is a directory")
    return check_target(path, overwrite)


def _check_exportable(ds: xr.Dataset, name: str) -> None:
    missing = [v for v in REQUIRED if v not in ds.variables]
    missing += [d for d in (*Q_DIMS, "temperature") if d not in ds.coords]
    if missing:
        raise InputError(f"{name} is not an xtec result store (no {', '.join(missing)})")
    if ds["labels"].dims != Q_DIMS:
        raise InputError(f"{name}: labels are over {ds['labels'].dims}, expected {Q_DIMS}")


# --------------------------------------------------------------------------- writing
def _attr_value(v):
    """A provenance leaf as an HDF5 attribute: scalars as they are, the rest as JSON."""
    if isinstance(v, (bool, int, float, str, np.integer, np.floating, np.bool_)):
        return v
    return json.dumps(v)


def _flatten(prefix: str, v, out: dict) -> dict:
    if isinstance(v, dict) and v:
        for k, x in v.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), x, out)
    else:
        out[prefix] = _attr_value(v)
    return out


def _plane_chunks(data) -> tuple[int, ...]:
    """HDF5 chunks of one Ql plane (up to 4 MiB): NeXpy reads a volume plane by plane.

    Measured on a 41 x 241 x 241 store: 1.8 s to write the volumes, against 4.0 s
    with h5py's automatic chunks and gzip level 4, for a file 5 % smaller.
    """
    row = int(np.prod(data.shape[2:])) * data.dtype.itemsize
    rows = max(1, min(data.shape[1], (4 << 20) // max(row, 1)))
    return (1, rows, *data.shape[2:])


def _write_array(group, name: str, var: xr.DataArray, **attrs):
    """One field from a (possibly Dask) variable, block by block for volumes."""
    import dask.array as da

    data = var.data
    if data.ndim >= 3:
        dset = group.create_dataset(
            name, shape=data.shape, dtype=data.dtype, chunks=_plane_chunks(data),
            compression="gzip", compression_opts=1, shuffle=True,
        )
        if not isinstance(data, da.Array):
            dset[...] = np.asarray(data)
            data = None
        try:
            if data is not None:
                # h5py handles live in this process: write here, one block at a time.
                da.store(data, dset, lock=True, scheduler="synchronous")
        except OSError:
            raise  # the file system (full disk, permissions): the CLI says so
        except Exception as exc:
            # A damaged store reads fine up to the broken block.
            why = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            raise InputError(f"cannot read {var.name!r} from the result store ({why}); "
                             "it may be damaged: run `xtec cluster` again") from None
    else:
        dset = group.create_dataset(name, data=np.asarray(var.values))
    for key, value in {**var.attrs, **attrs}.items():
        if value is not None:
            dset.attrs[key] = _attr_value(value)
    return dset


def _nxgroup(parent, name: str, nxclass: str):
    g = parent.create_group(name)
    g.attrs["NX_class"] = nxclass
    return g


def _axis_fields(group, ds: xr.Dataset, dims) -> None:
    for i, d in enumerate(dims):
        if d == ".":
            continue
        units = ds[d].attrs.get("units", "rlu" if d in Q_DIMS else None)
        text = f"{d} (r.l.u.)" if d in Q_DIMS else f"{d} ({units})" if units else _AXIS_TEXT.get(d, d)
        _write_array(group, d, ds[d], units=units, long_name=text)
        group.attrs[f"{d}_indices"] = np.int32(i)


def _nxdata(entry, name: str, ds: xr.Dataset, signal: xr.DataArray, axes, **signal_attrs):
    g = _nxgroup(entry, name, "NXdata")
    g.attrs["signal"] = name
    g.attrs["axes"] = list(axes)
    _write_array(g, name, signal, **signal_attrs)
    _axis_fields(g, ds, axes)
    return g


def _write_trajectories(entry, ds: xr.Dataset) -> None:
    cid = np.asarray(ds["cluster"].values) if "cluster" in ds.coords else np.arange(
        ds.sizes["cluster"])
    names = [f"cluster_{int(c)}" for c in cid]
    g = _nxgroup(entry, "trajectories", "NXdata")
    g.attrs["signal"] = names[0]
    if len(names) > 1:
        g.attrs["auxiliary_signals"] = names[1:]
    g.attrs["axes"] = ["temperature"]
    g.attrs["title"] = "cluster mean trajectories (errors: the clusters' standard deviation)"
    rescale = ds.attrs.get("rescale")
    what = f"{rescale}-rescaled intensity" if rescale and rescale != "none" else "intensity"
    pal = np.asarray(ds["palette"].values)
    count = ds["cluster_count"].values if "cluster_count" in ds else None
    weight = ds["weights"].values if "weights" in ds else None
    for i, name in enumerate(names):
        mean = ds["cluster_mean"].isel(cluster=i)
        std = ds["cluster_std"].isel(cluster=i)
        extra = {"long_name": f"cluster {int(cid[i])} mean ({what})",
                 "color": "#{:02X}{:02X}{:02X}".format(*(int(c) for c in pal[i]))}
        if count is not None:
            extra["voxels"] = np.int64(count[i])
        if weight is not None:
            extra["weight"] = np.float32(weight[i])
        _write_array(g, name, mean.drop_vars("cluster", errors="ignore"), **extra)
        _write_array(g, f"{name}_errors", std.drop_vars("cluster", errors="ignore"))
    _axis_fields(g, ds, ["temperature"])


def _write_provenance(entry, attrs: dict, source: str) -> None:
    note = _nxgroup(entry, "provenance", "NXnote")
    note.create_dataset("type", data="application/json")
    note.create_dataset("description", data="xtec run provenance: the result store's "
                                            "attributes (parameters, threshold, versions)")
    note.create_dataset("data", data=json.dumps(attrs, indent=1, sort_keys=True))
    note.create_dataset("source_result", data=source)
    if attrs.get("ended"):
        note.create_dataset("date", data=str(attrs["ended"]))
    for key, value in _flatten("", attrs, {}).items():
        note.attrs[key] = value


def _write_file(ds: xr.Dataset, path: Path, source: str, name: str) -> None:
    import h5py

    from xtec._version import __version__

    attrs = {k: v for k, v in ds.attrs.items() if k != "complete"}
    now = _dt.datetime.now(_dt.UTC).isoformat()
    with h5py.File(path, "w") as f:
        f.attrs.update(NX_class="NXroot", default="entry", file_name=name,
                       file_time=now, creator=f"xtec {__version__}",
                       HDF5_Version=h5py.version.hdf5_version, h5py_version=h5py.__version__)
        entry = _nxgroup(f, "entry", "NXentry")
        entry.attrs["default"] = "labels"
        method, k = attrs.get("method", "?"), attrs.get("k", ds.sizes["cluster"])
        entry.create_dataset("title", data=f"xtec {method}, K={k}: {Path(source).name}")
        prog = entry.create_dataset("program_name", data="xtec")
        prog.attrs["version"] = str(attrs.get("versions", {}).get("xtec", __version__))
        for key, field in (("started", "start_time"), ("ended", "end_time")):
            if attrs.get(key):
                entry.create_dataset(field, data=str(attrs[key]))

        volumes = [v for v in ("labels", "mask", "mean_intensity", "component")
                   if v in ds and ds[v].dims == Q_DIMS]
        for v in volumes:
            var = ds[v]
            if var.dtype == bool:
                # NX_BOOLEAN is stored as 0/1 integers; NeXpy plots those.
                var = var.astype(np.uint8)
            _nxdata(entry, v, ds, var, Q_DIMS, long_name=_VOLUME_TEXT.get(v, v))
        color = _nxdata(entry, "color", ds, ds["color"], (*Q_DIMS, "."),
                        long_name="RGB colour: palette per cluster, grey kept but "
                                  "unclustered, black dropped",
                        interpretation="rgb-image")
        _write_array(color, "palette", ds["palette"],
                     long_name="RGB colour of each cluster (row = cluster)")
        _write_trajectories(entry, ds)
        if "threshold_hist" in ds and "threshold_edges" in ds:
            g = _nxgroup(entry, "threshold", "NXdata")
            g.attrs.update(signal="threshold_hist", axes=["log_intensity"],
                           log_intensity_indices=np.int32(0))
            _write_array(g, "threshold_hist", ds["threshold_hist"],
                         long_name="voxels per log-intensity bin")
            _write_array(g, "log_intensity", ds["threshold_edges"],
                         long_name="log intensity (bin edges)")
        if "bic" in ds and "bic_k" in ds.coords:
            _nxdata(entry, "bic", ds, ds["bic"], ["bic_k"], long_name="best BIC per K")
        _write_provenance(entry, attrs, source)


def check_nexus(path: str | os.PathLike) -> None:
    """Raise :class:`InputError` unless ``path`` is an export that NeXpy plots as is.

    Read with nexusformat: the root's default chain must end at the ``labels``
    NXdata, whose signal is plotted over ``Ql, Qk, Qh`` (units set), and every
    NXdata's axes must match its signal's shape.
    """
    nexus = nexus_api()
    root = nexus.nxload(str(path), mode="r")
    try:
        data = root.get_default()
        if data is None or data.nxname != "labels" or data.nxsignal is None:
            raise InputError(f"{path}: the default plot is not the labels NXdata")
        axes = [a.nxname for a in data.nxaxes]
        if axes != list(Q_DIMS) or any("units" not in data[a].attrs for a in Q_DIMS):
            raise InputError(f"{path}: labels are not plotted over {Q_DIMS} with units")
        for group in root["entry"].walk():
            if isinstance(group, nexus.NXdata) and group.nxsignal is not None:
                shape = group.nxsignal.shape
                for i, axis in enumerate(group.nxaxes or []):
                    # bin edges (one more than the signal) are allowed
                    if axis.shape[0] not in (shape[i], shape[i] + 1):
                        raise InputError(f"{group.nxpath}: axis {axis.nxname} does not "
                                         f"match the signal's shape {shape}")
    finally:
        root.nxfile.close()


def write_nexus(
    result: str | os.PathLike | xr.Dataset,
    path: str | os.PathLike,
    overwrite: bool = False,
) -> Path:
    """Export a result store (its path, or the opened Dataset) as a NeXus file.

    Parameters
    ----------
    result : path of a finished ``xtec cluster`` store, or its Dataset as
        :func:`xtec.io.store.open_result` returns it (attributes decoded).
    path : output file, ending in one of :data:`NEXUS_SUFFIXES`.
    overwrite : replace an existing file.

    Returns the path written.  Volumes are copied block by block, so the export
    needs memory for one block, not the volume.
    """
    from xtec.io.store import open_result

    path = check_nexus_output(path, overwrite)
    if isinstance(result, xr.Dataset):
        ds, source = result, str(result.encoding.get("source", "(in memory)"))
    else:
        # Refuses a missing, unreadable or unfinished store; decodes the JSON attributes.
        ds, source = open_result(result), str(Path(result).resolve())
    _check_exportable(ds, source)
    tmp = path.with_name(path.name + ".partial")
    try:
        _write_file(ds, tmp, source, path.name)
        check_nexus(tmp)
        raise_if_stopped()  # a library swallowed an interrupt: keep nothing
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    log.info("wrote %s", path)
    return path
