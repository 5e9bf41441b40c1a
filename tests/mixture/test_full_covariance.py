"""The fused full-covariance engine: scikit-learn's EM step, the array-API engine,
identical labels in-process, on a 2-worker LocalCluster and with other chunkings;
and the start (restarts in parallel threads, optionally on a sub-sample)."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest

from xtec.mixture import (
    GaussianMixture,
    MixtureParams,
    chunk_predict,
    data_stats,
    log_prob,
    m_step,
    params_from_labels,
    stats_array_api,
    stats_numba,
)


def correlated_blobs(n=6000, t=10, k=3, seed=0):
    """Clusters with full (correlated, unequal) covariances, float32."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2, size=(k, t))
    mix = [rng.normal(size=(t, t)) * rng.uniform(0.1, 0.5) for _ in range(k)]
    y = rng.integers(0, k, n)
    X = centers[y] + np.einsum("nj,nij->ni", rng.normal(size=(n, t)), np.stack(mix)[y])
    return X.astype(np.float32), y


def start_params(X, k=3):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter=1 does not converge
        g = GaussianMixture(k, covariance_type="full", max_iter=1, n_init=1,
                            random_state=0).fit(X)
    return g.params_


def test_full_engine_em_steps_equal_scikit_learn():
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture as SkGMM

    X, _ = correlated_blobs()
    p = start_params(X)
    sk = SkGMM(3, covariance_type="full", max_iter=5, tol=0, weights_init=p.weights,
               means_init=p.means, precisions_init=np.linalg.inv(p.covariances),
               reg_covar=1e-6, init_params="random_from_data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk.fit(X.astype(np.float64))
    for _ in range(5):
        p = m_step(data_stats(X, p, engine="numba"), 1e-6)
    np.testing.assert_allclose(p.means, sk.means_, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(p.covariances, sk.covariances_, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(p.weights, sk.weights_, rtol=1e-6, atol=1e-6)


def test_full_engine_equals_array_api_engine_and_densities():
    X, _ = correlated_blobs(n=3001, seed=1)  # not a multiple of the row block
    p = start_params(X)
    a, b = stats_numba(X, p), stats_array_api(X, p)
    np.testing.assert_allclose(a.nk, b.nk, rtol=1e-10)
    np.testing.assert_allclose(a.sx, b.sx, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(a.sxx, b.sxx, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(a.sxx, np.swapaxes(a.sxx, 1, 2))
    assert a.loglik == pytest.approx(b.loglik, rel=1e-12)
    lab = chunk_predict(X, p, "numba")
    np.testing.assert_array_equal(lab, np.argmax(log_prob(X, p), axis=1))


def test_array_api_full_path_is_vectorised_over_components():
    xps = pytest.importorskip("array_api_strict")
    X, _ = correlated_blobs(n=2000, seed=2)
    p = start_params(X)
    a, b = stats_array_api(xps.asarray(X), p), stats_numba(X, p)
    np.testing.assert_allclose(a.sxx, b.sxx, rtol=1e-9, atol=1e-9)
    assert a.loglik == pytest.approx(b.loglik, rel=1e-12)


@pytest.mark.slow
def test_full_labels_identical_in_process_chunked_and_on_local_cluster():
    from distributed import Client, LocalCluster

    X, y = correlated_blobs(n=9000, seed=3)
    ref = GaussianMixture(3, covariance_type="full", random_state=0).fit(X)
    ref_labels = ref.predict(X)
    for chunks in (1000, 777):
        dx = da.from_array(X, chunks=(chunks, -1))
        g = GaussianMixture(3, covariance_type="full", random_state=0).fit(dx)
        np.testing.assert_array_equal(g.predict(dx).compute(), ref_labels)
        np.testing.assert_allclose(g.means_, ref.means_, rtol=1e-9, atol=1e-9)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                     dashboard_address=None) as cl,
        Client(cl) as client,
    ):
        dx = da.from_array(X, chunks=(1500, -1))
        g = GaussianMixture(3, covariance_type="full", random_state=0).fit(dx)
        labels = g.predict(dx).compute()
        # Held on the workers, a pass is one task per worker thread over the
        # chunks it holds: the same statistics to the bit as one task per chunk.
        from xtec.mixture import passes as em
        from xtec.mixture.engines import chunk_stats
        from xtec.runtime.chunks import chunks_by_thread, held_chunks, per_block

        held = dx.rechunk((1000, -1)).persist()
        shares = chunks_by_thread(held_chunks(held))
        assert len(shares) == 2 and sorted(i for _, idx in shares for i in idx) == list(range(9))
        from distributed import get_task_stream

        with get_task_stream(client) as stream:
            grouped = per_block(chunk_stats, held, args=(g.params_, "auto", 1))
        assert len(stream.data) == 2  # one task per worker thread

        per_chunk = em.data_stats(dx.rechunk((1000, -1)), g.params_)
        total = grouped[0]
        for p in grouped[1:]:
            total = total + p
        for a, b in [(total.nk, per_chunk.nk), (total.sx, per_chunk.sx),
                     (total.sxx, per_chunk.sxx)]:
            np.testing.assert_array_equal(a, b)
        assert total.loglik == per_chunk.loglik
        g2 = GaussianMixture(3, covariance_type="full", random_state=0).fit(held)
        np.testing.assert_array_equal(g2.predict(held).compute(), ref_labels)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_allclose(g.covariances_, ref.covariances_, rtol=1e-9, atol=1e-12)


def test_params_from_labels_equals_one_hot_sums():
    rng = np.random.default_rng(0)
    X = rng.random((500, 6))
    labels = rng.integers(0, 3, 500)
    labels[labels == 2] = 0  # an empty component starts from the global spread
    r = np.zeros((500, 3))
    r[np.arange(500), labels] = 1.0
    r += 1e-6
    from xtec.mixture import SufficientStats

    for cov in ("diag", "full"):
        sxx = r.T @ (X * X) if cov == "diag" else np.einsum("nk,ni,nj->kij", r, X, X)
        want = m_step(SufficientStats(r.sum(0), r.T @ X, sxx, 0.0, 500), 1e-6)
        got = params_from_labels(X, labels, 3, cov, 1e-6)
        assert isinstance(got, MixtureParams)
        np.testing.assert_allclose(got.means, want.means, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got.covariances, want.covariances, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got.weights, want.weights, rtol=1e-12)


def test_start_finds_the_same_optimum_as_restarts_on_the_whole_sample():
    # Parallel restarts (default) and restarts on a sub-sample (restart_size)
    # reach the optimum of the sequential start, every restart converged on
    # the whole sample, on well separated clusters.
    from xtec.mixture import best_start, init_sample, kmeans_plusplus, run_em

    X, _ = correlated_blobs(n=20000, k=4, seed=4)
    g = GaussianMixture(4, covariance_type="full", random_state=0)
    sample = init_sample(X, np.arange(len(X)), 50_000, 0)
    starts = [best_start(sample, 4, "full", 1e-6, 3, 0),
              best_start(sample, 4, "full", 1e-6, 3, 0, restart_size=4000)]
    old = None
    for init in range(3):
        rng = np.random.default_rng([0, init])
        p = params_from_labels(sample, kmeans_plusplus(sample, 4, rng), 4, "full", 1e-6)
        p, ll, _, _ = run_em(sample.astype(np.float32), p, len(sample), reg_covar=1e-6,
                             tol=g.tol, max_iter=g.max_iter)
        old = max(old or (p, ll), (p, ll), key=lambda x: x[1])
    ll_old = data_stats(X, old[0]).loglik / len(X)
    for new in starts:
        assert data_stats(X, new).loglik / len(X) >= ll_old - 1e-6
