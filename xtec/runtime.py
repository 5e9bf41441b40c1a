"""Where a job runs: in-process, a local Dask cluster, or an existing scheduler.

The pipeline itself only calls ``dask.compute``; whichever scheduler is current
(set here) does the work.  Batch clusters (dask-jobqueue) plug in here too.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import dask

from xtec.errors import ParameterError

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """The scheduler a job runs on."""

    kind: str  # "threads", "local", "address", or a jobqueue kind
    client: object | None = None
    dashboard_link: str | None = None

    @property
    def worker_memory(self) -> int | None:
        """Total memory limit of the workers in bytes (None in-process)."""
        if self.client is None:
            return None
        info = self.client.scheduler_info()
        limits = [w.get("memory_limit") or 0 for w in info.get("workers", {}).values()]
        return int(sum(limits)) or None

    @property
    def n_workers(self) -> int:
        if self.client is None:
            return 1
        return len(self.client.scheduler_info().get("workers", {}))


@contextlib.contextmanager
def dask_runtime(
    *,
    scheduler: str | None = None,
    workers: int = 0,
    threads_per_worker: int = 1,
    memory_limit: str | int | None = "auto",
    dashboard_address: str | None = ":0",
    processes: bool = True,
) -> Iterator[Runtime]:
    """Start (or connect to) the scheduler for one job.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``).
    workers : int
        If > 0 (and no address), a LocalCluster of that many worker processes.
        Otherwise the job runs in-process on the threaded scheduler.
    """
    if scheduler and workers:
        raise ParameterError("give either --scheduler or --workers, not both")
    if workers < 0:
        raise ParameterError(f"--workers must be >= 0 (got {workers})")
    if not scheduler and not workers:
        with dask.config.set(scheduler="threads"):
            yield Runtime("threads")
        return
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except OSError as exc:
            raise ParameterError(f"cannot reach the Dask scheduler at {scheduler} ({exc})") \
                from None
        try:
            yield Runtime("address", client, client.dashboard_link)
        finally:
            client.close()
        return
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=threads_per_worker, processes=processes,
        memory_limit=memory_limit, dashboard_address=dashboard_address,
    )
    client = Client(cluster)
    try:
        yield Runtime("local", client, client.dashboard_link)
    finally:
        client.close()
        cluster.close()
