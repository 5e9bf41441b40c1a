"""Pattern intake: radiation, background, counting noise, K-alpha2, axes, refusals."""

import numpy as np
import pytest

from xtec.classifier.intake import (
    ANODES,
    check_pattern,
    radiation,
    search_peaks,
    snip_background,
    strip_ka2,
    to_two_theta,
)
from xtec.errors import InputError, ParameterError

X = np.arange(10.0, 90.0, 0.02)


def _gauss(x, c, fwhm):
    return np.exp(-4 * np.log(2) * ((x - c) / fwhm) ** 2)


def _ka(x, centres, rad, fwhm=0.08, ka2=True):
    y = np.zeros_like(x)
    for c in centres:
        y += _gauss(x, c, fwhm)
        if ka2:
            s = rad.ka2 / rad.wavelength * np.sin(np.radians(c / 2))
            y += 0.5 * _gauss(x, 2 * np.degrees(np.arcsin(s)), fwhm)
    return y


def test_radiation_names_and_numbers():
    cu = radiation(None)
    assert cu.wavelength == ANODES["Cu"][0] and cu.ka2 == ANODES["Cu"][1]
    assert radiation("mo").wavelength == pytest.approx(0.7093)
    assert radiation("CuKa1").ka2 is None
    syn = radiation("0.4959")
    assert syn.wavelength == 0.4959 and syn.ka2 is None and syn.satellites == ()
    for bad in ("Xx", "Cu-Kb", "20"):
        with pytest.raises(ParameterError):
            radiation(bad)


def test_background_is_found_under_peaks():
    bg = 200 + 800 * np.exp(-(X - 10) / 4) + 300 * np.exp(-0.5 * ((X - 25) / 5) ** 2)
    y = bg + 5000 * _ka(X, [30, 41, 55, 67], radiation("CuKa1"), ka2=False)
    est = snip_background(X, y, 1.5)
    far = np.all(np.abs(X[:, None] - np.array([30, 41, 55, 67])) > 1, axis=1)
    assert np.median(np.abs(est - bg)[far] / bg[far]) < 0.05
    assert np.all(est <= y + 1e-9)


def test_noise_is_not_called_a_line_and_weak_lines_are():
    rng = np.random.default_rng(0)
    flat = rng.poisson(np.full(X.shape, 300.0)).astype(float)
    found = search_peaks(X, flat + 0, radiation("CuKa1"))
    # 80 degrees of pure counting noise (4000 points): at most one 5-sigma fluctuation.
    assert len(found.two_theta) <= 1
    centres = [25.0, 33.0, 47.0, 61.0]
    mean = 300 + 20000 * _ka(X, centres[:3], radiation("CuKa1"), ka2=False)
    mean += 300 * _gauss(X, centres[3], 0.08)  # 1.5 % of the strongest, ~17 sigma
    found = search_peaks(X, rng.poisson(mean).astype(float), radiation("CuKa1"))
    np.testing.assert_allclose(found.two_theta, centres, atol=0.01)
    assert found.gain == pytest.approx(1, rel=0.2)  # raw counts


def test_ka2_doublets_give_ka1_positions():
    rad = radiation("Cu")
    centres = [22.0, 38.0, 55.0, 72.0, 86.0]
    rng = np.random.default_rng(1)
    y = rng.poisson(100 + 20000 * _ka(X, centres, rad)).astype(float)
    found = search_peaks(X, y, rad)  # doublet model (default "auto")
    np.testing.assert_allclose(found.two_theta, centres, atol=0.012)
    stripped = strip_ka2(X, 20000 * _ka(X, centres, rad), rad)
    assert stripped.max() == pytest.approx(20000, rel=0.02)
    ka2_86 = 2 * np.degrees(np.arcsin(rad.ka2 / rad.wavelength * np.sin(np.radians(43))))
    # The K-alpha2 line (10,000) is gone but for interpolation error on a 0.02-degree grid.
    assert abs(np.interp(ka2_86, X, stripped)) < 500


def test_other_axes_become_two_theta():
    rad = radiation("CuKa1")
    tt = np.linspace(20, 80, 300)
    q = 4 * np.pi * np.sin(np.radians(tt / 2)) / rad.wavelength
    x, y, note = to_two_theta(q, np.ones_like(q), "q", rad)
    np.testing.assert_allclose(x[[0, -1]], [20, 80], atol=1e-9)
    d = rad.wavelength / (2 * np.sin(np.radians(tt / 2)))
    x, _, _ = to_two_theta(d[::-1], np.ones_like(d), "d", rad)
    np.testing.assert_allclose(x[[0, -1]], [20, 80], atol=1e-9)
    energy = np.linspace(20, 50, 300)
    x, _, note = to_two_theta(energy, np.ones_like(energy), "energy", rad)
    assert x[-1] == pytest.approx(120) and "scale" in note
    # sin(theta) is proportional to the energy: ratios of sin^2 are those of E^2.
    s = np.sin(np.radians(x / 2))
    assert s[-1] / s[0] == pytest.approx(50 / 20, rel=1e-3)


@pytest.mark.parametrize(
    "x, y, message",
    [
        (X[:5], np.ones(5), "at least 10"),
        (X, -np.ones_like(X), "negative"),
        (X[::-1], np.ones_like(X), "increase"),
        (X, np.zeros_like(X), "empty"),
        (X, np.where(X > 50, np.nan, 1.0), "finite"),
    ],
)
def test_refusals(x, y, message):
    with pytest.raises(InputError, match=message):
        check_pattern(x, y)
