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

import logging
import math
from dataclasses import dataclass, field

import dask
import dask.array as da
import numpy as np

from xtec.backend import namespace, to_numpy
from xtec.errors import ParameterError

log = logging.getLogger(__name__)

RESCALE_METHODS = ("mean", "zscore", "log-mean", "none")
THRESHOLD_METHODS = ("kl", "simple", "none")
_FINE_BINS = 4096


# --------------------------------------------------------------------------- blocks
def clean_block(x):
    """Zero every trajectory holding a NaN and clip negative intensities to 0.

    x : array of shape (T, ...) -> same shape.  A NaN trajectory becomes all-zero,
    so the zero mask drops the voxel.
    """
    xp = namespace(x)
    bad = xp.any(xp.isnan(x), axis=0)
    x = xp.where(bad, xp.zeros_like(x), x)
    return xp.where(x < 0, xp.zeros_like(x), x)


def mean_block(x):
    """Mean over temperature, accumulated in float64; (T, ...) -> (...) float32."""
    xp = namespace(x)
    return xp.astype(xp.mean(xp.astype(x, xp.float64), axis=0), xp.float32)


def _bad_counts_block(x):
    xp = namespace(x)
    n_nan = xp.sum(xp.astype(xp.any(xp.isnan(x), axis=0), xp.int64))
    n_neg = xp.sum(xp.astype(x < 0, xp.int64))
    return np.array([int(n_nan), int(n_neg)], dtype=np.int64)


def rescale_block(x, method: str = "mean"):
    """Rescale trajectories along axis 0.

    ``mean``: I / mean_T I - 1; ``zscore``: (I - mean_T I) / std_T I;
    ``log-mean``: log(1 + I) - mean_T log(1 + I); ``none``: unchanged.
    Voxels with a zero mean (or zero spread, for zscore) give 0.
    """
    xp = namespace(x)
    x = xp.astype(x, xp.float32)
    if method == "none":
        return x
    if method == "log-mean":
        y = xp.log1p(x)
        return y - xp.mean(y, axis=0, keepdims=True)
    m = xp.mean(x, axis=0, keepdims=True)
    if method == "mean":
        safe = xp.where(m > 0, m, xp.ones_like(m))
        return xp.where(m > 0, x / safe - 1, xp.zeros_like(x))
    if method == "zscore":
        s = xp.std(x, axis=0, keepdims=True)
        safe = xp.where(s > 0, s, xp.ones_like(s))
        return xp.where(s > 0, (x - m) / safe, xp.zeros_like(x))
    raise ParameterError(f"rescale must be one of {RESCALE_METHODS} (got {method!r})")


def trajectories_block(x, mask, method: str):
    """Rescaled trajectories of the kept voxels of one block.

    x : (T, l, k, h); mask : (l, k, h) bool -> (n_kept, T) float32, in C order.
    """
    if isinstance(x, np.ndarray) and x.dtype in (np.float32, np.float64):
        import numba

        from xtec import _kernels

        numba.set_num_threads(1)  # one Dask task per core already
        flat = np.ascontiguousarray(x).reshape(x.shape[0], -1)
        cols = np.flatnonzero(np.asarray(mask).reshape(-1))
        return _kernels.gather_rescale(flat, cols, RESCALE_METHODS.index(method), 256)
    xp = namespace(x)
    t = x.shape[0]
    # Gather the kept columns first: only they are rescaled and transposed.
    cols = xp.nonzero(xp.reshape(mask, (-1,)))[0]
    kept = xp.take(xp.reshape(x, (t, -1)), cols, axis=1)
    # Kept voxels hold no NaN (their mean is > 0); negatives count as 0, as in the mean.
    kept = xp.where(kept < 0, xp.zeros_like(kept), kept)
    out = xp.permute_dims(rescale_block(kept, method), (1, 0))
    return np.ascontiguousarray(out) if isinstance(out, np.ndarray) else out


def _log_mean_values(m, mask=None):
    """x = log(mean) of the voxels with mean > 0, as float64 host NumPy."""
    m = to_numpy(m).astype(np.float64).ravel()
    keep = m > 0
    if mask is not None:
        keep &= to_numpy(mask).ravel()
    return np.log(m[keep])


# ------------------------------------------------------------------ streaming passes
def _per_block(arr: da.Array, func, *args) -> list:
    """Apply ``func(block, *args)`` to every block and return the small results,
    in block order (so reductions over them are deterministic)."""
    blocks = arr.to_delayed().ravel()
    f = dask.delayed(func, pure=True)
    return list(dask.compute(*[f(b, *args) for b in blocks]))


def _moments(m):
    x = _log_mean_values(m)
    if x.size == 0:
        return np.array([0, 0.0, 0.0, np.inf, -np.inf])
    return np.array([x.size, x.sum(), (x * x).sum(), x.min(), x.max()])


def _bin_index(x, lo, width, nbins):
    return np.clip(np.floor((x - lo) / width).astype(np.int64), 0, nbins - 1)


def _edge_index(x, edges):
    """Bin of each value for ``numpy.histogram``'s equal bins (last bin closed).

    Equal to ``searchsorted(edges, x, 'right') - 1`` clipped, without the
    binary search: the arithmetic guess is off by at most one bin (rounding),
    and one comparison with the actual edges on each side corrects it.
    """
    nb = edges.size - 1
    lo, hi = float(edges[0]), float(edges[-1])
    i = np.floor((x - lo) * (nb / (hi - lo))).astype(np.int64)
    np.clip(i, 0, nb - 1, out=i)
    i -= x < edges[i]
    np.clip(i, 0, nb - 1, out=i)
    i += (x >= edges[i + 1]) & (i < nb - 1)
    return i


def _fine_hist(m, lo, width, nbins):
    x = _log_mean_values(m)
    return np.bincount(_bin_index(x, lo, width, nbins), minlength=nbins)


def _values_in_bins(m, lo, width, nbins, bins):
    x = _log_mean_values(m)
    b = _bin_index(x, lo, width, nbins)
    hit = np.zeros(x.shape, bool)
    for one in bins:  # a few bins: plain comparisons beat isin's sort
        hit |= b == one
    return x[hit]


def _weighted_hist(m, edges):
    x = _log_mean_values(m)
    nb = edges.size - 1
    b = _edge_index(x, edges)
    return np.stack([
        np.bincount(b, minlength=nb).astype(np.float64),
        np.bincount(b, weights=x, minlength=nb),
        np.bincount(b, weights=x * x, minlength=nb),
    ])


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
    parts = np.array(_per_block(mean, _moments))
    mom = np.concatenate([parts[:, :3].sum(axis=0), [parts[:, 3].min(), parts[:, 4].max()]])
    n = int(mom[0])
    if n == 0:
        raise ParameterError("every voxel is zero at every temperature: nothing to cluster")
    mu = mom[1] / n
    std = math.sqrt(max(mom[2] / n - mu * mu, 0.0))
    return LogIntensityStats(n, float(mu), std, float(mom[3]), float(mom[4]))


def order_statistics(mean: da.Array, st: LogIntensityStats, ranks) -> np.ndarray:
    """Exact k-th smallest values of x = log(mean) (0-based ``ranks``), streaming.

    A fine histogram locates the bin holding each rank; only those bins'
    values are then gathered and sorted, never the whole volume.
    """
    width = (st.max - st.min) / _FINE_BINS or 1.0
    hist = np.sum(_per_block(mean, _fine_hist, st.min, width, _FINE_BINS), axis=0)
    cum = np.cumsum(hist)
    ranks = [min(max(int(r), 0), st.n - 1) for r in ranks]
    need = sorted({int(np.searchsorted(cum, r, side="right")) for r in ranks})
    vals = np.concatenate(_per_block(mean, _values_in_bins, st.min, width, _FINE_BINS,
                                     np.array(need)))
    vbins = _bin_index(vals, st.min, width, _FINE_BINS)
    in_bin = {b: np.sort(vals[vbins == b]) for b in need}
    out = []
    for r in ranks:
        b = int(np.searchsorted(cum, r, side="right"))
        first = int(cum[b - 1]) if b > 0 else 0
        out.append(in_bin[b][r - first])
    return np.array(out)


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


def compute_threshold(mean: da.Array, method: str | float = "kl") -> Threshold:
    """Background cutoff from the per-voxel mean volume (streaming).

    Parameters
    ----------
    mean : dask array of shape (L, K, H)
        mean_T I per voxel (zero for gaps).
    method : 'kl', 'simple', 'none', or a number
        A number is an intensity: keep voxels whose mean exceeds it.
    """
    if not isinstance(method, str):
        value = float(method)
        if not value > 0:
            raise ParameterError(f"a threshold intensity must be > 0 (got {value})")
        n = int(sum(int(a) for a in _per_block(mean, lambda m: int((to_numpy(m) > 0).sum()))))
        return Threshold("value", math.log(value), n)
    if method not in THRESHOLD_METHODS:
        raise ParameterError(
            f"threshold must be one of {THRESHOLD_METHODS} or an intensity (got {method!r})"
        )
    st = log_intensity_stats(mean)
    if method == "none":
        return Threshold("none", -math.inf, st.n)
    if method == "simple":
        return Threshold("simple", st.mean + 2 * st.std, st.n, gaussian=(st.mean, st.std))
    q25, q75 = order_statistics(mean, st, iqr_ranks(st.n))
    width = (q75 - q25) / st.n ** (1.0 / 3.0)
    if not width > 0:
        raise ParameterError(
            "the KL threshold needs spread in log intensity (IQR is 0); use "
            "--threshold simple or an intensity"
        )
    nb = int(math.ceil((st.max - st.min) / width))
    if nb < 4:
        raise ParameterError("too few distinct intensities for the KL threshold; use "
                             "--threshold simple or an intensity")
    edges = np.linspace(st.min, st.max, nb + 1)
    counts, s1, s2 = np.sum(_per_block(mean, _weighted_hist, edges), axis=0)
    idx, it, gauss = kl_cutoff(counts, edges, s1, s2, st.mean, st.std, width)
    log.info("KL threshold: bin %d of %d, cutoff %.4g (log), %d steps", idx, nb, edges[idx], it)
    if not st.mean - st.std <= edges[idx] <= st.mean + 2 * st.std:
        # The published code flags the same case as unsuccessful.
        log.warning("the KL cutoff %.3g lies outside mean - std .. mean + 2 std of log "
                    "intensity; check the threshold histogram", edges[idx])
    return Threshold("kl", float(edges[idx]), st.n, counts, edges, gauss, it)


def kl_threshold_values(x: np.ndarray, max_iter: int = 100) -> float:
    """KL cutoff (log intensity) of in-memory log intensities ``x`` of shape (N,)."""
    x = np.asarray(x, dtype=np.float64)
    srt = np.sort(x)
    r25, r75 = iqr_ranks(x.size)
    width = (srt[r75] - srt[r25]) / x.size ** (1 / 3)
    nb = int(math.ceil((x.max() - x.min()) / width))
    edges = np.linspace(x.min(), x.max(), nb + 1)
    b = _edge_index(x, edges)
    counts = np.bincount(b, minlength=nb).astype(np.float64)
    s1 = np.bincount(b, weights=x, minlength=nb)
    s2 = np.bincount(b, weights=x * x, minlength=nb)
    idx, _, _ = kl_cutoff(counts, edges, s1, s2, float(x.mean()), float(x.std()), width,
                          max_iter)
    return float(edges[idx])


# ----------------------------------------------------------------------- the passes
@dataclass
class VoxelSummary:
    """One streaming pass over the raw data."""

    mean: da.Array  # (L, K, H) float32, mean over T after cleaning
    n_nan_voxels: int
    n_negative_values: int
    # What ``capture`` returned per spatial block (Delayed, held on the workers),
    # as an object array of the block grid; None without ``capture``.
    captured: np.ndarray | None = None


def _summary_block(x, capture=None, pos=()):
    """(T, l, k, h) -> (mean (l, k, h) float32 as in :func:`mean_block` of the cleaned
    block, [n_nan_voxels, n_negative_values], capture(values (T, n), mean (n,), pos)
    or None); NumPy chunks take one fused pass for the first two."""
    if isinstance(x, np.ndarray):
        import numba

        from xtec import _kernels

        # Dask runs one task per core already; nested numba threads would
        # oversubscribe the cores (and spin-wait).
        numba.set_num_threads(1)
        flat = np.ascontiguousarray(x).reshape(x.shape[0], -1)
        if flat.dtype not in (np.float32, np.float64):
            flat = flat.astype(np.float32)
        m, n_nan, n_neg = _kernels.mean_over_t(flat, 4096)
        bad = np.array([n_nan, n_neg], np.int64)
    else:
        xp = namespace(x)
        flat = xp.reshape(x, (x.shape[0], -1))
        m, bad = xp.reshape(mean_block(clean_block(x)), (-1,)), _bad_counts_block(x)
    got = capture(flat, m, pos) if capture is not None else None
    xp = namespace(m)
    return xp.reshape(m, tuple(x.shape[1:])), bad, got


def summarize(data: da.Array, persist: bool = True, capture=None) -> VoxelSummary:
    """Mean over temperature per voxel, and counts of NaN / negative values.

    data : dask array (T, L, K, H) with the temperature axis in one chunk.
    All come from one read of the data, in one task per chunk.  ``capture``,
    if given, is called in each task with the block's values (T, n), means
    (n,) and block position, while the values are in hand (see
    :mod:`xtec.candidates`); its results stay where the tasks ran.
    """
    if data.numblocks[0] != 1:
        data = data.rechunk({0: -1})
    f = dask.delayed(_summary_block, pure=True, nout=3)
    blocks = data.to_delayed()[0]
    positions = list(np.ndindex(*blocks.shape))
    parts = [f(blocks[pos], capture, pos) for pos in positions]
    if persist:
        # The tuples are persisted first, so each chunk is read once; then
        # their items, so the means and the captures can be released apart.
        parts = dask.persist(*parts)
        items = dask.persist(*[p[i] for p in parts for i in range(3)])
        parts = [items[3 * j:3 * j + 3] for j in range(len(parts))]
    meta = namespace(data._meta).empty((0, 0, 0), dtype=np.float32) \
        if not isinstance(data._meta, np.ndarray) else np.empty((0, 0, 0), np.float32)
    grid = np.empty(blocks.shape, dtype=object)
    captured = np.empty(blocks.shape, dtype=object) if capture is not None else None
    for pos, part in zip(positions, parts):
        shape = tuple(ch[i] for ch, i in zip(data.chunks[1:], pos))
        grid[pos] = da.from_delayed(part[0], shape=shape, dtype=np.float32, meta=meta)
        if captured is not None:
            captured[pos] = part[2]
    mean = da.block(grid.tolist())
    totals = np.sum(dask.compute(*[p[1] for p in parts]), axis=0)
    return VoxelSummary(mean, int(totals[0]), int(totals[1]), captured)


def clean(data: da.Array) -> da.Array:
    """:func:`clean_block` on every chunk."""
    return data.map_blocks(clean_block, dtype=data.dtype)


def above_cutoff_block(m, cut: float):
    """mean > 0 and log(mean) > cut, elementwise (log in float64 of the mean)."""
    xp = namespace(m)
    pos = m > 0
    safe = xp.where(pos, m, xp.ones_like(m))
    return pos & (xp.log(xp.astype(safe, xp.float64)) > cut)


def keep_mask(mean: da.Array, threshold: Threshold) -> da.Array:
    """Kept voxels: mean > 0 and log(mean) above the cutoff.  (L, K, H) bool."""
    return mean.map_blocks(above_cutoff_block, threshold.cutoff, dtype=bool)


def flat_indices_block(mask, offset: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Global C-order voxel indices of the kept voxels of a mask block (host int64).

    mask : (l, k, h) block starting at ``offset`` in a grid of ``shape``.
    """
    ijk = np.nonzero(to_numpy(mask))
    return np.ravel_multi_index(tuple(a + o for a, o in zip(ijk, offset)), shape)


@dataclass
class Trajectories:
    """Rescaled trajectories of the kept voxels, ragged over the spatial blocks.

    Attributes
    ----------
    X : dask array of shape (n_kept, T), float32
        One chunk per spatial block that keeps any voxel, in block order.
    index : dask array of shape (n_kept,), int64
        Global C-order index of each voxel in the (L, K, H) grid: the identity
        that makes seeded results independent of the chunking.
    counts : ndarray of shape mask.numblocks
        Kept voxels per spatial block.
    """

    X: da.Array
    index: da.Array
    counts: np.ndarray
    mask: da.Array

    @property
    def n(self) -> int:
        return int(self.counts.sum())


def extract_trajectories(data: da.Array, mask: da.Array, rescale: str = "mean") -> Trajectories:
    """Gather and rescale the trajectories of kept voxels, chunk by chunk.

    data : (T, L, K, H) dask array, temperature in one chunk; mask : (L, K, H) bool
    with the same spatial chunks.
    """
    if rescale not in RESCALE_METHODS:
        raise ParameterError(f"rescale must be one of {RESCALE_METHODS} (got {rescale!r})")
    if data.numblocks[0] != 1:
        data = data.rechunk({0: -1})
    dblocks = data.to_delayed()[0]
    mblocks = mask.to_delayed()
    traj = dask.delayed(trajectories_block, pure=True)
    return assemble_trajectories(mask, lambda pos: traj(dblocks[pos], mblocks[pos], rescale),
                                 data.shape[0], data._meta)


def assemble_trajectories(mask: da.Array, block_trajectories, t: int, meta=None
                          ) -> Trajectories:
    """:class:`Trajectories` from one Delayed (n_kept, T) array per spatial block.

    block_trajectories(pos) gives the kept rows of block ``pos`` of ``mask``
    (L, K, H) bool, in C order; blocks that keep nothing are skipped.
    """
    counts = mask.map_blocks(
        lambda m: np.full((1, 1, 1), int(to_numpy(m).sum()), np.int64), dtype=np.int64,
        chunks=(1, 1, 1),
    ).compute()
    mblocks = mask.to_delayed()
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]) for c in mask.chunks]
    flat_idx = dask.delayed(flat_indices_block, pure=True)
    meta2 = _meta_2d(meta if meta is not None else np.empty(0, np.float32))
    xs, ids = [], []
    for pos in np.ndindex(*counts.shape):
        n = int(counts[pos])
        if n == 0:
            continue
        xs.append(da.from_delayed(block_trajectories(pos), shape=(n, t), dtype=np.float32,
                                  meta=meta2))
        offset = tuple(int(st[i]) for st, i in zip(starts, pos))
        ids.append(da.from_delayed(flat_idx(mblocks[pos], offset, mask.shape), shape=(n,),
                                   dtype=np.int64))
    if not xs:
        raise ParameterError(
            "the threshold keeps no voxel; lower it (--threshold simple, none, or an intensity)"
        )
    return Trajectories(da.concatenate(xs), da.concatenate(ids), counts, mask)


def _meta_2d(meta):
    xp = namespace(meta)
    return xp.empty((0, 0), dtype=xp.float32)


def paint(values: da.Array, traj: Trajectories, fill, dtype) -> da.Array:
    """Scatter per-kept-voxel ``values`` (n_kept,) back onto the (L, K, H) grid.

    ``values`` must have the chunks of ``traj.X`` along axis 0; voxels not kept
    get ``fill``.
    """
    mask = traj.mask
    vblocks = iter(values.to_delayed().ravel())
    mblocks = mask.to_delayed()

    def scatter(m, v):
        m = to_numpy(m)
        out = np.full(m.shape, fill, dtype=dtype)
        if v is not None:
            out[m] = to_numpy(v)
        return out

    f = dask.delayed(scatter, pure=True)
    grid = np.empty(traj.counts.shape, dtype=object)
    for pos in np.ndindex(*traj.counts.shape):
        v = next(vblocks) if traj.counts[pos] else None
        shape = tuple(c[i] for c, i in zip(mask.chunks, pos))
        grid[pos] = da.from_delayed(f(mblocks[pos], v), shape=shape, dtype=dtype)
    return da.block(grid.tolist())
