"""The temperatures as frames: per-frame statistics, bad frames, per-frame scale.

A measured series is a stack of volumes, one per temperature, each normalised
by its own monitor.  A frame recorded during a beam loss, a mis-normalised scan
or a detector module that dropped out bends the trajectory of every voxel at
one temperature.  The first pass (:func:`xtec.preprocess.summarize`) computes,
per spatial block and with the block's values in hand (no extra read):

* the distribution of ``log(I_T / mean_T I)`` over the voxels with a non-zero
  mean (a histogram per frame, and the count of zero values): its median is
  the frame's *scale*, the factor by which the typical voxel (the background:
  most voxels of a reciprocal-space volume) stands above or below its own
  mean, a reference the data itself provides and that moving peaks, halos
  and order parameters do not shift;
* the total intensity per frame, split by each voxel's mean intensity (so
  that, once the threshold is known, the *kept* (Bragg-region) intensity and
  the background intensity of each frame follow without a read).

Blocks are combined in block order (histograms are integer counts), so the
statistics do not depend on the chunking.  :func:`check_frames` flags the
frames whose statistics stand off a smooth trend over T (median of five
neighbours) by more than ``FLAG_Z`` robust standard deviations (1.4826 x MAD
of the residuals) *and* by more than ``FLAG_MIN`` (relative), and gives the
per-frame scale that ``--normalize`` divides out.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

import numpy as np

from xtec.backend import namespace, to_numpy
from xtec.errors import ParameterError
from xtec.preprocess.kernels import kernels

log = logging.getLogger(__name__)

# log(I / mean) in 1% bins over [-3, 3] (ends clipped), column 0 the zeros,
# of one voxel in RATIO_SAMPLE.
RATIO_LO, RATIO_WIDTH, RATIO_BINS = -3.0, 0.01, 600
RATIO_SAMPLE = 16  # a power of two: the top bits of a hash pick the voxels
# log(mean) bins for the split of each frame's total by intensity.
MEAN_LO, MEAN_WIDTH, MEAN_BINS = -12.0, 0.25, 128

#: a frame is flagged when a statistic's residual is beyond FLAG_Z robust
#: standard deviations and beyond FLAG_MIN (relative, e.g. 0.1 = 10%)
FLAG_Z = 6.0
FLAG_MIN = 0.10
#: intensity levels (log-mean bins of 0.25) need this many voxels to count
LEVEL_MIN_VOXELS = 50
#: levels agree on a frame's scale when within this (or a quarter of the scale)
LEVEL_AGREE = 0.03
#: a frame is flagged for its scale only where levels of this share of the
#: weight agree on it (a bad frame: all of them; critical scattering: few)
LEVEL_AGREEMENT = 0.6
#: frames needed for a trend (fewer: nothing is flagged)
MIN_FRAMES = 5
#: ``normalize=None`` (auto) corrects when the frame-to-frame scatter of the
#: corrections (:func:`correction_scatter`) exceeds this and three times their
#: own noise, or a frame was flagged for its scale.  Measured on the measured-like
#: series (11 x 61-81 x 61-81, seeds 0 and 1): clean 0.0001-0.0025, 1%
#: normalisation errors 0.009-0.015, 2% 0.019-0.031; the separated series
#: 0.0013-0.0057 with noise 0.0016-0.0045 (not corrected).
NORMALIZE_AUTO = 0.005
#: degree of the smooth trend over T that --normalize keeps (the physics:
#: thermal diffuse scattering, Debye-Waller) while it divides out the rest
TREND_DEGREE = 4


def ratio_sample(m: np.ndarray) -> np.ndarray:
    """The voxels whose log ratios are counted: one in RATIO_SAMPLE, picked by
    the bits of its float32 mean, so the same voxels whatever the chunking.

    The bits are mixed (Knuth's multiplicative hash, top bits) before picking:
    means of integer counts end in zero bits, and picking by the low bits took
    a third of the voxels of the benchmark series, not a sixteenth.
    """
    mixed = m.view(np.uint32) * np.uint32(2654435761)
    return (mixed >> np.uint32(33 - RATIO_SAMPLE.bit_length())) == 0


@functools.cache
def ratio_table() -> tuple[np.ndarray, np.ndarray, int]:
    """The log-ratio bins as a search in the ratio itself, not its log.

    Bin j of log(I / m) holds the ratios r with E_j <= r < E_(j+1), E_j =
    exp(RATIO_LO + j RATIO_WIDTH) (ends clipped): the inner edges ``inner``
    (RATIO_BINS - 1,) float64, and a table of the bin of the smallest ratio in
    each of the 2^10 slices of each binary order of magnitude that the edges
    span (``lut``, from order ``e_lo``; the kernels' ``ratio_bins`` reads ten
    bits of the mantissa).  A slice (relative width 2^-10)
    is narrower than a bin (1%), so a ratio's bin is its slice's or the next:
    one comparison with an edge decides.  The same bin as ``searchsorted(inner,
    r, 'right')`` for every ratio, with no logarithm: 19 -> 8 ms for the 1.1
    million sampled values of a 61 MB block of the benchmark series."""
    inner = np.exp(RATIO_LO + RATIO_WIDTH * np.arange(1, RATIO_BINS))
    e_lo, e_hi = (int(np.floor(np.log2(inner[i]))) for i in (0, -1))
    orders = 2.0 ** np.arange(e_lo, e_hi + 1)
    lower = (orders[:, None] * (1.0 + np.arange(2**10) / 2**10)).ravel()
    lut = np.searchsorted(inner, lower, side="right").astype(np.int32)
    return inner, lut, e_lo


def frame_block(flat, m, logm=None):
    """Frame statistics of one block: flat (T, n) values, m (n,) their means
    over T (as the first pass computes them), ``logm`` their logs where the
    caller has them (:func:`xtec.preprocess.threshold.mean_logs`) -> (hist,
    total, region, count), NumPy."""
    flat, m = to_numpy(flat), to_numpy(m)
    if flat.dtype not in (np.float32, np.float64):
        flat = flat.astype(np.float32)
    m = np.ascontiguousarray(m, dtype=np.float32).reshape(-1)
    k = kernels()
    if logm is None:
        logm = k.positive_logs(m)
    inner, lut, e_lo = ratio_table()
    return k.frame_stats(np.ascontiguousarray(flat), m, logm, ratio_sample(m), inner, lut, e_lo,
                         MEAN_LO, MEAN_WIDTH, MEAN_BINS)


@dataclass
class FrameStats:
    """Per-temperature statistics of a series, from the first pass.

    hist : (T, RATIO_BINS + 1) counts of log(I / mean_T I) of one voxel in
    RATIO_SAMPLE (picked by the bits of its mean), column 0 the zeros;
    total : (T,) sum of the intensities; region : (T, MEAN_BINS) the same split
    by the voxel's log(mean_T I); count : (MEAN_BINS,) the voxels of each split.
    """

    hist: np.ndarray
    total: np.ndarray
    region: np.ndarray
    count: np.ndarray
    noise: float = 0.0  # the scale's own noise, set by level_residuals

    @classmethod
    def combine(cls, parts) -> FrameStats:
        """Sum of the blocks' (hist, total, region, count), in the order given."""
        hist = np.array(parts[0][0], dtype=np.int64)
        total, region = (np.array(p, dtype=np.float64) for p in parts[0][1:3])
        count = np.array(parts[0][3], dtype=np.int64)
        for h, t, r, c in parts[1:]:
            hist += h
            total += t
            region += r
            count += c
        return cls(hist, total, region, count)

    @property
    def n_frames(self) -> int:
        return int(self.total.shape[0])

    @property
    def n_voxels(self) -> int:
        return int(self.hist[0].sum())

    def zero_fraction(self) -> np.ndarray:
        """Share of the (sampled) voxels with a non-zero mean that are zero in
        each frame."""
        return self.hist[:, 0] / max(self.n_voxels, 1)

    def median_ratio(self) -> np.ndarray:
        """Median over voxels of log(I / mean_T I) per frame (NaN where the median
        falls among zeros), interpolated within its 1% bin."""
        out = np.full(self.n_frames, np.nan)
        for j, h in enumerate(self.hist):
            n = h.sum()
            c = np.cumsum(h)
            i = int(np.searchsorted(c, 0.5 * n))
            if n == 0 or i == 0:
                continue
            below = c[i - 1]
            frac = (0.5 * n - below) / max(h[i], 1)
            out[j] = RATIO_LO + RATIO_WIDTH * (i - 1 + frac)
        return out

    def scale(self) -> np.ndarray:
        """Per-frame scale: exp(median log ratio), normalised to a median of 1
        over the frames (1 where undefined)."""
        r = self.median_ratio()
        good = np.isfinite(r)
        if not good.any():
            return np.ones(self.n_frames)
        r = np.where(good, r - np.median(r[good]), 0.0)
        return np.exp(r)

    def level_residuals(self, t: np.ndarray, exclude=None, min_voxels: int = LEVEL_MIN_VOXELS):
        """The scale common to every intensity level, per frame, and how well the
        levels agree on it: (scale (T,) in log, agreement (T,) in [0, 1]).

        Levels are log-mean bins holding at least ``min_voxels`` voxels; each
        level's log intensity less its smooth trend over T (:func:`smooth_trend`)
        is its residual.  A scale error moves every level alike; physics (critical
        scattering at Tc, a superlattice switching on) moves some levels, and
        those levels scatter over T: the common scale is the median of the
        levels' residuals weighted by 1 / (their scatter over T)^2 (plus the
        median level's, so that no level dominates), and the agreement the
        weight of the levels within ``LEVEL_AGREE`` of it.  NaN
        and 0 where no level qualifies."""
        use = (self.count >= min_voxels) & (self.region > 0).all(axis=0)
        if not use.any():
            return np.full(self.n_frames, np.nan), np.zeros(self.n_frames)
        y = np.log(self.region[:, use])
        res = np.stack([y[:, j] - smooth_trend(t, y[:, j], exclude) for j in range(y.shape[1])],
                       axis=1)
        w = np.ones(res.shape[1])
        common = np.median(res, axis=1)
        for _ in range(3):
            dev = res - common[:, None]
            keep = np.ones(res.shape[0], bool) if exclude is None else ~np.asarray(exclude)
            spread = 1.4826 * np.median(np.abs(dev[keep]), axis=0) + 1e-3
            w = 1.0 / (spread**2 + np.median(spread) ** 2)  # no level dominates
            common = np.array([_weighted_median(r, w) for r in res])
        tol = np.maximum(LEVEL_AGREE, 0.25 * np.abs(common))
        agree = (w[None, :] * (np.abs(res - common[:, None]) <= tol[:, None])).sum(1) / w.sum()
        # The common scale's own noise: the levels' spread about it over the
        # square root of their effective number.
        n_eff = w.sum() ** 2 / (w**2).sum()
        spread = np.array([_weighted_median(np.abs(r - c), w) for r, c in zip(res, common)])
        self.noise = float(np.median(1.4826 * spread / np.sqrt(n_eff)))
        return common, agree

    def region_sums(self, cutoff_log: float | None) -> tuple[np.ndarray, np.ndarray]:
        """(background, kept) intensity per frame: voxels whose log(mean) lies
        below / above ``cutoff_log`` (to the bin; all background without one)."""
        if cutoff_log is None or not np.isfinite(cutoff_log):
            return self.total.copy(), np.zeros(self.n_frames)
        b = int(np.clip(np.ceil((cutoff_log - MEAN_LO) / MEAN_WIDTH), 0, MEAN_BINS))
        return self.region[:, :b].sum(axis=1), self.region[:, b:].sum(axis=1)


@dataclass
class FrameCheck:
    """The verdict on each frame (see :func:`check_frames`).

    temperature, scale, total, background, kept, zero_fraction : (T,) statistics;
    flagged : (T,) bool; reasons : {frame index: text}; correction : (T,) the
    factor each frame carries against the smooth trend of its scale, what
    ``--normalize`` divides out (1 for a frame whose scale is undefined).
    """

    temperature: np.ndarray
    scale: np.ndarray
    total: np.ndarray
    background: np.ndarray
    kept: np.ndarray
    zero_fraction: np.ndarray
    flagged: np.ndarray
    reasons: dict = field(default_factory=dict)
    correction: np.ndarray | None = None
    applied: np.ndarray | None = None  # the correction the run divided out, if any
    noise: float = 0.0  # the per-frame scale's own noise (log), from the levels' spread
    left_out: list = field(default_factory=list)  # temperatures of lost frames left out

    @property
    def lost(self) -> np.ndarray:
        """(T,) bool: frames flagged for voxels that went to zero (a lost part)."""
        return np.array([i in self.reasons and "zero voxels" in self.reasons[i]
                         for i in range(self.temperature.size)], bool)

    def subset(self, keep) -> FrameCheck:
        """The check of the frames ``keep`` (indices) only."""
        keep = np.asarray(keep, np.int64)
        pos = {int(i): j for j, i in enumerate(keep)}
        return FrameCheck(*(np.asarray(getattr(self, n))[keep] for n in
                            ("temperature", "scale", "total", "background", "kept",
                             "zero_fraction", "flagged")),
                          reasons={pos[i]: r for i, r in self.reasons.items() if i in pos},
                          correction=None if self.correction is None else self.correction[keep],
                          applied=None if self.applied is None else self.applied[keep],
                          noise=self.noise)

    @property
    def flagged_temperatures(self) -> list[float]:
        return [float(t) for t in self.temperature[self.flagged]]

    def describe(self) -> str:
        """One line naming the flagged frames and why."""
        if not self.flagged.any():
            return "no frame flagged"
        parts = [f"{self.temperature[i]:g} K ({self.reasons[i]})"
                 for i in np.flatnonzero(self.flagged)]
        return f"{len(parts)} frame(s) flagged: " + "; ".join(parts)


def _weighted_median(x: np.ndarray, w: np.ndarray) -> float:
    order = np.argsort(x, kind="stable")
    c = np.cumsum(w[order])
    return float(x[order][int(np.searchsorted(c, 0.5 * c[-1]))])


def trend_residuals(y: np.ndarray, order: np.ndarray, window: int = 5) -> np.ndarray:
    """y minus its running median over ``window`` neighbours in temperature order."""
    ys = y[order]
    n = ys.size
    h = window // 2
    trend = np.array([np.median(ys[max(0, i - h):min(n, i + h + 1)]) for i in range(n)])
    out = np.empty_like(y)
    out[order] = ys - trend
    return out


def _outliers(res: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Residuals beyond FLAG_Z robust sigmas and FLAG_MIN; and the robust z."""
    good = np.isfinite(res)
    if good.sum() < MIN_FRAMES:
        return np.zeros(res.shape, bool), np.zeros(res.shape)
    dev = res - np.median(res[good])
    sigma = 1.4826 * np.median(np.abs(dev[good]))
    z = dev / max(sigma, 1e-12)
    return good & (np.abs(z) > FLAG_Z) & (np.abs(dev) > FLAG_MIN), z


def smooth_trend(t: np.ndarray, y: np.ndarray, exclude: np.ndarray | None = None,
                 degree: int = TREND_DEGREE) -> np.ndarray:
    """A polynomial of ``degree`` in T fitted to y robustly (points beyond three
    robust sigmas, and ``exclude``, left out, twice), evaluated at every T."""
    x = (t - t.min()) / max(float(np.ptp(t)), 1e-12) * 2.0 - 1.0
    use = np.isfinite(y) & (np.ones(t.shape, bool) if exclude is None else ~exclude)
    deg = min(degree, max(int(use.sum()) - 2, 0))
    if use.sum() == 0:
        return np.zeros_like(y)
    fit = np.polynomial.chebyshev.Chebyshev.fit(x[use], y[use], deg)
    for _ in range(2):
        res = y - fit(x)
        sigma = 1.4826 * np.median(np.abs(res[use] - np.median(res[use])))
        keep = use & (np.abs(res) <= 3.0 * max(sigma, 1e-6))
        if keep.sum() <= deg + 1 or keep.sum() == use.sum():
            break
        use = keep
        fit = np.polynomial.chebyshev.Chebyshev.fit(x[use], y[use], deg)
    return fit(x)


def frame_correction(t: np.ndarray, reference: np.ndarray,
                     exclude: np.ndarray | None = None) -> np.ndarray:
    """Per-frame factor of ``reference`` (T,) against its smooth trend over T
    (:func:`smooth_trend`, ``exclude`` left out of the fit); 1 where undefined."""
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log(np.asarray(reference, np.float64))
    good = np.isfinite(y)
    if good.sum() <= TREND_DEGREE + 1:
        return np.ones(t.size)
    return np.exp(np.where(good, y - smooth_trend(t, np.where(good, y, np.nan), exclude), 0.0))


def check_frames(stats: FrameStats, temperature, cutoff_log: float | None = None) -> FrameCheck:
    """Flag frames whose scale, total, kept or background intensity, or share of
    zero voxels stands off the smooth trend over temperature (module docstring)."""
    t = np.asarray(temperature, np.float64)
    order = np.argsort(t, kind="stable")
    scale = stats.scale()
    background, kept = stats.region_sums(cutoff_log)
    zeros = stats.zero_fraction()
    flagged = np.zeros(t.size, bool)
    reasons: dict = {}
    level, agree = (stats.level_residuals(t) if t.size > TREND_DEGREE + 2
                    else (np.full(t.size, np.nan), np.zeros(t.size)))
    if t.size >= MIN_FRAMES:
        # Only what a bad frame does and physics does not: every intensity level
        # scaled alike, or voxels that are zero in one frame.
        for name, y in (("scale", level), ("zero voxels", zeros)):
            if not np.isfinite(y).any():
                continue
            res = trend_residuals(np.where(np.isfinite(y), y, np.nan), order) \
                if name == "zero voxels" else y - np.nanmedian(y)
            hit, _ = _outliers(res)
            if name == "scale":
                hit &= agree >= LEVEL_AGREEMENT
            for i in np.flatnonzero(hit):
                what = (f"zero voxels {100 * res[i]:+.0f} points" if name == "zero voxels"
                        else f"scale x{np.exp(res[i]):.2f}")
                reasons[i] = f"{reasons[i]}, {what}" if i in reasons else what
            flagged |= hit
    partial = np.array([i in reasons and "zero voxels" in reasons[i] for i in range(t.size)], bool)
    if flagged.any():  # the trends again, without the flagged frames
        level, agree = stats.level_residuals(t, flagged)
    # A frame whose levels disagree holds physics, not a scale error: left alone,
    # as is a frame with a lost part (not a scaled one: drop it instead).
    # Rounded to 1e-7 in log: the level sums' last bits follow the order the
    # blocks are summed in, and what the run divides by must not.
    level = np.round(level, 7)
    corr = np.exp(np.where(np.isfinite(level) & (agree >= LEVEL_AGREEMENT), level, 0.0))
    corr[partial] = 1.0
    return FrameCheck(t, scale, stats.total, background, kept, zeros, flagged, reasons, corr,
                      noise=stats.noise)


def correction_scatter(check: FrameCheck) -> float:
    """Frame-to-frame scatter of the corrections: robust rms (1.4826 MAD) of
    log(correction) less the mean of its neighbours in T, over sqrt(3/2) (the
    rms of independent per-frame errors; a smooth misfit of the trend, which
    moves neighbours alike, hardly counts), over the unflagged frames."""
    order = np.argsort(check.temperature, kind="stable")
    keep = ~check.flagged[order]
    c = np.log(np.asarray(check.correction, np.float64))[order][keep]
    if c.size < MIN_FRAMES:
        return 0.0
    d = c[1:-1] - 0.5 * (c[:-2] + c[2:])
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(1.5))


def wants_normalize(normalize: bool | None, check: FrameCheck) -> bool:
    """Whether a run divides out the frames' scale: as asked, or (None) when the
    corrections scatter beyond ``NORMALIZE_AUTO`` and three times their own
    noise, or a frame was flagged for its scale alone (a frame with a lost part
    is not rescaled: leave it out)."""
    if normalize is not None:
        return bool(normalize)
    if check.correction is None:
        return False
    scaled = [i for i, r in check.reasons.items() if "scale" in r and "zero voxels" not in r]
    scatter = correction_scatter(check)
    if scaled or scatter > max(NORMALIZE_AUTO, 3.0 * check.noise):
        log.info("frames normalised (scatter of the per-frame scale %.2g%%%s)", 100 * scatter,
                 ", a frame flagged for its scale" if scaled else "")
        return True
    return False


def scale_frames(data, correction: np.ndarray):
    """The series (T, L, K, H) dask array with frame j divided by ``correction[j]``
    (lazy; on the data's device; any chunking along T, as the NXRefine layout's
    one chunk per temperature)."""
    inv = (1.0 / np.asarray(correction, np.float64)).astype(np.float32)

    def divide(x, block_info=None):
        lo, hi = block_info[0]["array-location"][0]
        return x * namespace(x).asarray(inv[lo:hi, None, None, None])

    return data.map_blocks(divide, dtype=data.dtype)


def normalize_rows(x, correction, rescale: str, keep=None):
    """Rescaled trajectories x (n, T) of a series, as if its frames had been divided
    by ``correction`` (None: by 1) and only the frames ``keep`` (indices; None:
    all) kept before rescaling: exact for the ``mean`` (x + 1 = I / mean_T I) and
    ``none`` rescalings, which are all :mod:`xtec.pipeline` corrects in place."""
    xp = namespace(x)
    t = x.shape[1]
    c = np.ones(t) if correction is None else np.asarray(correction, np.float64)
    cols = np.arange(t) if keep is None else np.asarray(keep, np.int64)
    if keep is not None:
        x = xp.take(x, xp.asarray(cols), axis=1)
    inv = xp.asarray((1.0 / c[cols]).astype(np.float32)[None, :])
    if rescale == "none":
        return x * inv
    if rescale != "mean":
        raise ValueError(f"rows rescaled by {rescale!r} cannot be renormalised in place")
    y = (x + 1.0) * inv
    m = xp.mean(y, axis=1, keepdims=True)
    safe = xp.where(m > 0, m, xp.ones_like(m))
    return xp.where(m > 0, y / safe - 1.0, xp.zeros_like(y))


#: the rescalings whose rows :func:`normalize_rows` corrects without a read
ROW_NORMALIZABLE = ("mean", "none")


def fix_rows(X, fix, rescale: str):
    """Rows X (n, T) dask array corrected for normalised frames and left out ones
    (``fix`` = (correction or None, kept frame indices or None)), lazily."""
    correction, keep = fix
    t = X.shape[1] if keep is None else len(keep)
    return X.map_blocks(normalize_rows, correction, rescale, keep, dtype=np.float32,
                        chunks=(X.chunks[0], (t,)))


def drop_frames(arr, temperatures):
    """``arr`` (temperature, ...) without the frames nearest ``temperatures`` (K).

    Each temperature must be closer to one frame than half the smallest step
    between frames; at least two frames must remain."""
    t = np.asarray(arr.temperature.values, np.float64)
    steps = np.diff(np.sort(t))
    tol = 0.5 * float(steps[steps > 0].min()) if (steps > 0).any() else 0.5
    drop = set()
    for want in temperatures:
        i = int(np.argmin(np.abs(t - want)))
        if abs(t[i] - want) > tol:
            raise ParameterError(f"drop_temperatures: no frame near {want:g} K (the series "
                                 f"has {', '.join(f'{v:g}' for v in t)})")
        drop.add(i)
    keep = [i for i in range(t.size) if i not in drop]
    if len(keep) < 2:
        raise ParameterError("drop_temperatures leaves fewer than two temperatures")
    log.info("left out %d frame(s): %s K", len(drop),
             ", ".join(f"{t[i]:g}" for i in sorted(drop)))
    out = arr.isel(temperature=keep)
    out.attrs = dict(arr.attrs)
    return out


def frame_variables(check: FrameCheck | None, correction, dropped) -> tuple[dict, dict]:
    """Result variables along ``temperature`` and attributes of a frame check:
    ``frame_flagged`` (bool), ``frame_scale``, ``frame_total``, ``frame_kept``,
    ``frame_background``, ``frame_zero_fraction`` and ``frame_correction`` (what
    ``--normalize`` divided out, 1 without it); attributes ``flagged_temperatures``,
    ``frame_reasons``, ``normalize`` and ``dropped_temperatures``."""
    if check is None:
        return {}, {}
    dim = ("temperature",)
    corr = np.ones(check.temperature.size) if correction is None else np.asarray(correction)
    variables = {
        "frame_flagged": (dim, np.asarray(check.flagged, bool)),
        "frame_scale": (dim, np.asarray(check.scale, np.float64)),
        "frame_total": (dim, np.asarray(check.total, np.float64)),
        "frame_kept": (dim, np.asarray(check.kept, np.float64)),
        "frame_background": (dim, np.asarray(check.background, np.float64)),
        "frame_zero_fraction": (dim, np.asarray(check.zero_fraction, np.float64)),
        "frame_correction": (dim, corr.astype(np.float64)),
    }
    attrs = {
        "flagged_temperatures": check.flagged_temperatures,
        "frame_reasons": {f"{check.temperature[i]:g}": r for i, r in check.reasons.items()},
        "normalize": correction is not None,
        "dropped_temperatures": list(dropped or []),
        "lost_frames_left_out": [float(t) for t in check.left_out],
    }
    return variables, attrs
