"""NeXus/HDF5 temperature series -> lazy ``xarray.DataArray`` (temperature, Ql, Qk, Qh).

Two layouts are read:

* **XTEC**: one file whose NXdata (``/entry/data`` by default, else the first
  NXdata with a 4-D signal) holds a signal of shape (T, L, K, H), with axes named
  by the NXdata ``axes`` attribute (any order, e.g. ``Te, Qh, Qk, Ql``).
* **NXRefine**: one wrapper file per temperature with the temperature at
  ``/entry/sample/temperature`` and a 3-D NXdata ``/entry/transform`` whose data
  is usually an external link to ``<scan>/transform.nxs:/entry/data/v``; or a
  parent file whose ``/entry/transform/data`` is a 4-D virtual dataset.

nexusformat reads the metadata (groups, attributes, link targets); the bulk data
is read by h5py, chunk by chunk, inside Dask tasks.  Nothing here reads a volume.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr

from xtec.errors import InputError
from xtec.io.h5source import H5Source, open_files
from xtec.runtime.chunks import DEFAULT_TARGET_BYTES, checked_chunks, spatial_chunks
from xtec.runtime.signals import held_signals

log = logging.getLogger(__name__)

DIMS = ("temperature", "Ql", "Qk", "Qh")
_TEMPERATURE_NAMES = {"te", "t", "temp", "temperature", "temperatures"}
_Q_NAMES = {"ql": "Ql", "l": "Ql", "qk": "Qk", "k": "Qk", "qh": "Qh", "h": "Qh"}

@dataclass
class _Volume:
    """Metadata of one NXdata signal, read with nexusformat."""

    filename: str
    source: H5Source
    axes: list[str]
    coords: dict[str, np.ndarray]
    file_chunks: tuple[int, ...] | None
    nxpath: str
    temperature: float | None = None


def expand_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Paths and glob patterns -> existing files, in the order given."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for p in paths:
        s = str(p)
        if any(ch in s for ch in "*?["):
            hits = sorted(glob.glob(s))
            if not hits:
                raise InputError(f"no file matches {s!r}")
            out.extend(Path(h) for h in hits)
        else:
            if not Path(s).exists():
                raise InputError(f"no such file: {s}")
            if Path(s).is_dir():
                raise InputError(f"{s} is a directory; give the NeXus file(s) inside it")
            out.append(Path(s))
    if not out:
        raise InputError("no input files given")
    return out


def nexus_api():
    """``nexusformat.nexus``, imported with SIGTERM/SIGINT held.

    Its import registers hdf5plugin's compression filters under a bare
    ``except:``: an interrupt raised there would be logged as a failed
    registration and swallowed, and the run would go on without the filter.
    """
    with held_signals():
        import nexusformat.nexus as nexus
    return nexus


def _nxload(path: Path):
    nxload = nexus_api().nxload
    try:
        return nxload(str(path), "r")
    except Exception as exc:  # nexusformat raises bare NeXusError/OSError/KeyError
        raise InputError(f"{path}: cannot be read as a NeXus/HDF5 file ({exc})") from None


def _find_nxdata(root, path: Path, preferred: Sequence[str]):
    for p in preferred:
        if p in root and getattr(root[p], "nxclass", "") == "NXdata":
            g = root[p]
            if g.nxsignal is not None:
                return g
    for entry in root.NXentry:
        for g in entry.NXdata:
            if g.nxsignal is not None:
                return g
    raise InputError(
        f"{path}: no NXdata group with a signal; expected /entry/data (XTEC layout) or "
        "/entry/transform (NXRefine layout)"
    )


def _read_volume(path: Path, preferred: Sequence[str]) -> _Volume:
    root = _nxload(path)
    group = _find_nxdata(root, path, preferred)
    signal = group.nxsignal
    target_file = str(path.resolve())
    target_path = signal.nxpath
    # External links (NXRefine): read the target file directly, so the worker
    # processes never depend on HDF5's link search path.
    if type(signal).__name__ == "NXlinkfield" and getattr(signal, "nxfilename", None):
        target_file = str(Path(signal.nxfilename).resolve())
        target_path = signal.nxtarget
        if not Path(target_file).exists():
            raise InputError(
                f"{path}: {signal.nxpath} links to {target_file}, which does not exist"
            )
    try:
        with open_files.acquire(target_file) as f:
            dset = f[target_path]
            shape, dtype, file_chunks = tuple(dset.shape), dset.dtype, dset.chunks
            if dset.is_virtual:
                _check_virtual_sources(dset, target_file, path)
    except (OSError, KeyError) as exc:
        import h5py

        with h5py.File(path, "r") as f:
            link = f.get(signal.nxpath, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            target = (path.parent / link.filename).resolve()
            raise InputError(f"{path}: {signal.nxpath} links to {target}:{link.path}, which "
                             "does not exist or cannot be opened") from None
        raise InputError(f"{path}: cannot open {target_path} ({exc})") from None
    axes_attr = group.attrs.get("axes")
    if axes_attr is None:
        raise InputError(f"{path}: NXdata {group.nxpath} has no 'axes' attribute")
    axes = [str(a) for a in np.atleast_1d(axes_attr.nxvalue if hasattr(axes_attr, "nxvalue")
                                          else axes_attr)]
    if len(axes) == 1 and ":" in axes[0]:
        axes = axes[0].split(":")
    if len(axes) != len(shape):
        raise InputError(
            f"{path}: NXdata {group.nxpath} has {len(axes)} axes {axes} for a "
            f"{len(shape)}-D signal of shape {shape}"
        )
    coords = {}
    for ax, n in zip(axes, shape):
        if ax not in group:
            raise InputError(f"{path}: axis {ax!r} named in {group.nxpath}@axes is missing")
        try:
            values = np.asarray(group[ax].nxvalue, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            raise InputError(f"{path}: axis {ax!r} of {group.nxpath} does not hold numbers "
                             f"(found {group[ax].dtype}); it must be r.l.u. or K values"
                             ) from None
        if values.size == n + 1:  # histogram bin edges -> centres
            values = 0.5 * (values[1:] + values[:-1])
        if values.size != n:
            raise InputError(
                f"{path}: axis {ax!r} has {values.size} values but the signal has {n} along it"
            )
        coords[ax] = values
    temperature = None
    if "entry/sample/temperature" in root:
        try:
            temperature = float(np.asarray(root["entry/sample/temperature"].nxvalue).ravel()[0])
        except (TypeError, ValueError, IndexError):
            raise InputError(f"{path}: /entry/sample/temperature is not a number") from None
    return _Volume(target_file, H5Source(target_file, target_path, shape, dtype), axes,
                   coords, file_chunks, group.nxpath, temperature)


def _check_virtual_sources(dset, filename: str, path: Path) -> None:
    """Every source file and dataset of a virtual dataset must be there.

    HDF5 fills the slices of a missing source with the fill value (zeros), so
    a lost ``transform.nxs`` would otherwise read as a temperature with no
    intensity at all.
    """
    base = Path(filename).parent
    for src in dset.virtual_sources():
        name = src.file_name
        if "%" in name:
            continue  # a printf-style pattern of many files: HDF5 expands it, not us
        source = Path(filename) if name == "." else Path(name)
        if not source.is_absolute():
            source = base / source
        where = f"{source}:{src.dset_name}"
        if not source.is_file():
            raise InputError(f"{path}: the virtual dataset {dset.name} reads from {where}, "
                             "which does not exist; restore that file, or give the "
                             "per-temperature wrapper files instead")
        try:
            with open_files.acquire(str(source)) as f:
                if src.dset_name not in f:
                    raise KeyError(src.dset_name)
        except (OSError, KeyError) as exc:
            raise InputError(f"{path}: the virtual dataset {dset.name} reads from {where}, "
                             f"which cannot be opened ({exc})") from None


def _canonical_axes(axes: list[str], path: Path, want_temperature: bool) -> list[str]:
    names = []
    for ax in axes:
        low = ax.lower()
        if low in _TEMPERATURE_NAMES:
            names.append("temperature")
        elif low in _Q_NAMES:
            names.append(_Q_NAMES[low])
        else:
            raise InputError(
                f"{path}: cannot tell which axis {ax!r} is; expected temperature (Te, T, "
                "temperature) and Ql, Qk, Qh"
            )
    expected = set(DIMS) if want_temperature else set(DIMS[1:])
    if set(names) != expected or len(set(names)) != len(names):
        raise InputError(f"{path}: axes {axes} are not {sorted(expected)}")
    return names


def _check_temperatures(temps: np.ndarray, files: Sequence[str]) -> None:
    if not np.all(np.isfinite(temps)):
        raise InputError(f"temperatures must be finite numbers (got {temps.tolist()})")
    values, counts = np.unique(temps, return_counts=True)
    dup = values[counts > 1]
    if dup.size:
        raise InputError(
            f"duplicate temperatures {dup.tolist()} K in {len(files)} files; give each "
            "temperature once"
        )
    if temps.size < 2:
        raise InputError("a temperature series needs at least 2 temperatures")


def open_nexus(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    ql: tuple[float, float] | None = None,
    qk: tuple[float, float] | None = None,
    qh: tuple[float, float] | None = None,
    chunks: tuple[int, int, int] | None = None,
    target_chunk_bytes: int = DEFAULT_TARGET_BYTES,
    min_blocks: int = 1,
) -> xr.DataArray:
    """Open a temperature series lazily.

    Parameters
    ----------
    paths : path, glob pattern, or list of them
        One XTEC-layout file, one NXRefine parent file with a 4-D virtual
        dataset, or NXRefine wrapper files (one per temperature, any order).
    ql, qk, qh : (min, max), optional
        Sub-volume in r.l.u. (inclusive).
    chunks : (c_l, c_k, c_h), optional
        Spatial Dask chunks; default: whole multiples of the HDF5 chunks of
        about ``target_chunk_bytes`` with every temperature in one chunk, and
        small enough for at least ``min_blocks`` chunks.

    Returns
    -------
    xarray.DataArray of shape (n_temperatures, n_l, n_k, n_h)
        Dims ``(temperature, Ql, Qk, Qh)``, Dask-backed, sorted by temperature,
        with the source files and NeXus paths in ``attrs``.
    """
    files = expand_paths(paths)
    volumes = [_read_volume(p, ("entry/data", "entry/transform")) for p in files]
    first = volumes[0]
    if len(volumes) == 1 and len(first.source.shape) == 4:
        arr = _open_4d(first, files[0], chunks, target_chunk_bytes, min_blocks)
        layout = "nxrefine-vds" if "transform" in first.nxpath else "xtec"
    else:
        arr = _open_stack(volumes, files, chunks, target_chunk_bytes, min_blocks)
        layout = "nxrefine"
    arr.attrs.update(
        source_files=[str(p.resolve()) for p in files],
        nexus_paths=[v.nxpath for v in volumes],
        layout=layout,
        units="counts",
    )
    arr = select(arr, ql=ql, qk=qk, qh=qh)
    log.info("opened %s series %s, chunks %s", layout, dict(arr.sizes), arr.data.chunksize)
    return arr


def _open_4d(vol: _Volume, path: Path, chunks, target_bytes, min_blocks=1) -> xr.DataArray:
    names = _canonical_axes(vol.axes, path, want_temperature=True)
    order = [names.index(d) for d in DIMS]
    shape = tuple(vol.source.shape[i] for i in order)
    fchunks = tuple(vol.file_chunks[i] for i in order[1:]) if vol.file_chunks else None
    sp = checked_chunks(chunks, shape[1:], shape[0], vol.source.dtype.itemsize) \
        if chunks else spatial_chunks(
        shape[1:], fchunks, shape[0], vol.source.dtype.itemsize, target_bytes, min_blocks)
    file_order_chunks = [0] * 4
    for dim_pos, file_axis in enumerate(order):
        file_order_chunks[file_axis] = shape[0] if dim_pos == 0 else sp[dim_pos - 1]
    data = da.from_array(vol.source, chunks=tuple(file_order_chunks),
                         name=_token(vol, file_order_chunks),
                         asarray=True, fancy=False)
    if order != sorted(order):
        data = data.transpose(order)
    coords = {d: vol.coords[vol.axes[i]] for d, i in zip(DIMS, order)}
    temps = coords["temperature"]
    _check_temperatures(temps, [str(path)])
    arr = xr.DataArray(data, dims=DIMS, coords=coords, name="intensity")
    if np.any(np.diff(temps) < 0):  # sorting adds a gather: only when needed
        arr = arr.sortby("temperature")
    arr.temperature.attrs["units"] = "K"
    arr.attrs["file_chunks"] = list(fchunks) if fchunks else None
    return arr


def _open_stack(volumes: list[_Volume], files: list[Path], chunks, target_bytes,
                min_blocks=1) -> xr.DataArray:
    for v, p in zip(volumes, files):
        if len(v.source.shape) != 3:
            raise InputError(
                f"{p}: expected a 3-D volume per temperature file, found shape {v.source.shape}"
            )
        if v.temperature is None:
            raise InputError(f"{p}: no /entry/sample/temperature; cannot place it in the series")
    temps = np.array([v.temperature for v in volumes])
    _check_temperatures(temps, [str(p) for p in files])
    shapes = {v.source.shape for v in volumes}
    if len(shapes) > 1:
        detail = ", ".join(f"{p.name}: {v.source.shape}" for p, v in zip(files, volumes))
        raise InputError(f"volumes differ in shape across temperatures ({detail})")
    first = volumes[0]
    names = _canonical_axes(first.axes, files[0], want_temperature=False)
    order = [names.index(d) for d in DIMS[1:]]
    for v, p in zip(volumes[1:], files[1:]):
        for ax in first.axes:
            if ax not in v.coords or not np.allclose(v.coords[ax], first.coords[ax]):
                raise InputError(f"{p}: axis {ax!r} differs from {files[0].name}")
    shape3 = tuple(first.source.shape[i] for i in order)
    fchunks = tuple(first.file_chunks[i] for i in order) if first.file_chunks else None
    sp = checked_chunks(chunks, shape3, len(volumes), first.source.dtype.itemsize) \
        if chunks else spatial_chunks(
        shape3, fchunks, len(volumes), first.source.dtype.itemsize, target_bytes, min_blocks)
    file_chunks = [0] * 3
    for dim_pos, file_axis in enumerate(order):
        file_chunks[file_axis] = sp[dim_pos]
    sort = np.argsort(temps)
    parts = [
        da.from_array(volumes[i].source, chunks=tuple(file_chunks),
                      name=_token(volumes[i], file_chunks), asarray=True, fancy=False)
        for i in sort
    ]
    if order != sorted(order):
        parts = [p.transpose(order) for p in parts]
    data = da.stack(parts, axis=0)
    coords = {"temperature": temps[sort]}
    coords.update({d: first.coords[first.axes[i]] for d, i in zip(DIMS[1:], order)})
    arr = xr.DataArray(data, dims=DIMS, coords=coords, name="intensity")
    arr.temperature.attrs["units"] = "K"
    arr.attrs["file_chunks"] = list(fchunks) if fchunks else None
    return arr


def _token(vol: _Volume, chunks) -> str:
    # Deterministic names: the same file and chunking give the same graph keys
    # in every run; a different chunking must not reuse them.
    from dask.base import tokenize

    st = os.stat(vol.filename)
    return "nexus-" + tokenize(vol.filename, vol.source.path, st.st_mtime_ns, st.st_size,
                               tuple(chunks))


def select(
    arr: xr.DataArray,
    *,
    ql: tuple[float, float] | None = None,
    qk: tuple[float, float] | None = None,
    qh: tuple[float, float] | None = None,
) -> xr.DataArray:
    """Sub-volume by inclusive r.l.u. ranges, whatever the direction of the axes."""
    for dim, rng in (("Ql", ql), ("Qk", qk), ("Qh", qh)):
        if rng is None:
            continue
        lo, hi = sorted(float(v) for v in rng)
        c = arr[dim].values
        tol = 1e-6 * max(1.0, float(np.abs(c).max()))
        idx = np.nonzero((c >= lo - tol) & (c <= hi + tol))[0]
        if idx.size == 0:
            raise InputError(
                f"{dim} range {lo}:{hi} selects nothing; the data covers "
                f"{c.min():g} to {c.max():g} r.l.u."
            )
        arr = arr.isel({dim: slice(int(idx[0]), int(idx[-1]) + 1)})
    return arr


def describe(arr: xr.DataArray) -> str:
    """A short human-readable summary of an opened series (for ``xtec info``)."""
    lines = [f"layout: {arr.attrs.get('layout')}"]
    for f, p in zip(arr.attrs.get("source_files", []), arr.attrs.get("nexus_paths", [])):
        lines.append(f"  {f}:{p}")
        if len(lines) > 6:
            lines.append(f"  ... {len(arr.attrs['source_files'])} files in all")
            break
    t = arr.temperature.values
    lines.append(f"temperatures: {t.size} from {t.min():g} K to {t.max():g} K")
    for d in DIMS[1:]:
        c = arr[d].values
        step = float(np.median(np.diff(c))) if c.size > 1 else 0.0
        lines.append(f"{d}: {c.size} points, {c.min():g} to {c.max():g} r.l.u. (step {step:g})")
    nbytes = arr.size * arr.dtype.itemsize
    lines.append(
        f"shape {tuple(arr.shape)} {arr.dtype}, {nbytes / 2**30:.2f} GiB; dask chunks "
        f"{arr.data.chunksize} ({arr.data.npartitions} chunks)"
    )
    return "\n".join(lines)
