"""One interface over the two kinds of model directory that ``xtec classify`` uses.

* ``kind: "extinction"`` (the shipped default, ``xtec/classifier/extinction/``): indexing
  + systematic absences + a space-group prior counted from real structures
  (:mod:`.indexing`, :mod:`.statistics`); no weights, ``statistics.json`` beside
  ``config.json``.
* a network trained by ``xtec classify train`` (``model.safetensors`` + ``config.json``).

Both take patterns on their 2-theta grid, normalised to a maximum of 1 and square-root
scaled (what :func:`xtec.classifier.data.resample` and the simulator return), and give
space-group probabilities.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from xtec.classifier.simulator import PatternGrid
from xtec.errors import InputError
from xtec.optional import require

log = logging.getLogger(__name__)

EXTINCTION_DIR = Path(__file__).parent / "extinction"
NETWORK_DIR = Path(__file__).parent / "pretrained"
DEFAULT_MODEL = EXTINCTION_DIR


class ExtinctionModel:
    """Model directory of kind "extinction" (see :class:`.indexing.ExtinctionClassifier`)."""

    kind = "extinction"

    def __init__(self, directory: str | Path) -> None:
        from xtec.classifier.indexing import ExtinctionClassifier, ExtinctionParams
        from xtec.classifier.statistics import FrequencyTable

        d = Path(directory)
        cfg = _read_config(d)
        try:
            self.grid = PatternGrid(**cfg["grid"])
            params = ExtinctionParams(**cfg.get("params", {}))
            smoothing = float(cfg.get("prior_smoothing", 0.5))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(
                f"{d / 'config.json'}: not an extinction model config ({exc})"
            ) from None
        self.table = FrequencyTable.from_json(d / cfg.get("statistics", "statistics.json"))
        self.config = cfg
        self.space_groups = np.arange(1, 231)
        self.classifier = ExtinctionClassifier(
            self.table.prior(smoothing), params, self.grid.wavelength
        )

    def predict_proba(self, patterns: np.ndarray) -> np.ndarray:
        """Probabilities (n, 230) of sqrt-scaled patterns (n, n_points) on :attr:`grid`."""
        p = np.atleast_2d(np.asarray(patterns, float))
        return self.classifier.predict_proba_many(self.grid.two_theta, p**2)


class NetworkModel:
    """A ResNet trained by ``xtec classify train``."""

    kind = "network"

    def __init__(self, directory: str | Path) -> None:
        require("torch", "ml", f"{directory} holds a network; it", package="PyTorch",
                error=InputError)
        from xtec.classifier.model import load_model

        self.model, self.config = load_model(directory)
        mc = self.model.config
        self.grid = PatternGrid(mc.two_theta_min, mc.two_theta_max, mc.n_points, mc.wavelength)
        self.space_groups = np.asarray(mc.space_groups)

    def predict_proba(self, patterns: np.ndarray) -> np.ndarray:
        from xtec.classifier.evaluate import model_predict

        return model_predict(self.model, np.atleast_2d(patterns))


def _read_config(d: Path) -> dict:
    f = d / "config.json"
    try:
        cfg = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{f}: cannot read the model config ({type(exc).__name__})") from None
    if not isinstance(cfg, dict):
        raise InputError(f"{f}: the model config must be a JSON object")
    return cfg


def load_classifier(directory: str | Path | None = None):
    """The model in ``directory`` (default: the shipped one) as Extinction- or NetworkModel."""
    d = Path(directory) if directory else DEFAULT_MODEL
    if not d.is_dir():
        raise InputError(f"model directory not found: {d} (give a directory, not a file)")
    if not (d / "config.json").is_file():
        raise InputError(f"{d} is not a classifier model directory (no config.json)")
    if _read_config(d).get("kind") == "extinction":
        return ExtinctionModel(d)
    return NetworkModel(d)
