"""Numba kernels of the EM (NumPy engine), kept at module level so numba can
cache them on disk: worker processes load them instead of compiling (seconds).
The EM kernels release the GIL, so Dask's threads (one chunk each) and the
restarts of the start run them side by side.

Imported only when the NumPy engine runs, so importing xtec stays light.
"""

import numba
import numpy as np
from numba.extending import overload

# Reassociation lets the row loops vectorise; the result is still the same
# for the same input whatever the chunking (every point is computed alone).
_FASTMATH = {"reassoc", "contract"}


@numba.njit(inline="always")
def _exp_poly(r):
    # exp(r) for |r| <= ln2/2: degree-11 Taylor, relative error < 1e-14.
    return 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6 + r * (1.0 / 24 + r * (
        1.0 / 120 + r * (1.0 / 720 + r * (1.0 / 5040 + r * (1.0 / 40320 + r * (
            1.0 / 362880 + r * (1.0 / 3628800 + r * (1.0 / 39916800)))))))))))


@numba.njit(cache=True, fastmath=_FASTMATH)
def vexp(a, kbuf):
    # In-place exp of a <= 0, vectorisable (numba's scalar exp is not):
    # exp(x) = 2^k exp(r), |r| <= ln2/2.  2^k is built from bits: k + 2^52 + 1023
    # as a float holds k + 1023 in its low mantissa bits, so no float -> int64
    # conversion (which AVX2 lacks: it made the loop scalar, 1.3x slower).
    m = a.size
    held = kbuf.view(np.float64)
    for i in range(m):
        x = max(a[i], -700.0)
        k = np.floor(x * 1.4426950408889634 + 0.5)
        r = x - k * 6.93147180369123816490e-01 - k * 1.90821492927058770002e-10
        a[i] = _exp_poly(r)
        held[i] = k + 4503599627371519.0
    for i in range(m):
        kbuf[i] = (kbuf[i] - 0x4330000000000000) << 52
    scale = kbuf.view(np.float64)
    for i in range(m):
        a[i] *= scale[i]


@numba.njit(cache=True, fastmath=_FASTMATH)
def vexp32(a, kbuf):
    # vexp in float32 (eight lanes where float64 has four): degree-7 Taylor on
    # |r| <= ln2/2 (Cody-Waite split of ln2); relative error at most 8e-8 over
    # [-87, 0], the float32 rounding itself.  Used by the start's restarts.
    for i in range(a.size):
        x = max(a[i], np.float32(-87.0))
        k = np.floor(x * np.float32(1.4426950408889634) + np.float32(0.5))
        r = x - k * np.float32(0.693359375) + k * np.float32(2.12194440e-4)
        p = np.float32(1.0 / 5040)
        p = p * r + np.float32(1.0 / 720)
        p = p * r + np.float32(1.0 / 120)
        p = p * r + np.float32(1.0 / 24)
        p = p * r + np.float32(1.0 / 6)
        p = p * r + np.float32(0.5)
        p = p * r + np.float32(1.0)
        a[i] = p * r + np.float32(1.0)
        kbuf[i] = (np.int32(k) + 127) << 23
    scale = kbuf.view(np.float32)
    for i in range(a.size):
        a[i] *= scale[i]


def exp_scratch(a, m):
    """The integer scratch (m,) that :func:`exp_inplace` needs for rows like a; jit only."""
    raise NotImplementedError("exp_scratch is called from numba kernels only")


def exp_inplace(a, kbuf):
    """In-place exp of a <= 0 in a's own precision (vexp or vexp32); jit only."""
    raise NotImplementedError("exp_inplace is called from numba kernels only")


@overload(exp_scratch, inline="always")
def _exp_scratch(a, m):
    if a.dtype == numba.types.float32:
        return lambda a, m: np.empty(m, np.int32)
    return lambda a, m: np.empty(m, np.int64)


@overload(exp_inplace, inline="always")
def _exp_inplace(a, kbuf):
    if a.dtype == numba.types.float32:
        return lambda a, kbuf: vexp32(a, kbuf)
    return lambda a, kbuf: vexp(a, kbuf)


# The helpers below are inlined into the kernels at Numba's IR level
# (``inline="always"``): the loops compile inside the caller with its fastmath
# flags, exactly as when they were written out there.
@numba.njit(inline="always")
def _columns(X, lo, m, like):
    """Rows lo..lo+m of X (n, T) transposed to (T, m) in the precision of array
    ``like``, so every inner loop runs over contiguous rows and vectorises."""
    t = X.shape[1]
    xt = np.empty((t, m), like.dtype)
    for i in range(m):
        for j in range(t):
            xt[j, i] = X[lo + i, j]
    return xt


@numba.njit(inline="always")
def _responsibilities(lp, m):
    """Log-probabilities lp (K, m) -> exp(lp - max) in place; returns the summed
    log-likelihood of the m points and 1 / (sum over K) per point (multiply the
    rows of lp by it for the responsibilities)."""
    k_ = lp.shape[0]
    mx = np.empty(m, lp.dtype)
    for i in range(m):
        mx[i] = lp[0, i]
    for k in range(1, k_):
        for i in range(m):
            mx[i] = max(mx[i], lp[k, i])
    tot = np.zeros(m, lp.dtype)
    kbuf = exp_scratch(lp, m)
    for k in range(k_):
        row = lp[k]
        for i in range(m):
            row[i] -= mx[i]
        exp_inplace(row, kbuf)
        for i in range(m):
            tot[i] += row[i]
    # One log per 32 points: each total lies in [1, K], so their
    # product cannot overflow for any practical K.
    s_ll = 0.0
    for i in range(m):
        s_ll += mx[i]
    for g in range(0, m, 32):
        prod = 1.0
        for i in range(g, min(m, g + 32)):
            prod *= tot[i]
        s_ll += np.log(prod)
    for i in range(m):
        tot[i] = 1.0 / tot[i]
    return s_ll, tot


@numba.njit(inline="always")
def _scaled_sum(r, tot):
    """r *= tot in place (one component's responsibilities); returns their sum."""
    s_nk = 0.0
    for i in range(r.shape[0]):
        r[i] *= tot[i]
        s_nk += r[i]
    return s_nk


@numba.njit(inline="always")
def _diag_block(xt, m, means, half, norm, zero, nk, sx, sxx):
    """One block's diagonal-covariance statistics: xt (T, >= m) holds the block's
    m rows as columns (every inner loop runs over contiguous rows and
    vectorises); nk (K,), sx and sxx (K, T) receive its sums; returns its summed
    log-likelihood.  lp = norm - sum(d^2 half) with half = prec / 2 (exact, so
    no float64 constant enters float32 loops); ``zero`` is 0 in the working
    precision."""
    k_, t = means.shape
    lp = np.empty((k_, m), means.dtype)
    for k in range(k_):
        acc = lp[k]
        for i in range(m):
            acc[i] = zero
        for j in range(t):
            mu = means[k, j]
            pj = half[k, j]
            row = xt[j]
            for i in range(m):
                d = row[i] - mu
                acc[i] += d * d * pj
        c = norm[k]
        for i in range(m):
            acc[i] = c - acc[i]
    s_ll, tot = _responsibilities(lp, m)
    for k in range(k_):
        r = lp[k]
        nk[k] = _scaled_sum(r, tot)
        for j in range(t):
            row = xt[j]
            a1 = zero
            a2 = zero
            for i in range(m):
                v = r[i] * row[i]
                a1 += v
                a2 += v * row[i]
            sx[k, j] = a1
            sxx[k, j] = a2
    return s_ll


@numba.njit(inline="always")
def _diag_outputs(nb, means, prec):
    """The diagonal kernels' per-block sums for ``nb`` blocks (nk (nb, K), sx and
    sxx (nb, K, T), log-likelihood (nb,), float64), ``half`` = prec / 2 and 0,
    both in the working precision of ``means``."""
    k_, t = means.shape
    half = np.empty_like(means)
    half[:] = 0.5 * prec
    return (np.zeros((nb, k_)), np.zeros((nb, k_, t)), np.zeros((nb, k_, t)), np.zeros(nb),
            half, np.zeros(1, means.dtype)[0])


@numba.njit(parallel=True, cache=True, fastmath=_FASTMATH, nogil=True)
def diag_stats(X, means, prec, norm, block):
    # Each block is transposed to (T, rows) for _diag_block.  The arithmetic
    # is in the precision of ``means`` (float64 for EM; float32, twice the
    # lanes, for the start's restarts); the sums over blocks and the
    # log-likelihood are float64.
    n = X.shape[0]
    nb = (n + block - 1) // block
    nk, sx, sxx, ll, half, zero = _diag_outputs(nb, means, prec)
    for b in numba.prange(nb):
        lo = b * block
        m = min(n, lo + block) - lo
        ll[b] = _diag_block(_columns(X, lo, m, means), m, means, half, norm, zero, nk[b],
                            sx[b], sxx[b])
    return nk, sx, sxx, ll


@numba.njit(parallel=True, cache=True, fastmath=_FASTMATH, nogil=True)
def diag_stats_blocked(blocks, n, means, prec, norm):
    """diag_stats of n rows already cut into blocks (n_blocks, T, block) by
    :func:`row_blocks` (the start's restarts pass over one sample some fifty
    times, and the transpose is a quarter of a pass).  Same sums, bit for bit."""
    nb, block = blocks.shape[0], blocks.shape[2]
    nk, sx, sxx, ll, half, zero = _diag_outputs(nb, means, prec)
    for b in numba.prange(nb):
        m = min(n, (b + 1) * block) - b * block
        ll[b] = _diag_block(blocks[b], m, means, half, norm, zero, nk[b], sx[b], sxx[b])
    return nk, sx, sxx, ll


@numba.njit(parallel=True, cache=True, nogil=True)
def row_blocks(X, block, like):
    """The rows of X (n, T) as blocks of ``block`` rows transposed to columns,
    (n_blocks, T, block) in the precision of array ``like``, the last block
    zero-padded."""
    n, t = X.shape
    nb = (n + block - 1) // block
    out = np.zeros((nb, t, block), like.dtype)
    for b in numba.prange(nb):
        lo = b * block
        for i in range(min(n, lo + block) - lo):
            for j in range(t):
                out[b, j, i] = X[lo + i, j]
    return out


@numba.njit(parallel=True, cache=True, fastmath=_FASTMATH, nogil=True)
def diag_predict(X, means, prec, norm):
    n, t = X.shape
    k_ = means.shape[0]
    labels = np.empty(n, np.int16)
    for i in numba.prange(n):
        best = -np.inf
        arg = 0
        for k in range(k_):
            acc = 0.0
            for j in range(t):
                d = X[i, j] - means[k, j]
                acc += d * d * prec[k, j]
            v = norm[k] - 0.5 * acc
            if v > best:
                best = v
                arg = k
        labels[i] = arg
    return labels




@numba.njit(cache=True, fastmath=_FASTMATH)
def _full_log_prob_block(xt, means, prec_chol, norm, d, y, lp):
    # lp[k, i] = norm_k - |(x_i - mu_k) U_k|^2 / 2 for the block xt (T, m),
    # U_k upper triangular, so column j of (x - mu) U needs rows 0..j only.
    # Rows are the inner loops (contiguous, vectorised); the sum over p is
    # unrolled by four so each pass over y does four multiply-adds.  Every
    # point is computed alone, in the same order wherever it sits in a block.
    t, m = xt.shape
    for k in range(means.shape[0]):
        u = prec_chol[k]
        for j in range(t):
            mu = means[k, j]
            src = xt[j]
            dst = d[j]
            for i in range(m):
                dst[i] = src[i] - mu
        q = lp[k]
        for i in range(m):
            q[i] = 0.0
        for j in range(t):
            a = u[0, j]
            d0 = d[0]
            for i in range(m):
                y[i] = d0[i] * a
            p = 1
            while p + 4 <= j + 1:
                a0 = u[p, j]
                a1 = u[p + 1, j]
                a2 = u[p + 2, j]
                a3 = u[p + 3, j]
                r0 = d[p]
                r1 = d[p + 1]
                r2 = d[p + 2]
                r3 = d[p + 3]
                for i in range(m):
                    y[i] += (r0[i] * a0 + r1[i] * a1) + (r2[i] * a2 + r3[i] * a3)
                p += 4
            while p <= j:
                a0 = u[p, j]
                r0 = d[p]
                for i in range(m):
                    y[i] += r0[i] * a0
                p += 1
            for i in range(m):
                q[i] += y[i] * y[i]
        c = norm[k]
        for i in range(m):
            q[i] = c - 0.5 * q[i]


@numba.njit(parallel=True, cache=True, fastmath=_FASTMATH, nogil=True)
def full_stats(X, means, prec_chol, norm, block, group):
    """Full-covariance EM statistics of X (n, T): per group of ``group`` blocks
    of ``block`` rows the summed responsibilities (K,), sums (K, T), lower
    triangles of the outer-product sums (K, T, T; upper left 0) and the
    log-likelihood.  One pass, parallel over groups, the arithmetic in the
    precision of ``means`` (as diag_stats), the sums over blocks in float64."""
    n, t = X.shape
    k_ = means.shape[0]
    nb = (n + block - 1) // block
    ng = (nb + group - 1) // group
    nk = np.zeros((ng, k_))
    sx = np.zeros((ng, k_, t))
    sxx = np.zeros((ng, k_, t, t))
    ll = np.zeros(ng)
    zero = np.zeros(1, means.dtype)[0]  # a block's sums run in the working precision
    for g in numba.prange(ng):
        for b in range(g * group, min(nb, (g + 1) * group)):
            lo = b * block
            m = min(n, lo + block) - lo
            xb = _columns(X, lo, m, means)
            w = np.empty((t, m), means.dtype)
            lp = np.empty((k_, m), means.dtype)
            _full_log_prob_block(xb, means, prec_chol, norm, w, np.empty(m, means.dtype), lp)
            s_ll, tot = _responsibilities(lp, m)
            ll[g] += s_ll
            for k in range(k_):
                r = lp[k]
                nk[g, k] += _scaled_sum(r, tot)
                _weighted_sums(r, xb, w, sx[g, k], zero)
                _lower_outer_sums(w, xb, sxx[g, k], zero)
    return nk, sx, sxx, ll


@numba.njit(inline="always")
def _weighted_sums(r, xb, w, sx, zero):
    """w = r * xb (T, m) (the responsibility-weighted rows) and sx (T,) += their
    sums, each summed from ``zero`` (its type: the working precision)."""
    t, m = xb.shape
    for j in range(t):
        src = xb[j]
        dst = w[j]
        a1 = zero
        for i in range(m):
            v = r[i] * src[i]
            dst[i] = v
            a1 += v
        sx[j] += a1


@numba.njit(inline="always")
def _lower_outer_sums(w, xb, acc, zero):
    """acc (T, T) += the lower triangle of w xb^T, each entry summed from ``zero``;
    the sum over p unrolled by four."""
    t, m = xb.shape
    for j in range(t):
        wj = w[j]
        p = 0
        while p + 4 <= j + 1:
            r0 = xb[p]
            r1 = xb[p + 1]
            r2 = xb[p + 2]
            r3 = xb[p + 3]
            c0 = zero
            c1 = zero
            c2 = zero
            c3 = zero
            for i in range(m):
                v = wj[i]
                c0 += v * r0[i]
                c1 += v * r1[i]
                c2 += v * r2[i]
                c3 += v * r3[i]
            acc[j, p] += c0
            acc[j, p + 1] += c1
            acc[j, p + 2] += c2
            acc[j, p + 3] += c3
            p += 4
        while p <= j:
            r0 = xb[p]
            c0 = zero
            for i in range(m):
                c0 += wj[i] * r0[i]
            acc[j, p] += c0
            p += 1


@numba.njit(parallel=True, cache=True, fastmath=_FASTMATH, nogil=True)
def full_predict(X, means, prec_chol, norm, block):
    """Most probable component of each row of X (n, T), full covariances."""
    n, t = X.shape
    k_ = means.shape[0]
    labels = np.empty(n, np.int16)
    nb = (n + block - 1) // block
    for b in numba.prange(nb):
        lo = b * block
        m = min(n, lo + block) - lo
        xt = _columns(X, lo, m, means)
        lp = np.empty((k_, m))
        _full_log_prob_block(xt, means, prec_chol, norm, np.empty((t, m)), np.empty(m), lp)
        for i in range(m):
            best = lp[0, i]
            arg = 0
            for k in range(1, k_):
                if lp[k, i] > best:
                    best = lp[k, i]
                    arg = k
            labels[lo + i] = arg
    return labels


@numba.njit(cache=True, nogil=True)
def label_stats(X, labels, k):
    """Per label 0..k-1 of the rows of X (n, T): count, sum and sum of squares
    of the rows, (3, k, T) float64 (the count repeated along T).  One serial
    pass in row order (Dask runs chunks side by side): no one-hot matrix and
    no float64 copy of X."""
    n, t = X.shape
    out = np.zeros((3, k, t))
    for i in range(n):
        c = labels[i]
        out[0, c, 0] += 1.0
        for j in range(t):
            v = np.float64(X[i, j])
            out[1, c, j] += v
            out[2, c, j] += v * v
    for c in range(k):
        out[0, c, :] = out[0, c, 0]
    return out
