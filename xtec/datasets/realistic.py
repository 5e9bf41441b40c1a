"""The realistic kind: halos around the peaks, overlapping families, as in measured volumes."""

from __future__ import annotations

import numpy as np

from xtec.datasets.series import (
    BACKGROUND,
    BRAGG,
    CDW,
    CRITICAL,
    TDS,
    Grid,
    SyntheticSeries,
    blank_gaps,
)
from xtec.datasets.series import span as grid_span

#: Families of the realistic kind, in the order of :attr:`SyntheticSeries.contributions`.
REALISTIC_FAMILIES = (BACKGROUND, BRAGG, TDS, CDW, CRITICAL)


def make_realistic_series(
    *,
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
    """A series built like a measured one: halos around peaks, overlapping families.

    Intensities are in units where the flat background is about 0.05, a Bragg
    peak up to 2e4, a CDW superlattice peak up to 200 (1% of Bragg) and the
    critical scattering at a superlattice point about 1 at Tc; the counts are Poisson with ``counts_per_unit``
    counts per unit intensity times a per-temperature monitor (beam decay and
    top-ups, spread ``monitor_spread``), and the stored transform is the count
    divided by the monitor, as NXRefine normalises its transforms (so the stored
    values are about ``counts_per_unit`` x intensity and not integers).

    ============  ==========================  ======================================
    family        where (r.l.u.)              temperature and distance dependence
    ============  ==========================  ======================================
    BRAGG (1)     integer (h, k, l), sharp    |F|^2 exp(-2W(T, Q)), Debye model
    TDS (4)       halo at the same points     one-phonon TDS: |Q|^2 exp(-2W)
                                              coth(e/2T)/e, e the acoustic phonon
                                              energy at the distance: grows with T,
                                              more steeply close to the peak
    CDW (2)       (h+1/2, k+1/2, l), sharp    order parameter (1 - T/Tc)^(2 beta)
    CRITICAL (3)  halo at the same points     Ornstein-Zernike chi/(1 + xi^2 d^2),
                                              xi ~ |T/Tc - 1|^-nu (capped by the
                                              resolution): peaks at Tc near the
                                              point, nearly flat in T far out
    BACKGROUND    everywhere                  Compton rising with |Q|, air scatter
                  (0)                         near the beam, an amorphous ring
    ============  ==========================  ======================================

    Detector gaps are slanted planes of voxels that are zero at every
    temperature.  The truth is the family whose mean (over temperature)
    expected intensity dominates each voxel (``classes``), ``signal`` where it
    is at least ``signal_ratio`` x the background, and the per-family mean
    contribution maps (``contributions``).  Parameters as :func:`make_series`
    (``**grid``: the fields of :class:`~xtec.datasets.Grid`).
    """
    rng = np.random.default_rng(seed)
    grid = Grid(**grid)
    t = grid.temperature()
    ql, qk, qh = grid.axes()
    span = grid_span(ql, qk, qh)
    # |F|^2 of each reflection and of each superlattice reflection.
    f2_bragg = rng.uniform(0.2, 1.0, size=(2 * span + 1,) * 3)
    f2_cdw = rng.uniform(0.3, 1.0, size=(2 * span + 1,) * 3)
    terms = _realistic_terms(ql, qk, qh, t, f2_bragg, f2_cdw, span, tc=tc, beta=beta, nu=nu)
    lam = sum(terms.values())  # (T, L, K, H) expected intensity

    contributions = {c: v.mean(axis=0).astype(np.float32) for c, v in terms.items()}
    classes, signal = _dominant_family(contributions, signal_ratio)
    intensity = _monitor_normalised_counts(rng, lam, counts_per_unit, monitor_spread)
    if gaps:
        blank_gaps(_slanted_gaps(ql, qk, qh, grid.hk_step), intensity, classes, signal)

    return SyntheticSeries(
        intensity=intensity, temperature=t, ql=ql, qk=qk, qh=qh, classes=classes,
        signal=signal, tc=float(tc), kind="realistic", contributions=contributions,
        params=dict(kind="realistic", seed=seed, tc=tc, beta=beta, nu=nu,
                    counts_per_unit=counts_per_unit, monitor_spread=monitor_spread,
                    signal_ratio=signal_ratio),
    )


def _dominant_family(contributions: dict, signal_ratio: float):
    """Truth per voxel: the family of the largest mean contribution, and whether it
    is at least ``signal_ratio`` x the background."""
    stack = np.stack([contributions[c] for c in REALISTIC_FAMILIES])
    classes = np.asarray(REALISTIC_FAMILIES, np.int8)[np.argmax(stack, axis=0)]
    dominant = stack[1:].max(axis=0)
    signal = (classes != BACKGROUND) & (dominant >= signal_ratio * contributions[BACKGROUND])
    return classes, signal


def _monitor_normalised_counts(rng, lam, counts_per_unit: float, monitor_spread: float):
    """Poisson counts of ``lam`` (T, L, K, H) under a per-temperature monitor,
    divided by the monitor as NXRefine normalises its transforms (float32)."""
    monitor = 1.0 + monitor_spread * rng.standard_normal(lam.shape[0]).clip(-2, 2)
    expected = lam * (counts_per_unit * monitor)[:, None, None, None]
    return (rng.poisson(expected) / monitor[:, None, None, None]).astype(np.float32)


def _realistic_terms(ql, qk, qh, t, f2_bragg, f2_cdw, span, *, tc, beta, nu, coords=None):
    """Expected intensity (T, L, K, H) of each family of the realistic model.

    ``coords``: (L, K, H) arrays broadcast to the grid where the lattice's
    features are evaluated instead of the grid's own (peaks that moved, as in
    :mod:`xtec.datasets.measured`); the background always stays on the grid.
    """
    L, K, H = np.meshgrid(ql, qk, qh, indexing="ij", sparse=True)
    if coords is not None:
        L, K, H = coords
    T = t[:, None, None, None]
    q2 = H**2 + K**2 + L**2

    # Debye-Waller: 2W = c |Q|^2 coth(theta_D / 2T) (Debye, high-T limit ~ T),
    # about 0.6 at the largest |Q| at 300 K.
    theta_d = 250.0
    two_w = 0.0128 * q2 * (1.0 / np.tanh(theta_d / (2.0 * T)))
    dw = np.exp(-two_w)

    # Nearest integer point and nearest (h+1/2, k+1/2, l) point.
    ih, ik, il = np.rint(H), np.rint(K), np.rint(L)
    ch, ck = np.floor(H) + 0.5, np.floor(K) + 0.5
    f2b = f2_bragg[il.astype(int) + span, ik.astype(int) + span, ih.astype(int) + span]
    f2c = f2_cdw[il.astype(int) + span, ck.astype(int) + span, ch.astype(int) + span]
    # Resolution: Gaussian, 0.05 r.l.u. in-plane, 0.06 along L.
    sig_hk, sig_l = 0.05, 0.06
    d2b = (H - ih) ** 2 + (K - ik) ** 2 + (L - il) ** 2
    res_b = np.exp(-0.5 * (((H - ih) ** 2 + (K - ik) ** 2) / sig_hk**2 + (L - il) ** 2 / sig_l**2))
    d2c = (H - ch) ** 2 + (K - ck) ** 2 + (L - il) ** 2
    res_c = np.exp(-0.5 * (((H - ch) ** 2 + (K - ck) ** 2) / sig_hk**2 + (L - il) ** 2 / sig_l**2))
    origin = (ih == 0) & (ik == 0) & (il == 0)  # no Bragg peak (nor its halo) at the beam

    bragg = np.where(origin, 0.0, 2.0e4 * f2b * res_b) * dw

    # One-phonon TDS around every reflection: |Q|^2 exp(-2W) (2n + 1)/omega with
    # an acoustic branch omega ~ sin(pi d / 2) up to 180 K at the zone boundary;
    # the resolution (d0) rounds the 1/d^2 cusp at the peak.
    d0 = 0.03
    e = 180.0 * np.sin(0.5 * np.pi * np.minimum(np.sqrt(d2b + d0**2), 1.0))
    tds = np.where(origin, 0.0, 1.0e-2 * f2b * q2) * dw / (np.tanh(e / (2.0 * T)) * e) * 180.0

    # CDW: order parameter squared, resolution-limited below Tc.
    reduced = np.clip(1.0 - t / tc, 0.0, None)
    op = (reduced ** (2.0 * beta))[:, None, None, None]
    cdw = 200.0 * f2c * res_c * op * dw

    # Critical diffuse scattering at the same points, Ornstein-Zernike with
    # chi ~ xi^2 (eta = 0): S(d) = A xi^2 / (1 + xi^2 d^2) with xi (1/r.l.u.)
    # = xi0 |t|^-nu, xi0 half as long below Tc as above (as for Ising), capped
    # at 30 (0.03 r.l.u., about the resolution).  Far out S ~ A / d^2 does
    # not depend on T: the tails are nearly flat.
    tt = np.abs(t / tc - 1.0)
    xi0 = np.where(t >= tc, 2.0, 1.0)
    xi = np.minimum(xi0 * np.maximum(tt, 1e-9) ** (-nu), 30.0)[:, None, None, None]
    crit = 1e-3 * f2c * xi**2 / (1.0 + xi**2 * d2c) * dw

    bkg = _background(ql, qk, qh, t)  # on the grid, whatever the lattice does

    shape = (t.size, ql.size, qk.size, qh.size)
    return {BACKGROUND: np.broadcast_to(bkg, shape), BRAGG: np.broadcast_to(bragg, shape),
            TDS: np.broadcast_to(tds, shape), CDW: np.broadcast_to(cdw, shape),
            CRITICAL: np.broadcast_to(crit, shape)}


def _background(ql, qk, qh, t):
    """Background (T, L, K, H) broadcastable: Compton rising with |Q|, air scatter
    near the beam, an amorphous ring (glue, sample mount) at |Q| = 2.2 r.l.u.;
    nearly T-independent (3% drift over the series)."""
    L, K, H = np.meshgrid(ql, qk, qh, indexing="ij", sparse=True)
    T = t[:, None, None, None]
    q2 = H**2 + K**2 + L**2
    qmax = float(np.sqrt(ql.__abs__().max() ** 2 + qk.__abs__().max() ** 2
                         + qh.__abs__().max() ** 2)) or 1.0
    bkg_space = (0.04 * (1.0 + 0.8 * q2 / qmax**2) + 0.3 * np.exp(-q2 / 0.3)
                 + 0.06 * np.exp(-0.5 * ((np.sqrt(q2) - 2.2) / 0.12) ** 2))
    return bkg_space * (1.0 + 0.03 * (T - t.min()) / max(np.ptp(t), 1.0))


def _slanted_gaps(ql, qk, qh, hk_step: float) -> np.ndarray:
    """Detector-module gaps: slanted planes (about two voxels wide) through the volume."""
    _, K, H = np.meshgrid(ql, qk, qh, indexing="ij", sparse=True)
    width = 1.0 * hk_step
    gap = np.zeros((ql.size, qk.size, qh.size), bool)
    hspan, kspan = np.ptp(qh), np.ptp(qk)
    for angle, frac in ((0.12, 0.31), (0.12, 0.69)):  # nearly along K, at 31% and 69% of H
        c = qh.min() + frac * hspan
        gap |= np.abs((H - c) * np.cos(angle) - (K - qk.mean()) * np.sin(angle)) < width
    c = qk.min() + 0.45 * kspan  # one nearly along H
    gap |= np.abs((K - c) * np.cos(0.08) + (H - qh.mean()) * np.sin(0.08)) < width
    return gap
