"""Saving and loading a feature-space model: one list of what a model file holds.

The file is the package's model format (:func:`xtec.nn.save_model_file`):
weights, arrays and JSON extras.  Each fitted attribute is named once, in the
tables below, with the key it has in the file; saving and loading both walk
them.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from xtec.autoencoder.feature_space.estimate import ConcentrationEstimator
from xtec.autoencoder.feature_space.network import build_net
from xtec.autoencoder.feature_space.patterns import log_d_grid
from xtec.errors import InputError
from xtec.nn import load_model_file, save_model_file

MODEL_KIND = "feature_space_ae"

_REQUIRED = object()

#: (key in the file, attribute, default when an older file lacks it), in file order.
ARRAYS = (
    ("grid", "grid_", _REQUIRED),
    ("latent", "latent_", _REQUIRED),
    ("cluster_centers", "cluster_centers_", _REQUIRED),
    ("latent_center", "latent_center_", _REQUIRED),
    ("mean_pattern", "mean_pattern_", _REQUIRED),
    ("components", "components_", _REQUIRED),
    ("history", "history_", np.empty(0)),
)
EXTRAS = (
    ("grid_name", "grid_name_", "two_theta"),
    ("latent_scale", "latent_scale_", _REQUIRED),
    ("scale", "scale_", _REQUIRED),
    ("reconstruction_mse", "reconstruction_mse_", np.nan),
    ("train_seconds", "train_seconds_", np.nan),
    ("descriptor", "descriptor", None),
)
#: Only in models that align patterns (``config.align``).
ALIGNED_ARRAYS = (
    ("template", "template_", _REQUIRED),
    ("train_strain", "train_strain_", _REQUIRED),
)
ALIGNED_EXTRAS = (
    ("lag_offset", "lag_offset_", _REQUIRED),
    ("strain_scale", "strain_scale_", _REQUIRED),
)
#: Only in models that separate instrument terms (``config.correct_instrument``).
INSTRUMENT_EXTRAS = (("strain_sigma_ref", "strain_sigma_ref_", _REQUIRED),)
#: Attributes kept as Python floats.
_FLOATS = {
    "strain_sigma_ref_",
    "latent_scale_",
    "scale_",
    "reconstruction_mse_",
    "train_seconds_",
    "lag_offset_",
    "strain_scale_",
}


def save_model(model, path) -> None:
    """Write a fitted :class:`~xtec.autoencoder.feature_space.FeatureSpaceAE` to ``path``."""
    aligned = model.config.align
    arrays = {key: getattr(model, attr) for key, attr, _ in ARRAYS}
    extras = {key: getattr(model, attr) for key, attr, _ in EXTRAS}
    if aligned:
        arrays.update({key: getattr(model, attr) for key, attr, _ in ALIGNED_ARRAYS})
        extras.update({key: getattr(model, attr) for key, attr, _ in ALIGNED_EXTRAS})
    if model.config.correct_instrument:
        extras.update({key: getattr(model, attr) for key, attr, _ in INSTRUMENT_EXTRAS})
    if model.estimators_:
        arrays["ref_features"] = model.ref_features_
        extras["estimators"] = {}
        for name, est in model.estimators_.items():
            arrays[f"ref_values/{name}"] = est.ref_values_
            extras["estimators"][name] = {
                "method": est.method,
                "n_neighbors": est.n_neighbors,
                "smoothing": est.smoothing,
                "columns": list(est.columns) if est.columns is not None else None,
            }
    save_model_file(path, MODEL_KIND, asdict(model.config), model.net_.state_dict(), arrays, extras)


def _assign(model, table, source: dict, path) -> None:
    for key, attr, default in table:
        if key in source:
            value = source[key]
        elif default is _REQUIRED:
            raise InputError(f"{path}: model file lacks {key!r}")
        else:
            value = default
        setattr(model, attr, float(value) if attr in _FLOATS and value is not None else value)


def load_model(cls, path, **kwargs):
    """Read a model written by :func:`save_model` into a new ``cls`` (no pickle involved)."""
    config, state, arrays, extras = load_model_file(path, MODEL_KIND)
    if "grid" not in config:  # written before log-d alignment existed
        config.update(
            grid="two_theta", align=False, subtract_background=False, decode_components=False
        )
    try:
        config["hidden"] = tuple(config["hidden"])
        model = cls(**config, **kwargs)
        grid = arrays["grid"]
        net = build_net(
            arrays["components"].shape[0] if model.config.decode_components else grid.size,
            model.config.hidden,
            model.config.latent_dim,
            arrays["components"].shape[0],
        )
        net.load_state_dict(state)
    except (KeyError, TypeError, RuntimeError) as exc:
        raise InputError(f"{path}: model file does not match its configuration ({exc})") from None
    net.eval()
    model.net_ = net
    _assign(model, ARRAYS, arrays, path)
    _assign(model, EXTRAS, extras, path)
    model.train_strain_ = np.zeros(model.latent_.shape[0])
    model.internal_grid_ = log_d_grid(grid) if model.config.grid == "log_d" else grid.copy()
    if model.config.align:
        try:
            _assign(model, ALIGNED_ARRAYS, arrays, path)
            _assign(model, ALIGNED_EXTRAS, extras, path)
            if model.config.correct_instrument:
                _assign(model, INSTRUMENT_EXTRAS, extras, path)
        except InputError as exc:
            raise InputError(f"{exc}, part of its reference") from None
    model.estimators_ = {}
    try:
        if "ref_latent" in arrays:  # older files: one estimator on the latent
            model.ref_features_ = arrays["ref_latent"]
            model.estimators_[model.descriptor] = ConcentrationEstimator(**extras["estimator"]).fit(
                arrays["ref_latent"], arrays["ref_values"]
            )
        for name, params in extras.get("estimators", {}).items():
            model.ref_features_ = arrays["ref_features"]
            model.estimators_[name] = ConcentrationEstimator(**params).fit(
                arrays["ref_features"], arrays[f"ref_values/{name}"]
            )
    except (KeyError, TypeError) as exc:
        raise InputError(f"{path}: model file lacks part of its reference ({exc})") from None
    model.labels_ = model.predict_cluster(model._features(model.latent_, model.train_strain_))
    return model
