"""Worker jobs of a batch cluster (dask-jobqueue) as the queue sees them.

A worker job that leaves the queue mid-run (``scancel``, its walltime, a node
failure) takes its Dask workers with it, and Dask then waits for workers that
never come.  :func:`watch_batch_jobs` asks the queue about the run's worker
jobs every few seconds; when one has ended it cancels the run's Dask tasks, so
the run stops, and raises :class:`BatchJobLost` with one line saying which
job ended and why (the queue's own words: ``TIMEOUT``, ``CANCELLED``, ...).
"""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
import threading
import time
from collections.abc import Iterator

from xtec.errors import XtecError

log = logging.getLogger(__name__)

#: Seconds between two queue checks (one ``squeue`` / ``qstat`` call each) while a
#: worker is missing (jobs pending, or a worker gone) ...
JOB_POLL_INTERVAL = 5.0
#: ... and while every worker that has joined is still there.
HEALTHY_POLL_INTERVAL = 60.0

# SLURM job states that mean the job is over (squeue --states=all shows them
# until the controller purges the job, MinJobAge seconds later).
_SLURM_ENDED = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
                "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT", "SPECIAL_EXIT", "REVOKED"}


class BatchJobLost(XtecError):
    """A worker job ended (cancelled, walltime, failed) before the run finished."""


def slurm_job_states(job_ids: list[str]) -> dict[str, tuple[str, str, str]] | None:
    """``{job id: (state, reason, time limit)}`` from ``squeue``.

    A job missing from the answer is no longer known to the controller.
    Returns None when the queue could not be asked (``squeue`` failed for
    another reason than an unknown job id): the caller asks again later.
    """
    if not job_ids:
        return {}
    cmd = ["squeue", "--noheader", "--states=all", "--format=%i|%T|%r|%l",
           "--jobs=" + ",".join(job_ids)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("cannot ask the queue about the worker jobs (%s)", exc)
        return None
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:
            return {}  # every one of them has been purged
        log.warning("squeue failed: %s", proc.stderr.strip())
        return None
    states = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4:
            states[parts[0]] = (parts[1], parts[2], parts[3])
    return states


def pbs_job_states(job_ids: list[str]) -> dict[str, tuple[str, str, str]] | None:
    """``{job id: (job_state letter, "", walltime)}`` from ``qstat -f``; a job that qstat no
    longer knows (or reports finished) is left out.  None when qstat could not be asked."""
    states = {}
    for job_id in job_ids:
        try:
            proc = subprocess.run(["qstat", "-f", job_id], capture_output=True, text=True,
                                  timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("cannot ask the queue about the worker jobs (%s)", exc)
            return None
        if proc.returncode != 0:
            if re.search(r"Unknown Job Id|has finished", proc.stderr, re.IGNORECASE):
                continue
            log.warning("qstat failed: %s", proc.stderr.strip())
            return None
        state = re.search(r"job_state\s*=\s*(\w)", proc.stdout)
        walltime = re.search(r"Resource_List\.walltime\s*=\s*(\S+)", proc.stdout)
        states[job_id] = (state.group(1) if state else "?", "",
                          walltime.group(1) if walltime else "")
    return states


def ended_job(kind: str, job_ids: list[str]) -> str | None:
    """One line about the first of ``job_ids`` that has ended, or None (all queued or
    running, or the queue could not be asked)."""
    states = slurm_job_states(job_ids) if kind == "slurm" else pbs_job_states(job_ids)
    if states is None:
        return None
    for job_id in job_ids:
        if job_id not in states:
            return (f"{kind} worker job {job_id} left the queue before the run finished "
                    "(cancelled or ended); nothing was written, run it again")
        state, reason, limit = states[job_id]
        if kind == "pbs":
            if state in ("C", "F"):  # Torque: completed; PBS Pro: finished
                return (f"pbs worker job {job_id} ended before the run finished; nothing was "
                        "written, run it again (with a longer --walltime if it ran out)")
            continue
        if state not in _SLURM_ENDED:
            continue
        if state == "TIMEOUT":
            return (f"slurm worker job {job_id} reached its walltime ({limit}) before the run "
                    "finished; nothing was written, run it again with a longer --walltime")
        if state == "CANCELLED":
            return (f"slurm worker job {job_id} was cancelled (scancel) before the run "
                    "finished; nothing was written, run it again")
        why = f", reason {reason}" if reason and reason != "None" else ""
        return (f"slurm worker job {job_id} ended ({state}{why}) before the run finished; "
                f"see its output (slurm-{job_id}.out by default); nothing was written")
    return None


def _cancel_all(client, message: str) -> None:
    """Cancel every future the client holds, newest first, one message per future.

    Cancelling a future also cancels its dependents, and Dask's scheduler asserts (a
    logged traceback, the client's stream broken) on a dependent that no client wants:
    an intermediate task of a computation still running on futures held here.  Newest
    first, the running computation's own outputs go before the futures they read, and
    releasing them forgets those intermediate tasks (each message is handled in order).
    """
    from distributed import Future

    for key in reversed(list(client.futures)):
        client.cancel([Future(key, client)], reason="batch-job-lost", msg=message)


@contextlib.contextmanager
def watch_batch_jobs(cluster, client, kind: str,
                     interval: float = JOB_POLL_INTERVAL) -> Iterator[None]:
    """Stop the run in the block with :class:`BatchJobLost` if a worker job ends.

    ``cluster`` is the dask-jobqueue cluster (its ``workers`` hold the jobs and
    their ids, its ``scheduler`` the workers that joined), ``client`` the run's
    Dask client.  The queue is asked every ``interval`` seconds while a worker
    is missing, every minute while all are there.  While a lost job is known,
    every task the client has is cancelled (a new ``compute`` too), so the
    block's computation raises; that exception is replaced by the job's line.
    """
    stop = threading.Event()
    lost: list[str] = []

    def job_ids() -> list[str]:
        return [str(j.job_id) for j in list(cluster.workers.values())
                if getattr(j, "job_id", None)]

    def n_workers() -> int | None:
        # The scheduler runs in this process: reading its table asks nobody.
        workers = getattr(getattr(cluster, "scheduler", None), "workers", None)
        return len(workers) if workers is not None else None

    def poll() -> None:
        most, last = 0, time.monotonic()
        while not stop.wait(1.0):
            n = n_workers()
            most = max(most, n or 0)
            missing = n is None or n == 0 or n < most
            if time.monotonic() - last < (interval if missing else HEALTHY_POLL_INTERVAL):
                continue
            last = time.monotonic()
            ids = job_ids()
            message = ended_job(kind, ids) if ids else None
            if message:
                log.info("%s", message)  # the run's error says it to the user
                lost.append(message)
                break
        while lost and not stop.is_set():
            with contextlib.suppress(Exception):  # the client may be closing
                _cancel_all(client, lost[0])
            stop.wait(0.5)

    thread = threading.Thread(target=poll, name="xtec-batch-jobs", daemon=True)
    thread.start()
    try:
        yield
    except Exception:  # not KeyboardInterrupt: a stop asked for stays one
        if lost:
            raise BatchJobLost(lost[0]) from None
        raise
    finally:
        stop.set()
        thread.join()
