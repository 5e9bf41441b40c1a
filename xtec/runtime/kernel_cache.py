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

Imports nothing from xtec: it runs first.
"""

from __future__ import annotations

import os
import sys
import tempfile
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
