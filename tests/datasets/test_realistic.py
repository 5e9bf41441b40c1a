"""The realistic synthetic series, physics-level scoring, and component merging.

The acceptance runs cluster small realistic volumes written in both NeXus
layouts, with two seeds, through the real pipeline, and judge the result on
physics: the CDW cluster's best F1 against its planted voxels and the Tc fitted
to it through ``ds.xtec.fit_order_parameter``.
"""

from __future__ import annotations

import numpy as np
import pytest

from xtec.datasets import (
    BACKGROUND,
    BRAGG,
    CDW,
    CRITICAL,
    GAP,
    TDS,
    make_series,
    read_truth,
    write_nxrefine,
    write_xtec,
)
from xtec.errors import ParameterError
from xtec.mixture.merge import entropy_elbow, entropy_merge, merge_components, shape_groups
from xtec.pipeline import ClusterConfig, run_cluster
from xtec.results.evaluate import best_cluster_f1, evaluate_result

SMALL = dict(h_range=(-2.0, 2.0), k_range=(-2.0, 2.0), l_range=(-0.5, 0.5))


@pytest.fixture(scope="module")
def realistic():
    return {seed: make_series(kind="realistic", seed=seed, **SMALL) for seed in (0, 1)}


def test_realistic_series_has_halos_noise_gaps_and_truth(realistic):
    s = realistic[0]
    assert s.kind == "realistic" and s.intensity.shape == (24, 11, 81, 81)
    c = s.contributions
    assert set(c) == {BACKGROUND, BRAGG, TDS, CDW, CRITICAL}
    bkg = c[BACKGROUND]
    # Halos share their peaks' points: around every Bragg peak thermal diffuse
    # scattering is above background, and the critical scattering is centred on
    # the CDW points.
    at_bragg = s.classes == BRAGG
    assert (c[TDS][at_bragg] > bkg[at_bragg]).mean() > 0.9
    cdw_peak = np.unravel_index(np.argmax(c[CDW]), c[CDW].shape)
    assert np.argmax(c[CRITICAL][cdw_peak[0]]) == np.ravel_multi_index(cdw_peak[1:], bkg.shape[1:])
    # The dominant-family truth holds gaps, background, Bragg, CDW and TDS.
    assert {GAP, BACKGROUND, BRAGG, CDW, TDS} <= set(np.unique(s.classes).tolist())
    # Structured background: the amorphous ring at |Q| = 2.2 r.l.u. stands above
    # the flat level between it and the beam.
    L, K, H = np.meshgrid(s.ql, s.qk, s.qh, indexing="ij")
    q = np.sqrt(L**2 + K**2 + H**2)
    assert bkg[np.abs(q - 2.2) < 0.03].mean() > 1.5 * bkg[np.abs(q - 1.7) < 0.03].mean()
    # Gaps: zero at every temperature, never signal.
    gap = s.classes == GAP
    assert 0.02 < gap.mean() < 0.15 and not s.intensity[:, gap].any() and not s.signal[gap].any()
    # Monitor-normalised Poisson counts, about 200 per unit intensity: not
    # integers, variance about equal to the value (counts / monitor); the
    # differences between neighbouring temperatures hold the noise, not the
    # slow temperature dependence.
    flat = (s.classes == BACKGROUND) & (bkg < 0.08) & ~gap
    vals = s.intensity[:, flat]
    assert not np.allclose(vals, np.round(vals))
    ratio = (np.diff(vals, axis=0).var(axis=0) / 2).mean() / vals.mean()
    assert 0.8 < ratio < 1.25
    assert 150 * 0.04 < vals.mean() < 250 * 0.08
    # Deterministic per seed.
    again = make_series(kind="realistic", seed=0, **SMALL)
    np.testing.assert_array_equal(again.intensity, s.intensity)
    with pytest.raises(ParameterError, match="kind"):
        make_series(kind="lumpy")


def test_best_cluster_f1_counts_dropped_voxels_as_misses():
    labels = np.array([[[0, 0, 1, -1, 2, 2]]])
    truth = np.array([[[True, True, False, True, False, False]]])
    c, f1, p, r = best_cluster_f1(labels, truth)
    assert c == 0 and p == 1.0 and r == pytest.approx(2 / 3) and f1 == pytest.approx(0.8)
    assert best_cluster_f1(labels, np.zeros_like(truth)) == (-1, 0.0, 0.0, 0.0)


def test_merging_rejoins_overlapping_and_same_shape_components():
    rng = np.random.default_rng(0)
    # Components 0 and 1 share their points (a halo split in two); 2 stands apart.
    n = 300
    resp = np.zeros((3 * n, 3))
    share = rng.uniform(0.3, 0.7, size=2 * n)
    resp[: 2 * n, 0], resp[: 2 * n, 1] = share, 1 - share
    resp[2 * n :, 2] = 1.0
    m = entropy_merge(resp)
    assert m.merges[0] == (0, 1) and m.entropy[0] > m.entropy[1] > -1e-9
    assert m.mapping(2).tolist() == [0, 0, 1] and m.groups(2) == [[0, 1], [2]]
    # An order parameter seen at three amplitudes is one shape; a rising and a
    # flat trajectory are not.
    t = np.linspace(20, 300, 24)
    op = np.clip(1 - t / 130, 0, None) ** 0.66
    op = op - op.mean()
    means = np.stack([3 * op, 1.5 * op, op, np.linspace(-0.5, 0.5, 24), 0.01 * np.sin(t)])
    assert shape_groups(means).tolist() == [0, 0, 0, 1, 2]
    resp5 = np.eye(5)[rng.integers(0, 5, 500)]
    merged = merge_components(means, resp5)
    assert merged.mapping[0] == merged.mapping[1] == merged.mapping[2]
    assert len(set(merged.mapping[2:].tolist())) == 3
    assert entropy_elbow(m) in (1, 2, 3)


def test_evaluate_reports_ari_only_on_the_separated_kind(small_series, tmp_path):
    out = tmp_path / "sep.zarr"
    path = write_xtec(small_series, tmp_path / "sep.nxs")
    run_cluster(ClusterConfig(inputs=[str(path)], out=str(out), k=4, seed=0))
    ev = evaluate_result(out, small_series)
    assert ev.ari is not None and ev.ari > 0.5 and "adjusted Rand" in ev.format()
    from xtec.io.store import open_result

    with pytest.raises(ValueError, match="grid"):
        evaluate_result(open_result(out).isel(Qh=slice(0, 10)), small_series)


# (method, layout, seed): each method on both layouts and both seeds, four runs
# in all (the full matrix is benchmarks/bench_realistic.py).
ACCEPTANCE = [("xtec-d", "xtec", 0), ("xtec-d", "nxrefine", 1),
              ("smooth", "nxrefine", 0), ("smooth", "xtec", 1)]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "layout", "seed"), ACCEPTANCE)
def test_cdw_cluster_and_tc_on_the_realistic_series(method, layout, seed, realistic, tmp_path):
    s = realistic[seed]
    if layout == "xtec":
        path = write_xtec(s, tmp_path / "real.nxs")
        inputs = [str(path)]
    else:
        files = write_nxrefine(s, tmp_path / "nxr")
        inputs, path = [str(p) for p in files[:-1]], files[0]
    classes, signal, tc = read_truth(path)
    np.testing.assert_array_equal(classes, s.classes)
    out = tmp_path / "res.zarr"
    run_cluster(ClusterConfig(inputs=inputs, out=str(out), k=4, method=method, seed=0))
    ev = evaluate_result(out, s)
    cdw = ev.families["cdw"]
    assert cdw.n_truth > 300
    assert cdw.f1 >= 0.9, ev.format()
    assert ev.tc_rel_error <= 0.01, ev.format()
    assert ev.tc_cluster == cdw.cluster  # the accessor picks the CDW cluster
    assert ev.ari is None
