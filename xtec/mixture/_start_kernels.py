"""Numba kernels of EM's start (:mod:`xtec.mixture.start`): the subsample's hash
and gather, k-means++ seeding distances, the k-means Lloyd step, and the
per-label sums that give initial parameters.

Compiled once per installation (numba's disk cache), like :mod:`xtec.mixture._kernels`.
"""

import numba
import numpy as np

from xtec.mixture._kernels import _FASTMATH, row_blocks  # noqa: F401 (the Lloyd steps' blocks)


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
def lloyd_step(blocks, n, centers):
    """Nearest centre of each of the n rows in ``blocks`` (n_blocks, T, rows),
    the rows cut into blocks and transposed to columns (:func:`row_blocks`),
    and per centre the count and sum of its rows (float64): one pass, parallel
    over the blocks, in the precision of ``centers`` (K, T).

    Every inner loop runs along a block's contiguous rows, as the E-step's
    do: in float32 a step over 50,000 x 24 (K = 4) took 0.85 ms on one
    thread, against 1.5 ms for a float64 pass row by row.  Within a block
    the sums are one-hot weighted sums (they vectorise); ties go to the lower
    centre.
    """
    nb, t, block = blocks.shape
    k = centers.shape[0]
    labels = np.empty(n, np.int64)
    sums = np.zeros((nb, k, t))
    counts = np.zeros((nb, k))
    zero = np.zeros(1, centers.dtype)[0]
    for b in numba.prange(nb):
        lo = b * block
        m = min(n, lo + block) - lo
        xt = blocks[b]
        dist = np.empty((k, m), centers.dtype)
        for j in range(k):
            acc = dist[j]
            for i in range(m):
                acc[i] = zero
            for f in range(t):
                c = centers[j, f]
                row = xt[f]
                for i in range(m):
                    e = row[i] - c
                    acc[i] += e * e
        onehot = np.zeros((k, m), centers.dtype)
        for i in range(m):
            best = dist[0, i]
            arg = 0
            for j in range(1, k):
                if dist[j, i] < best:
                    best = dist[j, i]
                    arg = j
            labels[lo + i] = arg
            onehot[arg, i] = 1
        for j in range(k):
            w = onehot[j]
            cnt = zero
            for i in range(m):
                cnt += w[i]
            counts[b, j] = cnt
            for f in range(t):
                row = xt[f]
                acc_f = zero
                for i in range(m):
                    acc_f += w[i] * row[i]
                sums[b, j, f] = acc_f
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
