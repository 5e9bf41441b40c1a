"""The RankAAE training loop: batches, schedule, early stopping (losses in :mod:`.losses`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from xtec.autoencoder.rankaae.losses import (
    LOSS_NAMES,
    batch_losses,
    grad_reverse,
    smoothing_operator,
)
from xtec.autoencoder.rankaae.metrics import latent_score
from xtec.autoencoder.rankaae.network import RankAAEConfig, build, lr_schedule, optimizer
from xtec.errors import InputError, ParameterError
from xtec.nn import deterministic, require_torch, show_progress


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random train/test split of ``range(n)``: (train, test), each sorted."""
    if not 0.0 <= test_fraction < 1.0:
        raise ParameterError(f"test_fraction must lie in [0, 1), not {test_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    if n - n_test < 2:
        raise InputError(f"only {n} spectra: too few to train on")
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


@dataclass
class Trained:
    """What :func:`train` returns."""

    net: object
    x_mean: np.ndarray
    x_std: float
    history: dict[str, np.ndarray]
    epochs_run: int
    best_epoch: int
    scores: list = field(default_factory=list)


def train(
    x_all: np.ndarray,
    d_all: np.ndarray,
    cfg: RankAAEConfig,
    *,
    n_threads: int | None = None,
    progress: bool | None = None,
) -> Trained:
    """Train a RankAAE on spectra ``x_all`` (n, m) with descriptors ``d_all`` (n, K).

    See :meth:`xtec.autoencoder.rankaae.RankAAE.fit` for the schedule and the
    early stopping.  Seeded by ``cfg.seed``: the same inputs and thread count
    give the same bits.
    """
    torch = require_torch()
    from tqdm.auto import tqdm

    n_all, m = x_all.shape
    early = cfg.patience > 0 and cfg.validation_fraction > 0 and n_all >= 20
    if early:
        fit_idx, val_idx = split_indices(n_all, cfg.validation_fraction, cfg.seed + 1)
    else:
        fit_idx, val_idx = np.arange(n_all), np.empty(0, dtype=int)
    x, d = x_all[fit_idx], d_all[fit_idx]
    n = x.shape[0]
    x_mean = x.mean(0)
    x_std = float(x.std()) or 1.0
    grl = grad_reverse()
    k = len(cfg.descriptors)
    best_epoch = 0
    with deterministic(cfg.seed, n_threads):
        net = build(m, cfg)
        opt = optimizer(net, cfg)
        gen = torch.Generator().manual_seed(cfg.seed)
        # The whole training set is one standardised float32 tensor; batches
        # are index slices of it (no DataLoader: at a few thousand spectra its
        # per-batch overhead would cost more than the step).
        xt = torch.as_tensor(x, dtype=torch.float32)
        xs = torch.as_tensor((x - x_mean) / x_std, dtype=torch.float32)
        dt = torch.as_tensor(d, dtype=torch.float32)
        noise = cfg.input_noise / x_std
        # The decoder works in data units; the encoder in standardised ones.
        mean = torch.as_tensor(x_mean, dtype=torch.float32)
        smooth_op = smoothing_operator(m, cfg.smooth_sigma).T.contiguous()
        x_val = torch.as_tensor((x_all[val_idx] - x_mean) / x_std, dtype=torch.float32)
        bs = min(cfg.batch_size, n)
        schedule = lr_schedule(cfg, -(-(n - 1) // bs))
        history = {name: [] for name in LOSS_NAMES}
        scores: list[tuple[int, float, float, float]] = []
        best_score, best_state, stale = -np.inf, None, 0
        bar = tqdm(
            range(cfg.epochs),
            desc="rankaae train",
            disable=not show_progress(progress),
            leave=False,
        )
        step = 0
        for epoch in bar:
            net.train()
            # One shuffled copy per epoch; batches are then contiguous slices.
            perm = torch.randperm(n, generator=gen)
            x_ep, xs_ep, d_ep = xt[perm], xs[perm], dt[perm]
            sums = torch.zeros(len(LOSS_NAMES))
            steps = 0
            for i in range(0, n - 1, bs):
                xb = x_ep[i : i + bs]
                if xb.shape[0] < 2:  # batch norm needs two samples
                    continue
                for group in opt.param_groups:
                    group["lr"] = float(schedule[step])
                step += 1
                noisy = xs_ep[i : i + bs] + noise * torch.randn(xb.shape, generator=gen)
                prior = torch.randn((xb.shape[0], cfg.latent_dim), generator=gen)
                terms = batch_losses(
                    net,
                    xb,
                    noisy,
                    d_ep[i : i + bs],
                    prior,
                    cfg=cfg,
                    mean=mean,
                    x_std=x_std,
                    smooth_op=smooth_op,
                    grl=grl,
                )
                opt.zero_grad(set_to_none=True)
                terms[0].backward()
                opt.step()
                sums += torch.stack(terms).detach()
                steps += 1
            for name, value in zip(LOSS_NAMES, (sums / max(steps, 1)).tolist(), strict=True):
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
                    best_epoch = epoch + 1
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
    epochs_run = len(history["total"])
    return Trained(
        net=net,
        x_mean=x_mean,
        x_std=x_std,
        history={name: np.asarray(v) for name, v in history.items()},
        epochs_run=epochs_run,
        best_epoch=best_epoch if early else epochs_run,
        scores=scores,
    )
