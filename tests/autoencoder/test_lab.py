"""Laboratory series: the generator's instrument effects and their separation from the strain."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xtec.autoencoder.feature_space.patterns import fit_instrument, instrument_basis, log_d_grid
from xtec.autoencoder.synthetic import LabEffects, synthetic_alloy_series
from xtec.errors import ParameterError

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(lattice=(2.866, 2.884), z=(26.0, 27.0))  # 0.63 %, Fe/Co-like contrast


def test_lab_effects_keep_the_ideal_stream_and_return_the_truth():
    x = np.linspace(0, 1, 9)
    ideal = synthetic_alloy_series(composition=x, seed=4)
    again = synthetic_alloy_series(composition=x, seed=4, lab=None)
    np.testing.assert_array_equal(ideal.values, again.values)
    lab = synthetic_alloy_series(composition=x, seed=4, lab=LabEffects(bowing=0.02))
    assert np.all(np.abs(lab.displacement.values) <= 0.1)
    assert np.all(np.abs(lab.zero_shift.values) <= 0.01)
    vegard = 2.87 + 0.14 * x
    np.testing.assert_allclose(lab.lattice_parameter.values, vegard + 0.02 * x * (1 - x))
    assert not np.allclose(lab.values, ideal.values)


def test_displacement_moves_peaks_as_cos_theta():
    x = [0.5, 0.5]
    a = synthetic_alloy_series(
        composition=x,
        seed=0,
        noise=0.0,
        lab=LabEffects(displacement=0.0, zero_shift=0.0, kalpha2=0.0, texture=0.0, background=0.0),
    )
    one = LabEffects(displacement=0.2, zero_shift=0.0, kalpha2=0.0, texture=0.0, background=0.0)
    b = synthetic_alloy_series(composition=x, seed=0, noise=0.0, lab=one)
    s = float(b.displacement.values[0])
    tt = a.two_theta.values
    for lo, hi in ((40, 50), (92, 100)):  # the (110) and (220) peaks
        win = (tt > lo) & (tt < hi)
        ya, yb = (v[0, win] - v[0, win].min() for v in (a.values, b.values))
        c0 = np.sum(tt[win] * ya**4) / np.sum(ya**4)
        c1 = np.sum(tt[win] * yb**4) / np.sum(yb**4)
        expect = -np.degrees(2 * s * np.cos(np.radians(c0 / 2)) / 240.0)
        assert c1 - c0 == pytest.approx(expect, abs=0.004)


def test_map_fit_separates_a_strain_from_instrument_terms():
    u = log_d_grid(np.linspace(20, 100, 1601))
    basis = instrument_basis(u)[np.linspace(100, 1500, 9).astype(int)]
    rng = np.random.default_rng(0)
    truth = np.column_stack([rng.normal(0, 5, 30), rng.normal(0, 0.05, 30), rng.normal(0, 0.4, 30)])
    lags = truth @ basis.T + rng.normal(0, 0.02, (30, 9))
    coef, err = fit_instrument(lags, basis, np.ones(9), np.array([np.inf, 0.1, 0.45]))
    assert np.max(np.abs(coef[:, 0] - truth[:, 0])) < 5 * np.median(err[:, 0]) + 0.05
    assert np.all(err[:, 0] > 0)
    # without priors the zero and displacement terms absorb a constant: far worse
    free, free_err = fit_instrument(lags, basis, np.ones(9), np.array([np.inf] * 3))
    assert np.median(free_err[:, 0]) > 3 * np.median(err[:, 0])


@pytest.fixture(scope="module")
def small_lab():
    pytest.importorskip("torch")
    x = np.linspace(0, 1, 46)
    da = synthetic_alloy_series(composition=x, seed=1, lab=LabEffects(bowing=0.004), **SMALL)
    return da.isel(pattern=np.arange(46) % 3 != 0), da.isel(pattern=np.arange(46) % 3 == 0)


def test_small_lattice_change_on_a_laboratory_series(small_lab, tmp_path):
    from xtec.autoencoder.feature_space import FeatureSpaceAE

    train, test = small_lab
    model = FeatureSpaceAE(
        epochs=60, seed=0, n_threads=1, progress=False, correct_instrument=True
    ).fit(train)
    ds = model.embed(test)
    err = np.abs(ds.composition_estimate.values - test.composition.values)
    assert err.mean() < 0.02
    assert 0.4 <= np.mean(err <= ds.composition_uncertainty.values) <= 0.95
    for name in ("zero_shift_estimate", "displacement_estimate", "strain_uncertainty"):
        assert name in ds and np.all(np.isfinite(ds[name].values))
    r = np.corrcoef(ds.displacement_estimate.values, test.displacement.values)[0, 1]
    assert r > 0.5
    model.save(tmp_path / "m.safetensors")
    again = FeatureSpaceAE.load(tmp_path / "m.safetensors").embed(test)
    np.testing.assert_array_equal(again.composition_estimate.values, ds.composition_estimate.values)


def test_instrument_correction_needs_the_log_d_grid():
    pytest.importorskip("torch")
    from xtec.autoencoder.feature_space import FeatureSpaceAE

    with pytest.raises(ParameterError, match="correct_instrument"):
        FeatureSpaceAE(correct_instrument=True, grid="two_theta")


def test_cli_laboratory_series_and_bad_radius(tmp_path):
    pytest.importorskip("torch")

    def run(*args):
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "xtec",
                *args,
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )

    data = tmp_path / "lab.csv"
    assert run("ae", "synth", str(data), "--n", "30", "--lab").returncode == 0
    out = run(
        "ae",
        "train",
        str(data),
        "-o",
        str(tmp_path / "m.safetensors"),
        "--instrument",
        "--goniometer-radius",
        "0",
        "--no-progress",
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "goniometer_radius" in out.stderr
