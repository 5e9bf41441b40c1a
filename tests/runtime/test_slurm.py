"""Batch jobs on a real single-node SLURM (the ``slurm`` fixture, tests/start_slurm.sh):
worker jobs submitted by dask-jobqueue, a whole run under ``sbatch``, and the ends users
meet: a worker job cancelled with ``scancel``, a worker job at its walltime, the whole
run at its walltime.  The commands are those of docs/batch.md.

SLURM's shortest time limit is one minute and its controller checks limits every 30 s,
so each walltime run waits 60-90 s: both start first (``walltime_runs``) and the other
tests run meanwhile.  Their workers are frozen (SIGSTOP, as a worker stuck on a slow file
system) once the run is under way, so the wait costs no CPU and the run cannot finish
before its walltime.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from xtec.cli.main import main
from xtec.io.store import open_result
from xtec.pipeline import ClusterConfig, run_cluster

pytestmark = pytest.mark.slow
pytest.importorskip("dask_jobqueue")

REPO = Path(__file__).resolve().parents[2]
MARK = "XTEC_SLURM_TEST_RUN"  # in the environment of every process a test starts

# The recipe of docs/batch.md: one worker job of one core.
WORKER_JOB = ["--cluster", "slurm", "--jobs", "1", "--cores", "1", "--memory", "2GB"]
JOB_TOML = ('inputs = ["series.nxs"]\nout = "batch.zarr"\n'
            'workers = 1\nthreads_per_worker = 2\n')
SBATCH = ["sbatch", "--parsable", "--cpus-per-task=2", "--mem=4G", "--output=xtec-%j.out"]
BATCH_LINE = "exec xtec cluster --config job.toml"
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")


def run_env(slurm, tag: str) -> dict:
    """The environment of a test's commands: this Python's ``xtec`` first on PATH, this
    checkout importable, SLURM_CONF, and a mark that the jobs inherit (SLURM passes the
    submitting environment on)."""
    env = dict(slurm.env)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env[MARK] = tag
    return env


def run_dir(base: Path, name: str) -> Path:
    d = base / name
    d.mkdir()
    (d / "series.nxs").symlink_to(base / "series.nxs")
    return d


def one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert "Traceback" not in stderr
    return lines[0]


def worker_job_registered(d: Path, timeout: float = 180.0) -> str:
    """The id of the worker job whose output (slurm-<id>.out, dask-jobqueue's default)
    says its worker registered with the run's scheduler."""
    deadline = time.monotonic() + timeout
    while True:
        for out in d.glob("slurm-*.out"):
            if "Registered to" in out.read_text(errors="replace"):
                return out.stem.split("-", 1)[1]
        if time.monotonic() > deadline:
            break
        time.sleep(0.25)
    raise AssertionError(f"no worker job registered within {timeout:g} s in {d}")


def assert_nothing_left(slurm, tag: str, job_ids=()) -> None:
    from slurm_cluster import processes_with_env

    queued = set(slurm.queue())
    assert not queued & set(job_ids), f"jobs still queued: {queued}"
    deadline = time.monotonic() + 15
    while (left := processes_with_env(MARK, tag)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, "processes left running:\n" + "\n".join(left)


def assert_no_store(d: Path, name: str) -> None:
    assert not (d / name).exists()
    partial = d / f"{name}.partial"
    if partial.exists():  # tolerated only if it does not claim to be complete
        import zarr

        assert zarr.open_group(partial, mode="r").attrs.get("complete") is not True


@pytest.fixture(scope="module")
def work(slurm, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("slurm-runs")
    assert main(["synth", str(d / "series.nxs"), "--shape", "5,40,40",
                 "--temperatures", "8"]) == 0
    return d


@pytest.fixture(scope="module")
def reference_labels(work) -> np.ndarray:
    """The in-process run's labels (same input, default seed)."""
    run_cluster(ClusterConfig(inputs=[str(work / "series.nxs")], out=str(work / "ref.zarr")))
    return open_result(work / "ref.zarr").labels.values


class WalltimeRuns:
    """The two walltime runs, started in the background."""

    def __init__(self, slurm, work: Path):
        self.slurm = slurm
        # A worker job with a one-minute walltime under a CLI run on this machine.
        self.worker_dir = run_dir(work, "worker-walltime")
        self.worker_tag = uuid.uuid4().hex
        self.cli = subprocess.Popen(
            ["xtec", "cluster", "series.nxs", "-o", "w.zarr", *WORKER_JOB,
             "--walltime", "00:01:00"],
            cwd=self.worker_dir, env=run_env(slurm, self.worker_tag), text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # The whole run in sbatch with a one-minute walltime.
        self.batch_dir = run_dir(work, "batch-walltime")
        self.batch_tag = uuid.uuid4().hex
        (self.batch_dir / "job.toml").write_text(JOB_TOML)
        self.batch_job = subprocess.run(
            [*SBATCH, "--time=00:01:00", f"--wrap={BATCH_LINE}"], cwd=self.batch_dir,
            env=run_env(slurm, self.batch_tag), capture_output=True, text=True,
            check=True).stdout.strip()
        self.errors: list[BaseException] = []
        self.worker_job: str | None = None
        self._threads = [threading.Thread(target=self._guard, args=(f,), daemon=True)
                         for f in (self._freeze_worker_job, self._freeze_batch_workers)]
        for t in self._threads:
            t.start()

    def _guard(self, func) -> None:
        try:
            func()
        except BaseException as exc:  # reported by the test that needs it
            self.errors.append(exc)

    def _freeze_worker_job(self) -> None:
        self.worker_job = worker_job_registered(self.worker_dir)
        assert self.slurm.freeze(self.worker_job)

    def _freeze_batch_workers(self) -> None:
        """Freeze the batch run's Dask worker (not the xtec process, which must get the
        walltime's SIGTERM) once it is connected to the run's scheduler."""
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if _worker_connected(self.slurm.job_pids(self.batch_job)):
                # Registered and its nanny told (milliseconds); not 3 s as before:
                # the whole run on this small series now ends within 3 s of the
                # worker connecting, and a run that ends never meets its walltime.
                time.sleep(0.5)
                assert self.slurm.freeze(self.batch_job,
                                         keep=lambda cmd: "xtec cluster" in cmd)
                return
            time.sleep(0.25)
        raise AssertionError("the batch run's Dask worker did not connect")

    def wait(self) -> None:
        for t in self._threads:
            t.join(timeout=200)
        if self.errors:
            raise self.errors[0]


def _worker_connected(pids: list[int]) -> bool:
    """Whether a process of ``pids`` has a TCP connection to a port that another of them
    (the xtec process, where the local cluster's scheduler runs) listens on."""
    import psutil

    listening, remote = set(), {}
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections("tcp")
        except psutil.Error:
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN:
                listening.add((pid, c.laddr.port))
            elif c.status == psutil.CONN_ESTABLISHED and c.raddr:
                remote.setdefault(pid, set()).add(c.raddr.port)
    return any(port in ports for pid, ports in remote.items()
               for lpid, port in listening if lpid != pid)


@pytest.fixture(scope="module")
def walltime_runs(slurm, work):
    runs = WalltimeRuns(slurm, work)
    yield runs
    if runs.cli.poll() is None:
        runs.cli.kill()
        runs.cli.wait()


def test_worker_job_run_matches_in_process(slurm, work, walltime_runs, reference_labels):
    """`xtec cluster ... --cluster slurm`: dask-jobqueue submits the worker job, its
    worker joins, the labels are the in-process run's.  (Requests ``walltime_runs`` only
    to start them first.)"""
    d, tag = run_dir(work, "worker-job"), uuid.uuid4().hex
    proc = subprocess.run(["xtec", "cluster", "series.nxs", "-o", "slurm.zarr", *WORKER_JOB,
                           "--walltime", "00:05:00"], cwd=d, env=run_env(slurm, tag),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "wrote slurm.zarr" in proc.stdout
    np.testing.assert_array_equal(open_result(d / "slurm.zarr").labels.values,
                                  reference_labels)
    job = worker_job_registered(d, timeout=0)  # its worker ran in a SLURM job
    info = slurm.job(job)
    assert info["JobState"] == "CANCELLED"  # ended by the run when it was done
    assert info["TimeLimit"] == "00:05:00" and info["NumCPUs"] == "1"
    assert_nothing_left(slurm, tag, [job])


def test_whole_run_in_sbatch_matches_in_process(slurm, work, reference_labels):
    """The one-line batch script of docs/batch.md: `xtec cluster --config job.toml` with
    a local Dask worker of two threads inside the allocation."""
    d, tag = run_dir(work, "batch"), uuid.uuid4().hex
    (d / "job.toml").write_text(JOB_TOML)
    job = subprocess.run([*SBATCH, "--time=00:05:00", f"--wrap={BATCH_LINE}"], cwd=d,
                         env=run_env(slurm, tag), capture_output=True, text=True,
                         check=True).stdout.strip()
    # Polled here: `sbatch --wait` backs off to 32 s between its own polls.
    state = slurm.wait_job(job, ENDED, timeout=300)
    log = (d / f"xtec-{job}.out").read_text()
    assert state == "COMPLETED" and slurm.job(job)["ExitCode"] == "0:0", log
    assert "wrote batch.zarr" in log
    np.testing.assert_array_equal(open_result(d / "batch.zarr").labels.values,
                                  reference_labels)
    assert_nothing_left(slurm, tag, [job])


def test_worker_job_that_fails_at_start_ends_the_run(slurm, work):
    """A worker job whose Python is not there on the node fails at once: the run says so
    instead of waiting for a worker that never comes."""
    d, tag = run_dir(work, "failed"), uuid.uuid4().hex
    (d / "jobqueue.yaml").write_text("jobqueue:\n  slurm:\n    python: /nonexistent/python\n")
    proc = subprocess.run(["xtec", "cluster", "series.nxs", "-o", "f.zarr", *WORKER_JOB,
                           "--walltime", "00:05:00", "--jobqueue-config", "jobqueue.yaml"],
                          cwd=d, env=run_env(slurm, tag), capture_output=True, text=True,
                          timeout=300)
    [out] = d.glob("slurm-*.out")
    job = out.stem.split("-", 1)[1]
    assert "/nonexistent/python" in out.read_text()
    assert proc.returncode == 2, proc.stderr
    assert one_line(proc.stderr) == (
        f"xtec cluster: error: slurm worker job {job} ended (FAILED, reason NonZeroExitCode) "
        f"before the run finished; see its output (slurm-{job}.out by default); nothing was "
        "written")
    assert_no_store(d, "f.zarr")
    assert_nothing_left(slurm, tag, [job])


def test_scancel_of_the_worker_job_ends_the_run(slurm, work):
    d, tag = run_dir(work, "scancel"), uuid.uuid4().hex
    cli = subprocess.Popen(["xtec", "cluster", "series.nxs", "-o", "c.zarr", *WORKER_JOB,
                            "--walltime", "00:05:00"], cwd=d, env=run_env(slurm, tag),
                           text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        job = worker_job_registered(d)
        assert slurm.freeze(job)  # mid-run: its tasks cannot finish before the scancel
        slurm.command("scancel", job)
        _, stderr = cli.communicate(timeout=90)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 2, stderr
    line = one_line(stderr)
    assert line == (f"xtec cluster: error: slurm worker job {job} was cancelled (scancel) "
                    "before the run finished; nothing was written, run it again")
    assert slurm.job(job)["JobState"] == "CANCELLED"
    assert_no_store(d, "c.zarr")
    assert_nothing_left(slurm, tag, [job])


def test_worker_job_at_its_walltime_ends_the_run(slurm, walltime_runs):
    runs = walltime_runs
    _, stderr = runs.cli.communicate(timeout=200)
    runs.wait()
    job = runs.worker_job
    assert runs.cli.returncode == 2, stderr
    assert one_line(stderr) == (
        f"xtec cluster: error: slurm worker job {job} reached its walltime (1:00) before "
        "the run finished; nothing was written, run it again with a longer --walltime")
    info = slurm.job(job)
    assert info["JobState"] == "TIMEOUT" and info["TimeLimit"] == "00:01:00"
    assert_no_store(runs.worker_dir, "w.zarr")
    assert_nothing_left(slurm, runs.worker_tag, [job])


def test_whole_run_at_its_walltime_stops_cleanly_on_sigterm(slurm, walltime_runs):
    """At the walltime SLURM sends SIGTERM (SIGKILL KillWait = 30 s later): xtec stops
    within that, exit status 143 and one line, no store, nothing left running."""
    runs = walltime_runs
    job = runs.batch_job
    state = slurm.wait_job(job, ENDED, timeout=200)
    runs.wait()
    info = slurm.job(job)
    log = (runs.batch_dir / f"xtec-{job}.out").read_text()
    assert state == "TIMEOUT", log
    # The job's output file also holds slurmstepd's notice of the time limit and
    # xtec's stdout (the dashboard link).
    ours = "\n".join(ln for ln in log.splitlines()
                     if not ln.startswith(("slurmstepd", "Dask dashboard:")))
    assert info["ExitCode"] == "143:0", log  # xtec's exit status, not killed by a signal
    assert re.fullmatch(r"xtec cluster: .*SIGTERM.*", one_line(ours)), log
    assert_no_store(runs.batch_dir, "batch.zarr")
    assert_nothing_left(slurm, runs.batch_tag, [job])
    assert slurm.wait_queue_empty(timeout=30) == []


def test_queue_answers_are_read_carefully(slurm, monkeypatch):
    """A job the controller no longer knows has ended; a queue that cannot be asked
    (squeue missing, controller down) ends nothing."""
    from xtec.runtime.batch import ended_job

    monkeypatch.setenv("SLURM_CONF", slurm.env["SLURM_CONF"])
    assert ended_job("slurm", ["999999"]) == (
        "slurm worker job 999999 left the queue before the run finished (cancelled or "
        "ended); nothing was written, run it again")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert ended_job("slurm", ["999999"]) is None


def test_nothing_is_left_in_the_queue(slurm, walltime_runs):
    """Last: every job of this module has ended (the walltime runs included)."""
    walltime_runs.wait()
    assert slurm.wait_queue_empty(timeout=90) == []
