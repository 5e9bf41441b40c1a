"""``xtec prepare``: fill the compiled-kernel cache of this node before the first run.

A first run with an empty cache compiles every numba kernel it calls (about a
minute on a busy 2-core machine, against a few seconds to load them); run this
once after installing xtec, on each kind of node (the cache is per CPU model),
in the same environment the runs use (``NUMBA_CACHE_DIR`` if set).  Dask workers
then load the kernels from the same cache instead of compiling them.
"""

from __future__ import annotations

import argparse

COVARIANCES = {"all": ("diag", "full"), "diag": ("diag",), "full": ("full",)}


def register(sub) -> None:
    p = sub.add_parser("prepare", help="compile the numba kernels into their cache (once per node)")
    p.add_argument("--covariance", choices=tuple(COVARIANCES), default="all",
                   help="kernels of these covariance types (default all)")
    # A background compile started by a run (kernel_cache.compile_in_background)
    # removes its lock when done.
    p.add_argument("--lock", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args) -> int:
    import time

    from xtec.mixture.warm import prepare_kernels
    from xtec.runtime.kernel_cache import describe, mark_compiled, release_lock

    tick = time.perf_counter()
    try:
        seconds = prepare_kernels(COVARIANCES[args.covariance])
        for cov in COVARIANCES[args.covariance]:
            mark_compiled(cov)
    finally:
        if args.lock:
            release_lock(args.lock)
    for stage, s in seconds.items():
        print(f"{stage}: {s:.1f} s")
    print(f"kernels ready in {time.perf_counter() - tick:.1f} s; cache: {describe()}")
    return 0
