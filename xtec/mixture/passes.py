"""The E-step's statistics over a whole array: in one call, or per Dask chunk
(summed in chunk order, so the result does not depend on how tasks are cut or
which worker finishes first).  Chunks stay on the workers; only K x T numbers
travel.
"""

from __future__ import annotations

import dask.array as da

from xtec.mixture.engines import chunk_stats
from xtec.mixture.parameters import MixtureParams, SufficientStats
from xtec.runtime.chunks import per_block


def data_stats(X, params: MixtureParams, engine: str = "auto") -> SufficientStats:
    """Statistics over a whole array: in one call, or reduced over Dask chunks
    (each chunk alone, summed in chunk order, however the tasks are cut)."""
    if isinstance(X, da.Array):
        # One thread per chunk where there are several (held ones: one task
        # per worker thread over those it holds); a lone chunk gets them all.
        threads = 1 if X.npartitions > 1 else None
        parts = per_block(chunk_stats, X, args=(params, engine, threads))
        total = parts[0]
        for p in parts[1:]:  # fixed order: the sum does not depend on who finished first
            total = total + p
        return total
    return chunk_stats(X, params, engine)
