"""The large-series generator in bounded memory (issue 29): slabs above the
limit are made in blocks of K chunk rows; below it nothing changes."""

from __future__ import annotations

import h5py
import numpy as np

from xtec.datasets import write_xtec_large
from xtec.datasets.separated import _planted, separated_model
from xtec.datasets.series import centred_axes, default_temperatures


def _read(path):
    with h5py.File(path, "r") as f:
        return (f["entry/data/data"][()], f["entry/truth/classes"][()],
                f["entry/truth/signal"][()])


def test_blocked_slabs_keep_the_model_and_unblocked_ones_the_old_noise(tmp_path):
    shape, seed = (2, 40, 30), 5
    whole = write_xtec_large(tmp_path / "whole.nxs", shape, seed=seed, chunks=(1, 8, 16))
    blocked = write_xtec_large(tmp_path / "blocked.nxs", shape, seed=seed, chunks=(1, 8, 16),
                               max_plane_bytes=1)
    d0, c0, s0 = _read(whole)
    d1, c1, s1 = _read(blocked)
    np.testing.assert_array_equal(c1, c0)  # the planted truth does not depend on blocks
    np.testing.assert_array_equal(s1, s0)
    assert d1.shape == d0.shape and not np.array_equal(d1, d0)  # other noise draws
    assert np.all(d1 >= 0) and np.array_equal(d1, np.rint(d1))
    # Unblocked slabs: the noise of one (seed, slab) stream, as before.
    t = default_temperatures()
    ql, qk, qh = centred_axes(shape, 0.05, 0.1)
    model = separated_model(np.random.default_rng(seed), t, ql, qk, qh, hk_step=0.05,
                            l_step=0.1, tc=130.0, beta=0.33, background=4.0, signal_ratio=3.0)
    lam = _planted(ql[1:2], qk, qh, **model)[0]
    expected = np.random.default_rng([seed, 1]).poisson(lam * 0.2).astype(np.float32)
    np.testing.assert_array_equal(d0[:, 1:2], expected)
