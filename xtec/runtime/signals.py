"""Stopping cleanly on SIGTERM and SIGINT, as batch schedulers and users ask.

A batch scheduler sends SIGTERM at the walltime (then SIGKILL some seconds
later); a user presses Ctrl-C.  Inside :func:`stop_on_signals` the first
either signal raises :class:`Interrupted` (a ``KeyboardInterrupt``, which
Dask's schedulers already treat as "stop now") in the main thread, so every
``finally`` runs: the Dask cluster closes, and the run's ``.partial`` store
and scratch directory go.  Further signals while that happens are ignored.
A watchdog makes sure the process is gone within ``grace`` seconds even if
a clean-up step hangs (a worker stuck in native code): it kills the child
processes, removes the paths registered with :func:`add_cleanup` and exits
with the signal's status (128 + signal number).

A signal can arrive while the main thread runs a finaliser (a ``__del__``,
a weakref callback); Python cannot raise out of those and reports the
exception as "unraisable" instead, which would swallow the interrupt and let
the run go on.  So inside a ``__del__`` the handler does not raise, and an
:class:`Interrupted` that another finaliser swallowed reaches
``sys.unraisablehook``; either way the signal is sent to the main thread
again a moment later, and raised where it can stop the run.

A library can also catch the :class:`Interrupted` and go on (hdf5plugin
registers its filters under a bare ``except:``).  Code known to do that runs
under :func:`held_signals`, which raises at its end instead; and where a run
commits its output or a command returns, :func:`raise_if_stopped` stops a run
whose interrupt was swallowed elsewhere, so it never ends with status 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


_DASK_PACKAGES = ("distributed", "tornado")


def _raised_by_dask(exc: BaseException) -> bool:
    """Whether ``exc`` is Dask's own error: its type, or the frame that raised it."""
    if type(exc).__module__.split(".")[0] in _DASK_PACKAGES:
        return True
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    name = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    return name.split(".")[0] in _DASK_PACKAGES


class _DaskLeftoverTasks(logging.Filter):
    """Drops the errors Dask leaves behind when a signal cuts it short.

    A gather interrupted by a signal leaves Dask tasks (``AllExit``,
    ``CommClosedError``, tornado's ``StreamClosedError``, a nanny's
    ``RuntimeError`` if it was still starting) that nobody awaits once the
    client closes; asyncio logs each as "never retrieved" with a traceback
    when it is collected, which may be as soon as the interrupt unwinds the
    gather or as late as interpreter exit.  Tornado logs a callback that an
    interrupted ``sync`` left half set up ("Exception in callback").  So the
    signal handler installs the filter when it fires.  Only errors raised by
    Dask in those two kinds of record are dropped, so the filter may stay.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        message = record.getMessage()
        leftover = "never retrieved" in message or message.startswith("Exception in callback")
        return not (exc is not None and leftover and _raised_by_dask(exc))


_LEFTOVER_FILTER = _DaskLeftoverTasks()


def quiet_leftover_tasks() -> None:
    """Silence the leftover-task errors of an interrupted run (idempotent)."""
    for name in ("asyncio", "tornado.application"):
        logging.getLogger(name).addFilter(_LEFTOVER_FILTER)


_cleanup: set[Path] = set()
_cleanup_lock = threading.Lock()


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; ``signum`` says which."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class _Block:
    """What the handler of a :func:`stop_on_signals` block has seen."""

    def __init__(self) -> None:
        self.fired: list[int] = []
        self.held = 0


_blocks: list[_Block] = []  # the active blocks, innermost last


def _came() -> Interrupted | None:
    """The first signal that came in the active block, if one did."""
    return Interrupted(_blocks[-1].fired[0]) if _blocks and _blocks[-1].fired else None


def raise_if_stopped() -> None:
    """Raise :class:`Interrupted` if a signal came in the active block.

    For the points a run passes only when it goes on: where it commits its
    output, and where a command returns.  A run that gets there after a
    signal had its :class:`Interrupted` swallowed by a library; further
    signals are ignored while a run stops, so without this it would finish.
    """
    came = _came()
    if came is not None:
        raise came


@contextlib.contextmanager
def held_signals() -> Iterator[None]:
    """Hold a SIGTERM/SIGINT that comes in the block; raise it when the block ends.

    For code that would swallow the :class:`Interrupted` (a bare ``except:``
    in a library's import) and go on half done.
    """
    if not _blocks:
        yield
        return
    block = _blocks[-1]
    block.held += 1
    try:
        yield
    finally:
        block.held -= 1
    raise_if_stopped()


def add_cleanup(path: str | os.PathLike) -> None:
    """Remove ``path`` if the process is stopped by the watchdog."""
    with _cleanup_lock:
        _cleanup.add(Path(path))


def remove_cleanup(path: str | os.PathLike) -> None:
    with _cleanup_lock:
        _cleanup.discard(Path(path))


def interruption(exc: BaseException | None) -> Interrupted | None:
    """The :class:`Interrupted` (or KeyboardInterrupt) behind ``exc``, if any.

    Libraries sometimes wrap an interrupt in their own error (numba loading
    its cache turns it into ``SystemError``): follow the cause/context chain.
    A failure after a signal in the active block whose chain has lost the
    interrupt (a library swallowed it and failed later, half set up) is the
    signal's too: the user asked the run to stop.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, Interrupted):
            return exc
        if isinstance(exc, KeyboardInterrupt):
            return Interrupted(signal.SIGINT)
        exc = exc.__cause__ or exc.__context__
    return _came()


def kill_children() -> None:
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with distributed
        return
    procs = psutil.Process().children(recursive=True)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=2)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


def _remove_registered() -> None:
    with _cleanup_lock:
        paths = list(_cleanup)
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()


def _in_finaliser(frame) -> bool:
    """Whether ``frame`` runs inside a ``__del__``, where a raise is dropped."""
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def stop_on_signals(grace: float = 12.0, name: str = "xtec") -> Iterator[None]:
    """Turn SIGTERM/SIGINT into :class:`Interrupted` for the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    done = threading.Event()
    block = _Block()
    fired = block.fired

    def watchdog(signum: int) -> None:
        if done.wait(grace):
            return
        kill_children()
        _remove_registered()
        sys.stderr.write(f"{name}: stopped by {signal.Signals(signum).name} "
                         f"(clean-up took over {grace:g} s; forced exit)\n")
        sys.stderr.flush()
        os._exit(128 + signum)

    redeliver: list[int] = []

    def send_again(signum: int) -> None:
        redeliver[:] = [signum]
        # A real signal, not _thread.interrupt_main: it also wakes a main
        # thread blocked in a system call.
        threading.Timer(0.01, signal.pthread_kill,
                        args=(threading.main_thread().ident, signum)).start()

    def handler(signum, frame):
        if redeliver:
            if block.held:
                redeliver.clear()  # raised where the held block ends
                return
            if _in_finaliser(frame):
                send_again(redeliver[0])
                return
            raise Interrupted(redeliver.pop())
        if fired:
            return  # already stopping: let the clean-up finish
        fired.append(signum)
        # Closing a cluster in the middle of work makes Dask warn about every
        # worker it has to kill: expected now, and not the user's to act on.
        dask_log = logging.getLogger("distributed")
        if dask_log.getEffectiveLevel() >= logging.WARNING:
            dask_log.setLevel(logging.CRITICAL)
        quiet_leftover_tasks()
        threading.Thread(target=watchdog, args=(signum,), daemon=True).start()
        if block.held:
            return
        if _in_finaliser(frame):
            send_again(signum)
            return
        raise Interrupted(signum)

    previous_hook = sys.unraisablehook

    def unraisable(info) -> None:
        if not isinstance(info.exc_value, Interrupted):
            previous_hook(info)
            return
        send_again(info.exc_value.signum)

    old: dict[int, object] = {}
    _blocks.append(block)
    try:
        # Installed inside the try: a signal between the two still restores both.
        sys.unraisablehook = unraisable
        for s in (signal.SIGTERM, signal.SIGINT):
            old[s] = signal.signal(s, handler)
        yield
    finally:
        sys.unraisablehook = previous_hook
        for s, h in old.items():
            signal.signal(s, h)
        _blocks.remove(block)
        done.set()
