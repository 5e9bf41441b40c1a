"""Cluster profiles: count, mean and spread of the trajectories of each cluster.

The mean trajectory per cluster (with its standard deviation) is what a result
shows next to the map; it is computed from the same per-chunk sums as the
mixture's statistics, so only K x T numbers per chunk travel.
"""

from __future__ import annotations

import operator

import dask
import dask.array as da
import numpy as np

from xtec.backend import to_numpy
from xtec.mixture.engines import chunk_predict
from xtec.mixture.kernels import profile_kernels
from xtec.runtime.chunks import stack_tasks


def _cluster_block_stats(x, labels, k):
    """Per cluster: count, sum and sum of squares of one block's trajectories, (3, k, T)."""
    x = np.ascontiguousarray(to_numpy(x))
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    return profile_kernels().label_stats(x, np.ascontiguousarray(to_numpy(labels)), k)


def warm_kernels() -> bool:
    """Load the profiles' numba kernel in this process now."""
    _cluster_block_stats(np.zeros((1, 2), np.float32), np.zeros(1, np.int16), 1)
    return True


def _profile_totals(tot) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = tot[0][:, 0]
    safe = np.maximum(n, 1)[:, None]
    mean = tot[1] / safe
    std = np.sqrt(np.maximum(tot[2] / safe - mean**2, 0.0))
    return n.astype(np.int64), mean, std


def _predict_block_stats(x, params, engine, k):
    labels = chunk_predict(x, params, engine)
    return labels, _cluster_block_stats(x, labels, k)


def _summed_stats(*parts) -> np.ndarray:
    # (labels, stats) of each block, summed in block order: the same sums
    # however they finish.
    return np.sum([p[1] for p in parts], axis=0)


def predict_with_profiles(gmm, X, k: int, keys: list | None = None):
    """Labels and :func:`cluster_profiles`, from one pass over X, all lazy.

    X : (N, T) dask array -> labels (N,) int16 with X's chunks, counts (k,),
    mean (k, T), std (k, T): dask arrays over one persisted pass (each block
    of X is read once for both).  On a cluster the pass runs in the
    background: the caller builds and submits the write of the label volume
    while the profiles are still being summed.  Returns also the persisted
    pass, (labels, statistics) per block, to hold until the result is written.
    ``keys``: the key of each block's pass task (Dask's own if None), so that a
    caller can make an array of the pass's results without a task more
    (:func:`xtec.runtime.chunks.block_grid`).
    """
    f = dask.delayed(_predict_block_stats, pure=True)
    blocks = X.to_delayed().ravel()
    named = [{}] * len(blocks) if keys is None else [{"dask_key_name": key} for key in keys]
    parts = dask.persist(*[f(b, gmm.params_, gmm.engine, k, **kw)
                           for b, kw in zip(blocks, named, strict=True)])
    # Each block's labels are the first of its pass's results: one task per
    # block takes them (Delayed's nout and from_delayed pieces took three).
    labels = stack_tasks([(operator.itemgetter(0), p) for p in parts],
                         [(n,) for n in X.chunks[0]], np.int16, np.empty(0, np.int16), "labels")
    t = int(X.shape[1])
    totals = dask.delayed(_profile_totals, pure=True, nout=3)(
        dask.delayed(_summed_stats, pure=True)(*parts))
    # Persisted too (asynchronously on a cluster): the write and the run's
    # summary then read the profiles, instead of each summing every block's
    # statistics again.
    counts, mean, std = dask.persist(
        da.from_delayed(totals[0], shape=(k,), dtype=np.int64),
        da.from_delayed(totals[1], shape=(k, t), dtype=np.float64),
        da.from_delayed(totals[2], shape=(k, t), dtype=np.float64))
    return labels, counts, mean, std, parts


def cluster_profiles(X, labels, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count, mean and standard deviation of the trajectories of each cluster.

    X : (N, T); labels : (N,) in 0..k-1 -> counts (k,), mean (k, T), std (k, T)
    """
    if isinstance(X, da.Array):
        f = dask.delayed(_cluster_block_stats, pure=True)
        parts = dask.compute(*[f(a, b, k) for a, b in
                               zip(X.to_delayed().ravel(), labels.to_delayed().ravel())])
        tot = np.sum(parts, axis=0)
    else:
        tot = _cluster_block_stats(X, labels, k)
    return _profile_totals(tot)
