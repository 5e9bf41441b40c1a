"""RankAAE configuration, layers, optimiser and learning-rate schedule."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from xtec.errors import ParameterError
from xtec.nn import adam, require_torch, warmup_cosine


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


def build(n_in: int, cfg: RankAAEConfig):
    """Encoder (batch-standardised latent), decoder (softplus output) and discriminator."""
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


def optimizer(net, cfg: RankAAEConfig):
    """AdamW over all parameters (fused where torch has it)."""
    return adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, decoupled=True)


def lr_schedule(cfg: RankAAEConfig, steps_per_epoch: int) -> np.ndarray:
    """Learning rate per step (total,): linear warm-up, then a cosine decay to ``lr * lr_final``.

    The decay spans ``cfg.epochs``; early stopping may end training before.
    """
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = min(total, max(1, int(round(cfg.warmup * total))))
    return np.asarray(
        warmup_cosine(total, lr=cfg.lr, warmup=warm, final=cfg.lr_final, decay_after_warmup=True)
    )
