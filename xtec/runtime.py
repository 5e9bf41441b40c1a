"""Where a job runs: in-process, a local Dask cluster, or an existing scheduler.

The pipeline itself only calls ``dask.compute``; whichever scheduler is current
(set here) does the work.  Batch clusters (dask-jobqueue) plug in here too.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

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
    def memory_per_worker(self) -> int | None:
        """Smallest worker memory limit in bytes (None in-process or unlimited)."""
        if self.client is None:
            return None
        info = self.client.scheduler_info()
        limits = [w.get("memory_limit") or 0 for w in info.get("workers", {}).values()]
        limits = [m for m in limits if m]
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


JOBQUEUE_KINDS = ("slurm", "pbs")


@dataclass
class JobqueueOptions:
    """Batch-job settings for dask-jobqueue (unset values come from its config file)."""

    cores: int | None = None
    memory: str | None = None
    processes: int | None = None
    walltime: str | None = None
    queue: str | None = None
    account: str | None = None
    jobs: int = 1
    config_file: str | None = None
    job_extra: list[str] | None = None

    def cluster_kwargs(self) -> dict:
        kw = {k: getattr(self, k) for k in ("cores", "memory", "processes", "walltime", "queue",
                                            "account") if getattr(self, k) is not None}
        if self.job_extra:
            kw["job_extra_directives"] = list(self.job_extra)
        return kw


def make_jobqueue_cluster(kind: str, options: JobqueueOptions):
    """A dask-jobqueue cluster (not yet scaled): SLURMCluster or PBSCluster."""
    if kind not in JOBQUEUE_KINDS:
        raise ParameterError(f"--cluster must be one of {JOBQUEUE_KINDS} (got {kind!r})")
    try:
        import dask_jobqueue
    except ImportError:
        raise ParameterError("--cluster needs dask-jobqueue: pip install 'xtec[hpc]'") from None
    if options.config_file:
        import yaml

        try:
            with open(options.config_file) as fh:
                dask.config.update(dask.config.config, yaml.safe_load(fh) or {}, priority="new")
        except (OSError, yaml.YAMLError) as exc:
            raise ParameterError(f"cannot read the jobqueue config {options.config_file} "
                                 f"({exc})") from None
    cls = dask_jobqueue.SLURMCluster if kind == "slurm" else dask_jobqueue.PBSCluster
    kw = options.cluster_kwargs()
    # The worker job's output file (slurm-<id>.out) is where a user looks when a job
    # fails: Dask's INFO log goes there even when the submitting CLI is quiet.
    prologue = dask.config.get(f"jobqueue.{kind}.job-script-prologue", None) or []
    kw["job_script_prologue"] = ["export DASK_LOGGING__DISTRIBUTED=info", *prologue]
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
    cluster : 'slurm' or 'pbs', optional
        Submit ``jobqueue.jobs`` batch jobs with dask-jobqueue.
    Without any of these the job runs in-process on the threaded scheduler.
    """
    chosen = [x for x in (scheduler, scheduler_file, workers, cluster) if x]
    if len(chosen) > 1:
        raise ParameterError("give only one of --scheduler, --scheduler-file, --workers, "
                             "--cluster")
    if workers < 0:
        raise ParameterError(f"--workers must be >= 0 (got {workers})")
    if not chosen:
        with dask.config.set(scheduler="threads"):
            yield Runtime("threads")
        return
    from distributed import Client, LocalCluster

    if scheduler or scheduler_file:
        where = scheduler or scheduler_file
        try:
            client = (Client(scheduler, timeout="10s") if scheduler else
                      Client(scheduler_file=scheduler_file, timeout="10s"))
        except (OSError, ValueError) as exc:
            raise ParameterError(f"cannot reach the Dask scheduler at {where} ({exc})") \
                from None
        try:
            yield Runtime("address", client, client.dashboard_link)
        finally:
            client.close()
        return
    if cluster:
        options = jobqueue or JobqueueOptions()
        jq = make_jobqueue_cluster(cluster, options)
        log.info("%s job script:\n%s", cluster, jq.job_script())
        jq.scale(jobs=options.jobs)
        client = Client(jq)
        try:
            from xtec.batch import watch_batch_jobs

            with watch_batch_jobs(jq, client, cluster):  # a job that ends stops the run
                yield Runtime(cluster, client, client.dashboard_link)
        finally:
            client.close()
            jq.close()
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
