"""Synthetic temperature series of reciprocal-space volumes with known classes.

Two kinds of series (``make_series(kind=...)``):

* ``"separated"`` (the default, :func:`make_series`): every feature family at
  its own reciprocal-lattice positions, so every kept voxel has one class.  Fast
  and unambiguous; the old tests are built on it.
* ``"realistic"`` (:func:`make_realistic_series`): halos around the peaks as in
  measured volumes (thermal diffuse scattering around every Bragg peak, critical
  diffuse scattering around every superlattice peak), overlapping families, a
  structured background with an amorphous ring, Poisson counting at about 200
  counts per unit intensity, monitor-normalised transforms and detector gaps.
  Its truth is the *dominant* family per voxel plus per-family contribution
  maps; see the function's docstring.

The separated generator plants the features XTEC is meant to separate, each with
the temperature dependence of its physics:

===========  ==========================================  ==========================
class        where (r.l.u.)                              intensity vs temperature
===========  ==========================================  ==========================
BRAGG (1)    integer (h, k, l), sharp                    Debye-Waller, falls with T
CDW (2)      (h+1/2, k+1/2, l), sharp                    order parameter below Tc
CRITICAL (3) broad, at (h, k+1/2, l)                      peaks at Tc
TDS (4)      broad, at (h+1/2, k, l) (soft phonon)        phonon population, grows with T
===========  ==========================================  ==========================

on a Q-dependent background with Poisson noise, with detector gaps (planes of
voxels that are zero at every temperature).  The ground truth is the class of
the feature that dominates a voxel's mean intensity; a voxel counts as *signal*
only where that feature is at least ``signal_ratio`` times the background, so
that "signal" means something a threshold can be expected to keep.

The series is written in either NeXus layout that :mod:`xtec.io.nexus` reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BACKGROUND, BRAGG, CDW, CRITICAL, TDS = 0, 1, 2, 3, 4
GAP = -1
CLASS_NAMES = {GAP: "gap", BACKGROUND: "background", BRAGG: "bragg", CDW: "cdw",
               CRITICAL: "critical", TDS: "tds"}


@dataclass
class SyntheticSeries:
    """A synthetic series held in memory.

    Attributes
    ----------
    intensity : ndarray of shape (n_temperatures, n_l, n_k, n_h), float32
    temperature : ndarray of shape (n_temperatures,), K
    ql, qk, qh : ndarray, r.l.u.
    classes : ndarray of shape (n_l, n_k, n_h), int8
        Dominant planted feature per voxel (``GAP``, ``BACKGROUND`` or a class).
    signal : ndarray of shape (n_l, n_k, n_h), bool
        Voxels whose dominant feature is at least ``signal_ratio`` x background.
    tc : float
        Planted transition temperature (K).
    kind : "separated" or "realistic"
    contributions : dict of class code -> ndarray of shape (n_l, n_k, n_h), optional
        Mean over temperature of each family's expected intensity (realistic kind).
    """

    intensity: np.ndarray
    temperature: np.ndarray
    ql: np.ndarray
    qk: np.ndarray
    qh: np.ndarray
    classes: np.ndarray
    signal: np.ndarray
    tc: float
    params: dict = field(default_factory=dict)
    kind: str = "separated"
    # Mean over temperature of each family's expected intensity, (n_l, n_k, n_h)
    # float32 per class code; None for the separated kind.
    contributions: dict | None = None

    @property
    def n_classes(self) -> int:
        return int(len(np.unique(self.classes[self.signal])))


def _axis(lo: float, hi: float, step: float) -> np.ndarray:
    n = int(round((hi - lo) / step)) + 1
    return np.round(lo + step * np.arange(n), 6)


def make_series(
    *,
    kind: str = "separated",
    shape: tuple[int, int, int] | None = None,
    h_range: tuple[float, float] = (-3.0, 3.0),
    k_range: tuple[float, float] = (-3.0, 3.0),
    l_range: tuple[float, float] = (-1.0, 1.0),
    hk_step: float = 0.05,
    l_step: float = 0.1,
    temperatures: np.ndarray | None = None,
    tc: float = 130.0,
    beta: float = 0.33,
    background: float = 4.0,
    signal_ratio: float = 3.0,
    exposure: float = 0.2,
    gaps: bool = True,
    seed: int = 0,
) -> SyntheticSeries:
    """Generate a series with planted Bragg, CDW, critical and TDS features.

    Parameters
    ----------
    shape : (n_l, n_k, n_h), optional
        Overrides the ranges: a grid of this shape centred on the origin with the
        given steps (used to make large volumes for benchmarks).
    temperatures : array of shape (n_temperatures,), optional
        Default 24 temperatures from 20 K to 300 K.
    tc : float
        Transition temperature of the charge-density wave (K).
    signal_ratio : float
        A voxel is *signal* if its dominant feature is at least this many times
        the background there.
    exposure : float
        Scales every expected count (lower exposure, noisier trajectories);
        the default 0.2 leaves about 1 background count per voxel.
    seed : int
        Seeds peak amplitudes and the Poisson noise.
    kind : "separated" or "realistic"
        "realistic" hands the ranges, steps, temperatures, ``tc``, ``gaps`` and
        ``seed`` to :func:`make_realistic_series` (the other parameters are the
        separated model's and are ignored).

    Returns
    -------
    SyntheticSeries
    """
    if kind == "realistic":
        return make_realistic_series(
            shape=shape, h_range=h_range, k_range=k_range, l_range=l_range, hk_step=hk_step,
            l_step=l_step, temperatures=temperatures, tc=tc, gaps=gaps, seed=seed)
    if kind != "separated":
        from xtec.errors import ParameterError

        raise ParameterError(f"kind must be 'separated' or 'realistic' (got {kind!r})")
    rng = np.random.default_rng(seed)
    if temperatures is None:
        temperatures = np.linspace(20.0, 300.0, 24)
    t = np.asarray(temperatures, dtype=np.float64)
    if shape is not None:
        nl, nk, nh = shape
        ql = np.round((np.arange(nl) - nl // 2) * l_step, 6)
        qk = np.round((np.arange(nk) - nk // 2) * hk_step, 6)
        qh = np.round((np.arange(nh) - nh // 2) * hk_step, 6)
    else:
        ql, qk, qh = _axis(*l_range, l_step), _axis(*k_range, hk_step), _axis(*h_range, hk_step)
    span = int(max(np.abs(qh).max(), np.abs(qk).max(), np.abs(ql).max())) + 2
    tables = (rng.uniform(0.3, 1.0, size=(2 * span + 1,) * 3),
              rng.uniform(0.3, 1.0, size=(2 * span + 1,) * 3))
    q2max = max(float(qh.max() ** 2 + qk.max() ** 2 + ql.max() ** 2), 1.0)
    model = dict(t=t, tables=tables, span=span, q2max=q2max, hk_step=hk_step, l_step=l_step,
                 tc=tc, beta=beta, background=background, signal_ratio=signal_ratio)
    lam, classes, signal = _planted(ql, qk, qh, **model)
    intensity = rng.poisson(lam * exposure).astype(np.float32)

    if gaps:
        gap = np.zeros(classes.shape, dtype=bool)
        nh_, nk_ = len(qh), len(qk)
        for frac in (0.31, 0.69):  # detector module gaps, two pixels wide
            gap[:, :, int(frac * nh_) : int(frac * nh_) + 2] = True
        gap[:, int(0.45 * nk_) : int(0.45 * nk_) + 2, :] = True
        intensity[:, gap] = 0.0
        classes[gap] = GAP
        signal &= ~gap

    return SyntheticSeries(
        intensity=intensity,
        temperature=t,
        ql=ql,
        qk=qk,
        qh=qh,
        classes=classes,
        signal=signal,
        tc=float(tc),
        params=dict(seed=seed, tc=tc, beta=beta, background=background,
                    signal_ratio=signal_ratio, exposure=exposure),
    )


def _planted(ql, qk, qh, *, t, tables, span, q2max, hk_step, l_step, tc, beta, background,
             signal_ratio):
    """Expected counts (T, L, K, H) and the ground truth of a (sub-)grid.

    Depends only on the voxel positions, so slabs of a large grid can be made
    one at a time and agree with the whole.
    """
    L, K, H = np.meshgrid(ql, qk, qh, indexing="ij", sparse=True)

    # Per-peak amplitudes, like |F|^2 varying from reflection to reflection.
    ih, ik, il = np.rint(H).astype(int), np.rint(K).astype(int), np.rint(L).astype(int)
    table, table_cdw = tables
    amp_bragg = table[il + span, ik + span, ih + span]
    ch, ck = np.floor(H).astype(int), np.floor(K).astype(int)
    amp_cdw = table_cdw[il + span, ck + span, ch + span]

    px = hk_step  # the widths are set in pixels of the H/K grid
    dl2 = ((L - il) / l_step) ** 2 * 0.6

    def d2(h0, k0):
        return ((H - h0) ** 2 + (K - k0) ** 2) / px**2 + dl2

    q2 = H**2 + K**2 + L**2
    q2n = q2 / q2max
    origin = q2 < 0.25  # no Bragg peak at the direct beam

    # Each family sits at its own positions, at least 10 pixels from the others,
    # so every kept voxel has one unambiguous class and every connected region
    # of the threshold mask holds one feature.
    bragg_space = np.where(origin, 0.0, 6000.0 * amp_bragg * np.exp(-0.5 * d2(ih, ik) / 1.0**2))
    cdw_space = 2000.0 * amp_cdw * np.exp(-0.5 * d2(ch + 0.5, ck + 0.5) / 0.9**2)
    # Critical fluctuations of a competing instability at (h, k+1/2, l): its
    # susceptibility peaks at Tc, but it never orders.
    crit_space = 400.0 * amp_cdw * np.exp(-0.5 * d2(ih, ck + 0.5) / 2.0**2)
    # Diffuse scattering of a soft zone-boundary phonon at (h+1/2, k, l): its
    # population, and so its intensity, grows with T.
    tds_space = 250.0 * (0.4 + q2n) * np.exp(-0.5 * d2(ch + 0.5, ik) / 2.0**2)
    bkg_space = background * (1.0 + 0.6 * np.exp(-q2 / 8.0))

    # Temperature laws, each normalised to a maximum of 1 over the series.
    two_w = t[:, None, None, None] * (3.0e-3 + 4.0e-3 * q2n)  # Debye-Waller exponent
    dw = np.exp(-two_w)
    tds_t = 1.0 / np.tanh(150.0 / (2.0 * t))
    tds_t = tds_t / tds_t.max()
    op = np.clip(1.0 - t / tc, 0.0, None) ** (2.0 * beta)
    op = op / max(op.max(), 1e-12)
    gamma = 12.0
    crit_t = gamma**2 / ((t - tc) ** 2 + gamma**2)
    bkg_t = 1.0 + 0.1 * t / t.max()

    def _b(v):
        return v[:, None, None, None]

    mean_int = np.stack(
        np.broadcast_arrays(
            bkg_space * bkg_t.mean(),
            bragg_space * dw.mean(axis=0),
            cdw_space * op.mean(),
            crit_space * crit_t.mean(),
            tds_space * tds_t.mean(),
        )
    )
    classes = np.argmax(mean_int, axis=0).astype(np.int8)
    dominant = np.max(mean_int[1:], axis=0)
    signal = (classes != BACKGROUND) & (dominant >= signal_ratio * mean_int[0])

    lam = (
        bkg_space * _b(bkg_t)
        + bragg_space * dw
        + cdw_space * _b(op)
        + crit_space * _b(crit_t)
        + tds_space * _b(tds_t)
    )
    return lam, classes, signal


# --------------------------------------------------------------------------- realistic
#: Families of the realistic kind, in the order of :attr:`SyntheticSeries.contributions`.
REALISTIC_FAMILIES = (BACKGROUND, BRAGG, TDS, CDW, CRITICAL)


def make_realistic_series(
    *,
    shape: tuple[int, int, int] | None = None,
    h_range: tuple[float, float] = (-3.0, 3.0),
    k_range: tuple[float, float] = (-3.0, 3.0),
    l_range: tuple[float, float] = (-1.0, 1.0),
    hk_step: float = 0.05,
    l_step: float = 0.1,
    temperatures: np.ndarray | None = None,
    tc: float = 130.0,
    beta: float = 0.33,
    nu: float = 0.63,
    counts_per_unit: float = 200.0,
    monitor_spread: float = 0.05,
    signal_ratio: float = 3.0,
    gaps: bool = True,
    seed: int = 0,
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
    contribution maps (``contributions``).  Parameters as :func:`make_series`.
    """
    rng = np.random.default_rng(seed)
    t = np.linspace(20.0, 300.0, 24) if temperatures is None else np.asarray(temperatures, float)
    if shape is not None:
        nl, nk, nh = shape
        ql = np.round((np.arange(nl) - nl // 2) * l_step, 6)
        qk = np.round((np.arange(nk) - nk // 2) * hk_step, 6)
        qh = np.round((np.arange(nh) - nh // 2) * hk_step, 6)
    else:
        ql, qk, qh = _axis(*l_range, l_step), _axis(*k_range, hk_step), _axis(*h_range, hk_step)
    span = int(max(np.abs(qh).max(), np.abs(qk).max(), np.abs(ql).max())) + 2
    # |F|^2 of each reflection and of each superlattice reflection.
    f2_bragg = rng.uniform(0.2, 1.0, size=(2 * span + 1,) * 3)
    f2_cdw = rng.uniform(0.3, 1.0, size=(2 * span + 1,) * 3)
    terms = _realistic_terms(ql, qk, qh, t, f2_bragg, f2_cdw, span, tc=tc, beta=beta, nu=nu)
    lam = sum(terms.values())  # (T, L, K, H) expected intensity

    contributions = {c: v.mean(axis=0).astype(np.float32) for c, v in terms.items()}
    stack = np.stack([contributions[c] for c in REALISTIC_FAMILIES])
    classes = np.asarray(REALISTIC_FAMILIES, np.int8)[np.argmax(stack, axis=0)]
    dominant = stack[1:].max(axis=0)
    signal = (classes != BACKGROUND) & (dominant >= signal_ratio * contributions[BACKGROUND])

    monitor = 1.0 + monitor_spread * rng.standard_normal(t.size).clip(-2, 2)
    expected = lam * (counts_per_unit * monitor)[:, None, None, None]
    intensity = (rng.poisson(expected) / monitor[:, None, None, None]).astype(np.float32)

    if gaps:
        gap = _slanted_gaps(ql, qk, qh, hk_step)
        intensity[:, gap] = 0.0
        classes[gap] = GAP
        signal &= ~gap

    return SyntheticSeries(
        intensity=intensity, temperature=t, ql=ql, qk=qk, qh=qh, classes=classes,
        signal=signal, tc=float(tc), kind="realistic", contributions=contributions,
        params=dict(kind="realistic", seed=seed, tc=tc, beta=beta, nu=nu,
                    counts_per_unit=counts_per_unit, monitor_spread=monitor_spread,
                    signal_ratio=signal_ratio),
    )


def _realistic_terms(ql, qk, qh, t, f2_bragg, f2_cdw, span, *, tc, beta, nu):
    """Expected intensity (T, L, K, H) of each family of the realistic model."""
    L, K, H = np.meshgrid(ql, qk, qh, indexing="ij", sparse=True)
    T = t[:, None, None, None]
    q2 = H**2 + K**2 + L**2
    q = np.sqrt(q2)

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

    # Background: Compton rising with |Q|, air scatter near the beam, an
    # amorphous ring (glue, sample mount) at |Q| = 2.2 r.l.u.; nearly T-independent.
    qmax = float(np.sqrt(ql.__abs__().max() ** 2 + qk.__abs__().max() ** 2
                         + qh.__abs__().max() ** 2)) or 1.0
    bkg_space = (0.04 * (1.0 + 0.8 * q2 / qmax**2) + 0.3 * np.exp(-q2 / 0.3)
                 + 0.06 * np.exp(-0.5 * ((q - 2.2) / 0.12) ** 2))
    bkg = bkg_space * (1.0 + 0.03 * (T - t.min()) / max(np.ptp(t), 1.0))

    shape = (t.size, ql.size, qk.size, qh.size)
    return {BACKGROUND: np.broadcast_to(bkg, shape), BRAGG: np.broadcast_to(bragg, shape),
            TDS: np.broadcast_to(tds, shape), CDW: np.broadcast_to(cdw, shape),
            CRITICAL: np.broadcast_to(crit, shape)}


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
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry.attrs["default"] = "data"
        g = entry.create_group("data")
        g.attrs["NX_class"] = "NXdata"
        g.attrs["signal"] = "data"
        g.attrs["axes"] = np.array(["Te", "Ql", "Qk", "Qh"], dtype=h5py.string_dtype())
        g.create_dataset("data", data=data, chunks=chunks, compression="gzip",
                         compression_opts=1, shuffle=True)
        g["Te"] = series.temperature
        g["Te"].attrs["units"] = "K"
        for name, ax in (("Ql", series.ql), ("Qk", series.qk), ("Qh", series.qh)):
            g[name] = ax
            g[name].attrs["units"] = "rlu"
        _write_truth(entry, series)
    return path


def write_xtec_large(path: str | os.PathLike, shape: tuple[int, int, int], *,
                     temperatures: np.ndarray | None = None, seed: int = 0,
                     hk_step: float = 0.05, l_step: float = 0.1, tc: float = 130.0,
                     exposure: float = 0.2, chunks: tuple[int, int, int] | None = None,
                     compression: str | None = None) -> Path:
    """Write a synthetic series larger than memory, one L slab at a time.

    Same planted model as :func:`make_series` (grid centred on the origin),
    without detector gaps; the noise of each slab is seeded by (seed, slab).
    """
    import h5py

    t = np.linspace(20.0, 300.0, 24) if temperatures is None else np.asarray(temperatures, float)
    nl, nk, nh = shape
    ql = np.round((np.arange(nl) - nl // 2) * l_step, 6)
    qk = np.round((np.arange(nk) - nk // 2) * hk_step, 6)
    qh = np.round((np.arange(nh) - nh // 2) * hk_step, 6)
    rng = np.random.default_rng(seed)
    span = int(max(np.abs(qh).max(), np.abs(qk).max(), np.abs(ql).max())) + 2
    tables = (rng.uniform(0.3, 1.0, size=(2 * span + 1,) * 3),
              rng.uniform(0.3, 1.0, size=(2 * span + 1,) * 3))
    q2max = max(float(qh.max() ** 2 + qk.max() ** 2 + ql.max() ** 2), 1.0)
    model = dict(t=t, tables=tables, span=span, q2max=q2max, hk_step=hk_step, l_step=l_step,
                 tc=tc, beta=0.33, background=4.0, signal_ratio=3.0)
    chunks = tuple(min(c, n) for c, n in zip(chunks or (1, 128, 128), (nl, nk, nh)))
    path = Path(path)
    with h5py.File(path, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        g = entry.create_group("data")
        g.attrs["NX_class"] = "NXdata"
        g.attrs["signal"] = "data"
        g.attrs["axes"] = np.array(["Te", "Ql", "Qk", "Qh"], dtype=h5py.string_dtype())
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
        for i in range(nl):
            lam, c, s_ = _planted(ql[i:i + 1], qk, qh, **model)
            noise = np.random.default_rng([seed, i])
            d[:, i:i + 1] = noise.poisson(lam * exposure).astype(np.float32)
            cls[i:i + 1] = c
            sig[i:i + 1] = s_
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
    import h5py

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    nl, nk, nh = series.intensity.shape[1:]
    chunks = (min(50, nl), min(50, nk), min(50, nh))
    wrappers = []
    for i, temp in enumerate(series.temperature):
        scan = f"{int(round(temp)):03d}k"
        (directory / scan).mkdir(exist_ok=True)
        with h5py.File(directory / scan / "transform.nxs", "w") as f:
            e = f.create_group("entry")
            e.attrs["NX_class"] = "NXentry"
            d = e.create_group("data")
            d.attrs["NX_class"] = "NXdata"
            d.attrs["signal"] = "v"
            d.attrs["axes"] = np.array(["Ql", "Qk", "Qh"], dtype=h5py.string_dtype())
            d.create_dataset("v", data=series.intensity[i], chunks=chunks, fillvalue=0.0,
                             compression="gzip", compression_opts=1)
            for name, ax in (("Ql", series.ql), ("Qk", series.qk), ("Qh", series.qh)):
                d[name] = ax
        wpath = directory / f"{sample}_{scan}.nxs"
        with h5py.File(wpath, "w") as f:
            e = f.create_group("entry")
            e.attrs["NX_class"] = "NXentry"
            s = e.create_group("sample")
            s.attrs["NX_class"] = "NXsample"
            s["temperature"] = float(temp)
            s["temperature"].attrs["units"] = "K"
            tr = e.create_group("transform")
            tr.attrs["NX_class"] = "NXdata"
            tr.attrs["signal"] = "data"
            tr.attrs["axes"] = np.array(["Ql", "Qk", "Qh"], dtype=h5py.string_dtype())
            tr["data"] = h5py.ExternalLink(f"{scan}/transform.nxs", "/entry/data/v")
            for name, ax in (("Ql", series.ql), ("Qk", series.qk), ("Qh", series.qh)):
                tr[name] = ax
                tr[name].attrs["units"] = "rlu"
            if i == 0:
                _write_truth(e, series)
        wrappers.append(wpath)
    out = list(wrappers)
    if parent:
        ppath = directory / f"{sample}.nxs"
        layout = h5py.VirtualLayout(shape=(len(wrappers), nl, nk, nh), dtype="float32")
        for i, temp in enumerate(series.temperature):
            scan = f"{int(round(temp)):03d}k"
            src = (directory / scan / "transform.nxs").resolve()
            layout[i] = h5py.VirtualSource(str(src), "/entry/data/v", shape=(nl, nk, nh))
        with h5py.File(ppath, "w") as f:
            e = f.create_group("entry")
            e.attrs["NX_class"] = "NXentry"
            tr = e.create_group("transform")
            tr.attrs["NX_class"] = "NXdata"
            tr.attrs["signal"] = "data"
            tr.attrs["axes"] = np.array(["temperature", "Ql", "Qk", "Qh"],
                                        dtype=h5py.string_dtype())
            tr.create_virtual_dataset("data", layout, fillvalue=0.0)
            tr["temperature"] = series.temperature
            tr["temperature"].attrs["units"] = "K"
            for name, ax in (("Ql", series.ql), ("Qk", series.qk), ("Qh", series.qh)):
                tr[name] = ax
            _write_truth(e, series)
        out.append(ppath)
    return out


def _write_truth(entry, series: SyntheticSeries) -> None:
    # Kept out of every NXdata group so the loader never mistakes it for data.
    g = entry.create_group("truth")
    g.attrs["NX_class"] = "NXcollection"
    g["classes"] = series.classes
    g["signal"] = series.signal
    g.attrs["tc"] = series.tc
    g.attrs["class_names"] = ",".join(CLASS_NAMES[c] for c in sorted(CLASS_NAMES))


def read_truth(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, float]:
    """Ground truth written beside a synthetic series: ``(classes, signal, tc)``."""
    import h5py

    with h5py.File(path, "r") as f:
        g = f["entry/truth"]
        return g["classes"][()], g["signal"][()], float(g.attrs["tc"])
