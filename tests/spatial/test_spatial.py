"""XTEC-s: connected components, peak averaging, neighbour matrices, label smoothing."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi
from sklearn.metrics import adjusted_rand_score

import xtec.spatial as spatial
from xtec.datasets import BRAGG, CDW
from xtec.mixture import GaussianMixture
from xtec.preprocess import compute_threshold, extract_trajectories, keep_mask, summarize

GMM = dict(n_init=1, random_state=0)


@pytest.fixture(scope="module")
def kept(series):
    """Threshold mask and kept trajectories of the synthetic series, in memory."""
    data = da.from_array(series.intensity, chunks=(24, 21, 121, 121))
    summ = summarize(data)
    mask = keep_mask(summ.mean, compute_threshold(summ.mean, "kl")).persist()
    traj = extract_trajectories(data, mask, "mean")
    return dict(
        data=data, mask=mask, m=mask.compute(), X=traj.X.compute(), index=traj.index.compute()
    )


def _voxel_ari(series, kept, labels):
    vol = np.full(kept["m"].shape, -1, np.int16)
    vol.ravel()[kept["index"]] = labels
    sig = series.signal & kept["m"]
    return adjusted_rand_score(series.classes[sig], vol[sig])


@pytest.fixture(scope="module")
def xtec_d_ari(series, kept):
    gmm = GaussianMixture(4, **GMM).fit(kept["X"], kept["index"])
    return _voxel_ari(series, kept, gmm.predict(kept["X"]))


# ----------------------------------------------------------------- components
def _canonical_ndi(m):
    ref, n = ndi.label(m, structure=np.ones((3, 3, 3)))
    # renumber by the smallest flat index, as label_components promises
    flat = np.flatnonzero(ref)
    first = np.full(n + 1, np.iinfo(np.int64).max)
    np.minimum.at(first, ref.ravel()[flat], flat)
    lut = np.zeros(n + 1, np.int64)
    lut[1 + np.argsort(first[1:])] = np.arange(1, n + 1)
    return lut[ref], n


def test_components_match_scipy_whatever_the_chunking(kept):
    m = kept["m"]
    ref, n = _canonical_ndi(m)
    assert n > 50
    for chunks in ((21, 121, 121), (7, 40, 48), (5, 33, 29)):
        lab, k = spatial.label_components(da.from_array(m, chunks=chunks))
        assert k == n
        np.testing.assert_array_equal(lab.compute(), ref)


def test_components_diagonal_contact_and_empty_mask():
    m = np.zeros((4, 6, 6), bool)
    m[1, 2, 2] = m[2, 3, 3] = True  # corner contact across a block corner: 26-connected
    m[0, 5, 5] = True
    lab, n = spatial.label_components(da.from_array(m, chunks=(2, 3, 3)))
    assert n == 2
    lab = lab.compute()
    assert lab[1, 2, 2] == lab[2, 3, 3] == 2 and lab[0, 5, 5] == 1
    lab, n = spatial.label_components(da.zeros((3, 4, 5), bool, chunks=2))
    assert n == 0 and not lab.compute().any()


def test_component_trajectories_mean_and_max():
    rng = np.random.default_rng(3)
    data = rng.poisson(5.0, size=(6, 8, 9, 10)).astype(np.float32)
    m = rng.random((8, 9, 10)) < 0.3
    ref, n = _canonical_ndi(m)
    d = da.from_array(data, chunks=(6, 3, 4, 5))
    lab, k = spatial.label_components(da.from_array(m, chunks=(8, 9, 10)))
    assert k == n
    ids = np.arange(1, n + 1)
    mean, counts = spatial.component_trajectories(d, lab, n, "mean", return_counts=True)
    mx = spatial.component_trajectories(d, lab, n, "max")
    np.testing.assert_array_equal(counts, ndi.sum(m, ref, ids))
    for t in range(6):
        np.testing.assert_allclose(mean[:, t], ndi.mean(data[t], ref, ids), rtol=1e-12)
        np.testing.assert_array_equal(mx[:, t], ndi.maximum(data[t], ref, ids))


def test_peak_averaging_on_the_synthetic_series(series, kept, xtec_d_ari):
    """Voxel level, against the planted classes: at least XTEC-d and at least 0.95."""
    res = spatial.fit_peaks(kept["data"], kept["mask"], 4, **GMM)
    lab = res.labels.compute()
    assert res.trajectories.shape == (res.n_components, 24)
    painted = res.paint().compute()
    assert np.array_equal(painted >= 0, kept["m"])
    np.testing.assert_array_equal(painted[lab > 0], res.component_cluster[lab[lab > 0] - 1])
    sig = series.signal & kept["m"]
    ari = adjusted_rand_score(series.classes[sig], painted[sig])
    assert ari >= 0.95
    assert ari >= xtec_d_ari
    # With the max trajectory the peaks (Bragg, CDW) are told apart too.
    res_max = spatial.fit_peaks(kept["data"], kept["mask"], 4, how="max", **GMM)
    pos = ndi.maximum_position(series.intensity.mean(0), lab, np.arange(1, res.n_components + 1))
    cls = np.array([series.classes[p] for p in pos])
    peaks = np.isin(cls, [BRAGG, CDW])
    assert peaks.sum() > 80
    assert adjusted_rand_score(cls[peaks], res_max.component_cluster[peaks]) >= 0.95


# ----------------------------------------------------------------- label smoothing
def test_label_smoothing_on_the_synthetic_series(series, kept, xtec_d_ari):
    model = spatial.fit_smooth(
        kept["X"], kept["index"], kept["m"].shape, 4, kernel="local", length_scale=1.0, **GMM
    )
    ari = _voxel_ari(series, kept, model.labels_)
    assert ari >= 0.95
    assert ari >= xtec_d_ari


def test_smoothing_with_identity_is_plain_em():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (300, 5)), rng.normal(4, 1, (300, 5))])
    import scipy.sparse as sp

    a = GaussianMixture(2, n_init=1, tol=1e-10, engine="array-api").fit(X)
    b = spatial.SmoothedGaussianMixture(
        2, neighbours=sp.identity(600, format="csr"), n_init=1, tol=1e-10
    ).fit(X)
    np.testing.assert_allclose(a.means_, b.means_, rtol=1e-8)
    np.testing.assert_array_equal(a.predict(X), b.labels_)


def test_smoothing_overrides_only_the_e_step_and_clones():
    import scipy.sparse as sp
    from sklearn.base import clone

    from xtec.spatial.smoothing import SmoothedGaussianMixture

    own = {k for k in vars(SmoothedGaussianMixture) if callable(vars(SmoothedGaussianMixture)[k])}
    assert "_e_step" in own and "_em" not in own  # no copied EM loop
    w = sp.identity(10, format="csr")
    m = SmoothedGaussianMixture(2, neighbours=w, n_smooth=2, tol=1e-3)
    c = clone(m)
    assert c.n_smooth == 2 and c.neighbours.shape == (10, 10) and c.tol == 1e-3


# ----------------------------------------------------------------- distributed
def test_same_results_on_local_cluster_with_chunks(kept):
    from distributed import Client, LocalCluster

    small = kept["m"].copy()
    small[:, :, 60:] = False  # half the volume keeps the test fast
    # In memory first (threads, one chunk).
    ref_lab, ref_n = spatial.label_components(da.from_array(small))
    ref_lab = ref_lab.compute()
    ref_peaks = spatial.fit_peaks(kept["data"], da.from_array(small), 3, persist=False, **GMM)
    sel = np.isin(kept["index"], np.flatnonzero(small.ravel()))
    Xm, im = kept["X"][sel], kept["index"][sel]
    ref_s = spatial.fit_smooth(Xm, im, small.shape, 3, length_scale=1.0, max_iter=40, **GMM)

    data = kept["data"].rechunk((24, 7, 40, 30))
    mask = da.from_array(small, chunks=(7, 40, 30))
    assert mask.npartitions > 10
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cl,
        Client(cl) as client,
    ):
        lab, n = spatial.label_components(mask)
        assert n == ref_n
        np.testing.assert_array_equal(lab.compute(), ref_lab)
        peaks = spatial.fit_peaks(data, mask, 3, **GMM)
        np.testing.assert_array_equal(peaks.component_cluster, ref_peaks.component_cluster)
        np.testing.assert_allclose(peaks.trajectories, ref_peaks.trajectories, rtol=1e-12)
        traj = extract_trajectories(data, mask, "mean")
        assert traj.X.npartitions > 5
        X, index = client.persist([traj.X, traj.index])
        model = spatial.fit_smooth(X, index, small.shape, 3, length_scale=1.0, max_iter=40, **GMM)
        # Rows come in chunk order: compare voxel by voxel.
        got = dict(zip(index.compute().tolist(), model.labels_.tolist()))
    want = dict(zip(im.tolist(), ref_s.labels_.tolist()))
    assert got == want
    np.testing.assert_allclose(model.means_, ref_s.means_, rtol=1e-8, atol=1e-10)
