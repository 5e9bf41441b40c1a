"""Rank-constrained adversarial autoencoder (RankAAE) for spectra.

After Liang, Carbone, ..., Qu, "Decoding structure-spectrum relationships with
physically organized latent spaces", Phys. Rev. Materials 7, 053802 (2023).

A fully connected encoder maps a spectrum to a batch-standardised latent; a fully
connected decoder with a softplus(beta=2) output maps it back.  Besides the
reconstruction, training minimises

* the rank constraint: for each labelled descriptor ``d`` and its latent
  dimension ``z``, ``-sum_ij (z_i - z_j) sign(d_i - d_j) / (N (N-1) K)``, with
  concordant pairs down-weighted so that they weigh as much as the discordant
  ones (otherwise the many already-ordered pairs drown out the few that are not);
* an adversarial Gaussian prior: a discriminator tells latents from N(0, I)
  samples, and a gradient-reversal layer makes the encoder fool it;
* a latent cycle loss ``MSE(E(D(z)), z)`` for z drawn from the prior;
* a smoothness loss between the reconstruction and its Gaussian-smoothed copy.

The first ``len(descriptors)`` latent dimensions are constrained, in order; the
last ``n_free`` are left free to take up what the descriptors do not explain.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import xarray as xr

from xtec.errors import InputError, ParameterError
from xtec.nn import (
    adam,
    decode_latent,
    deterministic,
    load_model_file,
    require_torch,
    save_model_file,
    show_progress,
    warmup_cosine,
)

log = logging.getLogger(__name__)

MODEL_KIND = "rankaae"


# --------------------------------------------------------------------------- pure functions


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


def _rank_correlation_target(d, n_lat: int):
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


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random train/test split of ``range(n)``: (train, test), each sorted."""
    if not 0.0 <= test_fraction < 1.0:
        raise ParameterError(f"test_fraction must lie in [0, 1), not {test_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    if n - n_test < 2:
        raise InputError(f"only {n} spectra: too few to train on")
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


# --------------------------------------------------------------------------- model


@dataclass
class RankAAEConfig:
    """Hyper-parameters of :class:`RankAAE` (saved with the model)."""

    descriptors: Sequence[str] = ()
    n_free: int = 1
    hidden: int = 64
    n_layers: int = 5
    epochs: int = 60
    patience: int = 0
    eval_every: int = 2
    validation_fraction: float = 0.1
    batch_size: int = 512
    rank_batch: int = 256
    cycle_batch: int = 128
    smooth_batch: int = 128
    lr: float = 1e-2
    warmup: float = 0.05
    lr_final: float = 0.05
    weight_decay: float = 1e-2
    input_noise: float = 0.02
    w_rank: float = 4.0
    w_adversarial: float = 0.1
    w_cycle: float = 0.5
    w_smooth: float = 5.0
    w_decorrelation: float = 1.0
    smooth_sigma: float = 2.0
    seed: int = 0

    def validate(self) -> None:
        if not self.descriptors:
            raise ParameterError("name at least one descriptor to constrain")
        if len(set(self.descriptors)) != len(self.descriptors):
            raise ParameterError(f"descriptors repeat: {list(self.descriptors)}")
        if self.n_free < 0:
            raise ParameterError(f"n_free must be non-negative, not {self.n_free}")
        if self.hidden < 1 or self.n_layers < 2:
            raise ParameterError("hidden must be at least 1 and n_layers at least 2")
        if min(self.rank_batch, self.cycle_batch, self.smooth_batch) < 2:
            raise ParameterError("rank_batch, cycle_batch and smooth_batch must be at least 2")
        if self.epochs < 1 or self.batch_size < 2:
            raise ParameterError("epochs must be at least 1 and batch_size at least 2")
        if self.lr <= 0 or self.weight_decay < 0 or self.input_noise < 0:
            raise ParameterError("lr must be positive; weight_decay and input_noise non-negative")
        if not (0.0 <= self.warmup < 1.0 and 0.0 <= self.lr_final <= 1.0):
            raise ParameterError("warmup must lie in [0, 1) and lr_final in [0, 1]")
        if self.patience < 0 or self.eval_every < 1:
            raise ParameterError("patience must be non-negative and eval_every at least 1")
        if not 0.0 <= self.validation_fraction < 0.5:
            raise ParameterError(
                f"validation_fraction must lie in [0, 0.5), not {self.validation_fraction}"
            )
        weights = (
            self.w_rank,
            self.w_adversarial,
            self.w_cycle,
            self.w_smooth,
            self.w_decorrelation,
        )
        if min(weights) < 0 or self.smooth_sigma <= 0:
            raise ParameterError("loss weights must be non-negative and smooth_sigma positive")

    @property
    def latent_dim(self) -> int:
        return len(self.descriptors) + self.n_free


def _build(n_in: int, cfg: RankAAEConfig):
    torch = require_torch()
    nn = torch.nn

    def mlp(sizes, last):
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.SiLU())
        layers.append(last)
        return nn.Sequential(*layers)

    inner = [cfg.hidden] * (cfg.n_layers - 1)
    latent = cfg.latent_dim
    return nn.ModuleDict(
        {
            # The latent is batch-standardised (zero mean, unit variance per dim),
            # which fixes its scale for the rank loss and the prior.
            "encoder": mlp([n_in, *inner, latent], nn.BatchNorm1d(latent, affine=False)),
            "decoder": mlp([latent, *inner, n_in], nn.Softplus(beta=2.0)),
            "discriminator": mlp([latent, cfg.hidden, cfg.hidden, 1], nn.Identity()),
        }
    )


def _grad_reverse():
    torch = require_torch()

    class GradReverse(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad):
            return -grad

    return GradReverse.apply


def _optimizer(net, cfg: RankAAEConfig):
    """AdamW over all parameters (fused where torch has it)."""
    return adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, decoupled=True)


def _lr_schedule(cfg: RankAAEConfig, steps_per_epoch: int) -> np.ndarray:
    """Learning rate per step (total,): linear warm-up, then a cosine decay to ``lr * lr_final``.

    The decay spans ``cfg.epochs``; early stopping may end training before.
    """
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = min(total, max(1, int(round(cfg.warmup * total))))
    return np.asarray(
        warmup_cosine(total, lr=cfg.lr, warmup=warm, final=cfg.lr_final, decay_after_warmup=True)
    )


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


class RankAAE:
    """Rank-constrained adversarial autoencoder of spectra with known descriptors.

    Parameters are those of :class:`RankAAEConfig`; ``n_threads`` and
    ``progress`` only affect how training runs.

    Attributes (after :meth:`fit`)
    ------------------------------
    grid_ : (m,) energy grid
    history_ : dict of per-epoch mean losses
    train_index_, test_index_ : indices of the split used in :meth:`fit_split`
    """

    def __init__(self, *, n_threads: int | None = None, progress: bool | None = None, **params):
        unknown = set(params) - set(RankAAEConfig.__dataclass_fields__)
        if unknown:
            raise ParameterError(f"unknown parameters: {sorted(unknown)}")
        params.setdefault("descriptors", ())
        params["descriptors"] = tuple(params["descriptors"])
        self.config = RankAAEConfig(**params)
        self.config.validate()
        self.n_threads = n_threads
        self.progress = progress
        self.net_ = None
        self.train_index_ = np.empty(0, dtype=int)
        self.test_index_ = np.empty(0, dtype=int)

    # -- data plumbing
    def _arrays(
        self, spectra: xr.DataArray, need_descriptors: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        if not isinstance(spectra, xr.DataArray) or spectra.ndim != 2:
            raise InputError("expected a 2-D DataArray (spectrum, energy)")
        x = np.asarray(spectra.values, dtype=float)
        if hasattr(self, "grid_"):
            grid = np.asarray(spectra[spectra.dims[-1]].values, dtype=float)
            if grid.shape != self.grid_.shape or not np.allclose(
                grid, self.grid_, rtol=1e-6, atol=1e-9
            ):
                raise InputError(
                    f"the spectra's grid ({grid.size} points, {grid[0]:g}..{grid[-1]:g}) differs from "
                    f"the model's ({self.grid_.size} points, {self.grid_[0]:g}..{self.grid_[-1]:g})"
                )
        missing = [d for d in self.config.descriptors if d not in spectra.coords]
        if missing:
            if need_descriptors:
                have = [n for n, c in spectra.coords.items() if c.dims == (spectra.dims[0],)]
                raise InputError(f"descriptor(s) {missing} not in the data; it has {have}")
            return x, None
        d = np.stack(
            [np.asarray(spectra[n].values, dtype=float) for n in self.config.descriptors], axis=1
        )
        return x, d

    def _check_fitted(self) -> None:
        if self.net_ is None:
            raise ParameterError("the model is not trained; call fit() or load() first")

    # -- training
    def fit_split(self, spectra: xr.DataArray, test_fraction: float = 0.2) -> RankAAE:
        """Hold out a seeded ``test_fraction`` of the spectra, and train on the rest."""
        train, test = split_indices(spectra.shape[0], test_fraction, self.config.seed)
        self.fit(spectra.isel({spectra.dims[0]: train}))
        self.train_index_, self.test_index_ = train, test
        self.n_split_ = int(spectra.shape[0])
        return self

    def fit(self, spectra: xr.DataArray) -> RankAAE:
        """Train on spectra (n, m) with the descriptor coordinates named in the config.

        AdamW runs ``epochs`` epochs of batches of ``batch_size``, its learning
        rate warming up linearly over the first ``warmup`` of the steps and then
        decaying along a cosine to ``lr * lr_final`` (:func:`_lr_schedule`).

        With ``patience=0`` (the default) every spectrum is trained on for the
        whole schedule.  With ``patience > 0`` a seeded ``validation_fraction``
        is held back; every ``eval_every`` epochs the latents of those are scored
        (:func:`latent_score`: the weakest Spearman with its descriptor, minus
        the largest unwanted latent correlation); training stops when the score
        has not improved for ``patience`` evaluations, and the best-scoring
        weights are kept.  Early in the schedule, at a high learning rate, the
        score is noisy: early stopping is for a longer ``epochs`` than the
        default.
        """
        torch = require_torch()
        from tqdm.auto import tqdm

        cfg = self.config
        x_all, d_all = self._arrays(spectra, need_descriptors=True)
        n_all, m = x_all.shape
        if n_all < 2:
            raise InputError(f"need at least 2 spectra to train, got {n_all}")
        if not np.all(np.isfinite(x_all)):
            raise InputError("spectra contain non-finite values")
        self.grid_ = np.asarray(spectra[spectra.dims[-1]].values, dtype=float)
        self.grid_name_ = str(spectra.dims[-1])
        early = cfg.patience > 0 and cfg.validation_fraction > 0 and n_all >= 20
        if early:
            fit_idx, val_idx = split_indices(n_all, cfg.validation_fraction, cfg.seed + 1)
        else:
            fit_idx, val_idx = np.arange(n_all), np.empty(0, dtype=int)
        x, d = x_all[fit_idx], d_all[fit_idx]
        n = x.shape[0]
        self.x_mean_ = x.mean(0)
        self.x_std_ = float(x.std()) or 1.0
        grl = _grad_reverse()
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        mse = torch.nn.functional.mse_loss
        k = len(cfg.descriptors)
        start = time.perf_counter()
        with deterministic(cfg.seed, self.n_threads):
            net = _build(m, cfg)
            opt = _optimizer(net, cfg)
            gen = torch.Generator().manual_seed(cfg.seed)
            # The whole training set is one standardised float32 tensor;
            # batches are index slices of it (no DataLoader: at a few
            # thousand spectra its per-batch overhead would cost more than
            # the step).
            xt = torch.as_tensor(x, dtype=torch.float32)
            xs = torch.as_tensor((x - self.x_mean_) / self.x_std_, dtype=torch.float32)
            dt = torch.as_tensor(d, dtype=torch.float32)
            noise = cfg.input_noise / self.x_std_
            # The decoder works in data units; the encoder in standardised ones.
            mean = torch.as_tensor(self.x_mean_, dtype=torch.float32)
            smooth_op = smoothing_operator(m, cfg.smooth_sigma).T.contiguous()
            x_val = torch.as_tensor(
                (x_all[val_idx] - self.x_mean_) / self.x_std_, dtype=torch.float32
            )
            bs = min(cfg.batch_size, n)
            steps_per_epoch = -(-(n - 1) // bs)
            schedule = _lr_schedule(cfg, steps_per_epoch)
            names = (
                "total",
                "reconstruction",
                "rank",
                "adversarial",
                "cycle",
                "smooth",
                "decorrelation",
            )
            history = {name: [] for name in names}
            scores: list[tuple[int, float, float, float]] = []
            best_score, best_state, stale = -np.inf, None, 0
            bar = tqdm(
                range(cfg.epochs),
                desc="rankaae train",
                disable=not show_progress(self.progress),
                leave=False,
            )
            step = 0
            for epoch in bar:
                net.train()
                # One shuffled copy per epoch; batches are then contiguous slices.
                perm = torch.randperm(n, generator=gen)
                x_ep, xs_ep, d_ep = xt[perm], xs[perm], dt[perm]
                sums = torch.zeros(len(names))
                steps = 0
                for i in range(0, n - 1, bs):
                    xb, db = x_ep[i : i + bs], d_ep[i : i + bs]
                    nb = xb.shape[0]
                    if nb < 2:  # batch norm needs two samples
                        continue
                    for group in opt.param_groups:
                        group["lr"] = float(schedule[step])
                    step += 1
                    noisy = xs_ep[i : i + bs] + noise * torch.randn(xb.shape, generator=gen)
                    z = net["encoder"](noisy)
                    rec = net["decoder"](z)
                    l_rec = mse(rec, xb)
                    l_rank = rank_loss(z[:, :k], db, cfg.rank_batch)
                    prior = torch.randn(z.shape, generator=gen)
                    logits = net["discriminator"](torch.cat([prior, grl(z)]))
                    target = torch.cat([torch.ones(nb, 1), torch.zeros(nb, 1)])
                    l_adv = bce(logits, target)
                    # The cycle and smoothness terms are Monte-Carlo averages (over
                    # prior draws, over the batch's spectra); a quarter of the
                    # samples estimates them well at a quarter of the cost.
                    few = prior[: cfg.cycle_batch]
                    z_back = net["encoder"]((net["decoder"](few) - mean) / self.x_std_)
                    l_cyc = mse(z_back, few)
                    l_smooth = (rec[: cfg.smooth_batch] @ smooth_op).pow(2).mean()
                    l_dec = decorrelation_loss(z, _rank_correlation_target(db, z.shape[1]))
                    loss = (
                        l_rec
                        + cfg.w_rank * l_rank
                        + cfg.w_adversarial * l_adv
                        + cfg.w_cycle * l_cyc
                        + cfg.w_smooth * l_smooth
                        + cfg.w_decorrelation * l_dec
                    )
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sums += torch.stack(
                        [loss, l_rec, l_rank, l_adv, l_cyc, l_smooth, l_dec]
                    ).detach()
                    steps += 1
                for name, value in zip(names, (sums / max(steps, 1)).tolist(), strict=True):
                    history[name].append(value)
                if early and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
                    net.eval()
                    with torch.no_grad():
                        zv = net["encoder"](x_val).numpy().astype(float)
                    rho, excess, score = latent_score(zv, d_all[val_idx], k)
                    scores.append((epoch + 1, rho, excess, score))
                    if score > best_score + 1e-3:
                        best_score, stale = score, 0
                        best_state = {n_: v.detach().clone() for n_, v in net.state_dict().items()}
                        self.best_epoch_ = epoch + 1
                    else:
                        stale += 1
                    bar.set_postfix(spearman=f"{rho:.3f}", corr=f"{excess:.2f}", refresh=False)
                    if stale >= cfg.patience:
                        break
                else:
                    bar.set_postfix(rec=f"{history['reconstruction'][-1]:.2e}", refresh=False)
            if best_state is not None:
                net.load_state_dict(best_state)
        net.eval()
        self.net_ = net
        self.history_ = {name: np.asarray(v) for name, v in history.items()}
        if scores:
            self.history_["validation"] = np.asarray(scores, dtype=float)
        self.epochs_run_ = len(history["total"])
        if not early:
            self.best_epoch_ = self.epochs_run_
        self.train_seconds_ = time.perf_counter() - start
        log.info(
            "trained RankAAE on %d spectra x %d points: %d epochs (best %d) in %.1f s",
            n,
            m,
            self.epochs_run_,
            self.best_epoch_,
            self.train_seconds_,
        )
        return self

    # -- inference
    def transform(self, spectra) -> np.ndarray:
        """Latent points (n, latent_dim) of spectra (n, m)."""
        torch = require_torch()
        self._check_fitted()
        x = (
            spectra.values
            if isinstance(spectra, xr.DataArray)
            else np.asarray(spectra, dtype=float)
        )
        x = np.atleast_2d(x)
        if x.shape[1] != self.grid_.size:
            raise InputError(
                f"spectra have {x.shape[1]} points, the model expects {self.grid_.size}"
            )
        with torch.no_grad():
            z = self.net_["encoder"](
                torch.as_tensor((x - self.x_mean_) / self.x_std_, dtype=torch.float32)
            )
        return z.numpy().astype(float)

    def decode(self, latent: np.ndarray) -> np.ndarray:
        """Spectra (n, m) decoded from latent points (n, latent_dim)."""
        self._check_fitted()
        return decode_latent(self.net_["decoder"], latent, self.config.latent_dim)

    def latent_names(self) -> list[str]:
        return [*self.config.descriptors, *[f"free{i}" for i in range(self.config.n_free)]]

    def sweep(
        self,
        spectra: xr.DataArray,
        n_points: int = 7,
        percentiles: tuple[float, float] = (5.0, 95.0),
    ) -> xr.DataArray:
        """Decoded spectra as each latent dimension is swept, the others held.

        Each dimension runs from its ``percentiles[0]`` to its ``percentiles[1]``
        percentile over the latents of ``spectra``; the other dimensions stay at
        their medians.

        Returns
        -------
        DataArray (latent, step, energy) with coordinate ``value`` (latent, step).
        """
        if n_points < 2:
            raise ParameterError(f"n_points must be at least 2, not {n_points}")
        z = self.transform(spectra)
        centre = np.median(z, axis=0)
        lo, hi = np.percentile(z, percentiles, axis=0)
        out = np.empty((z.shape[1], n_points, self.grid_.size))
        values = np.empty((z.shape[1], n_points))
        for j in range(z.shape[1]):
            pts = np.repeat(centre[None], n_points, axis=0)
            pts[:, j] = np.linspace(lo[j], hi[j], n_points)
            values[j] = pts[:, j]
            out[j] = self.decode(pts)
        return xr.DataArray(
            out,
            dims=("latent", "step", self.grid_name_),
            coords={
                "latent": self.latent_names(),
                "step": np.linspace(percentiles[0], percentiles[1], n_points),
                self.grid_name_: self.grid_,
                "value": (("latent", "step"), values),
            },
            name="decoded",
        )

    def report(self, spectra: xr.DataArray) -> dict:
        """Quality of the physically organised latent on ``spectra``.

        Returns a dict with ``spearman`` (descriptor → Spearman correlation of its
        latent dimension with it), ``reconstruction_mae``, ``max_constrained_correlation``
        (largest |Spearman| between two constrained dimensions),
        ``max_latent_correlation`` (the same over all dimensions) and
        ``n_spectra``.
        """
        x, d = self._arrays(spectra, need_descriptors=False)
        z = self.transform(x)
        k = len(self.config.descriptors)
        out: dict = {"n_spectra": int(x.shape[0])}
        if d is not None:
            rho = spearman_matrix(z[:, :k], d)
            out["spearman"] = {
                name: float(rho[i, i]) for i, name in enumerate(self.config.descriptors)
            }
        out["reconstruction_mae"] = float(np.mean(np.abs(self.decode(z) - x)))
        corr = np.abs(spearman_matrix(z))
        np.fill_diagonal(corr, np.nan)
        out["max_constrained_correlation"] = float(np.nanmax(corr[:k, :k])) if k > 1 else 0.0
        out["max_latent_correlation"] = float(np.nanmax(corr)) if z.shape[1] > 1 else 0.0
        return out

    # -- persistence
    def save(self, path) -> None:
        """Write weights, configuration, grid and split to a safetensors file."""
        self._check_fitted()
        cfg = asdict(self.config)
        cfg["descriptors"] = list(cfg["descriptors"])
        arrays = {
            "grid": self.grid_,
            "x_mean": self.x_mean_,
            "train_index": np.asarray(self.train_index_, dtype=np.int64),
            "test_index": np.asarray(self.test_index_, dtype=np.int64),
        }
        for name, values in self.history_.items():
            arrays[f"history_{name}"] = values
        extras = {
            "grid_name": self.grid_name_,
            "x_std": self.x_std_,
            "train_seconds": self.train_seconds_,
            "n_split": getattr(self, "n_split_", None),
            "epochs_run": getattr(self, "epochs_run_", None),
            "best_epoch": getattr(self, "best_epoch_", None),
        }
        save_model_file(path, MODEL_KIND, cfg, self.net_.state_dict(), arrays, extras)

    @classmethod
    def load(cls, path, **kwargs) -> RankAAE:
        """Read a model written by :meth:`save` (no pickle involved)."""
        config, state, arrays, extras = load_model_file(path, MODEL_KIND)
        try:
            model = cls(**config, **kwargs)
            net = _build(arrays["grid"].size, model.config)
            net.load_state_dict(state)
        except (KeyError, TypeError, RuntimeError) as exc:
            raise InputError(
                f"{path}: model file does not match its configuration ({exc})"
            ) from None
        net.eval()
        model.net_ = net
        model.grid_ = arrays["grid"]
        model.grid_name_ = extras.get("grid_name", "energy")
        model.x_mean_ = arrays["x_mean"]
        model.x_std_ = float(extras["x_std"])
        model.train_seconds_ = float(extras.get("train_seconds") or np.nan)
        model.train_index_ = arrays["train_index"]
        model.test_index_ = arrays["test_index"]
        model.epochs_run_ = extras.get("epochs_run")
        model.best_epoch_ = extras.get("best_epoch")
        if extras.get("n_split") is not None:
            model.n_split_ = int(extras["n_split"])
        model.history_ = {
            k[len("history_") :]: v for k, v in arrays.items() if k.startswith("history_")
        }
        return model
