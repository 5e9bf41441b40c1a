"""The separated kind: every feature family at its own reciprocal-lattice positions."""

from __future__ import annotations

import numpy as np

from xtec.datasets.realistic import make_realistic_series
from xtec.datasets.series import BACKGROUND, Grid, SyntheticSeries, blank_gaps, span
from xtec.errors import ParameterError


def make_series(
    *,
    kind: str = "separated",
    tc: float = 130.0,
    beta: float = 0.33,
    background: float = 4.0,
    signal_ratio: float = 3.0,
    exposure: float = 0.2,
    gaps: bool = True,
    seed: int = 0,
    **grid,
) -> SyntheticSeries:
    """Generate a series with planted Bragg, CDW, critical and TDS features.

    Parameters
    ----------
    **grid : ``shape``, ``h_range``, ``k_range``, ``l_range``, ``hk_step``, ``l_step``, ``temperatures``
        Where the series is sampled: the fields of :class:`~xtec.datasets.Grid`
        (default -3..3 x -3..3 x -1..1 r.l.u., 24 temperatures from 20 K to 300 K).
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
    grid = Grid(**grid)
    if kind == "realistic":
        return make_realistic_series(**grid.keywords(), tc=tc, gaps=gaps, seed=seed)
    if kind != "separated":
        raise ParameterError(f"kind must be 'separated' or 'realistic' (got {kind!r})")
    rng = np.random.default_rng(seed)
    t = grid.temperature()
    ql, qk, qh = grid.axes()
    model = separated_model(rng, t, ql, qk, qh, hk_step=grid.hk_step, l_step=grid.l_step, tc=tc,
                            beta=beta, background=background, signal_ratio=signal_ratio)
    lam, classes, signal = _planted(ql, qk, qh, **model)
    intensity = rng.poisson(lam * exposure).astype(np.float32)

    if gaps:
        blank_gaps(_module_gaps(classes.shape), intensity, classes, signal)

    return SyntheticSeries(
        intensity=intensity, temperature=t, ql=ql, qk=qk, qh=qh, classes=classes,
        signal=signal, tc=float(tc),
        params=dict(seed=seed, tc=tc, beta=beta, background=background,
                    signal_ratio=signal_ratio, exposure=exposure),
    )


def separated_model(rng, t, ql, qk, qh, *, hk_step, l_step, tc, beta, background,
                    signal_ratio) -> dict:
    """Keywords of :func:`_planted` for a grid: per-peak amplitude tables (drawn
    from ``rng``) and the model's constants."""
    s = span(ql, qk, qh)
    tables = (rng.uniform(0.3, 1.0, size=(2 * s + 1,) * 3),
              rng.uniform(0.3, 1.0, size=(2 * s + 1,) * 3))
    q2max = max(float(qh.max() ** 2 + qk.max() ** 2 + ql.max() ** 2), 1.0)
    return dict(t=t, tables=tables, span=s, q2max=q2max, hk_step=hk_step, l_step=l_step,
                tc=tc, beta=beta, background=background, signal_ratio=signal_ratio)


def _module_gaps(shape) -> np.ndarray:
    """Detector module gaps, two pixels wide: two planes across H, one across K."""
    gap = np.zeros(shape, dtype=bool)
    nk_, nh_ = shape[1], shape[2]
    for frac in (0.31, 0.69):
        gap[:, :, int(frac * nh_) : int(frac * nh_) + 2] = True
    gap[:, int(0.45 * nk_) : int(0.45 * nk_) + 2, :] = True
    return gap


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
