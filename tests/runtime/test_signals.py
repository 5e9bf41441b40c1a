"""Signals: SIGTERM / SIGINT at every stage stop the run cleanly, with one line and nothing left behind; the entry module stays light.

Part of the fault-injection suite (issue 12): real processes, real signals,
a real LocalCluster and real files."""


from __future__ import annotations

import glob
import logging
import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest
from conftest import ROOT, assert_one_line_error, leftovers, read_until, spawn, wait_for

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


def _raised_in(module: str, exc: BaseException) -> BaseException:
    """``exc`` raised by code whose module is ``module`` (its traceback ends there)."""
    try:
        exec(compile("raise exc", f"<{module}>", "exec"), {"__name__": module, "exc": exc})
    except BaseException as raised:  # noqa: BLE001 - returned to the caller
        return raised
    raise AssertionError("not raised")


def test_only_dask_leftover_task_errors_are_dropped_after_an_interrupt():
    """What the filter of an interrupted shutdown drops: asyncio's "never retrieved"
    and tornado's "Exception in callback" records of errors Dask raised (its own
    types, or a builtin raised in its code: a nanny still starting), nothing else."""
    from distributed.client import AllExit

    from xtec.runtime.signals import _LEFTOVER_FILTER

    def record(msg, exc):
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, msg, None,
                                 (type(exc), exc, exc.__traceback__) if exc else None)

    never = "Task exception was never retrieved"
    callback = "Exception in callback functools.partial(<function sync.<locals>.cancel>)"
    nanny = _raised_in("distributed.core", RuntimeError("Nanny failed to start."))
    half_set_up = _raised_in("distributed.utils", NameError("cannot access free variable"))
    ours = _raised_in("xtec.pipeline", RuntimeError("a real bug"))
    assert not _LEFTOVER_FILTER.filter(record(never, AllExit()))
    assert not _LEFTOVER_FILTER.filter(record(never, nanny))
    assert not _LEFTOVER_FILTER.filter(record(callback, half_set_up))
    assert _LEFTOVER_FILTER.filter(record(never, ValueError()))
    assert _LEFTOVER_FILTER.filter(record(never, ours))
    assert _LEFTOVER_FILTER.filter(record(callback, ours))
    assert _LEFTOVER_FILTER.filter(record("Future exception was never handled", nanny))
    assert _LEFTOVER_FILTER.filter(record(never, None))


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


def _swallow(sig: int = signal.SIGTERM) -> None:
    """A signal that arrives inside a library's bare ``except:`` (hdf5plugin
    registering its filters): the Interrupted is raised and dropped."""
    try:
        os.kill(os.getpid(), sig)
        for _ in range(500):  # one second, if the handler did not raise
            time.sleep(0.002)
    except:  # noqa: E722 - the library's
        pass


def test_an_interrupt_a_library_swallows_still_stops_the_run():
    """The run goes on after the swallowed Interrupted and further signals are
    ignored while a run stops: the next checkpoint must raise, and a failure the
    half-set-up library causes later is reported as the signal."""
    from xtec.runtime.signals import Interrupted, interruption, raise_if_stopped, stop_on_signals

    with pytest.raises(Interrupted) as info:
        with stop_on_signals(grace=60):
            _swallow()
            went_on = True
            raise_if_stopped()
    assert went_on and info.value.signum == signal.SIGTERM
    with stop_on_signals(grace=60):
        raise_if_stopped()  # no signal: nothing raised
        assert interruption(ValueError("a real failure")) is None
        _swallow(signal.SIGINT)
        assert interruption(ValueError("half set up")).signum == signal.SIGINT
    raise_if_stopped()  # outside the block it has no signal to raise
    assert interruption(ValueError("a real failure")) is None


def test_held_signals_raise_when_the_block_ends():
    from xtec.runtime.signals import Interrupted, held_signals, stop_on_signals

    reached = []
    with pytest.raises(Interrupted) as info:
        with stop_on_signals(grace=60):
            with held_signals():
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(100):
                    time.sleep(0.002)
                reached.append("end of the held block")
            reached.append("after it")
    assert reached == ["end of the held block"] and info.value.signum == signal.SIGTERM
    with stop_on_signals(grace=60), held_signals():
        pass  # no signal: nothing raised
    with held_signals():
        pass  # outside a stop_on_signals block it holds nothing


def test_a_run_whose_interrupt_was_swallowed_commits_nothing(tmp_path):
    from xtec.io.output import claim_output, replace_store
    from xtec.runtime.signals import Interrupted, stop_on_signals

    target = tmp_path / "r.zarr"
    with pytest.raises(Interrupted):
        with stop_on_signals(grace=60), claim_output(target) as claim:
            _swallow()
            claim.partial.mkdir()
            (claim.partial / "zarr.json").write_text("{}")
            replace_store(claim, claim.partial)
    assert not target.exists() and leftovers(target) == []


_SWALLOWING_RUN = """
import os, signal, sys, time
import xtec.io.nexus as nexus

read = nexus._nxload

def swallowing(path):
    try:  # a library's bare except around the moment a SIGTERM arrives
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    except:
        pass
    return read(path)

nexus._nxload = swallowing
from xtec.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("workers", ["0", "1"])
def test_cli_run_whose_interrupt_a_library_swallows(tiny, tmp_path, workers):
    """The run goes on to the end (further signals are ignored while it stops);
    it must still end as stopped by SIGTERM, with nothing written, not status 0."""
    out = tmp_path / "r.zarr"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _SWALLOWING_RUN, "cluster", str(tiny), "-o",
                           str(out), "--workers", workers], capture_output=True, text=True,
                          env=env, timeout=120)
    assert_one_line_error(proc.returncode, proc.stderr, "stopped by SIGTERM", status=143)
    assert not out.exists() and leftovers(out) == []
