"""The EM estimator: agreement with scikit-learn's EM, engines, Dask, determinism."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from xtec.errors import ParameterError
from xtec.mixture import GaussianMixture, data_stats, m_step, stats_array_api, stats_numba


def blobs(n=6000, t=12, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, size=(k, t))
    scales = rng.uniform(0.3, 1.0, size=(k, t))
    y = rng.integers(0, k, n)
    X = centers[y] + rng.normal(size=(n, t)) * scales[y]
    return X.astype(np.float32), y


def test_em_step_equals_scikit_learn():
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture as SkGMM

    X, _ = blobs()
    for cov in ("diag", "full"):
        g = GaussianMixture(3, covariance_type=cov, max_iter=1, n_init=1, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g.fit(X)
        p = g.params_
        prec = 1 / p.covariances if cov == "diag" else np.linalg.inv(p.covariances)
        sk = SkGMM(3, covariance_type=cov, max_iter=5, tol=0, weights_init=p.weights,
                   means_init=p.means, precisions_init=prec, reg_covar=1e-6)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            sk.fit(X.astype(np.float64))
        for _ in range(5):
            stats = data_stats(X, p)
            p = m_step(stats, 1e-6)
        np.testing.assert_allclose(p.means, sk.means_, rtol=1e-7, atol=1e-8)
        np.testing.assert_allclose(p.covariances, sk.covariances_, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(p.weights, sk.weights_, rtol=1e-8)


def test_numba_and_array_api_engines_agree():
    X, _ = blobs()
    g = GaussianMixture(3, n_init=1, random_state=1).fit(X)
    a, b = stats_numba(X, g.params_), stats_array_api(X, g.params_)
    np.testing.assert_allclose(a.nk, b.nk, rtol=1e-10)
    np.testing.assert_allclose(a.sx, b.sx, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(a.sxx, b.sxx, rtol=1e-9, atol=1e-9)
    assert a.loglik == pytest.approx(b.loglik, rel=1e-10)
    g2 = GaussianMixture(3, n_init=1, random_state=1, engine="array-api").fit(X)
    np.testing.assert_array_equal(g.predict(X), g2.predict(X))


def test_recovers_clusters_and_api():
    X, y = blobs(k=4, seed=3)
    g = GaussianMixture(4, random_state=0).fit(X)
    labels = g.predict(X)
    assert adjusted_rand_score(y, labels) > 0.99
    assert g.converged_ and g.n_iter_ < 100
    proba = g.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    np.testing.assert_array_equal(np.argmax(proba, 1), labels)
    assert g.score(X) == pytest.approx(g.lower_bound_, rel=1e-6)
    bics = [GaussianMixture(k, random_state=0).fit(X).bic(X) for k in (2, 4, 6)]
    assert np.argmin(bics) == 1
    full = GaussianMixture(4, covariance_type="full", random_state=0).fit(X)
    assert adjusted_rand_score(y, full.predict(X)) > 0.99


def test_canonical_order_ignores_row_order_and_seedless_permutation():
    X, _ = blobs(k=4, seed=5)
    idx = np.arange(len(X))
    perm = np.random.default_rng(0).permutation(len(X))
    a = GaussianMixture(4, random_state=7).fit(X, idx)
    b = GaussianMixture(4, random_state=7).fit(X[perm], idx[perm])
    np.testing.assert_array_equal(a.predict(X)[perm], b.predict(X[perm]))
    np.testing.assert_allclose(a.means_, b.means_, rtol=1e-6, atol=1e-7)


def test_dask_fit_equals_in_memory_for_any_chunking():
    X, _ = blobs(n=9000, k=4, seed=2)
    ref = GaussianMixture(4, random_state=0).fit(X)
    ref_labels = ref.predict(X)
    for chunks in (9000, 1000, 777):
        dx = da.from_array(X, chunks=(chunks, -1))
        g = GaussianMixture(4, random_state=0).fit(dx)
        np.testing.assert_array_equal(g.predict(dx).compute(), ref_labels)
        np.testing.assert_allclose(g.means_, ref.means_, rtol=1e-9, atol=1e-9)


def test_fit_on_array_api_strict():
    xps = pytest.importorskip("array_api_strict")
    X, y = blobs(n=3000, k=3, seed=4)
    g = GaussianMixture(3, random_state=0).fit(xps.asarray(X))
    ref = GaussianMixture(3, random_state=0).fit(X)
    np.testing.assert_allclose(g.means_, ref.means_, rtol=1e-8, atol=1e-8)
    lab = g.predict(xps.asarray(X))
    np.testing.assert_array_equal(lab, ref.predict(X))


def test_parameter_errors():
    X, _ = blobs(n=10)
    with pytest.raises(ParameterError, match="only 10 points"):
        GaussianMixture(11).fit(X)
    with pytest.raises(ParameterError, match="covariance_type"):
        GaussianMixture(2, covariance_type="spherical").fit(X)
    with pytest.raises(ParameterError, match="2-D"):
        GaussianMixture(2).fit(X[:, 0])
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ParameterError, match="NaN"):
        GaussianMixture(2, init_sample=100).fit(bad)
    with pytest.raises(ParameterError, match="not fitted"):
        GaussianMixture(2).predict(X)


def test_parameters_table_get_set_params_and_sklearn_clone():
    from sklearn.base import clone

    g = GaussianMixture(3, covariance_type="full", tol=1e-4, random_state=7)
    assert g.get_params()["covariance_type"] == "full"
    c = clone(g)
    assert c is not g and c.get_params() == g.get_params()
    assert c.set_params(n_components=5) is c and c.n_components == 5
    with pytest.raises(ParameterError, match="not a parameter"):
        c.set_params(n_clusters=5)
    X, _ = blobs(n=200)
    for bad, match in (({"tol": -1.0}, "tol must be"), ({"max_iter": 0}, "max_iter must be"),
                       ({"n_init": 1.5}, "n_init must be"), ({"engine": "gpu"}, "engine")):
        with pytest.raises(ParameterError, match=match):
            GaussianMixture(2, **bad).fit(X)


def test_one_bic_helper():
    from xtec.mixture import bic_score

    X, _ = blobs(n=2000, k=3, seed=2)
    g = GaussianMixture(3, random_state=0).fit(X)
    n = X.shape[0]
    assert g.bic(X) == bic_score(g.score(X), n, g.n_parameters())


def _overlapping(n=20_000, t=16, seed=0):
    """Four overlapping prototypes with per-row noise scales: EM creeps here."""
    rng = np.random.default_rng(seed)
    tt = np.linspace(0.0, 1.0, t)
    protos = np.stack([0 * tt, 0.5 * np.sqrt(np.clip(1 - tt / 0.6, 0, None)), -0.5 * tt,
                       0.4 * np.exp(-(((tt - 0.5) / 0.15) ** 2))])
    y = rng.choice(4, size=n, p=[0.4, 0.3, 0.2, 0.1])
    scale = np.exp(rng.normal(0.0, 0.3, n))[:, None]
    return (protos[y] + 0.3 * scale * rng.standard_normal((n, t))).astype(np.float32)


@pytest.mark.parametrize("cov", ["diag", "full"])
def test_squarem_reaches_plain_em_optimum_in_fewer_passes(cov):
    from xtec.mixture.em import run_em
    from xtec.mixture.start import kmeans_plusplus, params_from_labels

    X = _overlapping()
    X64 = X.astype(np.float64)
    start = params_from_labels(X64, kmeans_plusplus(X64, 4, np.random.default_rng(0)), 4,
                               cov, 1e-6)
    seen = []

    def e_step(Xc, p):  # records the log-likelihood at every point SQUAREM evaluates
        s = data_stats(Xc, p)
        seen.append(s.loglik / s.n)
        return s

    em = dict(reg_covar=1e-6, tol=1e-6, max_iter=500)
    _, ll_plain, it_plain, conv_plain = run_em(X, start, len(X), **em)
    p_acc, ll_acc, it_acc, conv_acc = run_em(X, start, len(X), e_step=e_step, accelerate=True,
                                             **em)
    assert conv_plain and conv_acc
    assert it_acc == len(seen) < it_plain  # n_iter counts passes over X
    assert ll_acc >= ll_plain - 1e-6
    # the safeguard: no point it evaluated beats the one it returns
    assert max(seen) <= ll_acc + 1e-12
    # same fixed point: one plain EM step from the result barely moves it
    again = m_step(data_stats(X, p_acc), 1e-6)
    assert np.abs(again.means - p_acc.means).max() < 1e-3


def test_squarem_respects_max_iter_and_a_bad_jump():
    from xtec.mixture import MixtureParams
    from xtec.mixture.em import run_em

    X = _overlapping(4000)
    start = GaussianMixture(4, max_iter=1, random_state=0).fit(X).params_
    for max_iter in (1, 2, 4, 7):
        _, _, it, conv = run_em(X, start, len(X), reg_covar=1e-6, tol=0.0,
                                max_iter=max_iter, accelerate=True)
        assert it == max_iter and not conv
    # an extrapolated full covariance that is not positive definite is refused
    k, t = 2, 3
    like = MixtureParams(np.full(k, 0.5), np.zeros((k, t)), np.stack([np.eye(t)] * k))
    v = np.concatenate([np.log(like.weights), like.means.ravel(), -like.covariances.ravel()])
    assert like.from_vector(v) is None
    assert like.from_vector(np.full(v.shape, np.nan)) is None


def test_hash_uniform_is_splitmix64():
    """The subsample's hash keeps its published values (splitmix64 in NumPy)."""
    from xtec.mixture.start import hash_uniform

    def splitmix(index, seed):
        with np.errstate(over="ignore"):
            z = index.astype(np.uint64) + np.uint64(seed & 0xFFFFFFFF) * np.uint64(
                0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z = z ^ (z >> np.uint64(31))
        return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)

    rng = np.random.default_rng(1)
    for ids, seed in ((np.arange(10_000), 0), (rng.integers(0, 2**62, 500), 12345),
                      (np.arange(20).reshape(4, 5), 2**40 + 3)):
        assert np.array_equal(hash_uniform(ids, seed), splitmix(ids, seed))


def test_start_sample_and_seeding_do_not_depend_on_row_order():
    """The subsample is the rows whose ids hash below the rate, in id order,
    however the rows come (a permuted NumPy array, Dask chunks); k-means++
    seeding picks the rows the plain NumPy expression picks."""
    from xtec.mixture.start import hash_uniform, init_sample, kmeans_plusplus

    rng = np.random.default_rng(3)
    X = rng.normal(size=(5_000, 6)).astype(np.float32)
    ids = np.arange(X.shape[0])
    want = X[hash_uniform(ids, 7) < 0.2].astype(np.float64)
    perm = rng.permutation(X.shape[0])
    assert np.array_equal(init_sample(X, ids, 1_000, 7), want)
    assert np.array_equal(init_sample(X[perm], perm, 1_000, 7), want)
    Xd = da.from_array(X[perm], chunks=(700, 6))
    assert np.array_equal(init_sample(Xd, da.from_array(perm, chunks=700), 1_000, 7), want)

    def plain_seeding(X, k, rng):
        centers = [X[rng.integers(X.shape[0])]]
        d2 = np.sum((X - centers[0]) ** 2, axis=1)
        for _ in range(1, k):
            i = rng.choice(X.shape[0], p=d2 / d2.sum())
            centers.append(X[i])
            d2 = np.minimum(d2, np.sum((X - X[i]) ** 2, axis=1))
        return np.array(centers)

    def nearest(X, c):
        return np.argmin(((X[:, None, :] - c[None]) ** 2).sum(-1), axis=1)

    for k in (2, 5):
        c = plain_seeding(want, k, np.random.default_rng(k))
        assert np.array_equal(kmeans_plusplus(want, k, np.random.default_rng(k), n_lloyd=1),
                              nearest(want, c))


def test_float32_exp_is_accurate():
    """The float32 exp of the restarts' kernel, over the whole range it meets."""
    from xtec.mixture._kernels import vexp32

    x = np.concatenate([np.linspace(-87.0, 0.0, 200_001), -np.geomspace(1e-8, 1.0, 1000),
                        [0.0]]).astype(np.float32)
    got = x.copy()
    vexp32(got, np.empty(got.size, np.int32))
    want = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got / want - 1.0)) < 2e-7
    tiny = np.array([-90.0, -500.0, -1e30], np.float32)  # clamped: tiny, never 0 or NaN
    vexp32(tiny, np.empty(3, np.int32))
    assert np.all((tiny > 0) & (tiny < 1e-37))


def test_float64_exp_is_accurate():
    """The EM's float64 exp (2^k built from a float's bits), over the whole
    range it meets, the clamp included."""
    from xtec.mixture._kernels import vexp

    x = np.concatenate([np.linspace(-700.0, 0.0, 400_001), -np.geomspace(1e-12, 1.0, 1000),
                        [0.0, -0.5 * np.log(2.0), -1022.5 * np.log(2.0) / 2]])
    got = x.copy()
    vexp(got, np.empty(got.size, np.int64))
    assert np.max(np.abs(got / np.exp(x) - 1.0)) < 2e-14
    low = np.array([-701.0, -745.0, -1e300])  # clamped at exp(-700): tiny, never 0 or NaN
    vexp(low, np.empty(3, np.int64))
    assert np.allclose(low, np.exp(-700.0), rtol=2e-14, atol=0)


@pytest.mark.parametrize("cov,k", [("diag", 3), ("diag", 6), ("full", 4)])
def test_float32_restart_statistics_are_close_to_float64(cov, k):
    """The restarts' float32 arithmetic: the statistics and log-likelihood of
    the float64 kernel to a few 1e-7, the same in-memory data giving the same
    numbers on every call."""
    from xtec.mixture.start import kmeans_plusplus, params_from_labels

    X = _overlapping(20_000)
    X64 = X.astype(np.float64)
    p = params_from_labels(X64, kmeans_plusplus(X64, k, np.random.default_rng(0)), k,
                           cov, 1e-6)
    a = stats_numba(X, p)
    b = stats_numba(X, p, threads=1, work_dtype=np.float32)
    scale = np.abs(a.sx).max()
    np.testing.assert_allclose(b.nk, a.nk, rtol=1e-6)
    np.testing.assert_allclose(b.sx, a.sx, rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_allclose(b.sxx, a.sxx, rtol=1e-5, atol=1e-6 * np.abs(a.sxx).max())
    assert b.loglik / b.n == pytest.approx(a.loglik / a.n, abs=1e-6)
    c = stats_numba(X, p, threads=2, work_dtype=np.float32)
    assert np.array_equal(b.sx, c.sx) and b.loglik == c.loglik


def test_best_start_does_not_depend_on_how_restarts_share_the_cores(monkeypatch):
    """Restarts run side by side in threads (float32, one numba thread each
    until others finish, then the cores they leave); the winner and its
    parameters are the same run one at a time."""
    from xtec.mixture import start as em_start

    X = _overlapping(60_000)
    sample = em_start.init_sample(X, np.arange(len(X)), 40_000, 0)
    assert sample.shape[0] >= em_start.PARALLEL_MIN_ROWS  # the multi-thread path
    together = em_start.best_start(sample, 4, "diag", 1e-6, 3, 0)
    monkeypatch.setattr(em_start, "_parallel_restarts", lambda n: 1)
    alone = em_start.best_start(sample, 4, "diag", 1e-6, 3, 0)
    assert np.array_equal(together.means, alone.means)
    assert np.array_equal(together.covariances, alone.covariances)


@pytest.mark.parametrize("work_dtype", [np.float32, np.float64])
def test_restarts_pre_blocked_rows_give_the_kernels_sums_bit_for_bit(work_dtype):
    """The restarts' E-step reads the sample once cut into transposed blocks;
    its statistics are those of the row kernel exactly, at every thread count,
    a partial last block included."""
    from xtec.mixture.engines import chunk_stats, fixed_rows_stats
    from xtec.mixture.start import kmeans_plusplus, params_from_labels

    X = _overlapping(20_000)[:19_937]  # 155 blocks of 128 and a partial one
    X64 = X.astype(np.float64)
    p = params_from_labels(X64, kmeans_plusplus(X64, 4, np.random.default_rng(0)), 4,
                           "diag", 1e-6)
    stats = fixed_rows_stats(X, "diag", "numba", work_dtype)
    for threads in (1, 2):
        want = chunk_stats(X, p, "numba", threads, work_dtype)
        got = stats(p, threads)
        for name in ("nk", "sx", "sxx"):
            assert np.array_equal(getattr(got, name), getattr(want, name)), name
        assert got.loglik == want.loglik and got.n == want.n


def test_restarts_reuse_the_lloyd_blocks_only_where_they_fit():
    """The restarts' E-step reads the Lloyd steps' blocks instead of cutting the
    sample again; blocks of another precision or size are cut anew; the sums
    are the same either way."""
    from xtec.mixture.engines import fixed_rows_stats
    from xtec.mixture.start import kmeans_plusplus, lloyd_blocks, params_from_labels

    X = _overlapping(5_000)[:4_999]
    X64 = X.astype(np.float64)
    p = params_from_labels(X64, kmeans_plusplus(X64, 3, np.random.default_rng(0)), 3,
                           "diag", 1e-6)
    want = fixed_rows_stats(X, "diag", "numba", np.float32)(p, 1)
    blocks = lloyd_blocks(X)
    marked = blocks.copy()
    marked[0, 0, 0] += 1.0  # a block the kernel reads shows up in its sums
    assert fixed_rows_stats(X, "diag", "numba", np.float32, marked)(p, 1).sx[:, 0].sum() != \
        pytest.approx(want.sx[:, 0].sum(), rel=1e-9)
    for other in (blocks, blocks.astype(np.float64), blocks[:, :, :64], None):
        got = fixed_rows_stats(X, "diag", "numba", np.float32, other)(p, 1)
        for name in ("nk", "sx", "sxx"):
            assert np.array_equal(getattr(got, name), getattr(want, name)), name


def test_sample_without_ids_is_the_sample_of_the_row_positions():
    """A fit without ids samples the rows whose positions hash below the rate
    (one kernel pass, no id array): the same rows as with ids 0..N-1 given,
    NumPy or Dask, kernel or NumPy twin."""
    from xtec.mixture import _kernels_numpy as mn
    from xtec.mixture import _start_kernels as sk
    from xtec.mixture.start import init_sample

    X = np.random.default_rng(4).normal(size=(9_001, 5)).astype(np.float32)
    ids = np.arange(X.shape[0])
    for size in (1, 700, 9_001, 20_000):
        want = init_sample(X, ids, size, 11)
        assert np.array_equal(init_sample(X, None, size, 11), want)
        assert np.array_equal(init_sample(da.from_array(X, chunks=(1_000, 5)), None, size, 11),
                              want)
    rate = 0.1
    got_ids, got_rows = sk.sample_range(X, rate, 11)
    twin_ids, twin_rows = mn.sample_range(X, rate, 11)
    np.testing.assert_array_equal(got_ids, twin_ids)
    np.testing.assert_array_equal(got_rows, twin_rows)
    np.testing.assert_array_equal(got_ids, np.flatnonzero(sk.splitmix_uniform(
        ids.astype(np.uint64), 11) < rate))
    assert got_rows.dtype == np.float64 and got_ids.size > 700
