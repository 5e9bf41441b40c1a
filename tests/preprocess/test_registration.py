"""Frame registration (issue 27): the thermal expansion measured from the Bragg
peaks, frames resampled onto the coldest lattice, --register through the CLI."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from conftest import assert_one_line_error, run

from xtec.datasets import make_measured_series, write_xtec
from xtec.io.store import open_result
from xtec.preprocess.registration import (
    _subvoxel,
    estimate_registration,
    register_frames,
    wants_register,
)

# Far enough from the origin that 3e-5/K moves the farthest peak by a voxel.
GRID = dict(h_range=(4.0, 7.0), k_range=(-1.5, 1.5), l_range=(-0.2, 0.2))


def _estimate(series, chunks=(24, 5, 20, 20)):
    data = da.from_array(series.intensity, chunks=chunks)
    with dask.config.set(scheduler="threads"):
        return data, estimate_registration(data, series.temperature,
                                           (series.ql, series.qk, series.qh))


@pytest.mark.parametrize("seed", [0, 1])
def test_estimate_recovers_the_planted_expansion(seed):
    s = make_measured_series(seed=seed, expansion=(0.0, 1e-5, 4e-5), norm_error=0.02, **GRID)
    _, reg = _estimate(s)
    a = reg.expansion()
    assert a[2] == pytest.approx(4e-5, rel=0.03)
    assert a[1] == pytest.approx(1e-5, rel=0.15)
    assert a[0] == 0.0 and not np.isfinite(reg.noise[0])  # L: no lever arm, not measured
    # Per frame: the scale the generator applied, 1 / (1 + alpha (T - T_ref)).
    dt = s.temperature - s.temperature.min()
    np.testing.assert_allclose(reg.scale[:, 2], 1.0 / (1.0 + 4e-5 * dt), atol=5e-4)
    assert reg.reference == int(np.argmin(s.temperature))
    assert wants_register("auto", reg) and not wants_register("off", reg)


def test_clean_series_measures_no_expansion():
    _, reg = _estimate(make_measured_series(seed=0, **GRID))
    assert np.abs(reg.expansion()).max() < 1e-6
    assert reg.displacement().max() < 0.05
    assert not wants_register("auto", reg) and wants_register("on", reg)


def test_registered_frames_hold_still_whatever_the_chunking():
    s = make_measured_series(seed=0, expansion=3e-5, **GRID)
    data, reg = _estimate(s)
    axes = (s.ql, s.qk, s.qh)
    with dask.config.set(scheduler="threads"):
        a = register_frames(data, reg, axes).compute()
        b = register_frames(da.from_array(s.intensity, chunks=(7, 2, 9, 13)), reg,
                            axes).compute()
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        assert a.dtype == np.float32 and a.min() >= 0  # no overshoot below the samples
        # The reference frame is untouched; measured again, the lattice stands still.
        np.testing.assert_array_equal(a[reg.reference], s.intensity[reg.reference])
        again = estimate_registration(da.from_array(a, chunks=(24, 5, 20, 20)),
                                      s.temperature, axes)
    assert abs(again.expansion()[2]) < 0.05 * 3e-5
    assert again.displacement()[2] < 0.1 < reg.displacement()[2]


def test_cli_register_auto_leaves_a_clean_series_bit_identical(tmp_path, capsys):
    s = make_measured_series(seed=0, **GRID)
    f = write_xtec(s, tmp_path / "clean.nxs")
    for name, extra in (("auto", []), ("off", ["--register", "off"])):
        code, _, err = run(capsys, "cluster", f, "-o", tmp_path / f"{name}.zarr", "-k", "3",
                           "--no-progress", *extra)
        assert code == 0, err
    auto, off = open_result(tmp_path / "auto.zarr"), open_result(tmp_path / "off.zarr")
    np.testing.assert_array_equal(auto.labels.values, off.labels.values)
    assert auto.attrs["register"] is False and off.attrs["register"] is False
    # auto measured the lattice (and stored it); off did not look.
    assert auto.lattice_strain_Qh.dims == ("temperature",)
    assert np.abs(auto.lattice_strain_Qh.values).max() < 1e-4
    assert "lattice_strain_Qh" not in off and "expansion" not in off.attrs


def test_cli_register_records_the_expansion(tmp_path, capsys):
    s = make_measured_series(seed=1, expansion=3e-5, **GRID)
    f = write_xtec(s, tmp_path / "hot.nxs")
    code, _, err = run(capsys, "cluster", f, "-o", tmp_path / "r.zarr", "-k", "3",
                       "--method", "peaks", "--no-progress")
    assert code == 0, err
    ds = open_result(tmp_path / "r.zarr")
    assert ds.attrs["register"] is True
    assert ds.attrs["expansion"]["Qh"] == pytest.approx(3e-5, rel=0.05)
    assert ds.attrs["register_reference_temperature"] == pytest.approx(s.temperature.min())
    dt = s.temperature - s.temperature.min()
    np.testing.assert_allclose(ds.lattice_strain_Qh.values, 3e-5 * dt, atol=2e-4)


def test_bad_register_values_exit_2_with_one_line(tmp_path, capsys):
    s = make_measured_series(seed=0, h_range=(-1, 1), k_range=(-1, 1), l_range=(-0.1, 0.1))
    f = write_xtec(s, tmp_path / "t.nxs")
    code, _, err = run(capsys, "cluster", f, "-o", tmp_path / "r.zarr", "--register", "maybe")
    assert_one_line_error(code, err, "register")
    job = tmp_path / "job.toml"
    job.write_text(f'inputs = ["{f}"]\nout = "{tmp_path / "j.zarr"}"\nregister = true\n')
    code, _, err = run(capsys, "cluster", "--config", job)
    assert_one_line_error(code, err, "register must be")
    assert not (tmp_path / "r.zarr").exists() and not (tmp_path / "j.zarr").exists()


def test_block_maxima_equal_the_full_maximum_filter():
    """The bright-voxel shortcut finds exactly the maxima of a full 3x3x3 filter."""
    from scipy.ndimage import maximum_filter

    from xtec.preprocess.registration import _block_maxima

    def reference(b, n):
        peak = (b == maximum_filter(b, size=3, mode="nearest")) & (b > np.median(b))
        idx, vals = np.argwhere(peak), b[peak]
        top = np.argsort(-vals, kind="stable")[:n]
        return vals[top], idx[top]

    rng = np.random.default_rng(3)
    peaks = rng.gamma(2, 1, (6, 90, 120)).astype(np.float32)
    peaks[tuple(rng.integers(0, s, 200) for s in peaks.shape)] += 500 * rng.random(200)
    flat = np.zeros((10, 20, 30), np.float32)
    flat[3:6, 4:8, 10:12] = 5
    ties = rng.integers(0, 3, (8, 40, 40)).astype(np.float32)
    for b in (peaks, flat, ties, rng.random((5, 7, 9)).astype(np.float32)):
        for n in (1, 12, 192):
            vals, idx = _block_maxima(b, (0, 0, 0), n)
            ref_vals, ref_idx = reference(b, n)
            np.testing.assert_array_equal(vals, ref_vals)
            np.testing.assert_array_equal(idx, ref_idx)


def test_first_pass_maxima_give_the_same_registration():
    """The peak search that rides on the first pass (summarize's ``peaks``) finds the
    peaks the search over the mean volume finds, so the lattice estimate is the same."""
    from xtec.preprocess.registration import block_maxima, reference_peaks
    from xtec.preprocess.trajectories import summarize

    s = make_measured_series(seed=1, expansion=(0.0, 1e-5, 4e-5), **GRID)
    data = da.from_array(s.intensity, chunks=(24, 5, 20, 20))
    axes = (s.ql, s.qk, s.qh)
    with dask.config.set(scheduler="threads"):
        summ = summarize(data, peaks=block_maxima)
        assert len(summ.maxima) == int(np.prod(data.numblocks[1:]))
        assert summarize(data).maxima is None
        np.testing.assert_array_equal(reference_peaks(summ.mean, separation=4),
                                      reference_peaks(None, separation=4, maxima=summ.maxima))
        own = estimate_registration(data, s.temperature, axes, peaks_in=summ.mean)
        ridden = estimate_registration(data, s.temperature, axes, peaks_in=summ.mean,
                                       maxima=summ.maxima)
    np.testing.assert_array_equal(own.scale, ridden.scale)
    assert own.n_peaks == ridden.n_peaks > 4


def test_the_threshold_of_registered_frames_is_of_their_means(tmp_path, monkeypatch):
    """The threshold's passes start on the first pass's means while the lattice is
    measured; registered frames get the cutoff of their own means, as when the
    threshold waits for the registration."""
    import xtec.pipeline as pipeline
    from xtec.pipeline import ClusterConfig, run_cluster

    s = make_measured_series(seed=1, expansion=3e-5, **GRID)
    f = write_xtec(s, tmp_path / "hot.nxs")

    def fit(name, register):
        out = tmp_path / f"{name}.zarr"
        run_cluster(ClusterConfig(inputs=[str(f)], out=str(out), k=3, register=register))
        return open_result(out)

    aside, off = fit("aside", "on"), fit("off", "off")
    monkeypatch.setattr(pipeline, "threshold_aside", lambda *a, **k: None)
    waited = fit("waited", "on")
    assert aside.attrs["register"] is True and off.attrs["register"] is False
    th = {name: ds.attrs["threshold"] for name, ds in
          (("aside", aside), ("off", off), ("waited", waited))}
    assert th["aside"] == th["waited"]
    assert th["aside"]["cutoff_log"] != th["off"]["cutoff_log"]  # the means moved
    np.testing.assert_array_equal(aside.labels.values, waited.labels.values)


def test_subvoxel_fits_every_frame_as_one_frame_alone():
    # The fit runs on a box's frames at once; each frame's answer is its own:
    # a Gaussian's centre to a hundredth of a voxel, NaN where nothing stands
    # out, where the maximum is on the box's face, or a neighbour is in a gap.
    rng = np.random.default_rng(3)
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in (7, 9, 9)), indexing="ij"), axis=-1)
    centres = [(3.2, 4.0, 3.7), (3.0, 4.45, 4.9), (None,), (0.1, 4.0, 4.0), (3.0, 4.0, 4.0),
               (2.8, 3.6, 5.3)]
    boxes = rng.uniform(0.5, 1.0, (len(centres), 7, 9, 9))
    for t, c in enumerate(centres):
        if c[0] is not None:
            boxes[t] += 1000 * np.exp(-((grid - np.asarray(c)) ** 2).sum(-1) / (2 * 1.1**2))
    boxes[4, 3, 4, 5] = 0.0  # a neighbour in a gap: no parabola on that axis
    got = _subvoxel(boxes, 20.0)
    alone = np.stack([_subvoxel(b[None], 20.0)[0] for b in boxes])
    np.testing.assert_array_equal(got, alone)
    np.testing.assert_allclose(got[[0, 1, 5]], [centres[i] for i in (0, 1, 5)], atol=0.01)
    assert np.isnan(got[2]).all() and np.isnan(got[3]).all()  # no peak; on a face
    assert np.isnan(got[4, 2]) and np.isfinite(got[4, :2]).all()
