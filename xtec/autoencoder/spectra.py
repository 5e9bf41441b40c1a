"""Spectra as measured: edge energy, edge-step normalisation and energy calibration (NumPy).

The definitions are those of Athena and Larch (``pre_edge``), so that a
normalised spectrum here is the one an XAS user knows:

* ``E0``: the energy of the largest derivative of mu(E) on the edge, read on a
  derivative smoothed over about one energy step, where the neighbouring
  points are steep too (a single-point glitch is not an edge);
* the pre-edge line: a straight line fitted to ``mu E^nvict`` between
  ``E0 + pre1`` and ``E0 + pre2`` (then divided by ``E^nvict``);
* the post-edge polynomial: degree ``nnorm`` in E, fitted to mu minus the
  pre-edge line between ``E0 + norm1`` and ``E0 + norm2``;
* the edge step: post-edge polynomial plus pre-edge line, minus the pre-edge
  line, at E0; ``norm = (mu - pre_edge) / step``; ``flat`` also removes the
  post-edge curvature above E0, so it oscillates about 1.

Defaults (``None``) follow Larch: ``pre1`` the second energy point rounded to
5 eV (2 eV for short pre-edges), ``pre2 = pre1 / 2``, ``norm2`` the last point
rounded to 5 eV, ``norm1 = min(25, norm2 / 15 rounded to 5)``, ``nnorm`` 2 for
a post-edge range over 300 eV, 1 over 30 eV, else 0.  Energies in eV.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from xtec.errors import InputError, ParameterError

#: K-edge energies (eV) of the 3d metals and a few others (Bearden and Burr, as
#: tabulated by xraydb): an XDI file naming its element and edge is calibrated to them.
K_EDGES = {
    "Ti": 4966.0,
    "V": 5465.0,
    "Cr": 5989.0,
    "Mn": 6539.0,
    "Fe": 7112.0,
    "Co": 7709.0,
    "Ni": 8333.0,
    "Cu": 8979.0,
    "Zn": 9659.0,
    "Ga": 10367.0,
    "Ge": 11103.0,
    "As": 11867.0,
    "Se": 12658.0,
}


def _smooth(y: np.ndarray, sigma_points: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(y, sigma_points, mode="nearest")


def find_e0(energy: np.ndarray, mu: np.ndarray) -> float:
    """Edge energy (eV) of mu(E): energy (n,) increasing, mu (n,).

    The largest derivative among points whose derivative, and that of both
    neighbours, exceed 60 % of its range (halved up to twice when fewer than
    three points do), away from the first and last 2 % of the scan.
    """
    e = np.asarray(energy, dtype=float)
    y = np.asarray(mu, dtype=float)
    if e.size < 5:
        raise InputError(f"a spectrum needs at least 5 points to find its edge, not {e.size}")
    d = np.gradient(y) / np.gradient(e)
    d = _smooth(np.where(np.isfinite(d), d, 0.0), 1.0)
    edge = max(3, int(e.size * 0.02))
    inner = d[edge:-edge]
    lo, span = inner.min(), max(float(np.ptp(inner)), 1e-300)
    scaled = (d - lo) / span
    level = 0.6 if e.size > 20 else 0.3
    for _ in range(3):
        high = scaled > level
        ok = high & np.roll(high, 1) & np.roll(high, -1)
        ok[:edge] = ok[-edge:] = False
        if ok.sum() >= 1:
            break
        level *= 0.5
    else:
        ok = np.zeros(e.size, bool)
        ok[edge:-edge] = True
    return float(e[np.flatnonzero(ok)[np.argmax(scaled[ok])]])


@dataclass
class EdgeStep:
    """The result of :func:`normalize_edge`; arrays have the energy grid's shape (n,)."""

    e0: float
    edge_step: float
    norm: np.ndarray
    flat: np.ndarray
    pre_edge: np.ndarray
    post_edge: np.ndarray
    pre1: float
    pre2: float
    norm1: float
    norm2: float
    nnorm: int
    nvict: int


def _index_below(e: np.ndarray, value: float) -> int:
    """Last index with ``e <= value`` (0 when none)."""
    return max(int(np.searchsorted(e, value, side="right")) - 1, 0)


def _index_nearest(e: np.ndarray, value: float) -> int:
    return int(np.argmin(np.abs(e - value)))


def _default_ranges(e, e0, pre1, pre2, norm1, norm2, nnorm):
    ie0 = _index_nearest(e, e0)
    if pre1 is None:
        unit = 5.0 if ie0 > 20 else 2.0
        pre1 = unit * round((e[1] - e0) / unit)
    pre1 = max(pre1, e[0] - e0)
    if pre2 is None:
        pre2 = 0.5 * pre1
    pre1, pre2 = min(pre1, pre2), max(pre1, pre2)
    if norm2 is None:
        norm2 = 5.0 * round((e[-1] - e0) / 5.0)
    if norm2 < 0:
        norm2 = e[-1] - e0 - norm2
    norm2 = min(norm2, e[-1] - e0)
    if norm1 is None:
        norm1 = min(25.0, 5.0 * round(norm2 / 15.0))
    norm1, norm2 = min(norm1, norm2), max(norm1, norm2)
    norm1 = min(norm1, norm2 - 2)
    if nnorm is None:
        span = norm2 - norm1
        nnorm = 2 if span >= 300 else 1 if span >= 30 else 0
    return pre1, pre2, norm1, norm2, int(min(max(nnorm, 0), 3))


def normalize_edge(
    energy: np.ndarray,
    mu: np.ndarray,
    *,
    e0: float | None = None,
    pre1: float | None = None,
    pre2: float | None = None,
    norm1: float | None = None,
    norm2: float | None = None,
    nnorm: int | None = None,
    nvict: int = 0,
    step: float | None = None,
) -> EdgeStep:
    """Edge-step normalisation of one spectrum (module docstring: the definitions).

    ``energy`` (n,) increasing in eV, ``mu`` (n,); the ranges are relative to
    E0 in eV; ``step`` fixes the edge step instead of measuring it.
    """
    e = np.asarray(energy, dtype=float)
    y = np.asarray(mu, dtype=float)
    if e.shape != y.shape or e.ndim != 1:
        raise ParameterError(f"energy {e.shape} and mu {y.shape} must be 1-D of one length")
    if not (np.all(np.isfinite(e)) and np.all(np.isfinite(y))):
        raise InputError("the spectrum has non-finite energies or absorption")
    if not np.all(np.diff(e) > 0):
        raise InputError("the energies must increase strictly; sort the scan first")
    if e0 is None or not e[1] <= e0 <= e[-2]:
        e0 = find_e0(e, y)
    pre1, pre2, norm1, norm2, nnorm = _default_ranges(e, e0, pre1, pre2, norm1, norm2, nnorm)
    ie0 = _index_nearest(e, e0)
    p1, p2 = _index_below(e, e0 + pre1), _index_nearest(e, e0 + pre2)
    if p2 - p1 < 2:
        p2 = min(e.size, p1 + 2)
    line = np.polynomial.polynomial.polyfit(e[p1:p2], y[p1:p2] * e[p1:p2] ** nvict, 1)
    pre_edge = (line[0] + line[1] * e) * e ** (-float(nvict))
    q1, q2 = min(_index_below(e, e0 + norm1), e.size - 3), _index_nearest(e, e0 + norm2)
    if q2 - q1 < 2:
        q1, nnorm = q1 - 2, 0
    elif q2 - q1 < 5:
        nnorm = min(1, nnorm)
    coefs = np.polynomial.polynomial.polyfit(e[q1:q2], (y - pre_edge)[q1:q2], nnorm)
    post_edge = pre_edge + np.polynomial.polynomial.polyval(e, coefs)
    edge_step = step if step is not None else post_edge[ie0] - pre_edge[ie0]
    edge_step = max(1e-12, abs(float(edge_step)))
    norm = (y - pre_edge) / edge_step
    # Flattened: above E0 the post-edge curvature (relative to the step) is removed.
    curve = (post_edge - pre_edge) / edge_step - 1.0
    flat = np.where(e >= e0, norm - curve, norm)
    return EdgeStep(
        e0=float(e0),
        edge_step=edge_step,
        norm=norm,
        flat=flat,
        pre_edge=pre_edge,
        post_edge=post_edge,
        pre1=float(pre1),
        pre2=float(pre2),
        norm1=float(norm1),
        norm2=float(norm2),
        nnorm=int(nnorm),
        nvict=int(nvict),
    )


def calibration_shift(energy: np.ndarray, reference: np.ndarray, edge_energy: float) -> float:
    """Energy shift (eV) that puts the reference foil's E0 at ``edge_energy``.

    ``energy`` (n,) and ``reference`` (n,), the reference mu(E) measured with
    the sample (e.g. ``ln(It / Iref)``); add the shift to the energies.
    """
    return float(edge_energy - find_e0(energy, reference))


def calibrate(spectra: xr.DataArray, edge_energy: float | None = None) -> xr.DataArray:
    """Spectra on an energy axis calibrated by their reference channel.

    ``spectra`` (n, m) as :func:`~xtec.io.curves.load_curves` returns them
    (``kind="spectrum"``), with the ``reference`` coordinate (n, m).  Each
    spectrum is shifted so that its reference's E0 lies at ``edge_energy``
    (default: the K edge of the XDI ``element.symbol``, else the first
    spectrum's reference E0, which aligns a series), and resampled onto the
    first spectrum's shifted grid.  The shifts are kept as ``energy_shift``.
    """
    if "reference" not in spectra.coords:
        raise InputError("the spectra have no reference channel to calibrate the energy with")
    first, axis = spectra.dims
    e = np.asarray(spectra[axis].values, dtype=float)
    refs = np.asarray(spectra["reference"].values, dtype=float)
    if edge_energy is None:
        symbol = spectra.attrs.get("Element.symbol", "").strip()
        edge_energy = K_EDGES.get(symbol) if spectra.attrs.get("Element.edge", "K") == "K" else None
    e0s = np.array([find_e0(e, r) for r in refs])
    target = float(edge_energy) if edge_energy is not None else float(e0s[0])
    shifts = target - e0s
    grid = e + shifts[0]
    out = np.stack(
        [np.interp(grid, e + s, row) for s, row in zip(shifts, spectra.values, strict=True)]
    )
    coords = {k: v for k, v in spectra.coords.items() if v.dims == (first,) and k != first}
    coords.update({first: spectra[first].values, axis: grid, "energy_shift": (first, shifts)})
    return xr.DataArray(out, dims=(first, axis), coords=coords, attrs=dict(spectra.attrs))


def normalize_spectra(spectra: xr.DataArray, flat: bool = False, **kwargs) -> xr.DataArray:
    """Each spectrum (n, m) edge-step normalised (``flat`` for the flattened form).

    Keyword arguments go to :func:`normalize_edge`; ``e0`` and ``edge_step``
    of each spectrum are kept as coordinates along the first dim.
    """
    first, axis = spectra.dims
    e = np.asarray(spectra[axis].values, dtype=float)
    fits = [normalize_edge(e, row, **kwargs) for row in np.asarray(spectra.values, dtype=float)]
    out = spectra.copy(data=np.stack([f.flat if flat else f.norm for f in fits]))
    return out.assign_coords(
        e0=(first, [f.e0 for f in fits]), edge_step=(first, [f.edge_step for f in fits])
    )
