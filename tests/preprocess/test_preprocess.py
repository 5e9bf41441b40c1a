"""Zero mask, thresholds (streaming vs definition), rescaling, array-API portability."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from xtec.errors import ParameterError
from xtec.preprocess import _kernels as pk
from xtec.preprocess import _kernels_numpy as pn
from xtec.preprocess import (
    clean_block,
    compute_threshold,
    extract_trajectories,
    keep_mask,
    kl_threshold_values,
    log_intensity_stats,
    order_statistics,
    rescale_block,
    summarize,
)
from xtec.preprocess.threshold import (
    bin_value_ranges,
    combine_log_mean_blocks,
    log_mean_block,
    threshold_aside,
)
from xtec.runtime.chunks import per_block


def reference_kl_cutoff(x: np.ndarray) -> float:
    """The published XTEC KL cutoff, written here from its definition on the raw values.

    Order-statistic IQR, numpy.histogram bins, Gaussians fitted with np.mean/np.std
    of the sorted values below each left edge, density KL, log-KL gradient steps.
    Nothing is shared with the implementation under test.
    """
    srt = np.sort(x)
    n = srt.size
    w = (srt[int(np.round(0.75 * n))] - srt[int(np.round(0.25 * n))]) / n ** (1 / 3)
    counts, edges = np.histogram(x, int(np.ceil((x.max() - x.min()) / w)))
    left = edges[:-1]
    dens = counts / (n * w)

    def kl(i):
        below = srt[: np.searchsorted(srt, left[i])]
        mu, sd = below.mean(), below.std()
        q = np.exp(-((left[:i] - mu) ** 2) / (2 * sd**2)) / np.sqrt(2 * np.pi * sd**2) + 1e-12
        p = dens[:i] / (dens[:i].sum() * (left[1] - left[0]))
        nz = p > 0
        return np.sum(p[nz] * np.log(p[nz] / q[nz]))

    i = int(0.5 * np.argmax(dens) + 0.5 * np.searchsorted(left, x.mean() + x.std()))
    delta, steps = np.inf, 0
    while delta > w and steps < 100:
        d = np.log(kl(i + 1)) - np.log(kl(i))
        delta = abs(d)
        i = int(np.searchsorted(left, left[i] - d))
        i = min(i, left.size - 2)
        steps += 1
    return float(left[i])


@pytest.fixture(scope="module")
def log_values():
    # Background (log-normal) plus a tail of signal voxels, like a real volume.
    rng = np.random.default_rng(3)
    bkg = rng.normal(1.0, 0.35, 20000)
    sig = rng.uniform(2.0, 8.0, 1500)
    return np.concatenate([bkg, sig])


def test_kl_cutoff_matches_definition(log_values):
    ref = reference_kl_cutoff(log_values)
    assert kl_threshold_values(log_values) == pytest.approx(ref, abs=1e-12)
    # The background (mean 1, sd 0.35) lies below; most of the tail above.
    assert 1.5 < ref < 2.5


def test_streaming_threshold_equals_in_memory(log_values):
    rng = np.random.default_rng(0)
    vol = np.zeros(30 * 40 * 25)
    vol[rng.permutation(vol.size)[: log_values.size]] = np.exp(log_values)
    vol = vol.reshape(30, 40, 25)
    x = np.log(vol[vol > 0])  # what the volume holds, after the exp/log round trip
    ref = reference_kl_cutoff(x)
    for chunks in ((30, 40, 25), (7, 11, 5), (30, 3, 25)):
        mean = da.from_array(vol, chunks=chunks)
        st = log_intensity_stats(mean)
        assert st.n == x.size
        ranks = [0, 17, st.n // 4, st.n // 2, st.n - 1]
        np.testing.assert_array_equal(order_statistics(mean, st, ranks), np.sort(x)[ranks])
        th = compute_threshold(mean, "kl")
        assert th.cutoff == pytest.approx(ref, abs=1e-12)
        np.testing.assert_array_equal(th.hist, np.histogram(x, th.edges)[0])
        # From the first pass's per-block summaries instead of two passes of
        # its own: the same statistics, order statistics and cutoff.
        lm = combine_log_mean_blocks(per_block(log_mean_block, mean))
        assert lm.stats == st
        np.testing.assert_array_equal(order_statistics(mean, st, ranks, lm.fine),
                                      np.sort(x)[ranks])
        th2 = compute_threshold(mean, "kl", lm)
        assert (th2.cutoff, th2.iterations) == (th.cutoff, th.iterations)
        np.testing.assert_array_equal(th2.hist, th.hist)
        # In a thread of its own (while the pipeline measures the lattice): the same
        th3 = threshold_aside(mean, "kl", lm).result(timeout=60)
        assert (th3.cutoff, th3.iterations, th3.n_nonzero) == (th.cutoff, th.iterations, th.n_nonzero)
        np.testing.assert_array_equal(th3.hist, th.hist)
        simple = compute_threshold(mean, "simple")
        assert simple.cutoff == pytest.approx(x.mean() + 2 * x.std())
        assert compute_threshold(mean, "simple", lm).cutoff == simple.cutoff
        user = compute_threshold(mean, 10.0)
        mask = keep_mask(mean, user).compute()
        assert mask.sum() == np.sum(vol > 10.0)


def _values_in_bins_by_definition(m, lo, width, nbins, hit):
    v = m.astype(np.float64)
    x = np.log(v[v > 0])
    b = np.clip(np.floor((x - lo) / width).astype(np.int64), 0, nbins - 1)
    return x[hit[b]], b[hit[b]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_values_in_bins_passes_over_only_means_outside_every_bin(dtype):
    """The order statistics' pass logs only the means near the wanted bins: what
    it returns equals logging and binning every mean, on the float neighbours of
    every bin edge (where a range too tight would lose a value), at the clipped
    ends, and for NaN, zero and negative means."""
    lo, nbins = -104.0, 2**15
    width = 193.0 / nbins
    rng = np.random.default_rng(5)
    cases = [[0], [nbins - 1], [5000], [17000, 17001, 17002, 20000], [16900, 16950]]
    for bins in cases:
        hit = np.zeros(nbins, bool)
        hit[bins] = True
        edges = lo + np.array(sorted({b + d for b in bins for d in (0, 1)})) * width
        near = [np.exp(e) for e in edges if -100 < e < 80]
        vals = [dtype(0), dtype(-1), dtype(np.nan), dtype(np.finfo(dtype).max),
                dtype(np.finfo(dtype).tiny)]
        for c in near:
            v = dtype(c)
            for _ in range(4):
                v = np.nextafter(v, dtype(0))
            for _ in range(9):
                vals.append(v)
                v = np.nextafter(v, dtype(np.inf))
        m = np.concatenate([np.array(vals, dtype),
                            np.exp(rng.uniform(-6, 8, 5000)).astype(dtype)])
        rng.shuffle(m)
        low, high = bin_value_ranges(lo, width, nbins, bins)
        assert low.size == len({b - i for i, b in enumerate(sorted(bins))})  # runs
        want_x, want_b = _values_in_bins_by_definition(m, lo, width, nbins, hit)
        assert want_x.size >= len(near)  # the edges' neighbours are in the test
        for mod in (pk, pn):
            x, b = mod.values_in_bins(m, lo, width, nbins, hit, low, high)
            np.testing.assert_array_equal(b, want_b)
            np.testing.assert_array_equal(x, want_x)


def test_threshold_errors():
    zeros = da.zeros((4, 4, 4), chunks=2)
    with pytest.raises(ParameterError, match="every voxel is zero"):
        compute_threshold(zeros, "kl")
    assert combine_log_mean_blocks(per_block(log_mean_block, zeros)) is None
    with pytest.raises(ParameterError, match="threshold must be"):
        compute_threshold(da.ones((4, 4, 4)), "otsu")
    # raised where the thread's result is asked for
    future = threshold_aside(zeros, "kl")
    with pytest.raises(ParameterError, match="every voxel is zero"):
        future.result(timeout=60)


def test_rescale_definitions():
    rng = np.random.default_rng(1)
    x = rng.uniform(1, 10, size=(12, 3, 4, 5)).astype(np.float32)
    m = x.mean(0)
    np.testing.assert_allclose(rescale_block(x, "mean"), x / m - 1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rescale_block(x, "zscore"), (x - m) / x.std(0), rtol=1e-4,
                               atol=1e-5)
    lg = np.log1p(x)
    np.testing.assert_allclose(rescale_block(x, "log-mean"), lg - lg.mean(0), rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(ParameterError):
        rescale_block(x, "minmax")


def test_nan_and_negative_intensities_are_handled():
    rng = np.random.default_rng(2)
    x = rng.uniform(1, 5, size=(6, 4, 4, 4)).astype(np.float32)
    x[2, 1, 1, 1] = np.nan
    x[3, 0, 0, 0] = -4.0
    s = summarize(da.from_array(x, chunks=(6, 2, 2, 2)))
    assert (s.n_nan_voxels, s.n_negative_values) == (1, 1)
    mean = s.mean.compute()
    assert mean[1, 1, 1] == 0  # the NaN voxel is dropped by the zero mask
    assert np.isfinite(mean).all()
    c = clean_block(x)
    assert c.min() >= 0 and np.isfinite(c).all()


def test_extracted_trajectories_do_not_depend_on_chunking(small_series):
    data = small_series.intensity
    mask = data.mean(0) > 20
    expected_index = np.flatnonzero(mask)
    expected = (data[:, mask] / data[:, mask].mean(0) - 1).T
    for chunks in ((8, 11, 61, 61), (8, 3, 16, 7)):
        d = da.from_array(data, chunks=chunks)
        m = da.from_array(mask, chunks=chunks[1:])
        tr = extract_trajectories(d, m, "mean")
        idx = tr.index.compute()
        X = tr.X.compute()
        order = np.argsort(idx)
        np.testing.assert_array_equal(idx[order], expected_index)
        np.testing.assert_allclose(X[order], expected, rtol=1e-5, atol=1e-6)


def test_block_functions_run_on_array_api_strict():
    xps = pytest.importorskip("array_api_strict")
    rng = np.random.default_rng(4)
    host = rng.uniform(0, 5, size=(6, 3, 4, 5)).astype(np.float32)
    host[:, 0, 0, 0] = 0
    x = xps.asarray(host)
    for method in ("mean", "zscore", "log-mean"):
        out = rescale_block(x, method)
        assert isinstance(out, type(x))
        np.testing.assert_allclose(np.from_dlpack(out), rescale_block(host, method), rtol=1e-5,
                                   atol=1e-6)
    host_bad = host.copy()
    host_bad[1, 2, 2, 2] = -1
    host_bad[0, 1, 1, 1] = np.nan
    cleaned = clean_block(xps.asarray(host_bad))
    np.testing.assert_array_equal(np.from_dlpack(cleaned), clean_block(host_bad))
    from xtec.preprocess import mean_block, trajectories_block

    np.testing.assert_allclose(np.from_dlpack(mean_block(x)), mean_block(host))
    mask = host.mean(0) > 2.5
    # NumPy blocks take the fused kernel (float64 sums), the array API float32
    # arithmetic: equal to float32 precision.
    for method in ("mean", "zscore", "log-mean", "none"):
        t = trajectories_block(x, xps.asarray(mask), method)
        np.testing.assert_allclose(np.from_dlpack(t), trajectories_block(host, mask, method),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_keep_test_is_one_comparison_equal_to_the_log_test(dtype):
    """above_cutoff_block compares with the smallest kept value; on every value
    near that boundary, and on zeros, negatives, NaN and infinities, it keeps
    exactly the voxels with mean > 0 and log(float64(mean)) > cut."""
    from xtec.preprocess import above_cutoff_block
    from xtec.preprocess.threshold import smallest_kept_value

    def by_definition(m, cut):
        with np.errstate(all="ignore"):
            return (m > 0) & (np.log(np.where(m > 0, m, 1).astype(np.float64)) > cut)

    rng = np.random.default_rng(5)
    special = np.array([0, -0.0, -1, np.nan, np.inf, -np.inf], dtype)
    for cut in [-np.inf, -100.0, -5.3, 0.0, 1e-9, 0.6131, 3.7, 88.7, 88.8, 700.0, np.inf,
                np.nan]:
        v = smallest_kept_value(cut, dtype)
        centre = min(cut, 80) if np.isfinite(cut) else 0
        with np.errstate(over="ignore"):
            parts = [special, np.exp(rng.normal(centre, 3, 20000)).astype(dtype)]
        if np.isfinite(v):
            lo = hi = np.array([v], dtype)
            for _ in range(40):  # 40 representable values either side
                lo, hi = np.nextafter(lo, dtype(0)), np.nextafter(hi, dtype(np.inf))
                parts += [lo, hi]
        m = np.concatenate(parts)
        np.testing.assert_array_equal(above_cutoff_block(m, cut), by_definition(m, cut),
                                      err_msg=f"cut={cut}")
    block = np.exp(rng.normal(0, 2, (2, 3, 4))).astype(np.float32)
    assert above_cutoff_block(block, 0.5).shape == block.shape


def test_flat_indices_of_any_block_equal_ravel_multi_index():
    from xtec.preprocess import flat_indices_block

    rng = np.random.default_rng(6)
    cases = [((16, 197, 196), (1, 64, 196), (3, 128, 0)), ((16, 98, 98), (2, 10, 5), (4, 30, 70)),
             ((5, 6, 7), (5, 6, 7), (0, 0, 0)), ((5, 6, 7), (2, 6, 7), (3, 0, 0)),
             ((5, 6, 7), (1, 1, 3), (2, 5, 4)), ((5, 6, 7), (2, 3, 7), (1, 3, 0))]
    for shape, block, offset in cases:
        mask = rng.random(block) < 0.3
        expected = np.ravel_multi_index(
            tuple(a + o for a, o in zip(np.nonzero(mask), offset)), shape)
        got = flat_indices_block(mask, offset, shape)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, expected, err_msg=str((shape, block, offset)))


def test_first_pass_log_mean_summary_equals_per_block_sums():
    """summarize() gathers the threshold's moments and histogram during the
    first pass, each block's histogram as its non-empty bins: the same counts
    as one dense histogram of every positive mean."""
    rng = np.random.default_rng(7)
    vol = rng.gamma(1.5, 2.0, size=(6, 4, 20, 25)).astype(np.float32)
    vol[:, 0, :3] = 0.0
    data = da.from_array(vol, chunks=(6, 1, 4, 13))
    summ = summarize(data)
    assert summ.mean.npartitions == 40
    assert summ.log_means.stats == log_intensity_stats(summ.mean)
    m = summ.mean.compute().ravel()
    x = np.log(m[m > 0].astype(np.float64))
    fine = summ.log_means.fine
    dense = np.bincount(np.clip(np.floor((x - fine.lo) / fine.width).astype(np.int64), 0,
                                fine.counts.size - 1), minlength=fine.counts.size)
    np.testing.assert_array_equal(fine.counts, dense)
    bins, counts = log_mean_block(m)[1:]
    assert bins.dtype == np.int32 and bins.size < fine.counts.size // 4
    np.testing.assert_array_equal(counts, dense[bins])
