"""Frames (issue 27): per-temperature statistics from the first pass, bad frames
flagged, --normalize and --drop-temperatures through the command line."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from conftest import assert_one_line_error, run

from xtec.datasets import make_measured_series, write_nxrefine, write_xtec
from xtec.io.store import open_result
from xtec.preprocess import compute_threshold, rescale_block, summarize
from xtec.preprocess.frames import (
    FrameStats,
    check_frames,
    correction_scatter,
    normalize_rows,
    scale_frames,
    smooth_trend,
    wants_normalize,
)

GRID = dict(h_range=(-1.5, 1.5), k_range=(-1.5, 1.5), l_range=(-0.2, 0.2))


def _check(series, chunks=(24, 3, 20, 20)):
    with dask.config.set(scheduler="threads"):
        summ = summarize(da.from_array(series.intensity, chunks=chunks))
        thr = compute_threshold(summ.mean, "kl", summ.log_means)
    return summ.frames, check_frames(summ.frames, series.temperature, thr.cutoff)


@pytest.mark.parametrize("seed", [0, 1])
def test_bad_frames_flagged_and_clean_series_not(seed):
    clean = make_measured_series(seed=seed, **GRID)
    _, c = _check(clean)
    assert not c.flagged.any() and c.describe() == "no frame flagged"
    _, c = _check(make_measured_series(seed=seed, norm_error=0.02, expansion=3e-5, **GRID))
    assert not c.flagged.any()  # 2% errors are normalised, not flagged
    for temp, kind in ((65.0, "scale"), (147.0, "scale"), (65.0, "partial")):
        s = make_measured_series(seed=seed, bad_frames={temp: 0.5}, bad_kind=kind, **GRID)
        _, c = _check(s)
        assert np.flatnonzero(c.flagged).tolist() == list(s.bad_frames), (temp, kind)
        reason = c.reasons[s.bad_frames[0]]
        assert ("zero voxels" in reason) == (kind == "partial")
        if kind == "scale":  # the scale is measured, and corrected
            assert c.correction[s.bad_frames[0]] == pytest.approx(0.5, abs=0.02)


def test_frame_statistics_do_not_depend_on_the_chunking():
    s = make_measured_series(seed=0, norm_error=0.02, bad_frames={147.0: 0.5}, **GRID)
    (a, ca), (b, cb) = _check(s, (24, 5, 61, 61)), _check(s, (24, 2, 13, 29))
    np.testing.assert_array_equal(a.hist, b.hist)
    np.testing.assert_allclose(a.total, b.total, rtol=1e-12)
    np.testing.assert_allclose(a.region, b.region, rtol=1e-12)
    np.testing.assert_array_equal(ca.flagged, cb.flagged)
    np.testing.assert_allclose(ca.correction, cb.correction, rtol=1e-10)
    # The blocks' statistics combine in the order given.
    np.testing.assert_array_equal(a.count, b.count)
    one = FrameStats.combine([(a.hist, a.total, a.region, a.count)] * 2)
    np.testing.assert_array_equal(one.hist, 2 * a.hist)


def test_normalize_auto_only_when_frames_scatter():
    _, clean = _check(make_measured_series(seed=0, **GRID))
    _, norm = _check(make_measured_series(seed=0, norm_error=0.02, **GRID))
    assert correction_scatter(clean) < 0.004 < 0.01 < correction_scatter(norm)
    assert not wants_normalize(None, clean) and wants_normalize(None, norm)
    assert wants_normalize(True, clean) and not wants_normalize(False, norm)
    # The correction follows the planted errors, less their smooth part (which
    # no correction can tell from the physics' own trend over T).
    s = make_measured_series(seed=0, norm_error=0.02, **GRID)
    planted = np.log(s.frame_scale)
    planted -= smooth_trend(s.temperature, planted)
    assert np.corrcoef(np.log(norm.correction), planted)[0, 1] > 0.85


@pytest.mark.parametrize("rescale", ["mean", "none"])
def test_rows_normalised_in_place_equal_rows_of_scaled_frames(rescale):
    rng = np.random.default_rng(0)
    raw = rng.gamma(2.0, 3.0, size=(12, 50)).astype(np.float32)
    corr = rng.uniform(0.5, 1.5, size=12)
    rows = rescale_block(raw, rescale).T
    scaled = rescale_block((raw / corr[:, None]).astype(np.float32), rescale).T
    np.testing.assert_allclose(normalize_rows(rows, corr, rescale), scaled, rtol=2e-5,
                               atol=2e-6)
    # What peak averaging and the other rescalings read: the frames divided.
    vol = da.from_array(raw.reshape(12, 2, 5, 5), chunks=(5, 1, 5, 3))  # T chunked too
    np.testing.assert_allclose(scale_frames(vol, corr).compute(),
                               raw.reshape(12, 2, 5, 5) / corr[:, None, None, None], rtol=1e-6)


@pytest.fixture(scope="module")
def bad_series():
    return make_measured_series(seed=0, norm_error=0.02, bad_frames={65.0: 0.5}, **GRID)


def test_cli_flags_normalizes_and_drops_frames(bad_series, tmp_path, capsys):
    s = bad_series
    f = write_xtec(s, tmp_path / "m.nxs")
    bad_t = float(s.temperature[s.bad_frames[0]])
    code, out, err = run(capsys, "cluster", f, "-o", tmp_path / "a.zarr", "-k", "3",
                         "--no-progress")
    assert code == 0, err
    ds = open_result(tmp_path / "a.zarr")
    assert ds.xtec.flagged_temperatures() == [bad_t]
    assert ds.frame_flagged.dims == ("temperature",) and ds.attrs["flagged_temperatures"]
    assert any("flagged" in n and f"{bad_t:g}" in n for n in ds.attrs["notes"])
    # Auto: the 2% errors and the half-beam frame are divided out.
    assert ds.attrs["normalize"] is True
    assert ds.frame_correction.values[s.bad_frames[0]] == pytest.approx(0.5, abs=0.02)
    # The flagged frame is left out of the order-parameter fit.
    fit = ds.xtec.fit_order_parameter()
    assert not fit.used[s.bad_frames[0]] and fit.used.sum() == s.temperature.size - 1
    code, _, err = run(capsys, "cluster", f, "-o", tmp_path / "b.zarr", "-k", "3",
                       "--no-normalize", "--no-progress")
    assert code == 0, err
    b = open_result(tmp_path / "b.zarr")
    assert b.attrs["normalize"] is False and (b.frame_correction.values == 1).all()
    assert b.xtec.flagged_temperatures() == [bad_t]
    # Dropping the frame, from the NXRefine layout: it is gone, the rest checked.
    files = write_nxrefine(s, tmp_path / "nxr", parent=False)
    code, _, err = run(capsys, "cluster", *files, "-o", tmp_path / "c.zarr", "-k", "3",
                       "--drop-temperatures", f"{bad_t:.2f}", "--no-progress")
    assert code == 0, err
    c = open_result(tmp_path / "c.zarr")
    assert c.sizes["temperature"] == s.temperature.size - 1
    assert bad_t not in c.temperature.values and c.xtec.flagged_temperatures() == []
    assert c.attrs["dropped_temperatures"] == [round(bad_t, 2)]
    # Trajectories re-read from the sources follow the kept temperatures.
    assert c.xtec.mean_trajectory(c.xtec.order_parameter_cluster()).sizes["temperature"] == 23
    code, _, err = run(capsys, "cluster", f, "-o", tmp_path / "d.zarr",
                       "--drop-temperatures", "1000")
    assert_one_line_error(code, err, "no frame near 1000 K")
    code, _, err = run(capsys, "cluster", f, "-o", tmp_path / "d.zarr",
                       "--drop-temperatures", "warm")
    assert_one_line_error(code, err, "drop_temperatures must be")


def test_normalize_removes_most_of_the_frame_scatter(tmp_path, capsys):
    s = make_measured_series(seed=1, norm_error=0.02, **GRID)
    f = write_xtec(s, tmp_path / "n.nxs")
    code, _, err = run(capsys, "cluster", f, "-o", tmp_path / "n.zarr", "-k", "3",
                       "--normalize", "--no-progress")
    assert code == 0, err
    ds = open_result(tmp_path / "n.zarr")
    left = np.log(s.frame_scale) - np.log(ds.frame_correction.values)
    assert np.std(left) < 0.6 * np.std(np.log(s.frame_scale))


def test_lost_frame_left_out_alike_on_every_path(tmp_path):
    """A frame with a lost part is left out (default): picked rows, rows read
    again and the NXRefine layout give the same labels; the frame is gone."""
    from xtec.pipeline import ClusterConfig, run_cluster

    s = make_measured_series(seed=1, norm_error=0.02, bad_frames={147.0: 0.5},
                             bad_kind="partial", **GRID)
    lost_t = float(s.temperature[s.bad_frames[0]])
    x = str(write_xtec(s, tmp_path / "p.nxs"))
    nxr = [str(p) for p in write_nxrefine(s, tmp_path / "nxr", parent=False)]
    labels = []
    for name, inputs, kw in (("a", [x], {}), ("b", [x], dict(persist="none")),
                             ("c", nxr, {}), ("d", [x], dict(drop_lost_frames=False))):
        out = tmp_path / f"{name}.zarr"
        run_cluster(ClusterConfig(inputs=inputs, out=str(out), k=3, **kw))
        ds = open_result(out)
        labels.append(ds.labels.values)
        if name != "d":
            assert ds.sizes["temperature"] == 23 and lost_t not in ds.temperature.values
            assert ds.attrs["lost_frames_left_out"] == [lost_t]
            assert ds.attrs["normalize"] is True  # the 2% errors
        else:
            assert ds.sizes["temperature"] == 24 and ds.xtec.flagged_temperatures() == [lost_t]
    np.testing.assert_array_equal(labels[0], labels[1])
    np.testing.assert_array_equal(labels[0], labels[2])


def test_normalised_run_does_not_depend_on_the_chunking(tmp_path):
    from xtec.pipeline import ClusterConfig, run_cluster

    s = make_measured_series(seed=0, norm_error=0.02, bad_frames={147.0: 0.5}, **GRID)
    f = str(write_xtec(s, tmp_path / "c.nxs"))
    got = []
    for i, chunks in enumerate(((2, 20, 20), (5, 61, 61))):
        out = tmp_path / f"c{i}.zarr"
        run_cluster(ClusterConfig(inputs=[f], out=str(out), k=3, chunks=chunks))
        ds = open_result(out)
        assert ds.attrs["normalize"] is True
        got.append((ds.labels.values, ds.frame_correction.values, ds.cluster_mean.values))
    np.testing.assert_array_equal(got[0][0], got[1][0])
    np.testing.assert_array_equal(got[0][1], got[1][1])
    np.testing.assert_allclose(got[0][2], got[1][2], rtol=1e-5, atol=1e-6)
