"""The measured-like series (issue 27): expansion, drift, normalisation errors,
bad frames, each with its truth, in both NeXus layouts."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from xtec.datasets import (
    BRAGG,
    make_measured_series,
    make_series,
    read_truth,
    write_nxrefine,
    write_xtec,
)
from xtec.datasets.measured import lattice_coordinates
from xtec.errors import ParameterError

TINY = dict(h_range=(-2.5, 2.5), k_range=(-0.5, 0.5), l_range=(-0.2, 0.2))


def test_without_effects_it_is_the_realistic_series():
    r = make_series(kind="realistic", seed=3, **TINY)
    m = make_measured_series(seed=3, **TINY)
    np.testing.assert_array_equal(r.intensity, m.intensity)
    np.testing.assert_array_equal(r.classes, m.classes)
    assert m.kind == "measured" and m.bad_frames == ()
    np.testing.assert_array_equal(m.frame_scale, np.ones(m.temperature.size))


def _centroid(s, h0: float, frame: int) -> float:
    """Intensity-weighted H of the Bragg peak at (h0, 0, 0), in one frame."""
    il, ik = np.argmin(np.abs(s.ql)), np.argmin(np.abs(s.qk))
    near = np.abs(s.qh - h0) <= 0.08
    prof = s.intensity[frame, il, ik, near].astype(np.float64)
    prof -= prof.min()
    return float((prof * s.qh[near]).sum() / prof.sum())


def test_expansion_moves_every_peak_towards_the_origin():
    alpha = 3e-5
    fine = dict(TINY, hk_step=0.01, k_range=(-0.1, 0.1))
    s = make_measured_series(seed=0, expansion=alpha, gaps=False, **fine)
    still = make_measured_series(seed=0, gaps=False, **fine)
    dt = s.temperature[-1] - s.temperature[0]
    for h0 in (2.0, -2.0):
        moved = _centroid(s, h0, -1) - _centroid(s, h0, 0)
        expected = -h0 * alpha * dt / (1 + alpha * dt)  # towards the origin
        assert abs(moved - expected) < 0.35 * abs(expected), (h0, moved, expected)
        assert abs(_centroid(still, h0, -1) - _centroid(still, h0, 0)) < 0.2 * abs(expected)
    # The coldest frame is the orientation matrix's: the lattice stands there.
    (L, K, H), *_ = lattice_coordinates(s.ql, s.qk, s.qh, s.temperature, np.full(3, alpha), 0.0)
    np.testing.assert_allclose(np.squeeze(H), s.qh)
    # The truth follows the moved features: Bragg voxels around (2, 0, 0) still planted.
    assert (s.classes == BRAGG).sum() > 0.5 * (still.classes == BRAGG).sum()
    # Drift rotates about L: a peak at (2, 0, 0) gains a K component.
    *_, (L, K, H) = lattice_coordinates(s.ql, s.qk, s.qh, s.temperature, np.zeros(3), 1.0)
    ih, ik = np.argmin(np.abs(s.qh - 2.0)), np.argmin(np.abs(s.qk))
    assert abs(np.broadcast_to(K, (1, s.qk.size, s.qh.size))[0, ik, ih]) > 0.025


def test_normalisation_error_and_bad_frames_carry_their_truth():
    clean = make_measured_series(seed=1, **TINY)
    norm = make_measured_series(seed=1, norm_error=0.02, **TINY)
    # The same counts, each frame scaled by its recorded-monitor error.
    assert 0.005 < np.std(np.log(norm.frame_scale)) < 0.04
    np.testing.assert_allclose(norm.intensity, clean.intensity * norm.frame_scale[:, None, None, None]
                               .astype(np.float32), rtol=1e-5)
    bad = make_measured_series(seed=1, bad_frames={65.0: 0.5}, **TINY)
    i = int(np.argmin(np.abs(bad.temperature - 65.0)))
    assert bad.bad_frames == (i,) and bad.frame_scale[i] == 0.5
    ratio = bad.intensity[i].sum() / clean.intensity[i].sum()
    assert 0.48 < ratio < 0.52
    part = make_measured_series(seed=1, bad_frames={147.0: 0.5}, bad_kind="partial", **TINY)
    j = part.bad_frames[0]
    n_lost = int(round(0.5 * part.qh.size))  # a lost module: the first half of H
    assert not part.intensity[j][..., :n_lost].any()
    np.testing.assert_array_equal(part.intensity[j][..., n_lost:], clean.intensity[j][..., n_lost:])
    np.testing.assert_array_equal(np.delete(part.intensity, j, 0), np.delete(clean.intensity, j, 0))
    with pytest.raises(ParameterError, match="bad_kind"):
        make_measured_series(bad_kind="flicker", **TINY)
    with pytest.raises(ParameterError, match="factor"):
        make_measured_series(bad_frames={65.0: 2.0}, **TINY)


def test_frame_truth_written_in_both_layouts(tmp_path):
    s = make_measured_series(seed=0, norm_error=0.02, bad_frames={65.0: 0.5}, **TINY)
    x = write_xtec(s, tmp_path / "m.nxs")
    files = write_nxrefine(s, tmp_path / "nxr")
    for path in (x, files[0], files[-1]):
        classes, signal, tc = read_truth(path)
        np.testing.assert_array_equal(classes, s.classes)
        with h5py.File(path, "r") as f:
            np.testing.assert_allclose(f["entry/truth/frame_scale"][()], s.frame_scale)
            assert tuple(f["entry/truth/bad_frames"][()]) == s.bad_frames
