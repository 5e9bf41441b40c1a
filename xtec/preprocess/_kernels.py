"""Numba kernels of the preprocessing: the first pass over the series (mean over
T, rescaled trajectories, kept voxels' indices) and the threshold's streaming
passes over the mean volume.

The first-pass kernels read a block (T, n) once, with no temporaries the size
of the block.  Each threshold pass reads one block of mean_T I and works on
x = log(mean) of its voxels with mean > 0, in one loop, without the float64 copies, masks and index arrays
the NumPy expressions make (1.3 s -> 0.3 s for the four passes over
15.6 million voxels).  One block is one serial call: Dask runs blocks side by
side, and every sum runs in voxel order, so it does not depend on the threads.
Compiled once per installation (numba's disk cache).
"""

import numba
import numpy as np

# Reassociation lets the row loops vectorise; each voxel is still computed
# alone, so the result does not depend on the chunking.
_FASTMATH = {"reassoc", "contract"}


@numba.njit(cache=True, nogil=True)
def moments(m):
    """(count, sum x, sum x^2, min x, max x) of the block ``m`` (flat)."""
    return moments_and_hist(m, 0.0, 1.0, 1)[0]  # one bin: the loop without a histogram


@numba.njit(inline="always")
def _fine_bin(x, lo, width, nbins):
    b = np.int64(np.floor((x - lo) / width))
    return min(max(b, 0), nbins - 1)


@numba.njit(cache=True, nogil=True)
def fine_hist(m, lo, width, nbins):
    """Counts of x in ``nbins`` bins of ``width`` from ``lo`` (ends clipped)."""
    out = np.zeros(nbins, np.int64)
    for v in m:
        if v > 0:
            out[_fine_bin(np.log(np.float64(v)), lo, width, nbins)] += 1
    return out


@numba.njit(cache=True, nogil=True)
def positive_logs(m):
    """log(m) as float64 (n,) of the block ``m`` (flat), -inf where m is not > 0.
    The first pass takes each voxel's log once (its frame statistics and its
    log-mean summary both need it), in a loop of its own (3 ms for 632,000
    means; inside the loops that use it, 12)."""
    out = np.empty(m.size)
    for i in range(m.size):
        v = np.float64(m[i])
        out[i] = np.log(v) if v > 0 else -np.inf
    return out


@numba.njit(cache=True, nogil=True)
def values_in_bins(m, lo, width, nbins, hit, low, high):
    """The x whose fine bin has ``hit[bin]`` set, in voxel order, and their bins.

    ``low``/``high`` (float64, per run of hit bins): means m with low <= m <=
    high, a little wider than the bins (:func:`xtec.preprocess.threshold.
    bin_value_ranges`); only those are logged and binned, the rest are
    passed over by comparisons (8.5 -> 2.2 ms per million voxels).
    """
    out = np.empty(m.size)  # one pass: a block's worth of room, trimmed after
    bins = np.empty(m.size, np.int64)
    j = 0
    for v in m:
        f = np.float64(v)
        inside = False
        for r in range(low.size):
            inside |= (f >= low[r]) & (f <= high[r])
        if inside and f > 0:
            x = np.log(f)
            b = _fine_bin(x, lo, width, nbins)
            if hit[b]:
                out[j] = x
                bins[j] = b
                j += 1
    return out[:j].copy(), bins[:j].copy()


@numba.njit(cache=True, nogil=True)
def weighted_hist(m, edges):
    """Per bin of ``numpy.histogram``'s equal ``edges``: count, sum x, sum x^2."""
    nb = edges.size - 1
    lo, hi = edges[0], edges[-1]
    scale = nb / (hi - lo)
    out = np.zeros((3, nb))
    # The logs first, in a loop that vectorises (15.3 -> 10.7 ms per million
    # voxels), then the bins in voxel order (the same sums, bit for bit).
    for x in positive_logs(m):
        if x > -np.inf:
            # The arithmetic guess is off by at most one bin (rounding): one
            # comparison with the actual edges on each side corrects it.
            i = min(max(np.int64(np.floor((x - lo) * scale)), 0), nb - 1)
            if x < edges[i]:
                i = max(i - 1, 0)
            if i < nb - 1 and x >= edges[i + 1]:
                i += 1
            out[0, i] += 1.0
            out[1, i] += x
            out[2, i] += x * x
    return out


@numba.njit(cache=True, nogil=True)
def moments_and_hist(m, lo, width, nbins):
    """:func:`moments` and :func:`fine_hist` (int32 counts) of a block in one loop."""
    return log_moments_and_hist(positive_logs(m), lo, width, nbins)


@numba.njit(cache=True, nogil=True)
def log_moments_and_hist(x, lo, width, nbins):
    """:func:`moments_and_hist` of a block's :func:`positive_logs` ``x``."""
    out = np.zeros(nbins, np.int32)
    n, s1, s2 = 0, 0.0, 0.0
    low, high = np.inf, -np.inf
    for v in x:
        if v > -np.inf:
            n += 1
            s1 += v
            s2 += v * v
            low = min(low, v)
            high = max(high, v)
            out[_fine_bin(v, lo, width, nbins)] += 1
    return np.array([n, s1, s2, low, high]), out


@numba.njit(parallel=True, cache=True, fastmath=_FASTMATH, nogil=True)
def mean_over_t(x, block):
    """Per column of x (T, n): the mean over T after clipping negatives to 0, and 0
    where any value is NaN (float32 out, float64 sums); plus NaN columns and
    negative values counted.  One pass, no temporaries the size of x.  The loop
    over a row's values has no branch (the tests are counted, the sum takes 0),
    so it vectorises: 14.8 -> 7.4 ms for 24 x 632,000 values, the same sums."""
    t, n = x.shape
    out = np.empty(n, np.float32)
    nb = (n + block - 1) // block
    n_nan = np.zeros(nb, np.int64)
    n_neg = np.zeros(nb, np.int64)
    for b in numba.prange(nb):
        lo = b * block
        hi = min(n, lo + block)
        acc = np.zeros(hi - lo)
        bad = np.zeros(hi - lo, np.uint8)
        neg = 0
        for j in range(t):
            row = x[j, lo:hi]
            for i in range(hi - lo):
                v = row[i]
                bad[i] |= v != v
                neg += v < 0
                acc[i] += np.float64(v) if v > 0 else 0.0
        nan = 0
        for i in range(hi - lo):
            nan += bad[i]
            out[lo + i] = 0.0 if bad[i] else acc[i] / t
        n_nan[b] = nan
        n_neg[b] = neg
    return out, n_nan.sum(), n_neg.sum()


@numba.njit(parallel=True, cache=True, nogil=True)
def gather_rescale(x, cols, method, block):
    """Rescaled trajectories of the columns ``cols`` of x (T, n): (len(cols), T)
    float32, negatives clipped to 0 first.  method: 0 mean (I / mean - 1),
    1 zscore, 2 log-mean, 3 none; a zero mean (or spread) gives 0.  Float64
    sums, one pass over the selected columns, no temporaries the size of x."""
    t = x.shape[0]
    m = cols.size
    out = np.empty((m, t), np.float32)
    nb = (m + block - 1) // block
    for b in numba.prange(nb):
        lo = b * block
        hi = min(m, lo + block)
        buf = np.empty((hi - lo, t))
        for j in range(t):
            row = x[j]
            for i in range(lo, hi):
                v = np.float64(row[cols[i]])
                if v < 0:
                    v = 0.0
                if method == 2:
                    v = np.log1p(v)
                buf[i - lo, j] = v
        for i in range(hi - lo):
            if method == 3:
                for j in range(t):
                    out[lo + i, j] = buf[i, j]
                continue
            s = 0.0
            for j in range(t):
                s += buf[i, j]
            mu = s / t
            if method == 1:
                q = 0.0
                for j in range(t):
                    d = buf[i, j] - mu
                    q += d * d
                sd = np.sqrt(q / t)
                for j in range(t):
                    out[lo + i, j] = (buf[i, j] - mu) / sd if sd > 0 else 0.0
            elif method == 2:
                for j in range(t):
                    out[lo + i, j] = buf[i, j] - mu
            else:
                for j in range(t):
                    out[lo + i, j] = buf[i, j] / mu - 1.0 if mu > 0 else 0.0
    return out


@numba.njit(cache=True, nogil=True)
def flat_indices_3d(mask, o0, o1, o2, n1, n2):
    """Grid C-order indices of the set voxels of a (l, k, h) bool block at
    offset (o0, o1, o2) in a grid (., n1, n2), in block C order."""
    out = np.empty(mask.size, np.int64)
    j = 0
    for a in range(mask.shape[0]):
        for b in range(mask.shape[1]):
            row = ((a + o0) * n1 + b + o1) * n2 + o2
            for c in range(mask.shape[2]):
                # Branch-free: write always, advance only on a set voxel
                # (the branch mispredicts on real masks: 2x slower).
                out[j] = row + c
                j += np.int64(mask[a, b, c])
    return out[:j].copy()


@numba.njit(cache=True, nogil=True)
def frame_stats(x, m, logm, sample, inner, lut, e_lo, lo_m, w_m, nb_m):
    """Per-temperature statistics of a block x (T, n) with per-voxel means
    ``m`` (n,) over T and their logs ``logm`` (:func:`positive_logs`).

    Over the voxels with a positive mean (negative values count as 0):
    ``total`` (T,) the sums;
    ``region`` (T, nb_m) the sums split by the voxel's log(m) in ``nb_m`` bins
    of ``w_m`` from ``lo_m`` (ends clipped) and ``count`` (nb_m,) the voxels in
    each of those bins; ``hist`` (T, nb_r + 1) over the voxels with ``sample``
    set, column 0 their zero values and columns 1.. their ratios x / m in the
    bins between the edges ``inner`` (found with the table ``lut`` from binary
    order ``e_lo``: :func:`xtec.preprocess.frames.ratio_table`).

    Each step is a loop of its own over contiguous values (the bins, the
    gathered values, their ratios), so the steps without a branch vectorise;
    with the logs taken once by the caller and no logarithm for the ratios,
    51 -> 26 ms for a 61 MB block of the benchmark series."""
    t, n = x.shape
    # Each voxel's bin (nb_m: not positive, a spare column).
    bins = np.empty(n, np.int32)
    for i in range(n):
        bins[i] = _fine_bin(logm[i], lo_m, w_m, nb_m) if logm[i] > -np.inf else nb_m
    count = np.zeros(nb_m + 1, np.int64)
    for i in range(n):
        count[bins[i]] += 1
    ns = 0
    for i in range(n):
        ns += sample[i] and bins[i] < nb_m
    picked = np.empty(ns, np.int64)
    k = 0
    for i in range(n):
        if sample[i] and bins[i] < nb_m:
            picked[k] = i
            k += 1
    mq = np.empty(ns)
    for q in range(ns):
        mq[q] = np.float64(m[picked[q]])
    rbin = np.empty(ns, np.int64)
    # Frame by frame, along x's contiguous rows.  Voxel i adds to partial sum
    # i % 8 of its bin, unrolled: neighbouring voxels often share a bin, and one
    # sum made each addition wait for the one before.  A 33 MB block (24 x
    # 344k): 20.7 ms voxel by voxel (T strided values each), 12-13 ms so.
    region = np.zeros((t, nb_m))
    hist = np.zeros((t, inner.size + 2), np.int32)
    acc = np.zeros((8, nb_m + 1))
    n8 = n - n % 8
    r = np.empty(ns)
    for j in range(t):
        row = x[j]
        acc[:] = 0.0
        for i in range(0, n8, 8):
            acc[0, bins[i]] += _positive(row[i])
            acc[1, bins[i + 1]] += _positive(row[i + 1])
            acc[2, bins[i + 2]] += _positive(row[i + 2])
            acc[3, bins[i + 3]] += _positive(row[i + 3])
            acc[4, bins[i + 4]] += _positive(row[i + 4])
            acc[5, bins[i + 5]] += _positive(row[i + 5])
            acc[6, bins[i + 6]] += _positive(row[i + 6])
            acc[7, bins[i + 7]] += _positive(row[i + 7])
        for i in range(n8, n):
            acc[0, bins[i]] += _positive(row[i])
        for b in range(nb_m):
            s = 0.0
            for c in range(8):
                s += acc[c, b]
            region[j, b] = s
        for q in range(ns):
            r[q] = np.float64(row[picked[q]])
        h = hist[j]
        for q in range(ns):
            h[0] += not r[q] > 0
        for q in range(ns):
            r[q] = r[q] / mq[q]
        ratio_bins(r, inner, lut, e_lo, rbin)
        for q in range(ns):
            if r[q] > 0:
                h[1 + rbin[q]] += 1
    total = np.empty(t)
    for j in range(t):
        total[j] = region[j].sum()
    return hist, total, region, count[:nb_m].copy()


@numba.njit(cache=True, nogil=True)
def ratio_bins(r, inner, lut, e_lo, out):
    """Bin of each ratio r (float64, n,) between the edges ``inner`` into ``out``
    (int64, n,): the table's bin for r's slice of its binary order, or the next
    one (see :func:`xtec.preprocess.frames.ratio_table`); 0 below the table's
    orders (and for r <= 0, which the caller leaves out), the last above.  The
    slices are found in a loop of their own, which vectorises (13 -> 5 ns a
    ratio with the search in one loop)."""
    nb = inner.size + 1
    n_lut = lut.size
    bits = r.view(np.uint64)
    for q in range(r.size):
        # 10 bits below the exponent's: the ratio's slice of its order.  A
        # negative r's sign bit puts it past the table (left out anyway).
        e = np.int64(bits[q] >> np.uint64(52)) - 1023 - e_lo
        i = (e << 10) | np.int64((bits[q] >> np.uint64(42)) & np.uint64(0x3FF))
        out[q] = min(max(i, -1), n_lut)
    for q in range(r.size):
        i = out[q]
        if i < 0:
            out[q] = 0
        elif i >= n_lut:
            out[q] = nb - 1
        else:
            b = lut[i]
            if b < nb - 1 and r[q] >= inner[b]:
                b += 1
            out[q] = b


@numba.njit(inline="always")
def _positive(v):
    """v as float64, negatives and NaN as 0."""
    v = np.float64(v)
    return v if v > 0 else 0.0


@numba.njit(cache=True, nogil=True)
def local_maxima_among(b, cand, base):
    """Which of the C-order flat indices ``cand`` of b (l, k, h) are local maxima
    (>= each of their 26 neighbours, edges replicated) strictly above ``base``:
    (len(cand),) bool."""
    n0, n1, n2 = b.shape
    flat = b.ravel()
    out = np.zeros(cand.size, np.bool_)
    for c in range(cand.size):
        f = cand[c]
        v = flat[f]
        if not v > base:
            continue
        i, r = divmod(f, n1 * n2)
        j, k = divmod(r, n2)
        ok = True
        for a in range(max(i - 1, 0), min(i + 2, n0)):
            for bb in range(max(j - 1, 0), min(j + 2, n1)):
                for cc in range(max(k - 1, 0), min(k + 2, n2)):
                    if b[a, bb, cc] > v:
                        ok = False
                        break
                if not ok:
                    break
            if not ok:
                break
        out[c] = ok
    return out
