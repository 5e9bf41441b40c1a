"""The measured-like kind: a realistic series with what measured series add (issue 27).

A measured temperature series is not a set of perfectly normalised volumes of a
lattice that stands still.  :func:`make_measured_series` takes the realistic
model (:func:`~xtec.datasets.make_realistic_series`) and adds, each optional
and each with its ground truth:

* **thermal expansion** (``expansion``, per-axis linear coefficients, 1/K): the
  lattice parameters grow as ``a(T) = a(T_ref) (1 + alpha (T - T_ref))``; the
  transforms are made with one orientation matrix (the one of ``T_ref``, the
  coldest temperature), so reflection (h, k, l) appears at
  ``(h, k, l) / (1 + alpha (T - T_ref))``: every peak moves towards the origin
  as T rises, through the voxels.  At 3e-5 / K over 280 K a peak at H = 2 moves
  by 0.017 r.l.u., a third of a voxel and of the resolution width.
* **orientation drift** (``drift``, degrees over the series): a slow rotation
  of the lattice about L (the sample creeping in its mount), linear in T.
* **normalisation error** (``norm_error``): the monitor recorded for each
  temperature is off by a factor ``1 + norm_error * N(0, 1)`` (clipped at two
  sigma), so each stored volume is scaled by its inverse.
* **bad frames** (``bad_frames``): temperatures recorded during a beam loss,
  not renormalised: ``{T: factor}`` scales the expected counts of the frame
  nearest T (0.5: half the beam); ``bad_kind="partial"`` instead zeroes the
  part ``1 - factor`` of the frame (a lost detector module: a slab along H).

Ground truth (beyond the realistic kind's ``classes``, ``signal`` and
``contributions``, here of the moved features, averaged over T):
``frame_scale`` (T,), the factor each stored frame carries against a
perfectly normalised one (1 everywhere on a clean series; 1 for a partial
frame, whose lost part is zero instead), and ``bad_frames``, the indices of
the bad frames.  With every effect off the series is exactly the realistic one of the
same seed.
"""

from __future__ import annotations

import numpy as np

from xtec.datasets.realistic import (
    REALISTIC_FAMILIES,
    _dominant_family,
    _realistic_terms,
    _slanted_gaps,
)
from xtec.datasets.series import Grid, SyntheticSeries, blank_gaps
from xtec.datasets.series import span as grid_span
from xtec.errors import ParameterError

BAD_KINDS = ("scale", "partial")


def make_measured_series(
    *,
    expansion: float | tuple[float, float, float] = 0.0,
    drift: float = 0.0,
    norm_error: float = 0.0,
    bad_frames: dict | None = None,
    bad_kind: str = "scale",
    tc: float = 130.0,
    beta: float = 0.33,
    nu: float = 0.63,
    counts_per_unit: float = 200.0,
    monitor_spread: float = 0.05,
    signal_ratio: float = 3.0,
    gaps: bool = True,
    seed: int = 0,
    **grid,
) -> SyntheticSeries:
    """A realistic series with thermal expansion, drift, normalisation errors and bad frames.

    Parameters
    ----------
    expansion : float or (alpha_l, alpha_k, alpha_h)
        Linear thermal-expansion coefficients (1/K) along L, K, H; one number
        for all three.
    drift : float
        Rotation of the lattice about L over the whole series (degrees), linear in T.
    norm_error : float
        Relative standard deviation of the per-temperature normalisation error.
    bad_frames : dict {temperature (K): factor}, optional
        Frames recorded at ``factor`` of the beam (``bad_kind="scale"``) or with
        the part ``1 - factor`` of the volume lost (``bad_kind="partial"``).
    The other parameters as :func:`~xtec.datasets.make_realistic_series`.
    """
    if bad_kind not in BAD_KINDS:
        raise ParameterError(f"bad_kind must be one of {BAD_KINDS} (got {bad_kind!r})")
    alpha = np.broadcast_to(np.asarray(expansion, np.float64), (3,)).copy()
    rng = np.random.default_rng(seed)
    extra = np.random.default_rng([seed, 27])  # the effects' own draws
    grid = Grid(**grid)
    t = grid.temperature()
    ql, qk, qh = grid.axes()
    span = grid_span(ql, qk, qh)  # the features only move towards the origin
    # The same draws, in the same order, as the realistic kind.
    f2_bragg = rng.uniform(0.2, 1.0, size=(2 * span + 1,) * 3)
    f2_cdw = rng.uniform(0.3, 1.0, size=(2 * span + 1,) * 3)
    kw = dict(tc=tc, beta=beta, nu=nu)
    if not alpha.any() and not drift:
        terms = _realistic_terms(ql, qk, qh, t, f2_bragg, f2_cdw, span, **kw)
    else:
        terms = _moving_terms(ql, qk, qh, t, f2_bragg, f2_cdw, span, alpha, drift, kw)
    lam = sum(terms.values())
    contributions = {c: v.mean(axis=0).astype(np.float32) for c, v in terms.items()}
    classes, signal = _dominant_family(contributions, signal_ratio)

    n_t = t.size
    beam = np.ones(n_t)
    lost = np.zeros((n_t,) + lam.shape[1:], bool)
    bad = []
    for temp, factor in (bad_frames or {}).items():
        i = int(np.argmin(np.abs(t - float(temp))))
        bad.append(i)
        if not 0.0 <= float(factor) <= 1.0:
            raise ParameterError(f"a bad frame's factor must be in [0, 1] (got {factor!r})")
        if bad_kind == "scale":
            beam[i] = float(factor)
        else:  # the first part 1 - factor of the H range is lost
            n_lost = int(round((1.0 - float(factor)) * qh.size))
            lost[i, :, :, :n_lost] = True
    recorded = 1.0 + norm_error * extra.standard_normal(n_t).clip(-2, 2) if norm_error else \
        np.ones(n_t)

    monitor = 1.0 + monitor_spread * rng.standard_normal(n_t).clip(-2, 2)
    expected = lam * (counts_per_unit * monitor * beam)[:, None, None, None]
    counts = rng.poisson(expected)
    intensity = (counts / (monitor * recorded)[:, None, None, None]).astype(np.float32)
    intensity[lost] = 0.0
    if gaps:
        blank_gaps(_slanted_gaps(ql, qk, qh, grid.hk_step), intensity, classes, signal)

    return SyntheticSeries(
        intensity=intensity, temperature=t, ql=ql, qk=qk, qh=qh, classes=classes,
        signal=signal, tc=float(tc), kind="measured", contributions=contributions,
        frame_scale=beam / recorded, bad_frames=tuple(sorted(bad)),
        params=dict(kind="measured", seed=seed, tc=tc, beta=beta, nu=nu,
                    counts_per_unit=counts_per_unit, monitor_spread=monitor_spread,
                    signal_ratio=signal_ratio, expansion=alpha.tolist(), drift=drift,
                    norm_error=norm_error, bad_kind=bad_kind,
                    bad_frames={float(k): float(v) for k, v in (bad_frames or {}).items()}),
    )


def lattice_coordinates(ql, qk, qh, t, alpha, drift: float):
    """Where the static lattice's features are looked up for the grid at each
    temperature: per T a tuple (L, K, H) of arrays broadcast to the grid.

    Reflection (h, k, l) appears at (h, k, l) / (1 + alpha (T - T_ref)) (one
    orientation matrix, made at the coldest T), rotated about L by the drift.
    """
    L, K, H = np.meshgrid(ql, qk, qh, indexing="ij", sparse=True)
    t_ref, span = float(t.min()), max(float(np.ptp(t)), 1.0)
    out = []
    for temp in t:
        dl, dk, dh = 1.0 + alpha * (temp - t_ref)
        hh, kk = H * dh, K * dk
        if drift:
            a = np.deg2rad(drift) * (temp - t_ref) / span
            hh, kk = (np.cos(a) * hh + np.sin(a) * kk, -np.sin(a) * hh + np.cos(a) * kk)
        out.append((L * dl, kk, hh))
    return out


def _moving_terms(ql, qk, qh, t, f2_bragg, f2_cdw, span, alpha, drift, kw) -> dict:
    """The realistic families with the lattice's features moved, one T at a time."""
    per_t = [_realistic_terms(ql, qk, qh, t[i:i + 1], f2_bragg, f2_cdw, span, coords=c, **kw)
             for i, c in enumerate(lattice_coordinates(ql, qk, qh, t, alpha, drift))]
    return {f: np.concatenate([p[f] for p in per_t]) for f in REALISTIC_FAMILIES}
