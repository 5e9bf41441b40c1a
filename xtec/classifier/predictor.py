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

from xtec.classifier.data import read_pattern, resample
from xtec.classifier.indexing import ExtinctionClassifier, ExtinctionParams
from xtec.classifier.simulator import PatternGrid
from xtec.classifier.statistics import FrequencyTable
from xtec.classifier.symmetry import CRYSTAL_SYSTEMS, system_scores
from xtec.errors import InputError, ParameterError
from xtec.optional import require

log = logging.getLogger(__name__)

EXTINCTION_DIR = Path(__file__).parent / "extinction"
NETWORK_DIR = Path(__file__).parent / "pretrained"
DEFAULT_MODEL = EXTINCTION_DIR


class ExtinctionModel:
    """Model directory of kind "extinction" (see :class:`.indexing.ExtinctionClassifier`)."""

    kind = "extinction"

    def __init__(self, directory: str | Path) -> None:
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
        require(
            "torch", "ml", f"{directory} holds a network; it", package="PyTorch", error=InputError
        )
        from xtec.classifier.model import load_model

        self.model, self.config = load_model(directory)
        mc = self.model.config
        self.grid = PatternGrid(mc.two_theta_min, mc.two_theta_max, mc.n_points, mc.wavelength)
        self.space_groups = np.asarray(mc.space_groups)

    def predict_proba(self, patterns: np.ndarray, batch: int = 128) -> np.ndarray:
        """Probabilities (n, n_classes) of sqrt-scaled patterns (n, n_points) on :attr:`grid`."""
        import torch

        x = np.atleast_2d(patterns)
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            out = [self.model(x[i : i + batch]).softmax(1) for i in range(0, len(x), batch)]
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.space_groups)))


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


def predict_files(paths, model=None, top: int = 5) -> list[dict]:
    """Most likely space groups of measured pattern files, one dict per file.

    ``model`` is a loaded model or a model directory (default: the shipped one).  Each
    dict holds ``file``, ``space_groups`` (``top`` of them, with probabilities),
    ``crystal_system`` and its summed probability.  A file that cannot be read raises
    InputError naming the file.
    """
    if top < 1:
        raise ParameterError("--top must be at least 1")
    if model is None or isinstance(model, (str, Path)):
        model = load_classifier(model)
    xs = []
    for p in paths:
        try:
            xs.append(resample(*read_pattern(p), model.grid))
        except InputError as exc:
            msg = str(exc)
            raise InputError(msg if msg.startswith(str(p)) else f"{p}: {msg}") from None
    probs = model.predict_proba(np.stack(xs))
    sgs = np.asarray(model.space_groups)
    sys_p = system_scores(probs, sgs)
    results = []
    for path, p, sp in zip(paths, probs, sys_p, strict=False):
        order = np.argsort(-p)[:top]
        results.append(
            {
                "file": str(path),
                "space_groups": [
                    {"number": int(sgs[i]), "probability": round(float(p[i]), 4)} for i in order
                ],
                "crystal_system": CRYSTAL_SYSTEMS[int(sp.argmax())],
                "crystal_system_probability": round(float(sp.max()), 4),
            }
        )
    return results
