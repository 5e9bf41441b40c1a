"""The RankAAE training losses, as pure functions of tensors (torch imported on call).

Each term of the published objective is one function here; :func:`batch_losses`
combines them for one batch in the order :func:`~xtec.autoencoder.rankaae.training.train`
has always evaluated them, so results stay bit-identical.
"""

from __future__ import annotations

import numpy as np

from xtec.nn import require_torch

#: Names of what :func:`batch_losses` returns, in order.
LOSS_NAMES = ("total", "reconstruction", "rank", "adversarial", "cycle", "smooth", "decorrelation")


def _inversions(x):
    """Pairs ``q < p`` with ``x[..., q] > x[..., p]``, counted along the last axis.

    ``x`` (..., R) with R a power of two; merge-sort counting, one level at a
    time: at block size ``h`` every element of a right half is compared (by
    binary search) with the sorted left half beside it.  O(R log^2 R) work in
    a few batched calls instead of an (R, R) comparison.
    """
    torch = require_torch()
    r = x.shape[-1]
    total = x.new_zeros(x.shape[:-1])
    h = 1
    while h < r:
        blocks = x.reshape(*x.shape[:-1], r // (2 * h), 2, h)
        left = blocks[..., 0, :].sort(dim=-1).values.contiguous()
        right = blocks[..., 1, :].contiguous()
        not_greater = torch.searchsorted(left, right, right=True)
        total += (h - not_greater).sum(dim=(-2, -1)).to(x.dtype)
        h *= 2
    return total


def rank_coefficients(z, d):
    """What the rank loss needs from the pairs, from sorting alone.

    Parameters
    ----------
    z, d
        Tensors (..., R): latent values and descriptors along the last axis,
        descriptors NaN where unknown.

    Returns
    -------
    ``(a, c, n_concordant, n_discordant)``: ``a_i = sum_j sign(d_i - d_j)`` and
    ``c_i = sum_j sign(d_i - d_j) [s_ij < 0]`` (..., R), and the numbers of
    ordered pairs with ``s_ij > 0`` and ``s_ij < 0`` (...), where
    ``s_ij = (z_i - z_j) sign(d_i - d_j)`` and pairs with an unknown
    descriptor are left out.

    Notes
    -----
    Order the known rows by d, ties by z.  Then ``c_i`` is row i's position in
    that order minus its rank in z (the rows before it with a larger z minus
    the rows after it with a smaller one), and the discordant pairs are the
    inversions of z in that order.  Ties in z, which training does not produce,
    are broken by position.
    """
    torch = require_torch()
    r = d.shape[-1]
    valid = torch.isfinite(d)
    n = valid.sum(dim=-1, keepdim=True).to(z.dtype)
    inf = torch.tensor(float("inf"), dtype=z.dtype, device=z.device)
    dk = torch.where(valid, d, inf)  # unknown descriptors sort last
    zk = torch.where(valid, z, inf)
    by_z = torch.sort(zk, dim=-1, stable=True).indices
    by_d = torch.sort(dk.gather(-1, by_z), dim=-1, stable=True).indices
    order = by_z.gather(-1, by_d)  # by d, ties by z
    arange = torch.arange(r, dtype=z.dtype, device=z.device).expand_as(z)
    position = torch.empty_like(z).scatter_(-1, order, arange)
    z_rank = torch.empty_like(z).scatter_(-1, by_z, arange)
    c = torch.where(valid, position - z_rank, 0.0)
    d_sorted = dk.gather(-1, order)
    below = torch.searchsorted(d_sorted, dk.contiguous()).to(z.dtype)
    not_above = torch.searchsorted(d_sorted, dk.contiguous(), right=True).to(z.dtype)
    a = torch.where(valid, below - (n - not_above), 0.0)
    ties = torch.where(valid, not_above - below - 1.0, 0.0).sum(dim=-1)
    pairs = n[..., 0] * (n[..., 0] - 1.0) - ties
    width = 1 << max(0, (r - 1).bit_length())
    z_sorted = zk.gather(-1, order)
    if width > r:
        z_sorted = torch.cat([z_sorted, inf.expand(*z.shape[:-1], width - r)], dim=-1)
    n_disc = 2.0 * _inversions(z_sorted)
    return a, c, pairs - n_disc, n_disc


def rank_loss(z, d, chunk: int | None = None):
    """Balanced pairwise rank loss between latent columns and descriptors.

    Parameters
    ----------
    z
        Tensor (B, K): the constrained latent dimensions.
    d
        Tensor (B, K): the descriptors, NaN where unknown (those pairs are skipped).
    chunk
        Form pairs only within consecutive sub-batches of at most ``chunk`` rows;
        the loss is then the mean over sub-batches.  None: all pairs of the batch.

    Returns
    -------
    Scalar tensor; ``-1`` would mean every pair perfectly ordered with unit gaps.

    Notes
    -----
    With ``s_ij = (z_i - z_j) sign(d_i - d_j)``, concordant pairs (s > 0) weigh
    ``w = min(1, n_discordant / n_concordant)`` and discordant ones 1, so the loss
    is ``-(w * sum_all s + (1 - w) * sum_discordant s) / (B (B - 1) K)``.

    Both sums are piecewise linear in z: with ``a_i = sum_j sign_ij`` and
    ``c_i = sum_j sign_ij [s_ij < 0]`` (antisymmetric signs, symmetric pair
    mask) they equal ``2 sum_i z_i a_i`` and ``2 sum_i z_i c_i``.  So the loss
    is ``z`` times a (B, K) coefficient matrix found outside autograd
    (:func:`rank_coefficients`, by sorting, without forming the (B, B) pairs):
    the same value and gradient as differentiating through every pair.
    """
    torch = require_torch()
    b, k = z.shape
    size = b if chunk is None or chunk >= b else int(chunk)
    if size < 2:
        return z.sum() * 0.0
    n_chunks = -(-b // size)
    pad = n_chunks * size - b
    with torch.no_grad():
        # (C, K, R): chunks of rows; padded rows have unknown descriptors, so
        # every pair with them is left out.
        dc = torch.cat([d, d.new_full((pad, k), float("nan"))]).view(n_chunks, size, k)
        zc = torch.cat([z.detach(), z.new_zeros(pad, k)]).view(n_chunks, size, k)
        a, c, n_conc, n_disc = rank_coefficients(zc.transpose(1, 2), dc.transpose(1, 2))
        # Weigh concordant pairs (all of them together) as the discordant ones,
        # never more than one each.
        w = (n_disc / n_conc.clamp(min=1.0)).clamp(max=1.0)[..., None]
        coef = w * a + (1.0 - w) * c  # (C, K, R)
        rows = torch.full((n_chunks,), float(size), dtype=z.dtype, device=z.device)
        rows[-1] -= pad
        norm = (rows * (rows - 1.0)).clamp(min=1.0) * (k * n_chunks)
        coef = (coef * (2.0 / norm)[:, None, None]).transpose(1, 2).reshape(-1, k)[:b]
    return -(z * coef).sum()


def decorrelation_loss(z, target):
    """Mean squared gap between the latent's correlation matrix and ``target``.

    ``z`` (B, L) is the latent; ``target`` (L, L) holds the correlations it
    should have (the descriptors' own rank correlations between constrained
    dimensions, 0 for any pair with a free dimension); the diagonal is ignored.
    """
    b, n_lat = z.shape
    if n_lat < 2:
        return z.sum() * 0.0
    zc = z - z.mean(0)
    zc = zc / (zc.pow(2).mean(0).sqrt() + 1e-6)
    gap = zc.T @ zc / b - target
    # The diagonal gap is 1 - 1 up to rounding; subtracting its squares
    # avoids indexing a mask.
    return (gap.pow(2).sum() - gap.diagonal().pow(2).sum()) / (n_lat * (n_lat - 1))


def rank_correlation_target(d, n_lat: int):
    """Target latent correlations (L, L): Spearman of the descriptors, 0 elsewhere."""
    torch = require_torch()
    k = d.shape[1]
    target = torch.zeros(n_lat, n_lat)
    if k < 2:
        return target
    ok = torch.isfinite(d).all(dim=1)
    if int(ok.sum()) < 3:
        return target
    r = d[ok].argsort(dim=0).argsort(dim=0).to(torch.float32)
    r = (r - r.mean(0)) / (r.std(0, unbiased=False) + 1e-6)
    target[:k, :k] = r.T @ r / r.shape[0]
    return target


def smoothing_operator(m: int, sigma: float):
    """(m, m) matrix ``I - G`` with G a Gaussian smoothing (replicate edges).

    ``rec @ op.T`` is the reconstruction minus its smoothed copy: one matrix
    product instead of padding and a convolution per step.
    """
    torch = require_torch()
    half = max(1, int(np.ceil(3 * sigma)))
    t = np.arange(-half, half + 1)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    kernel /= kernel.sum()
    g = np.zeros((m, m))
    for i in range(m):
        cols = np.clip(i + t, 0, m - 1)
        np.add.at(g[i], cols, kernel)
    return torch.as_tensor(np.eye(m) - g, dtype=torch.float32)


def grad_reverse():
    """The gradient-reversal layer (identity forward, negated gradient backward)."""
    torch = require_torch()

    class GradReverse(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad):
            return -grad

    return GradReverse.apply


def adversarial_loss(discriminator, z, prior, grl):
    """Discriminator loss between prior draws (label 1) and latents (label 0).

    The latents pass through the gradient-reversal ``grl``, so the encoder is
    pushed to fool the discriminator while the discriminator learns.
    ``z`` and ``prior`` (B, L).
    """
    torch = require_torch()
    nb = z.shape[0]
    logits = discriminator(torch.cat([prior, grl(z)]))
    target = torch.cat([torch.ones(nb, 1), torch.zeros(nb, 1)])
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, target)


def cycle_loss(encoder, decoder, prior, mean, x_std: float):
    """``MSE(E(D(z)), z)`` for prior draws ``z`` (b, L); the decoder works in data
    units (``mean`` (m,), ``x_std``), the encoder in standardised ones."""
    torch = require_torch()
    z_back = encoder((decoder(prior) - mean) / x_std)
    return torch.nn.functional.mse_loss(z_back, prior)


def smoothness_loss(rec, smooth_op):
    """Mean squared gap between spectra ``rec`` (b, m) and their smoothed copies;
    ``smooth_op`` is :func:`smoothing_operator` transposed."""
    return (rec @ smooth_op).pow(2).mean()


def batch_losses(net, xb, noisy, db, prior, *, cfg, mean, x_std: float, smooth_op, grl):
    """All loss terms of one batch, total first (see :data:`LOSS_NAMES`).

    Parameters
    ----------
    net
        ModuleDict with ``encoder``, ``decoder`` and ``discriminator``.
    xb, noisy
        The batch (B, m) in data units, and standardised with input noise.
    db
        Its descriptors (B, K), NaN where unknown.
    prior
        Draws of N(0, I), (B, L).
    cfg
        Weights ``w_*`` and sample counts ``rank_batch``, ``cycle_batch``,
        ``smooth_batch`` (a :class:`~xtec.autoencoder.rankaae.RankAAEConfig`).
    """
    k = len(cfg.descriptors)
    z = net["encoder"](noisy)
    rec = net["decoder"](z)
    l_rec = require_torch().nn.functional.mse_loss(rec, xb)
    l_rank = rank_loss(z[:, :k], db, cfg.rank_batch)
    l_adv = adversarial_loss(net["discriminator"], z, prior, grl)
    # The cycle and smoothness terms are Monte-Carlo averages (over prior
    # draws, over the batch's spectra); a quarter of the samples estimates
    # them well at a quarter of the cost.
    l_cyc = cycle_loss(net["encoder"], net["decoder"], prior[: cfg.cycle_batch], mean, x_std)
    l_smooth = smoothness_loss(rec[: cfg.smooth_batch], smooth_op)
    l_dec = decorrelation_loss(z, rank_correlation_target(db, z.shape[1]))
    loss = (
        l_rec
        + cfg.w_rank * l_rank
        + cfg.w_adversarial * l_adv
        + cfg.w_cycle * l_cyc
        + cfg.w_smooth * l_smooth
        + cfg.w_decorrelation * l_dec
    )
    return loss, l_rec, l_rank, l_adv, l_cyc, l_smooth, l_dec
