"""The E-step's statistics over a whole array: in one call, or per Dask chunk
(summed in chunk order, so the result does not depend on how tasks are cut or
which worker finishes first).  Chunks stay on the workers; only K x T numbers
travel.
"""

from __future__ import annotations

import dask
import dask.array as da

from xtec.mixture.engines import chunk_stats
from xtec.mixture.parameters import MixtureParams, SufficientStats
from xtec.runtime.chunks import chunks_by_thread, held_chunks


def _stats_of_chunks(params: MixtureParams, engine: str, *chunks) -> list:
    return [chunk_stats(c, params, engine, 1) for c in chunks]


def _stats_where_held(X: da.Array, params: MixtureParams, engine: str) -> list | None:
    """Per-chunk statistics of an array persisted on a Dask cluster, one task per
    worker thread over the chunks it holds (None if X is not held so)."""
    futures = held_chunks(X)
    shares = chunks_by_thread(futures) if futures else None
    if shares is None:
        return None
    client = futures[0].client
    tasks = [client.submit(_stats_of_chunks, params, engine, *[futures[i] for i in idx],
                           workers=[addr], allow_other_workers=True, pure=False)
             for addr, idx in shares]
    parts = [None] * len(futures)
    for (_, idx), got in zip(shares, client.gather(tasks)):
        for i, st in zip(idx, got):
            parts[i] = st
    return parts


def data_stats(X, params: MixtureParams, engine: str = "auto") -> SufficientStats:
    """Statistics over a whole array: in one call, or reduced over Dask chunks
    (each chunk alone, summed in chunk order, however the tasks are cut)."""
    if isinstance(X, da.Array):
        parts = _stats_where_held(X, params, engine) if X.npartitions > 1 else None
        if parts is None:
            f = dask.delayed(chunk_stats, pure=True)
            blocks = X.to_delayed().ravel()
            threads = 1 if len(blocks) > 1 else None
            parts = dask.compute(*[f(b, params, engine, threads) for b in blocks])
        total = parts[0]
        for p in parts[1:]:  # fixed order: the sum does not depend on who finished first
            total = total + p
        return total
    return chunk_stats(X, params, engine)
