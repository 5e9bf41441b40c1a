"""Feature space of 1-D XRD patterns built by an autoencoder.

After Utimula, Hongo, Nakano, Maezono et al., "Feature Space of XRD Patterns
Constructed by an Autoencoder", Adv. Theory Simul. (2023): patterns on a common
2-theta grid are encoded to a low-dimensional latent (2-D by default) and decoded
back; the latent points are clustered.  Before encoding, patterns are resampled
onto a log(sin theta) grid, where Vegard's shifts are translations, and lined up
with a template; the lag is kept as a whole-pattern lattice strain beside the
latent.  On the trained model:

* :class:`ConcentrationEstimator` estimates a composition (or a phase fraction)
  from a pattern's place on the path that reference patterns of known
  composition trace in the features (latent and strain);
* :meth:`FeatureSpaceAE.peak_relevance` masks one peak (or any 2-theta window),
  re-encodes, and ranks peaks by how far the latent point moves;
* :meth:`FeatureSpaceAE.interpolate` decodes points on the segment between two
  patterns' latents into intermediate patterns.

Only :class:`FeatureSpaceAE` methods need PyTorch; the estimator and the masking
helpers are NumPy.

Modules: :mod:`.patterns` (preprocessing: scale, variance, log-d grid,
baseline, lags, instrument terms), :mod:`.alignment` (profiles lined up with
the template, the instrument fit), :mod:`.peaks` (peaks and masking windows),
:mod:`.estimate` (composition estimates on the reference path),
:mod:`.network` (configuration, layers, learning rates, training loop),
:mod:`.model` (:class:`FeatureSpaceAE`), :mod:`.analysis` (peak relevance,
interpolation), :mod:`.persistence` (the model file).  Every public name is
importable from this package, as before the split.
"""

from __future__ import annotations

from xtec.autoencoder.feature_space.estimate import (
    EXTRA_DESCRIPTORS,
    ConcentrationEstimator,
    project_on_paths,
)
from xtec.autoencoder.feature_space.model import FeatureSpaceAE
from xtec.autoencoder.feature_space.network import FeatureSpaceConfig, learning_rates
from xtec.autoencoder.feature_space.patterns import (
    cross_correlation_shift,
    log_d_grid,
    normalize_patterns,
    remove_baseline,
    resample_rows,
    shift_rows,
    signal_rank,
    variance_stabilize,
)
from xtec.autoencoder.feature_space.peaks import Peak, find_peaks, mask_window
from xtec.autoencoder.feature_space.persistence import MODEL_KIND

__all__ = [
    "EXTRA_DESCRIPTORS",
    "MODEL_KIND",
    "ConcentrationEstimator",
    "FeatureSpaceAE",
    "FeatureSpaceConfig",
    "Peak",
    "cross_correlation_shift",
    "find_peaks",
    "learning_rates",
    "log_d_grid",
    "mask_window",
    "normalize_patterns",
    "project_on_paths",
    "remove_baseline",
    "resample_rows",
    "shift_rows",
    "signal_rank",
    "variance_stabilize",
]
