"""The compiled-kernel cache on a read-only install (issue 29): kernels go to
$XDG_CACHE_HOME/xtec/numba, a second process loads them instead of compiling."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import xtec
from xtec.runtime import kernel_cache

PACKAGE = Path(xtec.__file__).parent

# One small kernel (moments -> moments_and_hist): a compile of a few seconds.
_PROBE = """
import json, os, numpy as np, xtec
from xtec.preprocess import _kernels
_kernels.moments(np.ones(3, np.float32))
s = _kernels.moments.stats
print(json.dumps({"dir": os.environ.get("NUMBA_CACHE_DIR"),
                  "hits": sum(s.cache_hits.values()), "misses": sum(s.cache_misses.values())}))
"""


def _read_only_runner(root: Path):
    """argv prefix running a command with ``root`` read-only, or None where this
    process cannot make it so."""
    if os.geteuid() != 0:
        for path in [root, *root.rglob("*")]:
            if path.is_dir():
                path.chmod(0o555)
        return lambda cmd: cmd
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    probe = subprocess.run([unshare, "-m", "sh", "-c", f"mount --bind -o ro {root} {root} "
                            f"&& ! touch {root}/probe 2>/dev/null"], capture_output=True)
    if probe.returncode != 0:
        return None
    import shlex

    def run(cmd):
        return [unshare, "-m", "sh", "-c", f"mount --bind -o ro {root} {root} && exec "
                + " ".join(shlex.quote(c) for c in cmd)]

    return run


def test_read_only_install_caches_in_the_user_cache(tmp_path):
    install = tmp_path / "install"
    shutil.copytree(PACKAGE, install / "xtec", ignore=shutil.ignore_patterns("__pycache__"))
    runner = _read_only_runner(install)
    if runner is None:
        pytest.skip("cannot make a read-only copy here")
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(PYTHONPATH=str(install), XDG_CACHE_HOME=str(cache))
    try:
        import json

        runs = [json.loads(subprocess.run(runner([sys.executable, "-c", _PROBE]), env=env,
                                          cwd=tmp_path, capture_output=True, text=True,
                                          check=True).stdout.splitlines()[-1])
                for _ in range(2)]
    finally:
        for path in [install, *install.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)
    expected = str(cache / "xtec" / "numba")
    assert [r["dir"] for r in runs] == [expected, expected]
    assert runs[0]["misses"] == 1 and runs[0]["hits"] == 0  # compiled and saved
    assert runs[1]["misses"] == 0 and runs[1]["hits"] == 1  # loaded, not compiled
    assert list(Path(expected).rglob("*.nbi"))
    assert not list(install.rglob("*.nbi"))


def test_fallback_order(tmp_path, monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(kernel_cache.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    # A writable package: numba's own choice beside it.
    assert kernel_cache.choose_cache_dir(tmp_path / "pkg") is None
    # Not writable (a file where __pycache__ would go): the user cache.
    ro = tmp_path / "ro"
    for pkg in kernel_cache.KERNEL_PACKAGES:
        (ro / pkg).mkdir(parents=True)
        (ro / pkg / "__pycache__").write_text("")
    assert kernel_cache.choose_cache_dir(ro) == tmp_path / "xdg" / "xtec" / "numba"
    # No user cache either: the temporary directory.
    (tmp_path / "xdg-file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-file"))
    assert kernel_cache.choose_cache_dir(ro).parent == tmp_path / "tmp"
    # A setting the user made wins, and workers inherit it.
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    assert kernel_cache.choose_cache_dir(ro) == tmp_path / "mine"
    assert kernel_cache.worker_environ() == {"NUMBA_CACHE_DIR": str(tmp_path / "mine")}


def test_local_workers_get_the_cache_dir(monkeypatch, tmp_path):
    from xtec.runtime.workers import worker_environ

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    assert worker_environ()["NUMBA_CACHE_DIR"] == str(tmp_path)


def test_batch_jobs_export_the_cache_dir(monkeypatch, tmp_path):
    pytest.importorskip("dask_jobqueue")
    from xtec.config import JobqueueOptions
    from xtec.runtime.clusters import make_jobqueue_cluster

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "kernels dir"))
    cluster = make_jobqueue_cluster("slurm", JobqueueOptions(cores=1, memory="2GB"))
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert f"export NUMBA_CACHE_DIR='{tmp_path / 'kernels dir'}'" in script
