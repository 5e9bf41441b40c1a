"""Choosing K: BIC scans, the elbow rule, the plot, parallel fits on a cluster."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from xtec.errors import ParameterError
from xtec.mixture import hash_uniform, select
from xtec.preprocess import compute_threshold, extract_trajectories, keep_mask, summarize
from xtec.results.figures import plot_bic_scan


@pytest.fixture(scope="module")
def kept_sample(series):
    """About 20,000 kept trajectories of the synthetic series (hashed subsample)."""
    data = da.from_array(series.intensity, chunks=(24, 21, 121, 121))
    summ = summarize(data)
    mask = keep_mask(summ.mean, compute_threshold(summ.mean, "kl"))
    traj = extract_trajectories(data, mask, "mean")
    X, index = traj.X.compute(), traj.index.compute()
    keep = hash_uniform(index, 0) < 20_000 / len(index)
    return X[keep], index[keep]


def _result(bic):
    bic = np.asarray(bic, dtype=float)[:, None]
    ks = np.arange(2, 2 + len(bic))
    return select.BICResult(
        ks, np.array([0]), bic, -bic, np.ones_like(bic, int), np.ones_like(bic, bool), 1000, 10
    )


def test_choose_k_rules():
    r = _result([100, 60, 10, 8, 7, 5, 4.5])  # gains 40, 50, 2, 1, 2, 0.5
    assert select.choose_k(r, "elbow") == 4
    assert select.choose_k(r, "min") == 8
    # A late big gain moves the elbow: every later gain must be small.
    assert select.choose_k(_result([100, 60, 10, 8, -10, -11]), "elbow") == 6
    assert select.choose_k(_result([10, 5, 7, 9]), "min") == 3
    with pytest.raises(ParameterError):
        select.choose_k(r, "knee")


def test_bic_scan_finds_the_planted_classes(kept_sample, tmp_path):
    X, index = kept_sample
    res = select.bic_scan(X, index, ks=range(2, 9), seeds=(0, 1), tol=1e-4)
    assert res.bic.shape == (7, 2) and res.loglik.shape == (7, 2)
    # Four planted signal classes (Bragg, CDW, critical, TDS), and 2.4% of the
    # kept voxels are background: the BIC curve bends at 4 or 5 (the elbow rule
    # compares gains with the largest, the gain from K=2, so it moves with the
    # K=2 optimum: 4 with a worse one, 5 with the better one the start finds
    # now); its minimum lies further out (every component buys likelihood).
    k_elbow = select.choose_k(res, "elbow")
    assert k_elbow in (4, 5)
    assert select.choose_k(res, "min") > k_elbow
    assert np.all(np.diff(res.best_loglik) > -1e-3)  # more K never fits much worse
    rows = res.table()
    assert [r["k"] for r in rows] == list(range(2, 9))
    d = res.to_dict()
    assert d["k_elbow"] == k_elbow
    png = plot_bic_scan(res, tmp_path / "bic.png")
    with open(png, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bic_scan_parallel_on_local_cluster_matches_in_process(kept_sample):
    from distributed import Client, LocalCluster

    X, index = kept_sample[0][:4000], kept_sample[1][:4000]
    ref = select.bic_scan(X, index, ks=(2, 3), seeds=(0, 1), tol=1e-4)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cl,
        Client(cl),
    ):
        assert select.current_client() is not None
        Xd = da.from_array(X, chunks=1000)  # gathered, then fitted in parallel
        got = select.bic_scan(
            Xd, da.from_array(index, chunks=1000), ks=(2, 3), seeds=(0, 1), tol=1e-4
        )
    np.testing.assert_allclose(got.bic, ref.bic, rtol=1e-9)
    np.testing.assert_allclose(got.loglik, ref.loglik, rtol=1e-9)


def test_bic_scan_rejects_bad_ranges(kept_sample):
    X, index = kept_sample
    with pytest.raises(ParameterError):
        select.bic_scan(X[:5], index[:5], ks=range(2, 10))
    with pytest.raises(ParameterError):
        select.bic_scan(X, index, ks=[])
