"""Fault injection: concurrent runs, kills, signals, lost workers, damaged and hostile input.

Every row of issue 12's table (D1-D3, S1-S2, T1-T6, T8, H1-H2, U1-U2) with real
processes, real signals, a real LocalCluster and real files: no store marked
complete that a run did not finish, no silent wrong result, exit 2 (or 130 /
143 on signals) with one line, no traceback, nothing left behind after a
clean stop, no hang.  The worker-loss guarantee (same labels after a worker
is SIGKILLed in each stage) is here too.
"""

from __future__ import annotations

import glob
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import assert_one_line_error, run

from xtec.datasets import write_nxrefine, write_xtec
from xtec.errors import InputError, ParameterError
from xtec.io.store import open_result

ROOT = Path(__file__).resolve().parents[1]




def leftovers(out: Path) -> list[str]:
    """Everything beside a store that belongs to a run (lock, private names)."""
    return sorted(p.name for p in out.parent.glob(out.name + ".*"))


def spawn(*argv, cwd=None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "xtec.cli.main", *map(str, argv)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended first: {proc.communicate()}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.02)


def read_until(proc: subprocess.Popen, text: str) -> list[str]:
    """stderr lines up to the first containing ``text`` (the stage messages)."""
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"{text!r} never appeared: {''.join(lines)}")


@pytest.fixture()
def tiny(small_series, tmp_path):
    return write_xtec(small_series, tmp_path / "tiny.nxs", chunks=(8, 4, 16, 16))


# -- D1, U1: two runs on one output; Dask's chatter ------------------------------------


@pytest.mark.slow
def test_second_run_on_the_same_output_fails_at_once_naming_the_holder(tiny, tmp_path,
                                                                        capsys):
    out = tmp_path / "r.zarr"
    a = spawn("cluster", tiny, "-o", out, "-k", "3", "--overwrite", "--workers", "1",
              "--no-progress")
    lock = out.with_name("r.zarr.lock")
    wait_for(lock.exists, a)
    os.kill(a.pid, signal.SIGSTOP)  # hold A mid-run while B tries
    try:
        tick = time.monotonic()
        code, _, err = run(capsys, "cluster", tiny, "-o", out, "-k", "2", "--overwrite")
        assert time.monotonic() - tick < 30
    finally:
        os.kill(a.pid, signal.SIGCONT)
    assert_one_line_error(code, err, "in use by another xtec run", f"pid {a.pid}")
    stdout, stderr = a.communicate(timeout=300)
    assert a.returncode == 0, stderr
    ds = open_result(out)  # A's store, whole: provenance and every variable
    assert ds.attrs["k"] == 3 and ds.attrs["source_files"] and ds.labels.shape
    assert leftovers(out) == []
    # U1: no Dask INFO lines, no shutdown tracebacks without -v.
    assert "INFO" not in stderr and "Traceback" not in stderr, stderr
    assert "CommClosedError" not in stderr


# -- D2, S2, T6, H1: job files and options checked against the config's types ----------


@pytest.mark.parametrize("body, message", [
    ('overwrite = "no"', "overwrite must be true or false"),
    ('overwrite = "false"', "overwrite must be true or false"),
    ("k = 4.7", "k must be a positive integer"),
    ('k = "4"', "k must be a positive integer"),
    ('workers = "two"', "workers must be an integer"),
    ('seed = "x"', "seed must be an integer"),
    ('tol = "abc"', "tol must be a number"),
    ("inputs = 5", "inputs must be a list of strings"),
    ("out = 3", "out must be a path"),
    ("[chunks]\nl = 2", "'chunks' is a table"),
    ("memory_limit = 12", "is too small"),
    ("memory_limit = true", "memory_limit must be a size"),
    ("max_iter = 0", "max_iter must be an integer >= 1"),
    ("qh = [1, 2, 3]", "qh must be MIN:MAX"),
    ("no_such_option = 1", "unknown option 'no_such_option'"),
    ('k = 3\n[cluster]\nseed = 1', "sit beside a [cluster] table"),
])
def test_job_file_values_are_checked(tmp_path, capsys, tiny, body, message):
    out = tmp_path / "r.zarr"
    job = tmp_path / "job.toml"
    base = {"inputs": f'inputs = ["{tiny}"]', "out": f'out = "{out}"'}
    if body.startswith("k = 3\n[cluster]"):
        base = {}
    head = [line for key, line in base.items() if not body.startswith(key + " ")]
    job.write_text("\n".join(head + [body]) + "\n")
    code, _, err = run(capsys, "cluster", "--config", job)
    assert_one_line_error(code, err, message)
    assert not out.exists() and leftovers(out) == []


def test_binary_job_file_and_overwrite_no_keeps_the_result(tmp_path, capsys, tiny):
    job = tmp_path / "job.toml"
    job.write_bytes(bytes(range(256)) * 4)
    code, _, err = run(capsys, "cluster", tiny, "-o", tmp_path / "r.zarr", "--config", job)
    assert_one_line_error(code, err, "is not a TOML text file")
    # D2: a result that exists stays when the job file says overwrite = "no".
    out = tmp_path / "kept.zarr"
    assert run(capsys, "cluster", tiny, "-o", out, "-k", "2")[0] == 0
    job.write_text(f'inputs = ["{tiny}"]\nout = "{out}"\nk = 3\noverwrite = "no"\n')
    code, _, err = run(capsys, "cluster", "--config", job)
    assert_one_line_error(code, err, "overwrite must be true or false")
    assert open_result(out).attrs["k"] == 2


@pytest.mark.parametrize("argv, message", [
    (["--seed=-1"], "seed must be an integer between 0 and"),
    (["--threshold=-5"], "threshold must be one of"),
    (["--tol=0"], "tol must be a number > 0"),
    (["--memory-limit", "lots"], "memory_limit must be a size"),
    (["--workers", "1", "--memory-limit", "100MB"], "needs at least"),
    (["--workers", "1", "--memory-limit", "10MB"], "needs at least"),
    (["--chunks", "0,4,4"], "chunks must be three positive integers"),
    (["--qh=a:b"], "qh must be MIN:MAX"),
])
def test_numeric_options_are_checked_where_parsed(tmp_path, capsys, tiny, argv, message):
    out = tmp_path / "r.zarr"
    tick = time.monotonic()
    code, _, err = run(capsys, "cluster", tiny, "-o", out, *argv)
    assert_one_line_error(code, err, message)
    assert time.monotonic() - tick < 30  # refused up front, no worker started
    assert not out.exists()


def test_library_callers_get_the_same_messages(tiny, tmp_path):
    from xtec.pipeline import ClusterConfig, run_cluster
    from xtec.runtime.clusters import dask_runtime

    with pytest.raises(ParameterError, match="k must be a positive integer"):
        run_cluster(ClusterConfig(inputs=[str(tiny)], out=str(tmp_path / "r.zarr"), k=4.7))
    with pytest.raises(ParameterError, match="seed must be an integer between 0"):
        ClusterConfig(inputs=[str(tiny)], out="r.zarr", seed=-1).validate()
    with pytest.raises(ParameterError, match="needs at least"):
        with dask_runtime(workers=1, memory_limit="100MB"):
            pass
    # Every field of the config is an option of the CLI and of the job file.
    from xtec.cli.main import build_parser
    from xtec.config import cluster_keys, runtime_keys

    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices["cluster"]
    dests = {a.dest for a in sub._actions}
    assert set(cluster_keys()) | set(runtime_keys()) <= dests


# -- D3 and complete stores that are not: overwrite by renames --------------------------


@pytest.mark.slow
def test_kill_during_overwrite_leaves_the_old_store(tiny, tmp_path, capsys):
    out = tmp_path / "r.zarr"
    assert run(capsys, "cluster", tiny, "-o", out, "-k", "2")[0] == 0
    proc = spawn("cluster", tiny, "-o", out, "-k", "3", "--overwrite", "--progress")
    read_until(proc, "writing")
    time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=60)
    assert open_result(out).attrs["k"] in (2, 3)  # whole, old or new, never half
    # The next run on the path tidies what the killed one left.
    assert run(capsys, "cluster", tiny, "-o", out, "-k", "3", "--overwrite")[0] == 0
    assert open_result(out).attrs["k"] == 3
    assert leftovers(out) == []


def test_store_set_aside_by_a_killed_overwrite_is_restored(tiny, tmp_path, capsys):
    """Where directories cannot be swapped atomically the old store waits under a
    private name: a process dying right there (between the two renames) loses
    nothing, the next claim puts it back."""
    out = tmp_path / "r.zarr"
    assert run(capsys, "cluster", tiny, "-o", out, "-k", "2")[0] == 0
    script = ("import os, sys\nfrom xtec.io.output import claim_output\n"
              f"with claim_output({str(out)!r}) as c:\n"
              "    os.replace(c.path, c.aside)\n"
              "    os._exit(9)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=120)
    assert proc.returncode == 9 and not out.exists()
    from xtec.io.output import claim_output

    with claim_output(out):
        pass
    assert open_result(out).attrs["k"] == 2 and leftovers(out) == []


def test_overwrite_swaps_in_one_step(tiny, tmp_path, capsys):
    from xtec.io.output import claim_output, replace_store

    out = tmp_path / "r.zarr"
    assert run(capsys, "cluster", tiny, "-o", out, "-k", "2")[0] == 0
    with claim_output(out) as claim:
        import shutil

        shutil.copytree(out, claim.partial)
        (claim.partial / "marker").write_text("new")
        replace_store(claim, claim.partial)
        assert (out / "marker").exists() and not claim.partial.exists()
    assert leftovers(out) == []


def test_complete_store_whose_contents_do_not_check_out_is_refused(tiny, tmp_path, capsys):
    import shutil

    import zarr

    out = tmp_path / "r.zarr"
    assert run(capsys, "cluster", tiny, "-o", out, "-k", "3")[0] == 0
    broken = tmp_path / "b.zarr"
    shutil.copytree(out, broken)
    shutil.rmtree(broken / "labels")  # what two runs sharing one .partial left
    with pytest.raises(InputError, match="lacks labels"):
        open_result(broken)
    code, _, err = run(capsys, "report", broken)
    assert_one_line_error(code, err, "lacks labels")
    shutil.rmtree(broken)
    shutil.copytree(out, broken)
    g = zarr.open_group(broken, mode="r+")
    g.attrs.pop("versions"), g.attrs.pop("source_files")  # no provenance
    with pytest.raises(InputError, match="lacks attribute 'source_files'"):
        open_result(broken)


# -- S1, T1, T2, T4, U2: damaged and hostile input --------------------------------------


def test_missing_source_of_a_virtual_dataset_is_named(small_series, tmp_path, capsys):
    paths = write_nxrefine(small_series, tmp_path / "nxr")
    parent = paths[-1]
    lost = sorted((tmp_path / "nxr").glob("*/transform.nxs"))[3]
    lost.unlink()
    for cmd in (["info", parent], ["cluster", parent, "-o", tmp_path / "r.zarr"]):
        code, _, err = run(capsys, *cmd)
        assert_one_line_error(code, err, str(lost.resolve()), "does not exist")
    assert not (tmp_path / "r.zarr").exists()


def _corrupt_one_chunk(path: Path) -> tuple[int, ...]:
    with h5py.File(path, "r") as f:
        info = f["entry/data/data"].id.get_chunk_info(2)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 3)
        fh.write(b"\x00garbage\xff" * 8)
    return info.chunk_offset


@pytest.mark.parametrize("workers", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_damaged_chunk_is_one_line_naming_file_dataset_and_chunk(tiny, tmp_path, capsys,
                                                                  workers):
    origin = _corrupt_one_chunk(tiny)
    out = tmp_path / "r.zarr"
    code, _, err = run(capsys, "cluster", tiny, "-o", out, "--workers", workers,
                       "--no-progress")
    assert_one_line_error(code, err, str(tiny), "/entry/data/data",
                          f"chunk at {tuple(origin)}", "damaged")
    assert not out.exists() and leftovers(out) == []


def test_infinite_intensity_is_dropped_and_reported(small_series, tmp_path, capsys):
    bad = small_series.intensity.copy()
    bad[2, 3, 10, 10] = np.inf
    bad[5, 1, 4, 4] = -np.inf
    f = write_xtec(replace(small_series, intensity=bad), tmp_path / "inf.nxs")
    out = tmp_path / "r.zarr"
    code, stdout, err = run(capsys, "cluster", f, "-o", out, "-k", "3", "--threshold", "kl")
    assert code == 0, err
    assert "2 voxels with NaN or infinite intensities were dropped" in stdout
    mask = open_result(out).mask.values
    assert not mask[3, 10, 10] and not mask[1, 4, 4]


def test_text_axis_is_one_line(tiny, tmp_path, capsys):
    with h5py.File(tiny, "r+") as f:
        n = f["entry/data/Ql"].shape[0]
        del f["entry/data/Ql"]
        f["entry/data/Ql"] = np.array([f"l{i}" for i in range(n)], dtype=h5py.string_dtype())
    code, _, err = run(capsys, "cluster", tiny, "-o", tmp_path / "r.zarr")
    assert_one_line_error(code, err, "axis 'Ql'", "does not hold numbers")


def test_tiny_chunks_are_corrected_with_a_warning(tiny, tmp_path, capsys, caplog):
    out = tmp_path / "r.zarr"
    with caplog.at_level(logging.WARNING, logger="xtec"):
        code, _, err = run(capsys, "cluster", tiny, "-o", out, "-k", "3", "--chunks", "1,1,1")
    assert code == 0, err
    assert "chunks=1,1,1 would make 40,931 chunks" in caplog.text and "instead" in caplog.text
    ref = tmp_path / "ref.zarr"
    assert run(capsys, "cluster", tiny, "-o", ref, "-k", "3")[0] == 0
    np.testing.assert_array_equal(open_result(out).labels.values, open_result(ref).labels.values)


# -- H2, T3: signals --------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_with_workers_stops_cleanly(tiny, tmp_path):
    import psutil

    out = tmp_path / "r.zarr"
    proc = spawn("cluster", tiny, "-o", out, "--workers", "1", "--persist", "disk",
                 "--no-progress")
    wait_for(lambda: glob.glob(str(out) + ".scratch-*"), proc)
    children = psutil.Process(proc.pid).children(recursive=True)
    tick = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - tick < 15
    assert_one_line_error(proc.returncode, err, "stopped by SIGTERM", status=143)
    assert not out.exists() and leftovers(out) == []
    gone, alive = psutil.wait_procs(children, timeout=5)
    assert not alive  # the nanny and worker went with it


@pytest.mark.slow
def test_sigint_while_the_em_kernels_load(tiny, tmp_path):
    out = tmp_path / "r.zarr"
    proc = spawn("cluster", tiny, "-o", out, "--progress")
    read_until(proc, "EM: K=")  # in-process: the kernels load now
    tick = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - tick < 15
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "SystemError" not in err
    assert err.strip().splitlines()[-1].startswith("xtec cluster: interrupted by SIGINT")
    assert not out.exists() and leftovers(out) == []


def _catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (Linux: SigCgt in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(ln.split()[1] for ln in status.splitlines() if ln.startswith("SigCgt:"))
    return bool(int(mask, 16) >> (sig - 1) & 1)


def test_entry_module_is_light():
    """The ``xtec`` console script imports ``xtec.cli.main`` and calls ``main()``, which
    installs the signal handlers first: neither import may pull in xarray or NumPy
    (about a second), or a signal in that second ends in a traceback."""
    code = ("import sys, xtec.cli.main; heavy = {'numpy', 'xarray', 'dask'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)))


@pytest.mark.parametrize("module", ["xtec.io.result", "xtec.io.store", "xtec.results.report"])
def test_result_modules_import_first(module):
    """``from xtec.io.result import ...`` as a program's first line: xarray's
    import registers the accessor, which must not need the half-imported module."""
    code = f"import {module}, xarray; assert hasattr(xarray.Dataset, 'xtec')"
    subprocess.run([sys.executable, "-c", code], check=True,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_the_command_starts(tiny, tmp_path, sig):
    """SIGINT/SIGTERM about 0.2 s after `xtec cluster` starts (while it imports
    xarray and Dask): one line and 130/143, no traceback, nothing written."""
    out = tmp_path / "r.zarr"
    script = Path(sys.executable).with_name("xtec")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "xtec.cli.main"]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.monotonic()
    proc = subprocess.Popen([*argv, "cluster", str(tiny), "-o", str(out), "--workers", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # Python's own start-up (before any xtec code) cannot be helped: wait for the
    # handlers on a slow machine, else signal at 0.2 s.
    wait_for(lambda: _catches(proc.pid, signal.SIGTERM), proc, timeout=30)
    time.sleep(max(0.0, 0.2 - (time.monotonic() - start)))
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    verb = "interrupted" if sig == signal.SIGINT else "stopped"
    assert_one_line_error(proc.returncode, err, f"{verb} by {signal.Signals(sig).name}",
                          status=128 + sig)
    assert not out.exists() and leftovers(out) == []


def test_only_dask_leftover_task_errors_are_dropped_after_an_interrupt():
    """What the filter of an interrupted shutdown drops: asyncio's "never retrieved"
    records of Dask's own exceptions, nothing else."""
    from distributed.client import AllExit

    from xtec.runtime.signals import _LEFTOVER_FILTER

    def record(msg, exc):
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, msg, None,
                                 (type(exc), exc, None) if exc else None)

    assert not _LEFTOVER_FILTER.filter(record("Task exception was never retrieved", AllExit()))
    assert _LEFTOVER_FILTER.filter(record("Task exception was never retrieved", ValueError()))
    assert _LEFTOVER_FILTER.filter(record("Exception in callback", AllExit()))
    assert _LEFTOVER_FILTER.filter(record("Task exception was never retrieved", None))


def test_interrupt_wrapped_by_a_library_is_still_an_interrupt(capsys):
    """numba turns a KeyboardInterrupt during its cache load into SystemError (T3)."""
    from xtec.cli.main import _exit_status
    from xtec.runtime.signals import Interrupted, interruption

    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise SystemError("<function lloyd_step> returned a result with an error set") \
                from exc
    except SystemError as exc:
        wrapped = exc
    assert isinstance(interruption(wrapped), Interrupted)
    assert _exit_status(wrapped, "cluster") == 130
    assert _exit_status(Interrupted(signal.SIGTERM), "cluster") == 143
    assert "stopped by SIGTERM" in capsys.readouterr().err


class _SignalsWhileFinalised:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        sum(range(10_000))  # Python code, so the handler runs in here


def _signal_in_weakref_callback():
    class Target:
        pass

    weakref.finalize(Target(), lambda: (os.kill(os.getpid(), signal.SIGTERM),
                                        sum(range(10_000))))


@pytest.mark.parametrize("finaliser", [_SignalsWhileFinalised, _signal_in_weakref_callback],
                         ids=["__del__", "weakref"])
def test_signal_inside_a_finaliser_still_stops_the_run(finaliser, capfd):
    """A SIGTERM raised inside a finaliser is dropped by Python ("Exception
    ignored in ..."; CI saw it in distributed's ``Future.__del__``): it must
    still stop the block, and print nothing."""
    from xtec.runtime.signals import Interrupted, stop_on_signals

    with pytest.raises(Interrupted) as info:
        with stop_on_signals(grace=60):
            finaliser()
            for _ in range(500):  # one second, if the interrupt were lost
                time.sleep(0.002)
    assert info.value.signum == signal.SIGTERM
    assert "Exception ignored" not in capfd.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


# -- T8 and the worker-loss guarantee: a real LocalCluster ------------------------------


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0",
                           memory_limit="2GB")
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


def _die():
    os._exit(1)


@pytest.mark.slow
def test_repeated_worker_loss_is_one_line(client, capsys):
    from xtec.cli.main import _exit_status
    from xtec.runtime.workers import WorkerLostError, cluster_failures

    scheduler = client.cluster.scheduler
    old, scheduler.allowed_failures = scheduler.allowed_failures, 0
    try:
        with pytest.raises(WorkerLostError, match="workers died 1 times") as info:
            with cluster_failures():
                client.submit(_die, pure=False).result()
        assert _exit_status(info.value.__cause__, "cluster") == 2
        assert "workers died" in capsys.readouterr().err
    finally:
        scheduler.allowed_failures = old
    client.wait_for_workers(2, timeout=60)


@pytest.mark.slow
def test_worker_killed_in_each_stage_gives_the_same_labels(client, tiny, tmp_path):
    from xtec.pipeline import ClusterConfig, run_cluster
    from xtec.runtime.clusters import Runtime

    rt = Runtime("local", client)

    def config(name):
        return ClusterConfig(inputs=[str(tiny)], out=str(tmp_path / name), k=3)

    # Labels do not depend on where a run runs (tests/test_pipeline.py): the
    # undisturbed reference runs in-process.
    ref = open_result(run_cluster(config("ref.zarr")).path).labels.values

    killed = []

    class KillOnStage(logging.Handler):
        def emit(self, record):
            msg = record.getMessage()
            for stage in ("pass 1 of 2", "EM:", "writing"):
                if msg.startswith(stage) and stage not in {s for s, _ in killed}:
                    pids = sorted(client.run(os.getpid).values())
                    pid = pids[len(killed) % len(pids)]
                    os.kill(pid, signal.SIGKILL)
                    killed.append((stage, pid))

    handler = KillOnStage()
    logger = logging.getLogger("xtec")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with client.as_current():
            result = run_cluster(config("killed.zarr"), runtime=rt)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert [s for s, _ in killed] == ["pass 1 of 2", "EM:", "writing"]
    np.testing.assert_array_equal(open_result(result.path).labels.values, ref)
    client.wait_for_workers(2, timeout=60)


@pytest.mark.slow
def test_lost_scheduler_is_one_line():
    from distributed import Client, LocalCluster

    from xtec.runtime.workers import WorkerLostError, cluster_failures

    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                           dashboard_address=":0")
    c = Client(cluster)
    try:
        future = c.submit(time.sleep, 2, pure=False)
        threading.Timer(0.3, cluster.close).start()
        with pytest.raises(WorkerLostError, match="went away"):
            with cluster_failures():
                future.result()
    finally:
        c.close()


# -- the bounded file cache ---------------------------------------------------------


def test_open_file_cache_is_bounded_and_closes_on_evict(small_series, tmp_path):
    from xtec.io import h5source

    paths = write_nxrefine(small_series, tmp_path / "nxr", parent=False)
    cache = h5source.FileCache(maxsize=3)
    handles = []
    for p in paths:
        with cache.acquire(str(p)) as f:
            handles.append(f)
            assert len(cache) <= 3
    assert len(cache) == 3
    assert not handles[0].id.valid and handles[-1].id.valid  # least recent closed
    # A file being read is never closed under its reader.
    with cache.acquire(str(paths[0])) as busy:
        for p in paths[1:]:
            with cache.acquire(str(p)):
                pass
        assert busy.id.valid
    cache.close_all()
    assert len(cache) == 0


def test_cancelling_a_lost_batch_run_leaves_the_scheduler_without_an_error():
    # What watch_batch_jobs does when a worker job is lost mid-run: cancel everything the
    # client holds while a computation reads persisted futures through intermediate tasks
    # (as the label write does).  All at once, Dask's scheduler asserted on those unwanted
    # intermediates and logged a traceback; the run must stop with the cancellation alone.
    import dask.array as da
    from distributed import Client, LocalCluster
    from distributed.client import FutureCancelledError

    from xtec.runtime.batch import _cancel_all

    class Errors(logging.Handler):
        def __init__(self):
            super().__init__(logging.ERROR)
            self.records = []

        def emit(self, record):
            self.records.append(record.getMessage())

    def slow(block):
        time.sleep(0.05)
        return block + 1

    errors = Errors()
    # The scheduler's stream handler logs on distributed.core; asyncio reports the task.
    loggers = [logging.getLogger(n) for n in ("distributed", "distributed.core", "asyncio")]
    for lg in loggers:
        lg.addHandler(errors)
    try:
        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            held = da.ones((64, 100), chunks=(1, 100)).persist()
            running = (held.map_blocks(slow) * 2).map_blocks(slow).sum()
            timer = threading.Timer(0.5, _cancel_all, (client, "worker job 7 was lost"))
            timer.start()
            with pytest.raises(FutureCancelledError, match="batch-job-lost"):
                running.compute(optimize_graph=False)
            timer.join()
            assert client.submit(sum, [1, 2]).result(timeout=30) == 3
            time.sleep(0.2)
    finally:
        for lg in loggers:
            lg.removeHandler(errors)
    assert not errors.records, errors.records
