"""The feature-space network: its configuration, layers, learning rates and training loop."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from xtec.errors import ParameterError
from xtec.nn import adam, deterministic, require_torch, show_progress, warmup_cosine


@dataclass
class FeatureSpaceConfig:
    """Hyper-parameters of :class:`FeatureSpaceAE` (saved with the model)."""

    latent_dim: int = 2
    n_components: int | str | None = "auto"
    max_components: int = 32
    hidden: Sequence[int] = field(default_factory=lambda: (256, 64))
    epochs: int = 300
    # A whole set of up to 256 patterns per step, with a warm-up and a larger
    # rate, in place of batches of 32 at lr 2e-3 (5x fewer steps on 150
    # patterns; the same or better composition estimates, docs/autoencoder.md).
    batch_size: int = 256
    lr: float = 1e-2
    warmup: float = 0.1
    weight_decay: float = 1e-5
    input_noise: float = 0.01
    normalize: str = "area"
    transform: str = "sqrt"
    grid: str = "log_d"
    align: bool = True
    max_strain: float = 0.2
    subtract_background: bool = True
    # Separate, per pattern, a zero shift and a sample displacement from the
    # lattice strain (laboratory diffractometers; see instrument_basis).
    correct_instrument: bool = False
    goniometer_radius: float = 240.0
    # Prior spreads of the per-pattern zero shift (degrees of 2-theta) and
    # sample displacement (mm): what a laboratory series shows.
    zero_shift_prior: float = 0.01
    displacement_prior: float = 0.1
    decode_components: bool = True
    n_clusters: int = 3
    seed: int = 0

    def validate(self) -> None:
        if self.latent_dim < 1:
            raise ParameterError(f"latent_dim must be at least 1, not {self.latent_dim}")
        if not self.hidden or any(int(h) < 1 for h in self.hidden):
            raise ParameterError(f"hidden sizes must be positive, not {self.hidden}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ParameterError("epochs and batch_size must be at least 1")
        if self.lr <= 0 or self.weight_decay < 0 or self.input_noise < 0:
            raise ParameterError("lr must be positive; weight_decay and input_noise non-negative")
        if not 0.0 <= self.warmup < 1.0:
            raise ParameterError(f"warmup must lie in [0, 1), not {self.warmup}")
        if self.normalize not in ("area", "max", "none"):
            raise ParameterError(
                f"normalize must be 'area', 'max' or 'none', not {self.normalize!r}"
            )
        if self.grid not in ("log_d", "two_theta"):
            raise ParameterError(f"grid must be 'log_d' or 'two_theta', not {self.grid!r}")
        if not 0 < self.max_strain < 1:
            raise ParameterError(f"max_strain must lie in (0, 1), not {self.max_strain}")
        if self.transform not in ("sqrt", "none"):
            raise ParameterError(f"transform must be 'sqrt' or 'none', not {self.transform!r}")
        nc = self.n_components
        if not (nc is None or nc == "auto" or (isinstance(nc, int) and nc >= 1)):
            raise ParameterError(f"n_components must be 'auto', None or at least 1, not {nc!r}")
        if self.max_components < 1:
            raise ParameterError(f"max_components must be at least 1, not {self.max_components}")
        if self.correct_instrument and not (self.align and self.grid == "log_d"):
            raise ParameterError("correct_instrument needs align=True and grid='log_d'")
        if self.goniometer_radius <= 0:
            raise ParameterError(
                f"goniometer_radius must be positive, not {self.goniometer_radius}"
            )
        if self.n_clusters < 1:
            raise ParameterError(f"n_clusters must be at least 1, not {self.n_clusters}")


def learning_rates(lr: float, epochs: int, warmup: float = 0.0, final: float = 0.05) -> list[float]:
    """Learning rate of each epoch: a cosine from ``lr`` to ``lr * final``, ramped up
    linearly over the first ``warmup`` share of the epochs.

    The cosine is torch's ``CosineAnnealingLR(T_max=epochs)`` in its recursive
    form (:func:`xtec.nn.warmup_cosine` with ``chained``), so that without a
    warm-up the rates, and the trained weights, are those of that scheduler to
    the bit, without its wrapper around every optimizer step.
    """
    return warmup_cosine(
        epochs, lr=lr, warmup=round(warmup * epochs) + 1, final=final, chained=True
    )


def build_net(n_in: int, hidden: Sequence[int], latent: int, n_components: int):
    """Encoder (n_components -> hidden -> latent) and decoder (latent -> hidden -> n_in), SiLU."""
    torch = require_torch()
    nn = torch.nn

    def mlp(sizes):
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.SiLU())
        return nn.Sequential(*layers)

    sizes = [*[int(h) for h in hidden], latent]
    return nn.ModuleDict(
        {"encoder": mlp([n_components, *sizes]), "decoder": mlp([*sizes[::-1], n_in])}
    )


def train_network(
    centred: np.ndarray,
    coeffs: np.ndarray,
    components: np.ndarray,
    scale: float,
    cfg: FeatureSpaceConfig,
    *,
    n_threads: int | None = None,
    progress: bool | None = None,
):
    """Train the autoencoder; returns ``(net in eval mode, history)``.

    Parameters
    ----------
    centred
        Aligned internal profiles minus the mean profile, over ``scale``: (n, m).
    coeffs
        Their principal-component coefficients ``centred @ components.T``: (n, k).
    components
        Orthonormal principal components (k, m).
    scale
        The global scale of the profiles; the history is in their units.

    ``history`` holds the mean loss per epoch (MSE of the variance-stabilised
    patterns).  Seeded by ``cfg.seed``: the same inputs give the same bits.
    """
    torch = require_torch()
    from tqdm.auto import tqdm

    n, m = centred.shape
    with deterministic(cfg.seed, n_threads):
        n_comp = components.shape[0]
        net = build_net(n_comp if cfg.decode_components else m, cfg.hidden, cfg.latent_dim, n_comp)
        opt = adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        lrs = learning_rates(cfg.lr, cfg.epochs, cfg.warmup)
        gen = torch.Generator().manual_seed(cfg.seed)
        xt = torch.as_tensor(centred, dtype=torch.float32)
        ct = torch.as_tensor(coeffs, dtype=torch.float32)
        basis = torch.as_tensor(components.T, dtype=torch.float32)
        # With decode_components the decoder outputs principal-component
        # coefficients: the components are orthonormal, so the squared error
        # over the grid is that over the coefficients plus what lies outside
        # the signal subspace (a constant, noise), and the input noise
        # projected on them is white noise of the same sigma.  Every step
        # then works on k numbers per pattern instead of the whole grid.
        outside = float(np.mean((centred - coeffs @ components) ** 2))
        bs = min(cfg.batch_size, n)
        history = []
        bar = tqdm(
            range(cfg.epochs), desc="ae train", disable=not show_progress(progress), leave=False
        )
        for epoch in bar:
            for group in opt.param_groups:
                group["lr"] = lrs[epoch]
            perm = torch.randperm(n, generator=gen)
            total = 0.0
            for i in range(0, n, bs):
                idx = perm[i : i + bs]
                if cfg.decode_components:
                    cb = ct[idx]
                    noisy = cb + (cfg.input_noise / scale) * torch.randn(cb.shape, generator=gen)
                    rec = net["decoder"](net["encoder"](noisy))
                    loss = torch.sum((rec - cb) ** 2) / (cb.shape[0] * m)
                else:
                    xb = xt[idx]
                    noisy = xb + (cfg.input_noise / scale) * torch.randn(xb.shape, generator=gen)
                    rec = net["decoder"](net["encoder"](noisy @ basis))
                    loss = torch.mean((rec - xb) ** 2)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * idx.numel()
            extra = outside if cfg.decode_components else 0.0
            history.append((total / n + extra) * scale**2)
            bar.set_postfix(loss=f"{history[-1]:.2e}", refresh=False)
    net.eval()
    return net, history
