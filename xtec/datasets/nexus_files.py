"""Writing a synthetic series (and its ground truth) in the NeXus layouts xtec reads."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from xtec.datasets.separated import _planted, separated_model
from xtec.datasets.series import CLASS_NAMES, SyntheticSeries, centred_axes, default_temperatures

Q_AXES = ("Ql", "Qk", "Qh")  # reciprocal-space axes, slowest first


def write_xtec(series: SyntheticSeries, path: str | os.PathLike,
               chunks: tuple[int, ...] | None = None) -> Path:
    """Write the series as one NeXus file in the XTEC layout.

    NXdata at ``/entry/data`` with signal ``data`` of shape (T, L, K, H) and
    axes ``Te, Ql, Qk, Qh``; the ground truth goes to ``/entry/truth``.
    """
    import h5py

    path = Path(path)
    data = series.intensity
    if chunks is None:
        chunks = (data.shape[0],) + tuple(min(c, n) for c, n in zip((8, 40, 40), data.shape[1:]))
    with h5py.File(path, "w") as f:
        f.attrs["default"] = "entry"
        entry = _group(f, "entry", "NXentry")
        entry.attrs["default"] = "data"
        g = _group(entry, "data", "NXdata", "data", ("Te",) + Q_AXES)
        g.create_dataset("data", data=data, chunks=chunks, compression="gzip",
                         compression_opts=1, shuffle=True)
        g["Te"] = series.temperature
        g["Te"].attrs["units"] = "K"
        _write_q_axes(g, series, "rlu")
        _write_truth(entry, series)
    return path


def write_xtec_large(path: str | os.PathLike, shape: tuple[int, int, int], *,
                     temperatures: np.ndarray | None = None, seed: int = 0,
                     hk_step: float = 0.05, l_step: float = 0.1, tc: float = 130.0,
                     exposure: float = 0.2, chunks: tuple[int, int, int] | None = None,
                     compression: str | None = None, max_plane_bytes: int = 2**30) -> Path:
    """Write a synthetic series larger than memory, one L slab at a time.

    Same planted model as :func:`make_series` (grid centred on the origin),
    without detector gaps; the noise of each slab is seeded by (seed, slab).
    A slab whose float32 counts exceed ``max_plane_bytes`` (1 GiB: series above
    16 GB at 16 planes) is made in blocks of one chunk row of K, each seeded by
    (seed, slab, block): its float64 temporaries are then tens of MB where a
    whole 3 GB slab took several GB and was killed (issue 29).  Series with
    smaller slabs are unchanged.
    """
    import h5py

    t = default_temperatures() if temperatures is None else np.asarray(temperatures, float)
    nl, nk, nh = shape
    ql, qk, qh = centred_axes(shape, hk_step, l_step)
    model = separated_model(np.random.default_rng(seed), t, ql, qk, qh, hk_step=hk_step,
                            l_step=l_step, tc=tc, beta=0.33, background=4.0, signal_ratio=3.0)
    chunks = tuple(min(c, n) for c, n in zip(chunks or (1, 128, 128), (nl, nk, nh)))
    path = Path(path)
    with h5py.File(path, "w") as f:
        entry = _group(f, "entry", "NXentry")
        g = _group(entry, "data", "NXdata", "data", ("Te",) + Q_AXES)
        d = g.create_dataset("data", shape=(t.size, nl, nk, nh), dtype="float32",
                             chunks=(t.size,) + tuple(chunks), compression=compression,
                             shuffle=compression is not None,
                             compression_opts=1 if compression == "gzip" else None)
        g["Te"] = t
        g["Ql"], g["Qk"], g["Qh"] = ql, qk, qh
        tr = entry.create_group("truth")
        cls = tr.create_dataset("classes", shape=shape, dtype="int8")
        sig = tr.create_dataset("signal", shape=shape, dtype=bool)
        tr.attrs["tc"] = tc
        blocked = t.size * nk * nh * 4 > max_plane_bytes
        rows = chunks[1] if blocked else nk
        for i in range(nl):
            for j, k0 in enumerate(range(0, nk, rows)):
                k1 = min(nk, k0 + rows)
                lam, c, s_ = _planted(ql[i:i + 1], qk[k0:k1], qh, **model)
                noise = np.random.default_rng([seed, i, j] if blocked else [seed, i])
                d[:, i:i + 1, k0:k1] = noise.poisson(lam * exposure).astype(np.float32)
                cls[i:i + 1, k0:k1] = c
                sig[i:i + 1, k0:k1] = s_
                del lam, c, s_
    return path


def write_nxrefine(series: SyntheticSeries, directory: str | os.PathLike,
                   sample: str = "sample", parent: bool = True) -> list[Path]:
    """Write the series in the NXRefine layout: one wrapper file per temperature.

    Each ``<sample>_<scan>.nxs`` has ``/entry/sample/temperature`` and the NXdata
    ``/entry/transform`` whose ``data`` is an external link to
    ``<scan>/transform.nxs:/entry/data/v`` (float32, chunks 50^3, fill value 0).
    With ``parent``, ``<sample>.nxs`` holds ``/entry/transform/data`` as a 4-D
    virtual dataset over the scans (absolute source paths, as NXRefine writes).

    Returns the wrapper files, in temperature order, then the parent if written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    wrappers = []
    for i, temp in enumerate(series.temperature):
        scan = _scan_name(temp)
        (directory / scan).mkdir(exist_ok=True)
        _write_scan_transform(directory / scan / "transform.nxs", series, i)
        wpath = directory / f"{sample}_{scan}.nxs"
        _write_wrapper(wpath, series, temp, scan, truth=i == 0)
        wrappers.append(wpath)
    out = list(wrappers)
    if parent:
        out.append(_write_parent(directory / f"{sample}.nxs", series, directory))
    return out


def _scan_name(temp: float) -> str:
    return f"{int(round(temp)):03d}k"


def _write_scan_transform(path: Path, series: SyntheticSeries, i: int) -> None:
    """One scan's ``transform.nxs``: the volume at temperature ``i`` in ``/entry/data/v``."""
    import h5py

    chunks = tuple(min(50, n) for n in series.intensity.shape[1:])
    with h5py.File(path, "w") as f:
        d = _group(_group(f, "entry", "NXentry"), "data", "NXdata", "v", Q_AXES)
        d.create_dataset("v", data=series.intensity[i], chunks=chunks, fillvalue=0.0,
                         compression="gzip", compression_opts=1)
        _write_q_axes(d, series)


def _write_wrapper(path: Path, series: SyntheticSeries, temp: float, scan: str,
                   truth: bool) -> None:
    """A wrapper file: the sample temperature and an external link to the scan's volume."""
    import h5py

    with h5py.File(path, "w") as f:
        e = _group(f, "entry", "NXentry")
        s = _group(e, "sample", "NXsample")
        s["temperature"] = float(temp)
        s["temperature"].attrs["units"] = "K"
        tr = _group(e, "transform", "NXdata", "data", Q_AXES)
        tr["data"] = h5py.ExternalLink(f"{scan}/transform.nxs", "/entry/data/v")
        _write_q_axes(tr, series, "rlu")
        if truth:
            _write_truth(e, series)


def _write_parent(path: Path, series: SyntheticSeries, directory: Path) -> Path:
    """The parent file: a 4-D virtual dataset over the scans' volumes."""
    import h5py

    nl, nk, nh = series.intensity.shape[1:]
    layout = h5py.VirtualLayout(shape=(len(series.temperature), nl, nk, nh), dtype="float32")
    for i, temp in enumerate(series.temperature):
        src = (directory / _scan_name(temp) / "transform.nxs").resolve()
        layout[i] = h5py.VirtualSource(str(src), "/entry/data/v", shape=(nl, nk, nh))
    with h5py.File(path, "w") as f:
        e = _group(f, "entry", "NXentry")
        tr = _group(e, "transform", "NXdata", "data", ("temperature",) + Q_AXES)
        tr.create_virtual_dataset("data", layout, fillvalue=0.0)
        tr["temperature"] = series.temperature
        tr["temperature"].attrs["units"] = "K"
        _write_q_axes(tr, series)
        _write_truth(e, series)
    return path


def _group(parent, name: str, nx_class: str, signal: str | None = None, axes=()):
    """A NeXus group; an NXdata one with its ``signal`` and ``axes`` attributes."""
    import h5py

    g = parent.create_group(name)
    g.attrs["NX_class"] = nx_class
    if signal is not None:
        g.attrs["signal"] = signal
        g.attrs["axes"] = np.array(list(axes), dtype=h5py.string_dtype())
    return g


def _write_q_axes(g, series: SyntheticSeries, units: str | None = None) -> None:
    for name, ax in zip(Q_AXES, (series.ql, series.qk, series.qh)):
        g[name] = ax
        if units:
            g[name].attrs["units"] = units


def _write_truth(entry, series: SyntheticSeries) -> None:
    # Kept out of every NXdata group so the loader never mistakes it for data.
    g = entry.create_group("truth")
    g.attrs["NX_class"] = "NXcollection"
    g["classes"] = series.classes
    g["signal"] = series.signal
    g.attrs["tc"] = series.tc
    g.attrs["class_names"] = ",".join(CLASS_NAMES[c] for c in sorted(CLASS_NAMES))
    if series.frame_scale is not None:  # the measured kind's frame truth
        g["frame_scale"] = np.asarray(series.frame_scale, np.float64)
        g["bad_frames"] = np.asarray(series.bad_frames, np.int64)


def read_truth(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, float]:
    """Ground truth written beside a synthetic series: ``(classes, signal, tc)``."""
    import h5py

    with h5py.File(path, "r") as f:
        g = f["entry/truth"]
        return g["classes"][()], g["signal"][()], float(g.attrs["tc"])
