"""Autoencoder feature spaces of diffraction patterns and spectra.

Two published methods on PyTorch (the optional ``ml`` extra):

* :class:`~xtec.autoencoder.feature_space.FeatureSpaceAE`: a 2-D feature space
  of XRD patterns, with composition estimation, peak relevance and generation by
  interpolation (after Utimula et al., Adv. Theory Simul. 2023);
* :class:`~xtec.autoencoder.rankaae.RankAAE`: a rank-constrained adversarial
  autoencoder whose latent dimensions follow labelled descriptors (after Liang
  et al., Phys. Rev. Materials 7, 053802, 2023).

Data loaders (CSV, text, NeXus, XDI and Athena/Larch files) live in
:mod:`xtec.io.curves` and synthetic generators in :mod:`xtec.autoencoder.synthetic`
(both re-exported by :mod:`xtec.autoencoder.data`); they need no PyTorch; series from
pymatgen's XRDCalculator, an independent simulator, in
:mod:`xtec.autoencoder.series`.  Importing this package is cheap: names are loaded on first use.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "FeatureSpaceAE": "feature_space",
    "ConcentrationEstimator": "feature_space",
    "find_peaks": "feature_space",
    "mask_window": "feature_space",
    "RankAAE": "rankaae",
    "rank_loss": "rankaae",
    "load_curves": "data",
    "save_curves": "data",
    "synthetic_alloy_series": "synthetic",
    "synthetic_spectra": "synthetic",
    "synthetic_exafs_xanes": "synthetic",
    "pymatgen_series": "series",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
