"""Compiled kernels or their NumPy twins (issue 29, the first run): the twins give
the kernels' results; a run on a node whose cache holds no kernels uses them,
compiles nothing, says so and compiles the kernels in the background; the run
after it uses the kernels."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr
from conftest import ROOT, assert_one_line_error, run

from xtec import backend
from xtec.mixture import _kernels as mk
from xtec.mixture import _kernels_numpy as mn
from xtec.mixture import _start_kernels as sk
from xtec.mixture import engines, start
from xtec.preprocess import _kernels as pk
from xtec.preprocess import _kernels_numpy as pn
from xtec.preprocess.frames import RATIO_LO, RATIO_WIDTH, ratio_table
from xtec.preprocess.threshold import bin_value_ranges
from xtec.runtime import kernel_cache

RNG = np.random.default_rng(7)


def _block():
    x = RNG.gamma(1.0, 2.0, size=(24, 3000)).astype(np.float32)
    x[3, 10], x[5, 20], x[:, 30] = np.nan, -1.0, 0.0
    return x


def test_the_environment_names_the_same_variable():
    assert kernel_cache.ENGINE_ENV == backend.CPU_ENGINE_ENV


# ---------------------------------------------------------------- twins = kernels
def test_first_pass_twins_equal_the_kernels():
    x = _block()
    (m, nan, neg), (m2, nan2, neg2) = pk.mean_over_t(x, 4096), pn.mean_over_t(x, 4096)
    np.testing.assert_allclose(m2, m, rtol=1e-6)
    assert (nan, neg) == (nan2, neg2) == (1, 1)
    cols = np.array([0, 5, 7, 30, 100, 2999])
    for method in range(4):
        np.testing.assert_allclose(pn.gather_rescale(x, cols, method, 256),
                                   pk.gather_rescale(x, cols, method, 256), rtol=1e-6, atol=1e-7)
    mask = RNG.random((5, 6, 7)) < 0.3
    np.testing.assert_array_equal(pn.flat_indices_3d(mask, 1, 2, 3, 20, 30),
                                  pk.flat_indices_3d(mask, 1, 2, 3, 20, 30))
    sample = (m.view(np.uint32) % 5) == 0
    logm, logm2 = pk.positive_logs(m), pn.positive_logs(m)
    # NumPy's log is its own SIMD code where the CPU has AVX-512 (within one ulp
    # of the C library's, which the kernels call: 4 of these 3000 differed on
    # such a CPU), the C library's elsewhere.
    finite = np.isfinite(logm)
    np.testing.assert_array_equal(np.isfinite(logm2), finite)
    np.testing.assert_array_equal(logm2[~finite], logm[~finite])
    np.testing.assert_array_max_ulp(logm2[finite], logm[finite], maxulp=1)
    inner, lut, e_lo = ratio_table()
    args = (sample, inner, lut, e_lo, -3.0, 0.05, 200)
    a, b = pk.frame_stats(x, m, logm, *args), pn.frame_stats(x, m, logm, *args)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[3], b[3])
    np.testing.assert_allclose(b[1], a[1], rtol=1e-10)
    np.testing.assert_allclose(b[2], a[2], rtol=1e-10, atol=1e-9)


def test_ratio_bins_are_the_edges_search():
    """The kernels' ratio bins (a table of binary slices and one comparison)
    are ``searchsorted``'s on the edges exp(lo + j w): for ratios on, beside and
    between the edges, at the clipped ends and far beyond them; and they are
    log(ratio)'s 1% bins from -3 wherever rounding cannot tell them apart."""
    inner, lut, e_lo = ratio_table()
    near = np.concatenate([inner, np.nextafter(inner, 0), np.nextafter(inner, np.inf)])
    r = np.concatenate([near, np.exp(RNG.uniform(-4, 4, 5000)), [1e-300, 1e-3, 1.0, 1e3, 1e300],
                        2.0 ** np.arange(-8, 9), np.nextafter(2.0 ** np.arange(-8, 9), 0)])
    want = np.searchsorted(inner, r, side="right")
    got = np.empty(r.size, np.int64)
    pk.ratio_bins(r, inner, lut, e_lo, got)
    np.testing.assert_array_equal(got, want)
    # in a block: values / means (float32), zeros in column 0
    x = np.exp(RNG.uniform(-4, 4, (3, 4000))).astype(np.float32)
    x[0, :7] = 0.0
    m = np.exp(RNG.uniform(-2, 2, 4000)).astype(np.float32)
    args = (m, pk.positive_logs(m), np.ones(4000, bool), inner, lut, e_lo, -3.0, 0.05, 200)
    hist = pk.frame_stats(x, *args)[0]
    ratio = x.astype(np.float64) / m
    assert hist[0, 0] == 7 and hist[1:, 0].sum() == 0
    for t in range(3):
        pos = ratio[t] > 0
        np.testing.assert_array_equal(
            hist[t, 1:], np.bincount(np.searchsorted(inner, ratio[t, pos], side="right"),
                                     minlength=inner.size + 1))
    np.testing.assert_array_equal(pn.frame_stats(x, *args)[0], hist)
    lr = np.log(r)
    inside = (np.abs(lr) < 2.9) & (np.abs((lr - RATIO_LO) / RATIO_WIDTH
                                          - np.round((lr - RATIO_LO) / RATIO_WIDTH)) > 1e-6)
    np.testing.assert_array_equal(want[inside], np.floor((lr[inside] - RATIO_LO) / RATIO_WIDTH))


def test_peak_search_twin_equals_the_kernel():
    b = RNG.poisson(3.0, size=(4, 9, 11)).astype(np.float32)  # ties and plateaus
    b[0, 0, 0], b[3, 8, 10], b[2, 4, 5] = 50.0, 40.0, 30.0  # corners and inside
    cand = np.arange(b.size, dtype=np.int64)
    for base in (-np.inf, 2.0, 4.5):
        keep = pk.local_maxima_among(b, cand, base)
        np.testing.assert_array_equal(keep, pn.local_maxima_among(b, cand, base))
        assert keep[[0, b.size - 1, np.ravel_multi_index((2, 4, 5), b.shape)]].all()


def test_threshold_twins_equal_the_kernels():
    m = pk.mean_over_t(_block(), 4096)[0]
    np.testing.assert_allclose(pn.moments(m), pk.moments(m), rtol=1e-12)
    np.testing.assert_array_equal(pn.fine_hist(m, -5, 0.01, 1000), pk.fine_hist(m, -5, 0.01, 1000))
    hit = np.zeros(1000, bool)
    hit[400:600] = True
    ranges = bin_value_ranges(-5, 0.01, 1000, np.arange(400, 600))
    (x1, b1), (x2, b2) = pk.values_in_bins(m, -5, 0.01, 1000, hit, *ranges), \
        pn.values_in_bins(m, -5, 0.01, 1000, hit, *ranges)
    np.testing.assert_array_equal(b1, b2)
    np.testing.assert_allclose(x2, x1, rtol=1e-14)
    edges = np.linspace(-3, 3, 51)
    np.testing.assert_allclose(pn.weighted_hist(m, edges), pk.weighted_hist(m, edges), rtol=1e-12)
    (a, h), (a2, h2) = pk.moments_and_hist(m, -104.0, 193 / 2**15, 2**15), \
        pn.moments_and_hist(m, -104.0, 193 / 2**15, 2**15)
    np.testing.assert_array_equal(h, h2)
    assert h2.dtype == np.int32
    np.testing.assert_allclose(a2, a, rtol=1e-12)
    empty = pn.moments(np.zeros(3, np.float32))
    np.testing.assert_array_equal(empty, pk.moments(np.zeros(3, np.float32)))


def test_start_and_profile_twins_equal_the_kernels():
    ids = RNG.integers(0, 2**40, 1000).astype(np.uint64)
    np.testing.assert_array_equal(mn.splitmix_uniform(ids, 12345), sk.splitmix_uniform(ids, 12345))
    X = RNG.normal(size=(5000, 12))
    rows = np.arange(0, 5000, 7)
    np.testing.assert_array_equal(mn.take_rows(X.astype(np.float32), rows),
                                  sk.take_rows(X.astype(np.float32), rows))
    d1, d2 = np.full(5000, np.inf), np.full(5000, np.inf)
    sk.lower_sq_dist(X, X[3], d1)
    mn.lower_sq_dist(X, X[3], d2)
    np.testing.assert_allclose(d2, d1, rtol=1e-12)
    like = np.zeros(0, np.float32)
    blocks = sk.row_blocks(X.astype(np.float32), 128, like)
    np.testing.assert_array_equal(mn.row_blocks(X.astype(np.float32), 128, like), blocks)
    centers = X[:5].astype(np.float32)
    a, b = sk.lloyd_step(blocks, 5000, centers), mn.lloyd_step(blocks, 5000, centers)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(b[2], a[2], rtol=1e-5, atol=1e-4)  # float32 sums
    # the nearest centre by float64 distances, row by row
    d = ((X[:, None, :] - centers[None].astype(np.float64)) ** 2).sum(axis=2)
    np.testing.assert_array_equal(a[0], np.argmin(d, axis=1))
    for full in (True, False):
        for p, q in zip(sk.label_sums(X, a[0], 5, full), mn.label_sums(X, a[0], 5, full)):
            np.testing.assert_allclose(q, p, rtol=1e-10, atol=1e-9)
    labels = a[0].astype(np.int16)
    np.testing.assert_allclose(mn.label_stats(X.astype(np.float32), labels, 5),
                               mk.label_stats(X.astype(np.float32), labels, 5), rtol=1e-10)


@pytest.mark.parametrize("covariance", ["diag", "full"])
@pytest.mark.parametrize("work_dtype", [np.float32, np.float64])
def test_numpy_engine_equals_the_numba_engine(covariance, work_dtype):
    X = np.concatenate([RNG.normal(i, 1 + i, size=(3000, 24)) for i in range(4)])
    labels = start.kmeans_plusplus(X, 4, np.random.default_rng(1))
    params = start.params_from_labels(X, labels, 4, covariance, 1e-6)
    X32 = X.astype(np.float32)
    a = engines.chunk_stats(X32, params, engine="numba", threads=1, work_dtype=work_dtype)
    b = engines.chunk_stats(X32, params, engine="numpy", work_dtype=work_dtype)
    tol = 1e-5 if work_dtype == np.float32 else 1e-10
    for name in ("nk", "sx", "sxx"):
        ref = getattr(a, name)
        np.testing.assert_allclose(getattr(b, name), ref, rtol=tol, atol=tol * np.abs(ref).max())
    assert b.loglik == pytest.approx(a.loglik, rel=tol)
    np.testing.assert_array_equal(engines.chunk_predict(X32, params, "numpy"),
                                  engines.chunk_predict(X32, params, "numba"))


def test_full_restarts_take_the_same_path_on_both_engines():
    # Trajectories far from zero with a small spread: a covariance is the
    # outer-product sums less mu mu^T, so float32 sums (the NumPy engine's
    # float32 products add 2048 rows at a time) would send the restarts down
    # other paths than the kernels (5e-5 apart here) and a cold run could pick
    # another start than a warm one.
    rng = np.random.default_rng(3)
    t = np.linspace(0, 1, 24)
    protos = np.array([10 + np.sin(3 * t), 10 + t, 10 - t, 10 + 0.5 * np.cos(5 * t)])
    X = protos[rng.integers(0, 4, 40_000)] \
        + rng.normal(0, 0.3, (40_000, 24)) * rng.lognormal(0, 0.3, (40_000, 1))
    a, b = (start.best_start(X, 4, "full", 1e-6, 3, 0, engine=e) for e in ("numba", "numpy"))
    np.testing.assert_allclose(b.means, a.means, rtol=0, atol=1e-9)
    np.testing.assert_allclose(b.covariances, a.covariances, rtol=0, atol=1e-9)


def test_auto_follows_the_run_choice(monkeypatch):
    X = np.zeros((4, 3), np.float32)
    monkeypatch.setenv("XTEC_ENGINE", "numpy")
    assert engines._pick_engine(X, "auto") == "numpy"
    monkeypatch.setenv("XTEC_ENGINE", "numba")
    assert engines._pick_engine(X, "auto") == "numba"
    with pytest.raises(Exception, match="engine 'numpy' needs NumPy input"):
        engines._pick_engine(object(), "numpy")


# ----------------------------------------------------------------- the choice per run
def test_resolve_engine(monkeypatch, tmp_path):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("XTEC_ENGINE")
    assert kernel_cache.resolve_engine("auto", "diag", local=True) == "numpy"
    assert kernel_cache.resolve_engine("auto", "diag", local=False) == "numba"
    assert kernel_cache.resolve_engine("numba", "diag", local=True) == "numba"
    kernel_cache.mark_compiled("diag")
    assert kernel_cache.resolve_engine("auto", "diag", local=True) == "numba"
    assert kernel_cache.resolve_engine("auto", "full", local=True) == "numpy"
    # a stamp of other sources (an upgrade, an edited kernel) does not count
    stamp = tmp_path / "xtec-kernels-diag.json"
    old = json.loads(stamp.read_text())
    old["sources"] = {k: [1, 2] for k in old["sources"]}
    stamp.write_text(json.dumps(old))
    assert kernel_cache.resolve_engine("auto", "diag", local=True) == "numpy"
    monkeypatch.setenv("XTEC_ENGINE", "numba")
    assert kernel_cache.resolve_engine("auto", "diag", local=True) == "numba"


def test_use_engine_sets_and_restores(monkeypatch):
    monkeypatch.delenv("XTEC_ENGINE")
    with kernel_cache.use_engine("numpy"):
        assert not backend.compiled_kernels()
    assert backend.compiled_kernels() and "XTEC_ENGINE" not in os.environ


def test_bad_engine_is_one_line(capsys, tiny, tmp_path):
    code, _, err = run(capsys, "cluster", tiny, "-o", tmp_path / "o.zarr", "--engine", "fast")
    assert_one_line_error(code, err, "engine")


def test_numpy_engine_gives_the_kernels_labels_whatever_the_chunking(capsys, tiny, tmp_path):
    outs = {}
    for engine, chunks in (("numba", None), ("numpy", None), ("numpy", "2,8,8")):
        out = tmp_path / f"{engine}{chunks}.zarr"
        argv = ["cluster", tiny, "-o", out, "--engine", engine, "-k", "3"]
        code, _, err = run(capsys, *argv, *(["--chunks", chunks] if chunks else []))
        assert code == 0, err
        ds = xr.open_zarr(out)
        assert json.loads(ds.attrs["parameters"])["engine"] == engine
        outs[engine, chunks] = ds.labels.values
    ref = outs["numba", None]
    assert (outs["numpy", None] == ref).mean() >= 0.999
    np.testing.assert_array_equal(outs["numpy", "2,8,8"], outs["numpy", None])


_COLD_RUN = """
import json, sys
from numba.core import event
names = []
class L(event.Listener):
    def on_start(self, ev):
        names.append(ev.data["dispatcher"].py_func.__module__)
    def on_end(self, ev):
        pass
event.register("numba:compile", L())
from xtec.cli.main import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "compiled": [n for n in names if n.startswith("xtec.")]}))
"""


def _cold_run(cache, *argv):
    env = {k: v for k, v in os.environ.items() if k != "XTEC_ENGINE"}
    env.update(NUMBA_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", _COLD_RUN, *map(str, argv)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.slow
def test_a_first_run_compiles_nothing_and_the_next_one_uses_the_kernels(tiny, tmp_path,
                                                                        monkeypatch):
    cache = tmp_path / "cache"
    out, got = _cold_run(cache, "cluster", tiny, "-o", tmp_path / "a.zarr", "-k", "3")
    assert got == {"code": 0, "compiled": []}
    assert "NumPy twins" in out and "compiling in the background" in out
    lock = cache / "xtec-kernels-diag.lock"
    # the background compile: one at a time, lock removed and stamp written when done
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(cache))
    assert kernel_cache.compile_in_background("diag") is None
    deadline = time.monotonic() + 900
    while lock.exists() and time.monotonic() < deadline:
        time.sleep(1)
    if lock.exists():  # pragma: no cover - a hung compile: do not leave it running
        os.killpg(int(lock.read_text()), signal.SIGKILL)
        pytest.fail("the background compile did not finish in 15 minutes")
    log = (cache / "xtec-kernels-diag.log").read_text()
    assert "kernels ready" in log
    assert json.loads((cache / "xtec-kernels-diag.json").read_text())["covariance"] == "diag"
    out, got = _cold_run(cache, "cluster", tiny, "-o", tmp_path / "b.zarr", "-k", "3")
    assert got == {"code": 0, "compiled": []} and "NumPy twins" not in out
    assert json.loads(xr.open_zarr(tmp_path / "b.zarr").attrs["parameters"])["engine"] == "numba"
    assert (xr.open_zarr(tmp_path / "a.zarr").labels.values
            == xr.open_zarr(tmp_path / "b.zarr").labels.values).mean() >= 0.999


_LIBRARY_RUN = """
import json, sys
from xtec import ClusterConfig, run_cluster
r = run_cluster(ClusterConfig(inputs=[sys.argv[1]], out=sys.argv[2], k=3))
print(json.dumps({"notes": r.summary["notes"]}))
"""


def test_a_library_run_on_an_empty_cache_also_starts_the_compile(tiny, tmp_path):
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k != "XTEC_ENGINE"}
    env.update(NUMBA_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", _LIBRARY_RUN, str(tiny),
                           str(tmp_path / "o.zarr")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    notes = json.loads(proc.stdout.splitlines()[-1])["notes"]
    assert any("compiling in the background" in n for n in notes)
    assert "compiling in the background" in proc.stderr  # a warning, where notebooks show it
    assert json.loads(xr.open_zarr(tmp_path / "o.zarr").attrs["parameters"])["engine"] == "numpy"
    lock = cache / "xtec-kernels-diag.lock"
    with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
        os.killpg(int(lock.read_text()), signal.SIGTERM)  # this test needs no compile


def test_an_unwritable_cache_is_said_so(monkeypatch, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the cache directory should be
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(blocked / "cache"))
    note = kernel_cache.compile_for_later("diag")
    assert "cannot be written" in note and "NUMBA_CACHE_DIR" in note
