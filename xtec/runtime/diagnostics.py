"""Instrumentation for tests and benchmarks: what the Dask workers did meanwhile.

Not used by the pipeline; :func:`watch_workers` samples every worker's resident
memory while a block runs and tells whether a worker restarted or spilled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field


def _worker_rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _worker_pid() -> int:
    import os

    return os.getpid()


def _worker_spilled(dask_worker=None) -> float:
    """Bytes this worker has ever spilled to disk (Dask's own counter)."""
    metrics = getattr(getattr(dask_worker, "data", None), "cumulative_metrics", {})
    return float(metrics.get(("disk-write", "bytes"), 0.0))


@dataclass
class WorkerWatch:
    """What :func:`watch_workers` saw: peak RSS per worker, whether any restarted,
    and the bytes each spilled to disk meanwhile."""

    peak_rss: dict
    restarted: bool = False
    spilled: dict = field(default_factory=dict)


@contextlib.contextmanager
def watch_workers(client, interval: float = 0.25) -> Iterator[WorkerWatch]:
    """Sample every worker's resident memory while the block runs.

    On exit ``restarted`` says whether the set of worker processes changed (a
    worker killed for memory comes back with a new process id).
    """
    import threading

    watch = WorkerWatch({})
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                for addr, m in client.run(_worker_rss).items():
                    watch.peak_rss[addr] = max(watch.peak_rss.get(addr, 0), m)
            except Exception:  # the cluster may be shutting down
                pass
            stop.wait(interval)

    pids = set(client.run(_worker_pid).values())
    spilled0 = client.run(_worker_spilled)
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        stop.set()
        thread.join()
        watch.restarted = set(client.run(_worker_pid).values()) != pids
        watch.spilled = {a: b - spilled0.get(a, 0.0)
                         for a, b in client.run(_worker_spilled).items()}
