"""Where a job runs: in-process, a local Dask cluster, or an existing scheduler.

The pipeline itself only calls ``dask.compute``; whichever scheduler is current
(set here) does the work.  Batch clusters (dask-jobqueue) plug in here too.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dask

from xtec.config import JobqueueOptions
from xtec.errors import ParameterError
from xtec.optional import require
from xtec.runtime.schedulers import current_client, threaded

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """The scheduler a job runs on."""

    kind: str  # "threads", "local", "address", or a jobqueue kind
    client: object | None = None
    dashboard_link: str | None = None
    # In-process only: the memory (bytes) the run may use, as a worker's limit
    # bounds a worker's; None takes the memory available when the run starts.
    memory_limit: int | None = None

    def _memory_limits(self) -> list[int]:
        """Memory limit of each worker in bytes (0 where unlimited; none in-process)."""
        if self.client is None:
            return []
        info = self.client.scheduler_info()
        return [w.get("memory_limit") or 0 for w in info.get("workers", {}).values()]

    @property
    def worker_memory(self) -> int | None:
        """Total memory limit of the workers in bytes (None in-process)."""
        return int(sum(self._memory_limits())) or None

    @property
    def memory_per_worker(self) -> int | None:
        """Smallest worker memory limit in bytes (None in-process or unlimited)."""
        limits = [m for m in self._memory_limits() if m]
        return int(min(limits)) if limits else None

    @property
    def threads_per_worker(self) -> int:
        if self.client is None:
            import os

            return os.cpu_count() or 1
        info = self.client.scheduler_info()
        threads = [w.get("nthreads") or 1 for w in info.get("workers", {}).values()]
        return int(max(threads)) if threads else 1

    @property
    def n_workers(self) -> int:
        if self.client is None:
            return 1
        return len(self.client.scheduler_info().get("workers", {}))

    # -- where data lives
    def memory_budget(self) -> float:
        """Bytes the kept trajectories may take in worker memory (30% of it; in-process
        30% of ``memory_limit``, else of the memory available now)."""
        total = self.worker_memory
        if total is None and self.client is None and self.memory_limit:
            total = self.memory_limit
        if total is None:
            import psutil

            total = psutil.virtual_memory().available
        return 0.3 * total

    def persist_mode(self, nbytes: int, policy: str) -> str:
        """Where ``nbytes`` of trajectories live during EM: ``policy`` unless it is
        "auto", then worker memory if they fit the budget, else disk."""
        if policy != "auto":
            return policy
        return "memory" if nbytes < self.memory_budget() else "disk"

    def balanced_rows(self, n: int, n_chunks: int) -> int | None:
        """Rows per trajectory chunk for the EM on a Dask cluster, or None to keep the
        spatial chunks (in-process, or already at least two chunks per thread: a
        rechunk would move every trajectory between workers)."""
        if self.client is None:
            return None
        threads = sum(w.get("nthreads", 1)
                      for w in self.client.scheduler_info()["workers"].values())
        if n_chunks >= 2 * threads:
            return None
        return max(16_384, -(-n // max(1, 2 * threads)))

    def on_every_worker(self, func) -> list:
        """Submit ``func()`` once to every worker now; returns the futures (hold them,
        or the tasks are cancelled).  In-process: nothing."""
        if self.client is None:
            return []
        return [self.client.submit(func, workers=[addr], allow_other_workers=False, pure=False)
                for addr in self.client.scheduler_info()["workers"]]

    def hold_trajectories(self, traj, mode: str, scratch: Path, picked: bool = False):
        """Keep the kept trajectories (:class:`xtec.preprocess.Trajectories`) where
        ``mode`` says, for the EM's many passes: (X, index) dask arrays."""
        X, index = traj.X, traj.index
        n_kept, n_t = traj.n, int(X.shape[1])
        if not picked:
            log.info("pass 2 of 2: rescaled trajectories of the kept voxels (held in %s)", mode)
        else:
            log.info("kept trajectories picked from the first pass's candidates (held in %s)",
                     mode)
        if mode == "memory":
            X, index = dask.persist(X, index)
            wait_for(X, index)
            traj.X = X
            rows = self.balanced_rows(n_kept, len(X.chunks[0]))
            if rows:
                # EM passes are many and short: one even chunk per worker thread
                # beats the uneven spatial blocks.
                X, index = dask.persist(X.rechunk({0: rows}), index.rechunk(rows))
                wait_for(X, index)
        elif mode == "disk":
            log.info("trajectories (%.2f GB) go to scratch store %s", n_kept * n_t * 4 / 1e9,
                     scratch)
            X, index = spill_to_zarr(X, index, scratch, n_t)
        else:
            log.info("trajectories are re-read from the input every iteration")
        return X, index


def wait_for(*arrays) -> None:
    """Block until persisted arrays are in (distributed) memory, for honest timings."""
    if current_client() is None:
        return  # the local schedulers persist synchronously
    from distributed import wait

    wait(list(arrays))


def spill_to_zarr(X, index, scratch: Path, t: int):
    """Write trajectories (N, T) and their ids once to a scratch Zarr store and read
    them back lazily (dask arrays)."""
    import dask.array as da

    rows = max(1, (32 * 2**20) // (4 * t))
    # Uncompressed: read back every EM iteration, where decompression would cost
    # more than the bytes saved (measured: 4x faster reads than zstd).
    X.rechunk((rows, t)).to_zarr(str(scratch / "X"), mode="w", compressors=None)
    index.rechunk((rows,)).to_zarr(str(scratch / "index"), mode="w", compressors=None)
    return da.from_zarr(str(scratch / "X")), da.from_zarr(str(scratch / "index"))


JOBQUEUE_KINDS = ("slurm", "pbs")


def make_jobqueue_cluster(kind: str, options: JobqueueOptions):
    """A dask-jobqueue cluster (not yet scaled): SLURMCluster or PBSCluster."""
    if kind not in JOBQUEUE_KINDS:
        raise ParameterError(f"cluster must be one of {JOBQUEUE_KINDS} (got {kind!r})")
    dask_jobqueue = require("dask_jobqueue", "hpc", f"cluster={kind!r}")
    if options.jobqueue_config:
        import yaml

        try:
            with open(options.jobqueue_config) as fh:
                dask.config.update(dask.config.config, yaml.safe_load(fh) or {}, priority="new")
        except (OSError, yaml.YAMLError) as exc:
            raise ParameterError(f"cannot read the jobqueue config {options.jobqueue_config} "
                                 f"({exc})") from None
    cls = dask_jobqueue.SLURMCluster if kind == "slurm" else dask_jobqueue.PBSCluster
    kw = options.cluster_kwargs()
    from xtec.runtime.workers import allocator_environ, worker_config

    # The worker job's output file (slurm-<id>.out) is where a user looks when a job
    # fails: Dask's INFO log goes there even when the submitting CLI is quiet.  The
    # job's nanny spawns the worker with its pre-spawn environment, where a variable
    # the job exports wins over Dask's default: the allocator settings of
    # xtec.runtime.workers go there (a user's own export comes later).
    prologue = dask.config.get(f"jobqueue.{kind}.job-script-prologue", None) or []
    from xtec.runtime.kernel_cache import worker_environ as kernel_cache_environ

    spawn_env = allocator_environ(
        dask.config.get("distributed.nanny.pre-spawn-environ", None))
    kw["job_script_prologue"] = [
        "export DASK_LOGGING__DISTRIBUTED=info",
        *(f"export {k}={shlex.quote(str(v))}" for k, v in spawn_env.items()
          if k.startswith("MALLOC_")),
        *(f"export {k}={shlex.quote(v)}" for k, v in kernel_cache_environ().items()),
        *(f"export DASK_{k.upper().replace('.', '__').replace('-', '_')}={v}"
          for k, v in worker_config().items()), *prologue]
    # Any free dashboard port, as for a local cluster (8787 may be another run's on a
    # shared login node; the CLI prints the link).
    configured = dask.config.get(f"jobqueue.{kind}.scheduler-options", None) or {}
    kw["scheduler_options"] = {"dashboard_address": ":0", **configured}
    try:
        return cls(**kw)
    except ValueError as exc:  # e.g. cores/memory missing from both flags and config
        raise ParameterError(f"cannot configure the {kind} cluster: {exc}") from None


@contextlib.contextmanager
def dask_runtime(
    *,
    scheduler: str | None = None,
    scheduler_file: str | None = None,
    workers: int = 0,
    threads_per_worker: int = 1,
    memory_limit: str | int | None = "auto",
    dashboard_address: str | None = ":0",
    processes: bool = True,
    cluster: str | None = None,
    jobqueue: JobqueueOptions | None = None,
) -> Iterator[Runtime]:
    """Start (or connect to) the scheduler for one job.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``).
    scheduler_file : str, optional
        Scheduler file written by ``dask scheduler --scheduler-file`` inside an
        existing allocation (workers started with ``srun dask worker ...``).
    workers : int
        If > 0 (and no address), a LocalCluster of that many worker processes.
    memory_limit : bytes or str
        Per worker; in-process (no workers, scheduler or cluster) the run's own
        budget (bytes): candidate and kept trajectories that do not fit 30% of it
        go to scratch files, as on workers.
    cluster : 'slurm' or 'pbs', optional
        Submit ``jobqueue.jobs`` batch jobs with dask-jobqueue.
    Without any of these the job runs in-process on the threaded scheduler.
    """
    chosen = [x for x in (scheduler, scheduler_file, workers, cluster) if x]
    if len(chosen) > 1:
        raise ParameterError("give only one of scheduler, scheduler_file, workers, cluster")
    if workers < 0:
        raise ParameterError(f"workers must be >= 0 (got {workers})")
    if not chosen:
        # In-process a memory limit is the run's budget (where the kept
        # trajectories live): "auto" or 0 leaves it to the memory available.
        budget = memory_limit if isinstance(memory_limit, int) and memory_limit > 0 else None
        with threaded():
            yield Runtime("threads", memory_limit=budget)
        return
    from distributed.deploy.spec import SpecCluster

    existing = set(SpecCluster._instances)  # a caller's own clusters: never ours to close
    if scheduler or scheduler_file:
        runtime = _address_runtime(scheduler, scheduler_file)
    elif cluster:
        runtime = _jobqueue_runtime(cluster, jobqueue or JobqueueOptions(), existing)
    else:
        runtime = _local_runtime(workers, threads_per_worker, memory_limit, dashboard_address,
                                 processes, existing)
    with runtime as rt:
        yield rt


@contextlib.contextmanager
def _address_runtime(scheduler: str | None, scheduler_file: str | None) -> Iterator[Runtime]:
    """A client of a running scheduler (by address or scheduler file)."""
    from distributed import Client

    where = scheduler or scheduler_file
    try:
        client = (Client(scheduler, timeout="10s") if scheduler else
                  Client(scheduler_file=scheduler_file, timeout="10s"))
    except (OSError, ValueError) as exc:
        raise ParameterError(f"cannot reach the Dask scheduler at {where} ({exc})") from None
    try:
        yield Runtime("address", client, client.dashboard_link)
    finally:
        client.close()


@contextlib.contextmanager
def _jobqueue_runtime(cluster: str, options: JobqueueOptions, existing: set
                      ) -> Iterator[Runtime]:
    """Batch jobs through dask-jobqueue, watched so that a job that ends stops the run."""
    from distributed import Client

    from xtec.runtime.batch import watch_batch_jobs
    from xtec.runtime.workers import close_cluster

    jq = make_jobqueue_cluster(cluster, options)
    log.info("%s job script:\n%s", cluster, jq.job_script())
    jq.scale(jobs=options.jobs)
    client = None
    try:
        client = Client(jq)
        with watch_batch_jobs(jq, client, cluster):
            yield Runtime(cluster, client, client.dashboard_link)
    except BaseException as exc:  # SIGTERM/SIGINT are KeyboardInterrupts here
        close_cluster(client, jq, interrupted=isinstance(exc, KeyboardInterrupt),
                      spare=existing)
        raise
    else:
        close_cluster(client, jq)


@contextlib.contextmanager
def _local_runtime(workers: int, threads_per_worker: int, memory_limit, dashboard_address,
                   processes: bool, existing: set) -> Iterator[Runtime]:
    """A LocalCluster of ``workers`` processes, closed (all of it) when the job ends."""
    from distributed import Client, LocalCluster

    from xtec.runtime.workers import (
        check_memory_limit,
        close_cluster,
        worker_config,
        worker_environ,
    )

    memory_limit = check_memory_limit(memory_limit, threads_per_worker)  # refuse too small
    local = client = None
    try:
        # Each nanny hands its worker the configuration current when it is made.
        with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ(),
                              **worker_config()}):
            local = LocalCluster(
                n_workers=workers, threads_per_worker=threads_per_worker,
                processes=processes, memory_limit=memory_limit,
                dashboard_address=dashboard_address,
            )
        client = Client(local)
        yield Runtime("local", client, client.dashboard_link)
    except BaseException as exc:  # SIGTERM/SIGINT are KeyboardInterrupts here
        close_cluster(client, local, interrupted=isinstance(exc, KeyboardInterrupt),
                      spare=existing)
        raise
    else:
        close_cluster(client, local)
