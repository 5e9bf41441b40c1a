"""NumPy twins of the numba kernels of the EM start (:mod:`xtec.mixture._start_kernels`)
and of the cluster profiles (``label_stats`` of :mod:`xtec.mixture._kernels`):
the same names, arguments and results, with nothing to compile.

What a run uses where the kernels are not in numba's cache yet (see
:mod:`xtec.runtime.kernel_cache`); the E-step's own twin is the array-API
engine of :mod:`xtec.mixture.engines`.  Hashes, labels and counts equal the
kernels'; float sums agree to rounding.
"""

from __future__ import annotations

import numpy as np

_ROWS = 8192  # rows per distance block: (rows, K, T) float64 stays a few MB


def splitmix_uniform(index, seed_low):
    """splitmix64 of each id (uint64) plus seed_low * golden ratio, as a float in
    [0, 1) from its top 53 bits (uint64 arithmetic wraps, as in the kernel)."""
    z = np.asarray(index, dtype=np.uint64) + (
        np.array([seed_low], np.uint64) * np.array([0x9E3779B97F4A7C15], np.uint64))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / 9007199254740992.0


def take_rows(X, rows):
    return np.asarray(X)[rows].astype(np.float64)


def sample_range(X, rate, seed_low):
    ids = np.flatnonzero(splitmix_uniform(np.arange(X.shape[0], dtype=np.uint64), seed_low) < rate)
    return ids, take_rows(X, ids)


def lower_sq_dist(X, center, d2):
    np.minimum(d2, ((X - center) ** 2).sum(axis=1), out=d2)


def row_blocks(X, block, like):
    """The rows of X (n, T) as blocks of ``block`` rows transposed to columns,
    (n_blocks, T, block) in the precision of ``like``, the last block zero-padded."""
    n, t = X.shape
    nb = -(-n // block)
    out = np.zeros((nb * block, t), like.dtype)
    out[:n] = X
    return np.ascontiguousarray(out.reshape(nb, block, t).transpose(0, 2, 1))


def lloyd_step(blocks, n, centers):
    """Nearest centre of each of the n rows in ``blocks`` (see :func:`row_blocks`;
    ties to the lower centre), in the precision of ``centers``, and per centre
    the count and sum of its rows.  The distances sum in another order than
    the kernel's: a row equidistant from two centres to float32 rounding may
    take the other one."""
    nb, t, block = blocks.shape
    X = blocks.transpose(0, 2, 1).reshape(nb * block, t)[:n]
    k = centers.shape[0]
    labels = np.empty(n, np.int64)
    for lo in range(0, n, _ROWS):
        d = ((X[lo:lo + _ROWS, None, :] - centers[None]) ** 2).sum(axis=2)
        labels[lo:lo + _ROWS] = np.argmin(d, axis=1)
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    sums = np.stack([X[labels == j].sum(axis=0, dtype=np.float64) for j in range(k)])
    return labels, counts, sums


def label_sums(X, labels, k, full):
    """Per label: count, sum of rows, sum of outer products (lower triangle if
    ``full``, else only the squares on the diagonal), float64."""
    t = X.shape[1]
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    sums = np.zeros((k, t))
    outer = np.zeros((k, t, t))
    for c in range(k):
        rows = X[labels == c]
        sums[c] = rows.sum(axis=0)
        if full:
            outer[c] = np.tril(rows.T @ rows)
        else:
            outer[c][np.diag_indices(t)] = (rows * rows).sum(axis=0)
    return counts, sums, outer


def label_stats(X, labels, k):
    """Per label 0..k-1: count (repeated along T), sum and sum of squares of the
    rows of X (n, T), (3, k, T) float64."""
    t = X.shape[1]
    labels = np.asarray(labels, np.int64)
    out = np.zeros((3, k, t))
    out[0] = np.bincount(labels, minlength=k)[:k, None]
    for c in range(k):
        rows = X[labels == c].astype(np.float64)
        out[1, c] = rows.sum(axis=0)
        out[2, c] = (rows * rows).sum(axis=0)
    return out
