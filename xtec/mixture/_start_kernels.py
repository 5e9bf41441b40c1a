"""Numba kernels of EM's start (:mod:`xtec.mixture.start`): the subsample's hash
and gather, k-means++ seeding distances, the k-means Lloyd step, and the
per-label sums that give initial parameters.

Compiled once per installation (numba's disk cache), like :mod:`xtec.mixture._kernels`.
"""

import numba
import numpy as np

from xtec.mixture._kernels import _FASTMATH


@numba.njit(inline="always")
def _splitmix(i, s):
    """splitmix64 of id ``i`` plus ``s`` (both uint64) as a float in [0, 1) from
    its top 53 bits."""
    z = i + s
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return np.float64(z >> np.uint64(11)) / 9007199254740992.0


@numba.njit(cache=True, nogil=True)
def splitmix_uniform(index, seed_low):
    """splitmix64 of each id (uint64) plus seed_low * golden ratio, as a float
    in [0, 1) from its top 53 bits: one pass (18x the NumPy expression)."""
    out = np.empty(index.shape[0])
    s = np.uint64(seed_low) * np.uint64(0x9E3779B97F4A7C15)
    for i in range(index.shape[0]):
        out[i] = _splitmix(index[i], s)
    return out


@numba.njit(cache=True, nogil=True)
def sample_range(X, rate, seed_low):
    """The rows of X (n, T) whose position, as id, hashes below ``rate``
    (:func:`splitmix_uniform`): their ids (int64) and the rows as float64, in
    id order.  One serial pass and no id array: the subsample of a whole
    in-memory fit in 1-2 ms, where the ids, their hash and a gather took
    9-13 ms (457,679 x 24; a parallel gather's thread wake-up alone varied
    1.2-8 ms)."""
    n, t = X.shape
    keep = np.empty(n, np.int64)
    s = np.uint64(seed_low) * np.uint64(0x9E3779B97F4A7C15)
    j = 0
    for i in range(n):
        if _splitmix(np.uint64(i), s) < rate:
            keep[j] = i
            j += 1
    out = np.empty((j, t))
    for r in range(j):
        src = keep[r]
        for f in range(t):
            out[r, f] = X[src, f]
    return keep[:j].copy(), out


@numba.njit(parallel=True, cache=True, nogil=True)
def take_rows(X, rows):
    """X[rows] as float64 (len(rows), T): the subsample's gather, 2x np.take."""
    out = np.empty((rows.shape[0], X.shape[1]))
    for r in numba.prange(rows.shape[0]):
        src = rows[r]
        for f in range(X.shape[1]):
            out[r, f] = X[src, f]
    return out


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def lower_sq_dist(X, center, d2):
    """d2 = min(d2, |x - center|^2) per row of X (n, T): k-means++ seeding."""
    for i in range(X.shape[0]):
        d = 0.0
        for f in range(X.shape[1]):
            e = X[i, f] - center[f]
            d += e * e
        if d < d2[i]:
            d2[i] = d


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=_FASTMATH)
def lloyd_step(X, centers, block):
    """Nearest centre of each row of X (n, T) float64, and per centre the
    count and sum of its rows: one pass, parallel over row blocks."""
    # fastmath lets each row's sum over T vectorise (2.2x on 50,000 x 24,
    # K=6); the sums go into a block-local array after the labels, not into
    # the shared one row by row.  Ties go to the lower centre.
    n, t = X.shape
    k = centers.shape[0]
    labels = np.empty(n, np.int64)
    nb = (n + block - 1) // block
    sums = np.zeros((nb, k, t))
    counts = np.zeros((nb, k))
    for b in numba.prange(nb):
        lo = b * block
        hi = min(n, lo + block)
        for i in range(lo, hi):
            best = np.inf
            arg = 0
            for j in range(k):
                d = 0.0
                for f in range(t):
                    e = X[i, f] - centers[j, f]
                    d += e * e
                if d < best:
                    best = d
                    arg = j
            labels[i] = arg
        acc = np.zeros((k, t))
        cnt = np.zeros(k)
        for i in range(lo, hi):
            a = labels[i]
            cnt[a] += 1.0
            dst = acc[a]
            for f in range(t):
                dst[f] += X[i, f]
        sums[b] = acc
        counts[b] = cnt
    return labels, counts.sum(axis=0), sums.sum(axis=0)


@numba.njit(cache=True, nogil=True)
def label_sums(X, labels, k, full):
    """Per label of the rows of X (n, T): count, sum of rows and sum of outer
    products (lower triangle if ``full``, else squares on the diagonal).  One
    serial pass (start-up on a sample of some thousand rows)."""
    n, t = X.shape
    counts = np.zeros(k)
    sums = np.zeros((k, t))
    outer = np.zeros((k, t, t))
    for i in range(n):
        c = labels[i]
        counts[c] += 1.0
        for j in range(t):
            v = X[i, j]
            sums[c, j] += v
            if full:
                for m in range(j + 1):
                    outer[c, j, m] += v * X[i, m]
            else:
                outer[c, j, j] += v * v
    return counts, sums, outer
