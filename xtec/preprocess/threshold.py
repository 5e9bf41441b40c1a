"""Preprocessing as in XTEC: zero mask, background threshold, rescaling.

All of it works chunk by chunk on Dask arrays of shape (T, L, K, H) whose chunks
hold every temperature.  The block functions (``*_block``) are written against
the array API, so the same code runs on NumPy, CuPy or array-api-strict chunks;
the reductions for the threshold (moments, histograms, exact quantiles) stream
over the per-voxel mean volume, never gathering it.

Threshold (``kl``), on x = log(mean_T I) of the N voxels with mean_T I > 0,
following the published XTEC procedure step for step:

1. w = IQR / N^(1/3) with IQR = x_(round(0.75 N)) - x_(round(0.25 N)) (order
   statistics, i.e. half the Freedman-Diaconis width); ceil((max - min) / w)
   equal bins from min(x) to max(x) (``numpy.histogram``'s edges);
2. start at bin int(0.5 * argmax(hist) + 0.5 * i0), i0 the first left edge
   >= mean(x) + std(x);
3. KL(i): fit a Gaussian (mean, population std) to the x below left edge i;
   p = the histogram density of bins < i renormalised to integrate to 1,
   q = the Gaussian density at the left edges + 1e-12, KL = sum p log(p / q);
4. d = log KL(i+1) - log KL(i); move to the first left edge >= edge_i - d
   (at most bin n-2); repeat while |d| > w, at most 100 times.  Keep x > edge_i.

``simple`` keeps x > mean(x) + 2 std(x); a user cutoff is an intensity.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
from dataclasses import dataclass, field

import dask.array as da
import numpy as np

from xtec.backend import namespace, to_numpy
from xtec.errors import ParameterError
from xtec.preprocess._kernels_numpy import edge_index
from xtec.preprocess.kernels import kernels
from xtec.runtime.chunks import per_block

log = logging.getLogger(__name__)

THRESHOLD_METHODS = ("kl", "simple", "none")
_FINE_BINS = 4096


# ------------------------------------------------------------------ streaming passes
def warm_kernels() -> bool:
    """Load the threshold's numba kernels in this process now (a Dask worker
    does it during the first pass, not in the threshold's first task)."""
    m = np.ones(2, np.float32)
    _moments(m), _fine_hist(m, 0.0, 1.0, 2), _weighted_hist(m, np.array([0.0, 1.0, 2.0]))
    _values_in_bins(m, *_bins_wanted(0.0, 1.0, 2, [0]))
    log_mean_block(m)
    return True


def _flat_numpy(m) -> np.ndarray:
    return np.ascontiguousarray(to_numpy(m)).ravel()


def _moments(m):
    return kernels().moments(_flat_numpy(m))


def _fine_hist(m, lo, width, nbins):
    return kernels().fine_hist(_flat_numpy(m), lo, width, nbins)


def bin_value_ranges(lo: float, width: float, nbins: int, bins) -> tuple[np.ndarray, np.ndarray]:
    """Means whose log can fall in ``bins`` (of ``nbins`` of ``width`` from ``lo``,
    ends clipped): (low, high) float64, one pair per run of adjacent bins.

    A little wider than the bins (relative 1e-9, where the rounding of exp,
    log and the bin's arithmetic is below 1e-13), so a mean outside every
    pair is in none of the bins and needs no logarithm; one inside is binned
    exactly by the caller.
    """
    bins = np.unique(np.asarray(bins, np.int64))
    starts = bins[np.r_[True, np.diff(bins) > 1]] if bins.size else bins
    ends = bins[np.r_[np.diff(bins) > 1, True]] if bins.size else bins
    with np.errstate(over="ignore", under="ignore"):
        low = np.where(starts <= 0, 0.0, np.exp(lo + starts * width) * (1 - 1e-9))
        high = np.where(ends >= nbins - 1, np.inf, np.exp(lo + (ends + 1) * width) * (1 + 1e-9))
    return low, high


def _bins_wanted(lo: float, width: float, nbins: int, bins) -> tuple:
    """What :func:`_values_in_bins` needs to find the values of ``bins``: the
    bins as flags (nbins,) and their ranges of means (:func:`bin_value_ranges`),
    made once for every block."""
    hit = np.zeros(nbins, np.bool_)
    hit[bins] = True
    return (lo, width, nbins, hit, *bin_value_ranges(lo, width, nbins, bins))


def _positive_count(m) -> int:
    return int((to_numpy(m) > 0).sum())


def _values_in_bins(m, lo, width, nbins, hit, low, high):
    return kernels().values_in_bins(_flat_numpy(m), lo, width, nbins, hit, low, high)


def _weighted_hist(m, edges):
    return kernels().weighted_hist(_flat_numpy(m), np.asarray(edges, np.float64))


class NoPositiveVoxels(ParameterError):
    """No voxel has a positive mean intensity: nothing to threshold."""


@dataclass
class LogIntensityStats:
    """Streaming summary of x = log(mean_T I) over the voxels with mean > 0."""

    n: int
    mean: float
    std: float
    min: float
    max: float


def log_intensity_stats(mean: da.Array) -> LogIntensityStats:
    """Count, moments and range of x = log(mean) in one streaming pass."""
    return _combined_moments(per_block(_moments, mean))


def _combined_moments(parts) -> LogIntensityStats:
    parts = np.array(parts)
    mom = np.concatenate([parts[:, :3].sum(axis=0), [parts[:, 3].min(), parts[:, 4].max()]])
    n = int(mom[0])
    if n == 0:
        raise NoPositiveVoxels("every voxel is zero at every temperature: nothing to cluster")
    mu = mom[1] / n
    std = math.sqrt(max(mom[2] / n - mu * mu, 0.0))
    return LogIntensityStats(n, float(mu), std, float(mom[3]), float(mom[4]))


def order_statistics(mean: da.Array, st: LogIntensityStats, ranks,
                     fine: FineHistogram | None = None) -> np.ndarray:
    """Exact k-th smallest values of x = log(mean) (0-based ``ranks``), streaming.

    A fine histogram (``fine``, or one from a pass over ``mean``) locates the
    bin holding each rank; only those bins' values are then gathered and
    sorted, never the whole volume.
    """
    if fine is None:
        width = (st.max - st.min) / _FINE_BINS or 1.0
        hist = np.sum(per_block(_fine_hist, mean, args=(st.min, width, _FINE_BINS)), axis=0)
        fine = FineHistogram(hist, st.min, width)
    lo, width, nbins = fine.lo, fine.width, fine.counts.size
    cum = np.cumsum(fine.counts, dtype=np.int64)
    ranks = [min(max(int(r), 0), st.n - 1) for r in ranks]
    need = sorted({int(np.searchsorted(cum, r, side="right")) for r in ranks})
    parts = per_block(_values_in_bins, mean, args=_bins_wanted(lo, width, nbins, need))
    vals = np.concatenate([p[0] for p in parts])
    vbins = np.concatenate([p[1] for p in parts])  # as the kernel binned them
    in_bin = {b: np.sort(vals[vbins == b]) for b in need}
    out = []
    for r in ranks:
        b = int(np.searchsorted(cum, r, side="right"))
        first = int(cum[b - 1]) if b > 0 else 0
        out.append(in_bin[b][r - first])
    return np.array(out)


@dataclass
class FineHistogram:
    """Counts of x = log(mean) in equal bins of ``width`` from ``lo`` (ends clipped)."""

    counts: np.ndarray
    lo: float
    width: float


@dataclass
class LogMeanSummary:
    """What the threshold needs from every voxel, gathered during the first pass:
    the moments of x = log(mean) and its histogram over every positive float32
    (:func:`log_mean_block`), so the threshold's own passes drop from four to two."""

    stats: LogIntensityStats
    fine: FineHistogram


# Every positive float32 has log in [-103.3, 88.8]: one fixed range serves
# every block without knowing min and max first; 2^15 bins of 0.0059.
_FIXED_LO, _FIXED_HI, _FIXED_BINS = -104.0, 89.0, 2**15


def mean_logs(m) -> np.ndarray:
    """log of a block's means (flat float64, -inf where not > 0): what
    :func:`log_mean_block` and the frame statistics of the same block share."""
    return kernels().positive_logs(_flat_numpy(m))


def log_mean_block(m, logs=None):
    """Moments (5,) of x = log(m), m > 0, and their fixed-range histogram as its
    non-empty bins (int32) and counts (int32): a block's means span a few log
    units, so a few thousand of the 2^15 bins (tens of KB, not 128 KB).
    ``logs``: :func:`mean_logs` of ``m``, where the caller has them."""
    moments, hist = kernels().log_moments_and_hist(
        mean_logs(m) if logs is None else logs, _FIXED_LO,
        (_FIXED_HI - _FIXED_LO) / _FIXED_BINS, _FIXED_BINS)
    bins = np.flatnonzero(hist).astype(np.int32)
    return moments, bins, hist[bins]


def combine_log_mean_blocks(blocks: list) -> LogMeanSummary | None:
    """:class:`LogMeanSummary` from :func:`log_mean_block` of every block, in block
    order (the moments are float sums; the counts are exact in any order); None
    if no voxel is positive."""
    moments = [b[0] for b in blocks]
    if not sum(int(m[0]) for m in moments):
        return None
    counts = np.zeros(_FIXED_BINS, np.int64)
    for _, bins, n in blocks:
        counts[bins] += n  # a block's bins are distinct
    return LogMeanSummary(_combined_moments(moments),
                          FineHistogram(counts, _FIXED_LO, (_FIXED_HI - _FIXED_LO) / _FIXED_BINS))


def iqr_ranks(n: int) -> tuple[int, int]:
    """Ranks of the order statistics XTEC takes its IQR from (NumPy rounding)."""
    return int(np.round(n * 0.25)), min(int(np.round(n * 0.75)), n - 1)


# ------------------------------------------------------------------------ threshold
@dataclass
class Threshold:
    """Result of the background threshold.

    ``cutoff`` is in log intensity: voxels with log(mean_T I) > cutoff are kept.
    ``hist``/``edges`` are the Freedman-Diaconis histogram of log(mean_T I) (for
    the report); ``gaussian`` is the (mean, std) fitted below the cutoff.
    """

    method: str
    cutoff: float
    n_nonzero: int
    hist: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    edges: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    gaussian: tuple[float, float] = (math.nan, math.nan)
    iterations: int = 0

    @property
    def intensity_cutoff(self) -> float:
        return math.exp(self.cutoff) if math.isfinite(self.cutoff) else 0.0


def kl_cutoff(counts: np.ndarray, edges: np.ndarray, sum_x: np.ndarray, sum_x2: np.ndarray,
              mean: float, std: float, width: float, max_iter: int = 100
              ) -> tuple[int, int, tuple[float, float]]:
    """XTEC's KL-divergence cutoff on a histogram with per-bin sums.

    Parameters
    ----------
    counts, sum_x, sum_x2 : arrays of shape (n_bins,)
        Per bin: number of values, their sum, the sum of their squares (so the
        Gaussian below any edge is fitted exactly, without the values).
    edges : array of shape (n_bins + 1,)
    mean, std : float
        Of all values (they set the starting bin).
    width : float
        The Freedman-Diaconis step w (the stopping scale; the bins themselves
        are (max - min) / n_bins wide).

    Returns
    -------
    index : int
        Cutoff bin: keep values above ``edges[index]``.
    iterations : int
    gaussian : (mean, std) fitted to the values below the cutoff.
    """
    nb = counts.size
    left = edges[:-1]
    dx = float(left[1] - left[0]) if nb > 1 else float(edges[1] - edges[0])
    n_total = counts.sum()
    density = counts / (n_total * width)
    c_n, c_s, c_s2 = (np.concatenate([[0.0], np.cumsum(a)]) for a in (counts, sum_x, sum_x2))

    def fit(i):
        n = c_n[i]
        if n == 0:
            return math.nan, math.nan
        mu = c_s[i] / n
        return mu, math.sqrt(max(c_s2[i] / n - mu * mu, 0.0))

    def kl(i):
        mu, sigma = fit(i)
        p = density[:i] / (density[:i].sum() * dx)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            q = np.exp(-((left[:i] - mu) ** 2) / (2 * sigma**2)) / math.sqrt(
                2 * math.pi * sigma**2) + 1e-12
            nz = p > 0
            return float(np.sum(p[nz] * np.log(p[nz] / q[nz])))

    i0 = int(np.searchsorted(left, mean + std, side="left"))
    i = int(0.5 * int(np.argmax(density)) + 0.5 * i0)
    if i >= nb:
        i = int(np.argmax(density)) - 2
    i = min(max(i, 1), nb - 2)
    it = 0
    while it < max_iter:
        with np.errstate(divide="ignore", invalid="ignore"):
            d = math.log(kl(i + 1)) - math.log(kl(i)) if kl(i) > 0 else math.nan
        it += 1
        if not math.isfinite(d):
            break
        i = int(np.searchsorted(left, left[i] - d, side="left"))
        i = min(max(i, 1), nb - 2)
        if abs(d) <= width:
            break
    return i, it, fit(i)


def parent_threshold(in_cluster: np.ndarray, mean: da.Array) -> tuple[Threshold, da.Array]:
    """A second round's stand-in for the threshold: the voxels of the parent
    result's cluster (``in_cluster``, (L, K, H) bool, on ``mean``'s grid) with a
    non-zero mean, persisted."""
    pmask = da.from_array(in_cluster, chunks=mean.chunks)
    n_nonzero = int(sum(per_block(_positive_count, mean)))
    return Threshold("parent", -math.inf, n_nonzero), (pmask & (mean > 0)).persist()


def compute_threshold(mean: da.Array, method: str | float = "kl",
                      log_means: LogMeanSummary | None = None) -> Threshold:
    """Background cutoff from the per-voxel mean volume (streaming).

    Parameters
    ----------
    mean : dask array of shape (L, K, H)
        mean_T I per voxel (zero for gaps).
    method : 'kl', 'simple', 'none', or a number
        A number is an intensity: keep voxels whose mean exceeds it.
    log_means : LogMeanSummary, optional
        Of ``mean``, from the first pass (:func:`xtec.preprocess.summarize`):
        saves two passes over ``mean``; the cutoff is the same.
    """
    if not isinstance(method, str):
        value = float(method)
        if not value > 0:
            raise ParameterError(f"a threshold intensity must be > 0 (got {value})")
        n = int(sum(per_block(_positive_count, mean)))
        return Threshold("value", math.log(value), n)
    if method not in THRESHOLD_METHODS:
        raise ParameterError(
            f"threshold must be one of {THRESHOLD_METHODS} or an intensity (got {method!r})"
        )
    st = log_means.stats if log_means is not None else log_intensity_stats(mean)
    if method == "none":
        return Threshold("none", -math.inf, st.n)
    if method == "simple":
        return Threshold("simple", st.mean + 2 * st.std, st.n, gaussian=(st.mean, st.std))
    q25, q75 = order_statistics(mean, st, iqr_ranks(st.n),
                                log_means.fine if log_means is not None else None)
    width = (q75 - q25) / st.n ** (1.0 / 3.0)
    if not width > 0:
        raise ParameterError(
            "the KL threshold needs spread in log intensity (IQR is 0); use "
            "threshold='simple' or an intensity"
        )
    nb = int(math.ceil((st.max - st.min) / width))
    if nb < 4:
        raise ParameterError("too few distinct intensities for the KL threshold; use "
                             "threshold='simple' or an intensity")
    edges = np.linspace(st.min, st.max, nb + 1)
    counts, s1, s2 = np.sum(per_block(_weighted_hist, mean, args=(edges,)), axis=0)
    idx, it, gauss = kl_cutoff(counts, edges, s1, s2, st.mean, st.std, width)
    log.info("KL threshold: bin %d of %d, cutoff %.4g (log), %d steps", idx, nb, edges[idx], it)
    if not st.mean - st.std <= edges[idx] <= st.mean + 2 * st.std:
        # The published code flags the same case as unsuccessful.
        log.warning("the KL cutoff %.3g lies outside mean - std .. mean + 2 std of log "
                    "intensity; check the threshold histogram", edges[idx])
    return Threshold("kl", float(edges[idx]), st.n, counts, edges, gauss, it)


def threshold_aside(mean: da.Array, method: str | float = "kl",
                    log_means: LogMeanSummary | None = None) -> concurrent.futures.Future:
    """:func:`compute_threshold` run in a thread of its own: its passes over
    ``mean`` keep the workers busy while the caller does other work (the
    lattice measurement), and ``.result()`` gives the cutoff or raises."""
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="xtec-threshold")
    try:
        return pool.submit(compute_threshold, mean, method, log_means)
    finally:
        pool.shutdown(wait=False)  # the thread ends with its one task


def kl_threshold_values(x: np.ndarray, max_iter: int = 100) -> float:
    """KL cutoff (log intensity) of in-memory log intensities ``x`` of shape (N,)."""
    x = np.asarray(x, dtype=np.float64)
    srt = np.sort(x)
    r25, r75 = iqr_ranks(x.size)
    width = (srt[r75] - srt[r25]) / x.size ** (1 / 3)
    nb = int(math.ceil((x.max() - x.min()) / width))
    edges = np.linspace(x.min(), x.max(), nb + 1)
    b = edge_index(x, edges)
    counts = np.bincount(b, minlength=nb).astype(np.float64)
    s1 = np.bincount(b, weights=x, minlength=nb)
    s2 = np.bincount(b, weights=x * x, minlength=nb)
    idx, _, _ = kl_cutoff(counts, edges, s1, s2, float(x.mean()), float(x.std()), width,
                          max_iter)
    return float(edges[idx])


def smallest_kept_value(cut: float, dtype) -> float:
    """The smallest positive ``dtype`` value v with log(float64(v)) > ``cut``.

    For a monotone log, ``m >= v`` is the same test as ``m > 0 and
    log(m) > cut`` on every value of ``dtype``: one comparison instead of a
    float64 copy and a logarithm per voxel (a 256 x 1976 block: 9.0 -> 0.3
    ms).  NaN when nothing passes.
    """
    dtype = np.dtype(dtype)
    if math.isnan(cut) or cut == math.inf:
        return math.nan
    tiny = dtype.type(np.nextafter(dtype.type(0), dtype.type(1)))
    if cut == -math.inf:
        return float(tiny)

    def passes(v):
        return bool(np.log(np.float64(v)) > cut)

    down, up = dtype.type(0), dtype.type(np.inf)
    with np.errstate(over="ignore", under="ignore"):
        v = max(dtype.type(min(math.exp(min(cut, 710.0)), float(np.finfo(dtype).max))), tiny)
        # exp is within a few ulps of the boundary: a few steps either way find it.
        while v > tiny and passes(np.nextafter(v, down)):
            v = np.nextafter(v, down)
        while not passes(v):
            if not np.isfinite(v):
                return math.nan
            v = np.nextafter(v, up)
    return float(v)


def above_cutoff_block(m, cut: float):
    """mean > 0 and log(mean) > cut, elementwise (log in float64 of the mean),
    as one comparison with :func:`smallest_kept_value`."""
    xp = namespace(m)
    single = m.dtype == xp.float32
    if not single:
        m = xp.astype(m, xp.float64)
    # A Python float: exact in float32 when it came from float32.
    return m >= smallest_kept_value(cut, np.float32 if single else np.float64)


def keep_mask(mean: da.Array, threshold: Threshold) -> da.Array:
    """Kept voxels: mean > 0 and log(mean) above the cutoff.  (L, K, H) bool."""
    return mean.map_blocks(above_cutoff_block, threshold.cutoff, dtype=bool)


