"""NumPy twins of :mod:`xtec.preprocess._kernels`: the same functions, names,
arguments and results, with nothing to compile.

A run uses them where the numba kernels are not in the cache yet (a first run on
a node, see :mod:`xtec.runtime.kernel_cache`): compiling the kernels takes tens
of seconds, these run at once.  Counts, histograms and indices equal the
kernels'; float sums agree to rounding (NumPy sums pairwise, the kernels in
voxel order), logs to one ulp (NumPy's own SIMD log where the CPU has AVX-512,
the C library's in the kernels).  Each is a few vectorised passes with
temporaries the size of the block.
"""

from __future__ import annotations

import numpy as np


def fine_bins(x: np.ndarray, lo: float, width: float, nbins: int) -> np.ndarray:
    """Bin of each x among ``nbins`` of ``width`` from ``lo``, ends clipped (int64)."""
    return np.clip(np.floor((x - lo) / width).astype(np.int64), 0, nbins - 1)


def _positive_logs(m: np.ndarray) -> np.ndarray:
    v = m[m > 0]
    return np.log(v.astype(np.float64))


def moments(m):
    """(count, sum x, sum x^2, min x, max x) of x = log(m), m > 0 (flat)."""
    return moments_and_hist(m, 0.0, 1.0, 1)[0]


def fine_hist(m, lo, width, nbins):
    x = _positive_logs(m)
    return np.bincount(fine_bins(x, lo, width, nbins), minlength=nbins).astype(np.int64)


def values_in_bins(m, lo, width, nbins, hit, low, high):
    v = m.astype(np.float64)
    near = np.zeros(v.shape, bool)
    for a, b in zip(low, high):
        near |= (v >= a) & (v <= b)
    x = _positive_logs(v[near])
    b = fine_bins(x, lo, width, nbins)
    keep = hit[b]
    return x[keep], b[keep]


def edge_index(x, edges):
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


def weighted_hist(m, edges):
    x = _positive_logs(m)
    nb = edges.size - 1
    i = edge_index(x, edges)
    out = np.zeros((3, nb))
    out[0] = np.bincount(i, minlength=nb)
    out[1] = np.bincount(i, weights=x, minlength=nb)
    out[2] = np.bincount(i, weights=x * x, minlength=nb)
    return out


def positive_logs(m):
    """log(m) as float64, -inf where m is not > 0."""
    m = np.asarray(m)
    pos = m > 0
    return np.where(pos, np.log(np.where(pos, m, 1).astype(np.float64)), -np.inf)


def moments_and_hist(m, lo, width, nbins):
    return log_moments_and_hist(positive_logs(m), lo, width, nbins)


def log_moments_and_hist(x, lo, width, nbins):
    x = x[x > -np.inf]
    if x.size:
        mom = np.array([x.size, x.sum(), np.dot(x, x), x.min(), x.max()], np.float64)
    else:
        mom = np.array([0.0, 0.0, 0.0, np.inf, -np.inf])
    hist = np.bincount(fine_bins(x, lo, width, nbins), minlength=nbins).astype(np.int32)
    return mom, hist


def mean_over_t(x, block):
    """Per column of x (T, n): mean over T of max(x, 0), 0 where any value is NaN
    (float32); the NaN columns and negative values counted."""
    t = x.shape[0]
    nan = np.isnan(x).any(axis=0)
    n_neg = int(np.count_nonzero(x < 0))
    acc = np.where(x > 0, x, 0).sum(axis=0, dtype=np.float64)
    out = (acc / t).astype(np.float32)
    out[nan] = 0.0
    return out, int(nan.sum()), n_neg


def gather_rescale(x, cols, method, block):
    """Rescaled trajectories (len(cols), T) float32 of the columns ``cols`` of x
    (T, n), negatives clipped to 0; method 0 mean, 1 zscore, 2 log-mean, 3 none."""
    v = np.maximum(x[:, cols].astype(np.float64), 0.0).T
    if method == 3:
        return v.astype(np.float32)
    if method == 2:
        v = np.log1p(v)
    mu = v.mean(axis=1, keepdims=True)
    if method == 1:
        sd = np.sqrt(((v - mu) ** 2).mean(axis=1, keepdims=True))
        out = np.where(sd > 0, (v - mu) / np.where(sd > 0, sd, 1.0), 0.0)
    elif method == 2:
        out = v - mu
    else:
        out = np.where(mu > 0, v / np.where(mu > 0, mu, 1.0) - 1.0, 0.0)
    return out.astype(np.float32)


def flat_indices_3d(mask, o0, o1, o2, n1, n2):
    a, b, c = np.nonzero(mask)
    return ((a.astype(np.int64) + o0) * n1 + b + o1) * n2 + o2 + c


def frame_stats(x, m, logm, sample, inner, lut, e_lo, lo_m, w_m, nb_m):
    """Per-temperature statistics of a block x (T, n) with per-voxel means ``m``
    and their logs ``logm`` (n,); see :func:`xtec.preprocess._kernels.frame_stats`
    (``lut`` and ``e_lo`` only find faster what ``searchsorted`` finds here)."""
    t = x.shape[0]
    pos = np.flatnonzero(logm > -np.inf)
    bm = fine_bins(logm[pos], lo_m, w_m, nb_m)
    count = np.bincount(bm, minlength=nb_m).astype(np.int64)
    region = np.zeros((t, nb_m))
    values = x[:, pos]
    for j in range(t):
        row = values[j]
        # negatives and NaN count as 0
        region[j] = np.bincount(bm, weights=np.where(row > 0, row, 0).astype(np.float64),
                                minlength=nb_m)
    total = region.sum(axis=1)
    nb_r = inner.size + 1
    hist = np.zeros((t, nb_r + 1), np.int32)
    picked = pos[sample[pos]]
    r = x[:, picked].astype(np.float64)
    above = r > 0
    hist[:, 0] = (~above).sum(axis=1)
    rows, cols = np.nonzero(above)
    ratio = r[rows, cols] / m[picked].astype(np.float64)[cols]
    b = 1 + np.searchsorted(inner, ratio, side="right")
    hist[:, 1:] += np.bincount(rows * (nb_r + 1) + b, minlength=t * (nb_r + 1)) \
        .reshape(t, nb_r + 1)[:, 1:].astype(np.int32)
    return hist, total, region, count


def local_maxima_among(b, cand, base):
    """Which of the flat indices ``cand`` of b are local maxima above ``base``;
    see :func:`xtec.preprocess._kernels.local_maxima_among`."""
    idx = np.stack(np.unravel_index(cand, b.shape), axis=1)
    vals = b.ravel()[cand]
    keep = vals > base
    top = np.asarray(b.shape) - 1
    for d in np.ndindex(3, 3, 3):
        if d != (1, 1, 1):
            nb = np.clip(idx + (np.asarray(d) - 1), 0, top)
            keep &= vals >= b[nb[:, 0], nb[:, 1], nb[:, 2]]
    return keep
