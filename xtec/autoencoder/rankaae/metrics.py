"""How well a RankAAE latent is organised: Spearman correlations and the early-stopping score (NumPy)."""

from __future__ import annotations

import numpy as np


def spearman_matrix(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Spearman correlations between the columns of ``a`` (n, p) and of ``b`` (n, q).

    Rows with a NaN in either column are left out pair by pair.  Returns (p, q),
    or (p, p) when ``b`` is None.
    """
    from scipy.stats import rankdata

    a = np.asarray(a, dtype=float)
    b = a if b is None else np.asarray(b, dtype=float)
    out = np.full((a.shape[1], b.shape[1]), np.nan)
    if a.shape[0] >= 3 and np.isfinite(a).all() and np.isfinite(b).all():
        # No missing values: rank every column once, one matrix product.
        ra = rankdata(a, axis=0)
        rb = ra if b is a else rankdata(b, axis=0)
        ra, rb = ra - ra.mean(0), rb - rb.mean(0)
        na, nb = np.sqrt((ra**2).sum(0)), np.sqrt((rb**2).sum(0))
        with np.errstate(invalid="ignore", divide="ignore"):
            rho = (ra.T @ rb) / np.outer(na, nb)
        ok = np.outer(na > 0, nb > 0)
        out[ok] = np.clip(rho[ok], -1.0, 1.0)
        return out
    for i in range(a.shape[1]):
        for j in range(b.shape[1]):
            ok = np.isfinite(a[:, i]) & np.isfinite(b[:, j])
            if ok.sum() < 3:
                continue
            ra, rb = rankdata(a[ok, i]), rankdata(b[ok, j])
            if ra.std() == 0 or rb.std() == 0:
                continue
            out[i, j] = np.corrcoef(ra, rb)[0, 1]
    return out


def latent_score(
    z: np.ndarray, d: np.ndarray, k: int, tolerance: float = 0.15
) -> tuple[float, float, float]:
    """What early stopping watches, on held-back spectra.

    Returns ``(min_spearman, max_excess_correlation, score)``: the smallest
    Spearman of a constrained dimension with its descriptor; the largest
    |Spearman| between a free and any other dimension, or between two
    constrained ones beyond what their descriptors share; and
    ``min_spearman - max(0, max_excess_correlation - tolerance)``.
    """
    rho = spearman_matrix(z[:, :k], d)
    min_rho = float(np.nanmin(np.diag(rho))) if k else 1.0
    corr = np.abs(spearman_matrix(z))
    if k > 1:
        corr[:k, :k] = np.maximum(corr[:k, :k] - np.abs(spearman_matrix(d)), 0.0)
    np.fill_diagonal(corr, 0.0)
    excess = float(np.nanmax(corr)) if corr.size > 1 else 0.0
    # Correlations below `tolerance` are within the sampling noise of a few
    # hundred spectra; only what exceeds it counts against the score, so the
    # score follows the slowly rising Spearman instead of that noise.
    return min_rho, excess, min_rho - max(0.0, excess - tolerance)
