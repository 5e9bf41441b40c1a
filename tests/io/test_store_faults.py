"""Fault injection on result stores: concurrent runs on one output, kills during an overwrite, stores whose contents do not check out.

Part of the fault-injection suite (issue 12): real processes, real signals,
a real LocalCluster and real files."""


from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, assert_one_line_error, leftovers, read_until, run, spawn, wait_for

from xtec.errors import InputError
from xtec.io.store import open_result

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
