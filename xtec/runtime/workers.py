"""Dask workers as a user meets them: memory they need, losing them, their logs.

* A worker's memory limit below what one worker needs to start and run one
  task makes Dask's nanny restart it forever; :func:`check_memory_limit`
  refuses it up front and says how much is needed.
* A task whose workers keep dying (``KilledWorker``) or a scheduler that goes
  away ends the run; :func:`cluster_failures` turns Dask's exceptions into one
  :class:`WorkerLostError` line.
* :func:`quiet_dask_logs` keeps Dask's INFO chatter out of the output unless
  asked for (``-v``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator

from xtec.errors import ParameterError, XtecError
from xtec.runtime.signals import quiet_leftover_tasks

log = logging.getLogger(__name__)

# Resident memory of a worker process once it has imported xtec and loaded the
# EM kernels (measured: 212 MiB with numba, h5py, zarr on Linux x86-64), and
# the working memory one thread needs for a task on the smallest chunks.
WORKER_BASE_BYTES = 256 * 2**20
THREAD_WORK_BYTES = 64 * 2**20
# Dask pauses a worker at 80% of its limit and kills it at 95%.
_USABLE = 0.8


class WorkerLostError(XtecError):
    """Workers died (out of memory, killed) or the scheduler went away."""


# glibc serves every allocation above its mmap threshold (128 KiB) with fresh
# pages from the kernel, and the MALLOC_TRIM_THRESHOLD_ Dask sets for worker
# processes also freezes that threshold (glibc otherwise raises it as buffers
# are freed, and reuses them): each decompressed HDF5 chunk then faults its
# pages in anew.  Reading the 1.5 GB series took 3.6 s in two worker processes
# against 2.0 s in two threads; with a 32 MiB threshold (glibc's own ceiling
# for the moving one) 2.2 s.  Dask's trim threshold of 64 KiB then still gave
# the top of a thread's heap back after every chunk (a chunk's compressed,
# inflated and unshuffled buffers are 0.3 + 2 x 1.5 MB), to be faulted in again
# for the next: a 60 MB block read in 176-200 ms in a worker against 142-158 ms
# in the client; with 4 MiB 150 ms (16 and 64 MiB: 159 and 155 ms, and at 64 MiB
# a 1 GB worker of the benchmark spilled).  4 MiB still gives freed memory back.
MALLOC_MMAP_THRESHOLD = 32 * 2**20
MALLOC_TRIM_THRESHOLD = 4 * 2**20
_DASK_TRIM_THRESHOLD = 65536  # distributed's default pre-spawn-environ value


def allocator_environ(configured: dict | None = None) -> dict:
    """glibc's allocator settings for a worker process: ``configured`` (Dask's
    ``distributed.nanny.pre-spawn-environ``) with ``MALLOC_MMAP_THRESHOLD_``
    added and Dask's default trim threshold raised (values a user set win)."""
    env = dict(configured or {})
    env.setdefault("MALLOC_MMAP_THRESHOLD_", MALLOC_MMAP_THRESHOLD)
    if str(env.get("MALLOC_TRIM_THRESHOLD_", _DASK_TRIM_THRESHOLD)) == str(_DASK_TRIM_THRESHOLD):
        env["MALLOC_TRIM_THRESHOLD_"] = MALLOC_TRIM_THRESHOLD
    return env


# Dask's workers sample their task thread's stack every 10 ms for the
# dashboard's Profile page, in the event loop they share the core with the
# task: in a 4.1-4.6 s first pass at 1.5 GB that loop took 0.43-0.45 CPU-s per
# worker with the profiler and 0.25-0.26 without (read from /proc per thread).
PROFILE_KEY = "distributed.worker.profile.enabled"
# Every Dask server (scheduler, nanny, worker) wakes its event loop every tick
# (20 ms by default) only to see whether the loop was blocked (a log line past
# ``distributed.admin.tick.limit``, 3 s).  On this project's 2-core VM an idle
# LocalCluster of two workers used 1.11-1.20 CPU-s per 10 s with it, 0.58-0.59
# at 100 ms (read from /proc, twice each): CPU a run shares with its tasks.
TICK_KEY = "distributed.admin.tick.interval"
TICK_INTERVAL = "100ms"


def worker_config() -> dict:
    """Dask settings for the servers xtec starts (workers, and the scheduler and
    nannies of a LocalCluster): the statistical profiler off and a 100 ms
    tick, each unless the user's Dask configuration (its YAML files or a
    ``DASK_...`` variable) sets it."""
    import dask
    import distributed  # noqa: F401  (loads Dask's distributed config)

    user = dask.config.collect()
    ours = {PROFILE_KEY: False, TICK_KEY: TICK_INTERVAL}
    return {k: v for k, v in ours.items() if dask.config.get(k, default=None, config=user) is None}


def worker_environ() -> dict:
    """Environment variables set in each worker process before it starts:
    Dask's ``distributed.nanny.pre-spawn-environ`` with :func:`allocator_environ`'s
    settings and this process's ``NUMBA_CACHE_DIR`` if set (a value the user
    configured wins)."""
    import dask
    import distributed  # noqa: F401  (loads Dask's distributed config)

    from xtec.runtime.kernel_cache import worker_environ as kernel_cache_environ

    env = allocator_environ(dask.config.get("distributed.nanny.pre-spawn-environ", None))
    for name, value in kernel_cache_environ().items():  # one kernel cache for every process
        env.setdefault(name, value)
    return env


def worker_memory_needed(threads_per_worker: int = 1) -> int:
    """Smallest memory limit (bytes) at which a worker with that many threads runs."""
    return int(math.ceil((WORKER_BASE_BYTES + max(1, threads_per_worker) * THREAD_WORK_BYTES)
                         / _USABLE))


def parse_memory_limit(value, name: str = "memory_limit") -> int | str | None:
    """``"2GB"``/``"auto"``/None/bytes -> bytes, ``"auto"`` or None (no limit)."""
    from dask.utils import parse_bytes

    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return "auto" if value is not None else None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ParameterError(f"{name} must be a size such as '4GB' or 'auto' (got {value!r})")
    try:
        n = parse_bytes(value) if isinstance(value, str) else int(value)
    except (ValueError, TypeError):
        raise ParameterError(f"{name} must be a size such as '4GB' or 'auto' "
                             f"(got {value!r})") from None
    if n < 0:
        raise ParameterError(f"{name} must not be negative (got {value!r})")
    return n


def check_memory_limit(value, threads_per_worker: int = 1,
                       name: str = "memory_limit") -> int | str | None:
    """Parse a per-worker limit and refuse one too small for a worker to run.

    0 means no limit (Dask's convention).  Returns what LocalCluster takes.
    """
    limit = parse_memory_limit(value, name)
    if isinstance(limit, int) and limit:
        need = worker_memory_needed(threads_per_worker)
        if limit < need:
            raise ParameterError(
                f"{name}={value!r} is too small: a worker with {threads_per_worker} "
                f"thread(s) needs at least {_gib(need)} ({need} bytes); give more memory "
                "per worker or fewer workers"
            )
    return limit


def _gib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n < 2**30 else f"{n / 2**30:.1f} GiB"


def worker_loss_message(exc: BaseException) -> str | None:
    name = type(exc).__name__
    if name == "KilledWorker":
        task = getattr(exc, "task", None) or (exc.args[0] if exc.args else "?")
        return (f"Dask workers died {getattr(exc, 'allowed_failures', 3) + 1} times while "
                f"running task {task!r} (out of memory or killed); the run is lost. Give the "
                "workers more memory (--memory-limit) or use fewer threads per worker")
    if name in ("FutureCancelledError", "CancelledError", "CommClosedError") or (
            name == "TimeoutError" and "scheduler" in str(exc).lower()):
        return (f"the Dask scheduler or its workers went away mid-run ({name}: "
                f"{str(exc)[:200] or 'no detail'}); the run is lost, start it again")
    return None


@contextlib.contextmanager
def cluster_failures() -> Iterator[None]:
    """Re-raise Dask's worker-loss and scheduler-loss errors as one :class:`WorkerLostError`."""
    try:
        yield
    except XtecError:
        raise
    except Exception as exc:
        msg = worker_loss_message(exc)
        if msg is None:
            raise
        raise WorkerLostError(msg) from exc


_DASK_LOGGERS = ("distributed", "dask", "bokeh", "tornado")


def quiet_dask_logs(verbose: int = 0) -> None:
    """Dask's loggers at WARNING (ERROR on shutdown noise) unless ``verbose``.

    ``distributed`` sets its loggers' levels from Dask's ``logging`` settings
    when it is imported, so those are set too: it need not be imported here (a
    run in this process never imports it, 0.4 s saved); worker processes read
    the level from the environment.
    """
    import dask

    level = logging.WARNING if verbose <= 0 else logging.DEBUG if verbose > 1 else logging.INFO
    name = logging.getLevelName(level).lower()
    # Worker processes: their warnings on shutdown (heartbeats to a closed
    # scheduler, cancelled tasks) are noise; the nanny, in this process, still
    # reports a worker that dies or is restarted.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "critical" if verbose <= 0 else name)
    # What ``distributed`` sets on import (the others keep the levels set below).
    dask.config.set({"logging.distributed": name, "logging.tornado": name,
                     "logging.bokeh": name if verbose > 0 else "error"})
    for logger in _DASK_LOGGERS:
        logging.getLogger(logger).setLevel(level)
    if verbose <= 0:
        # Closing a cluster logs connection errors of comms being torn down
        # ("CommClosedError") on a run that succeeded.
        for logger in ("distributed.comm", "distributed.core", "distributed.batched"):
            logging.getLogger(logger).setLevel(logging.CRITICAL)
        # The dashboard's "Host wildcard '*'" warning on every start.
        logging.getLogger("bokeh").setLevel(logging.ERROR)


def close_cluster(client, cluster, interrupted: bool = False, spare=()) -> None:
    """Close ``client`` and then ``cluster`` (either may be None).

    After an interrupt (SIGTERM/SIGINT mid-run) the closing is quiet: Dask's
    warnings about the workers it has to kill and asyncio's errors of the
    tasks the interrupted call left behind are expected, not the user's to
    act on.  A cluster the interrupt caught half-started (not assigned yet)
    is closed too, unless it is in ``spare`` (clusters that existed before).
    """
    if interrupted:
        quiet_leftover_tasks()
        dask_log = logging.getLogger("distributed")
        if dask_log.getEffectiveLevel() >= logging.WARNING:
            dask_log.setLevel(logging.CRITICAL)
    try:
        if client is not None:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()
        if interrupted:
            close_leftover_clusters(spare, kill=False)


def close_leftover_clusters(spare=(), kill: bool = True) -> None:
    """Close local Dask clusters that an interrupt caught half-started.

    A signal inside ``LocalCluster(...)`` leaves a cluster no ``with`` block
    owns; Dask's exit hook then fails on it with a traceback.  Close what can
    be closed (except those in ``spare``), kill this process's remaining
    children if ``kill``, and forget the rest.
    """
    import sys

    if "distributed" not in sys.modules:
        return
    from distributed.deploy.spec import SpecCluster

    for cluster in list(SpecCluster._instances):
        if cluster in spare:
            continue
        with contextlib.suppress(Exception):
            cluster.close(timeout=5)
        SpecCluster._instances.discard(cluster)
    if kill:
        from xtec.runtime.signals import kill_children

        kill_children()
