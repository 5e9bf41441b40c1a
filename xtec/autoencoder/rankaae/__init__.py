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

Modules: :mod:`.network` (configuration, layers, optimiser, schedule),
:mod:`.losses` (every loss term as a function), :mod:`.metrics` (Spearman,
the early-stopping score), :mod:`.training` (the loop), :mod:`.model`
(:class:`RankAAE`).  Every public name is importable from this package.
"""

from __future__ import annotations

from xtec.autoencoder.rankaae.losses import (
    LOSS_NAMES,
    adversarial_loss,
    batch_losses,
    cycle_loss,
    decorrelation_loss,
    grad_reverse,
    rank_coefficients,
    rank_correlation_target,
    rank_loss,
    smoothing_operator,
    smoothness_loss,
)
from xtec.autoencoder.rankaae.metrics import latent_score, spearman_matrix
from xtec.autoencoder.rankaae.model import MODEL_KIND, RankAAE, default_descriptors
from xtec.autoencoder.rankaae.network import RankAAEConfig, build, lr_schedule, optimizer
from xtec.autoencoder.rankaae.training import split_indices, train

# The names benchmarks and tests used before the split.
_build, _grad_reverse, _optimizer, _lr_schedule = build, grad_reverse, optimizer, lr_schedule
_rank_correlation_target = rank_correlation_target

__all__ = [
    "LOSS_NAMES",
    "MODEL_KIND",
    "RankAAE",
    "RankAAEConfig",
    "adversarial_loss",
    "batch_losses",
    "build",
    "cycle_loss",
    "decorrelation_loss",
    "default_descriptors",
    "grad_reverse",
    "latent_score",
    "lr_schedule",
    "optimizer",
    "rank_coefficients",
    "rank_correlation_target",
    "rank_loss",
    "smoothing_operator",
    "smoothness_loss",
    "spearman_matrix",
    "split_indices",
    "train",
]
