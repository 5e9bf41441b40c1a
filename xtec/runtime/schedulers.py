"""Dask's threaded scheduler for a run in this process, without ``distributed``.

Given a scheduler by name (``"threads"``) or none at all, every
``dask.compute`` looks for a distributed Client first, and looking imports
``distributed``: 0.43 s of a 6.2 s in-process run at 1.5 GB on this project's
2-core VM, in a process that starts no cluster.  A Client, a future or a
worker exists only once ``distributed`` is imported, so the questions are
answered here from what is already imported, and the threaded scheduler is
named by its function, which dask takes as it is.
"""

from __future__ import annotations

import contextlib
import sys

import dask
import dask.threaded


def distributed_loaded() -> bool:
    """Whether ``distributed`` is imported (no Client or future can exist before)."""
    return "distributed" in sys.modules


def current_client():
    """The distributed Client this process or task would compute on, or None."""
    if not distributed_loaded():
        return None
    from distributed import get_client

    try:
        return get_client()
    except ValueError:
        return None


def threaded() -> contextlib.AbstractContextManager:
    """A context in which Dask's threaded scheduler is current (what
    ``dask.config.set(scheduler="threads")`` does, without the import)."""
    return dask.config.set(scheduler=dask.threaded.get)


def threaded_unless_configured() -> contextlib.AbstractContextManager:
    """:func:`threaded` where Dask would use its threaded scheduler anyway: no
    scheduler configured (or the threaded one by name) and no Client possible;
    else nothing changes (a user's Client or configured scheduler keeps its place)."""
    configured = dask.config.get("scheduler", None)
    if distributed_loaded() or configured not in (None, "threads", "threading"):
        return contextlib.nullcontext()
    return threaded()


def scheduler_of(runtime) -> contextlib.AbstractContextManager:
    """The scheduler context of a run given ``runtime`` (a
    :class:`~xtec.runtime.clusters.Runtime` or None): none is the threaded
    scheduler, as :func:`threaded_unless_configured` sets it; a runtime has set
    its own."""
    return threaded_unless_configured() if runtime is None else contextlib.nullcontext()


def scheduler_function(scheduler=None, like=None):
    """The get function Dask would run a graph of collections like ``like``
    with, for ``scheduler`` (a name, a get function, a Client, or None: the
    current one), without importing ``distributed`` where no Client can exist
    (``dask.base.get_scheduler`` imports it for a name or for none configured)."""
    if isinstance(scheduler, str) and scheduler.lower() in dask.base.named_schedulers:
        return dask.base.named_schedulers[scheduler.lower()]
    if scheduler is None and not distributed_loaded():
        configured = dask.config.get("scheduler", None)
        if configured is None:
            return like.__dask_scheduler__ if like is not None else dask.threaded.get
        return scheduler_function(configured, like)
    return dask.base.get_scheduler(scheduler=scheduler,
                                   collections=None if like is None else [like])
