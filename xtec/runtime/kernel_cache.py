"""Where numba keeps xtec's compiled kernels, so a process loads them instead of
compiling them.

Compiling xtec's kernels takes most of a first run (measured on a 2-core host at
load 8-11: 62 s of a 65 s diagonal run, 86 s of a 90 s full one; loading them
from the cache takes a few seconds).  numba caches beside the package
(``__pycache__``); on a read-only install (a shared environment, a container
image) it falls back to ``~/.cache/numba`` and, where that is not writable either
(a batch node without a home directory), to no cache at all, so every process
and every Dask worker compiles again.

:func:`configure` runs on ``import xtec``, before numba is imported: where the
package directory is not writable and ``NUMBA_CACHE_DIR`` is not set, it sets it
to ``$XDG_CACHE_HOME/xtec/numba`` (``~/.cache/xtec/numba``), or to a directory
under the system's temporary directory where that cannot be created.  Worker
processes inherit the variable (local clusters) or get it exported in their job
script (:func:`worker_environ`), so every process of a run shares one cache.
``xtec prepare`` fills it ahead of the first run.

A run does not wait for the compiler: :func:`resolve_engine` picks the NumPy
twins of the kernels (:func:`xtec.backend.compiled_kernels`) where the cache
holds no kernels of this node for the run's covariance type yet (no stamp
written by :func:`mark_compiled` after they were compiled), and the command
line then compiles them in a background process (:func:`compile_in_background`)
for the runs after it.

Imports nothing from xtec: it runs first.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV = "NUMBA_CACHE_DIR"
# The subpackages whose modules hold cached kernels (numba writes ``__pycache__``
# beside each of them when it can).
KERNEL_PACKAGES = ("mixture", "preprocess")


def _writable_dir(path: Path) -> bool:
    """Can this process create files in ``path`` (created if missing)?  A probe
    file, not ``os.access``: a read-only mount refuses even root."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".xtec-probe-")
    except OSError:
        return False
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass
    return True


def package_dir() -> Path:
    return Path(__file__).resolve().parent.parent


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "xtec" / "numba"


def fallback_cache_dir() -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"xtec-numba-{uid}"


def in_tree_writable(root: Path | None = None) -> bool:
    root = package_dir() if root is None else root
    return all(_writable_dir(root / pkg / "__pycache__") for pkg in KERNEL_PACKAGES)


def choose_cache_dir(root: Path | None = None) -> Path | None:
    """The directory to give numba, or None where numba's own choice (beside the
    package) works.  A ``NUMBA_CACHE_DIR`` already set wins."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    if in_tree_writable(root):
        return None
    for candidate in (user_cache_dir(), fallback_cache_dir()):
        if _writable_dir(candidate):
            return candidate
    return None  # nowhere to write: numba compiles in every process


def configure(root: Path | None = None) -> Path | None:
    """Set ``NUMBA_CACHE_DIR`` where the package directory is not writable (see the
    module's docstring); returns the directory kernels are cached in, None for
    numba's default beside the package."""
    chosen = choose_cache_dir(root)
    if chosen is not None and not os.environ.get(ENV):
        os.environ[ENV] = str(chosen)
        numba_config = sys.modules.get("numba.core.config")
        if numba_config is not None:  # numba came first: it read the environment already
            numba_config.CACHE_DIR = str(chosen)
    return chosen


def describe() -> str:
    """Where the kernels are cached, in words (``xtec prepare`` prints it)."""
    chosen = os.environ.get(ENV)
    if chosen:
        return f"{chosen} ({ENV})"
    return f"beside the package ({package_dir()}/{{{','.join(KERNEL_PACKAGES)}}}/__pycache__)"


def worker_environ() -> dict:
    """What a worker process must inherit to share this process's cache."""
    return {ENV: os.environ[ENV]} if os.environ.get(ENV) else {}


# ------------------------------------------------------------ compiled or not, per run
ENGINE_ENV = "XTEC_ENGINE"  # xtec.backend.CPU_ENGINE_ENV (this module imports nothing from xtec)
# The kernel modules whose source numba keys its cache entries on.
KERNEL_SOURCES = ("io/_kernels.py", "mixture/_kernels.py", "mixture/_start_kernels.py",
                  "preprocess/_kernels.py")
# A background compile older than this is taken for dead (its lock is stale).
LOCK_STALE_S = 1800


def cache_root() -> Path:
    """Where numba writes xtec's kernels (the stamps go there too, so clearing
    the cache clears them)."""
    chosen = os.environ.get(ENV)
    return Path(chosen) if chosen else package_dir() / "mixture" / "__pycache__"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fingerprint(covariance_type: str) -> dict:
    """What numba's cache entries of one run depend on: the kernels' sources (path,
    modification time and size, as numba checks them), numba and Python, the CPU."""
    sources = {}
    for rel in KERNEL_SOURCES:
        path = package_dir() / rel
        try:
            st = path.stat()
            sources[str(path)] = [st.st_mtime_ns, st.st_size]
        except OSError:
            sources[str(path)] = None
    try:
        numba_version = importlib.metadata.version("numba")
    except importlib.metadata.PackageNotFoundError:
        numba_version = None
    return {"covariance": covariance_type, "numba": numba_version,
            "python": list(sys.version_info[:2]), "cpu": _cpu_model(), "sources": sources}


def _stamp(covariance_type: str) -> Path:
    return cache_root() / f"xtec-kernels-{covariance_type}.json"


def kernels_compiled(covariance_type: str) -> bool:
    """Are a run's kernels for ``covariance_type`` in this node's cache?"""
    try:
        return json.loads(_stamp(covariance_type).read_text()) == fingerprint(covariance_type)
    except (OSError, ValueError):
        return False


def mark_compiled(covariance_type: str) -> None:
    """Record that the kernels of ``covariance_type`` were compiled into the cache
    (after they were: a stamp never precedes its kernels)."""
    path = _stamp(covariance_type)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(fingerprint(covariance_type)))
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache: every run compiles or runs the twins anyway


def resolve_engine(requested: str, covariance_type: str, local: bool) -> str:
    """``numba`` or ``numpy`` for one run.

    ``requested``: ``auto`` (the default), ``numba`` or ``numpy``; ``auto``
    follows ``XTEC_ENGINE`` where it is set, else is ``numba`` where the kernels
    are in this node's cache, or where the run's workers are not this node's
    processes (their caches are not this one), and ``numpy`` otherwise.
    """
    if requested != "auto":
        return requested
    if kernel_env_set():
        return os.environ[ENGINE_ENV]
    if not local or kernels_compiled(covariance_type):
        return "numba"
    return "numpy"


def choose_engine(requested: str, covariance_type: str, local: bool,
                  cpu: bool = True) -> tuple[str, bool]:
    """:func:`resolve_engine`, and whether the run should start the kernels'
    compile when it ends (:func:`compile_for_later`): where ``auto`` fell on the
    twins by itself, on the CPU (not where ``XTEC_ENGINE`` or the caller chose)."""
    engine = resolve_engine(requested, covariance_type, local)
    later = requested == "auto" and engine == "numpy" and cpu and not kernel_env_set()
    return engine, later


@contextlib.contextmanager
def use_engine(engine: str):
    """Run the block with ``engine`` (``numba`` or ``numpy``): in the environment,
    so the Dask workers started inside it compute alike; with the NumPy
    engine, BLAS on one thread in this process (Dask's workers set that
    themselves): the run's parallel level is its tasks, and threaded BLAS on
    their small products oversubscribes the cores."""
    before = os.environ.get(ENGINE_ENV)
    os.environ[ENGINE_ENV] = engine
    try:
        if engine == "numpy":
            from threadpoolctl import threadpool_limits

            with threadpool_limits(1, user_api="blas"):
                yield
        else:
            yield
    finally:
        if before is None:
            os.environ.pop(ENGINE_ENV, None)
        else:
            os.environ[ENGINE_ENV] = before


def kernel_env_set() -> bool:
    """Has the environment chosen the engine (``XTEC_ENGINE``)?"""
    return os.environ.get(ENGINE_ENV) in ("numba", "numpy")


def _lock(covariance_type: str) -> Path:
    return cache_root() / f"xtec-kernels-{covariance_type}.lock"


def compile_in_background(covariance_type: str) -> Path | None:
    """Start ``xtec prepare --covariance COV`` in a detached, low-priority process
    (one per node and covariance type at a time); returns its log file, or None
    where one is already running or the cache cannot be written."""
    lock, log_path = _lock(covariance_type), cache_root() / f"xtec-kernels-{covariance_type}.log"
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if time.time() - lock.stat().st_mtime > LOCK_STALE_S:
                lock.unlink()
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except OSError:
        return None
    command = [sys.executable, "-m", "xtec", "prepare", "--covariance", covariance_type,
               "--lock", str(lock)]
    nice = shutil.which("nice")
    if nice:
        command = [nice, "-n", "10", *command]
    env = {k: v for k, v in os.environ.items() if k != ENGINE_ENV}
    try:
        with open(log_path, "w") as log:
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    env=env, start_new_session=True, close_fds=True)
        os.write(fd, str(proc.pid).encode())
    except OSError:
        os.close(fd)
        lock.unlink(missing_ok=True)
        return None
    os.close(fd)
    return log_path


def compile_for_later(covariance_type: str) -> str:
    """After a run on the NumPy twins: start the kernels' compile for the runs
    after it (:func:`compile_in_background`); says so, in a line."""
    log_path = compile_in_background(covariance_type)
    head = "this node's compiled kernels were not ready: this run used their NumPy twins; "
    if log_path is None and not _lock(covariance_type).exists():
        return (head + f"their cache ({cache_root()}) cannot be written, so they were not "
                "compiled; set NUMBA_CACHE_DIR to a writable directory and run `xtec prepare`")
    where = f" (log: {log_path})" if log_path else " (already under way)"
    return (head + f"they are compiling in the background for later runs{where}; "
            "`xtec prepare` compiles them ahead")


def release_lock(path: str | os.PathLike) -> None:
    """Remove a background compile's lock (``xtec prepare --lock``), done or failed."""
    with contextlib.suppress(OSError):
        os.unlink(path)
