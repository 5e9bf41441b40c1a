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

from xtec.classifier.data import resample
from xtec.classifier.explain import describe, plot_prediction
from xtec.classifier.extinction import ExtinctionClassifier, ExtinctionParams, probabilities
from xtec.classifier.indexing import peaks_at
from xtec.classifier.intake import (
    ANODES,
    IntakeParams,
    Radiation,
    check_pattern,
    radiation,
    to_two_theta,
)
from xtec.classifier.simulator import PatternGrid
from xtec.classifier.statistics import FrequencyTable
from xtec.classifier.symmetry import CRYSTAL_SYSTEMS, system_scores
from xtec.errors import InputError, ParameterError
from xtec.io.powder import read_powder
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
            self.intake = IntakeParams(**cfg.get("intake", {}))
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

    def analyse_counts(self, two_theta, counts, rad: Radiation):
        """Probabilities (230,), the :class:`~.extinction.Analysis` and the
        :class:`~.intake.FoundPeaks` of a measured pattern (counts, any 2-theta grid)."""
        found = self.intake.search(two_theta, counts, rad)
        n = self.classifier.params.max_peaks
        tol = np.maximum(self.classifier.params.tol_two_theta, self.intake.tol_fwhm * found.fwhm)
        h = found.height[:n]
        peaks = peaks_at(
            found.two_theta[:n], h / max(h.max(initial=0), 1e-300), rad.wavelength, tol[:n]
        )
        analysis = self.classifier.analyse(peaks, rad.wavelength)
        return probabilities(analysis.log_scores), analysis, found


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

    def analyse_counts(self, two_theta, counts, rad: Radiation):
        """Probabilities of a measured pattern: moved to the grid's wavelength, resampled."""
        x, y = check_pattern(two_theta, counts)
        s = rad.wavelength and self.grid.wavelength / rad.wavelength * np.sin(np.radians(x / 2))
        inside = np.abs(s) < 1
        x = 2 * np.degrees(np.arcsin(s[inside]))
        probs = self.predict_proba(resample(x, y[inside], self.grid)[None])[0]
        return probs, None, None

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


def predict_files(
    paths,
    model=None,
    top: int = 5,
    wavelength=None,
    ka2: str | None = None,
    keep=None,
    axis: str = "2theta",
    energy_angle: float | None = None,
) -> list[dict]:
    """Most likely space groups of measured pattern files, one dict per file.

    ``model`` is a loaded model or a model directory (default: the shipped one).
    ``wavelength``: an anode name or angstrom (:func:`.intake.radiation`); default the
    wavelength the file records, else Cu.  ``ka2``: ``"auto"``, ``"strip"`` or ``"none"``
    (default: the model's setting).  ``axis``: the files' first column, ``"2theta"``
    (degrees), ``"q"``, ``"d"`` or ``"energy"`` (keV, at ``energy_angle``), see
    :func:`.intake.to_two_theta`.  Each dict holds ``file``, ``answer`` (the top space
    group, ``None`` when no cell indexes the lines), ``space_groups`` (``top`` of them,
    with probabilities; for a pattern not indexed, the prior's order, tempered), ``crystal_system`` and its summed probability, and for
    the extinction model ``status`` (indexed or not), ``reason``, the ``peaks`` found
    and the ``cell`` with its figures of merit and refined zero shift.  ``keep``, a
    list, receives ``(two_theta, counts, analysis, found, radiation)`` per file (for
    plots).  A file that cannot be read raises InputError naming the file.
    """
    if top < 1:
        raise ParameterError("--top must be at least 1")
    if model is None or isinstance(model, (str, Path)):
        model = load_classifier(model)
    if ka2 is not None and getattr(model, "intake", None) is not None:
        if ka2 not in ("auto", "strip", "none"):
            raise ParameterError("--ka2 must be auto, strip or none")
        model.intake.ka2 = ka2
    given = None if wavelength is None else radiation(wavelength)
    results = []
    for path in paths:
        try:
            x, y, lam_file = read_powder(path)
            rad = given or _file_radiation(lam_file)
            note = ""
            if axis != "2theta":
                # Converted axes carry no K-alpha doublet of the chosen wavelength.
                rad = Radiation(rad.wavelength, None, name=f"{axis} axis at {rad.wavelength:g} A")
                x, y, note = to_two_theta(x, y, axis, rad, energy_angle)
            probs, analysis, found = model.analyse_counts(x, y, rad)
        except InputError as exc:
            msg = str(exc)
            raise InputError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
        sgs = np.asarray(model.space_groups)
        unindexed = analysis is not None and not analysis.indexed and analysis.phases == 1
        if unindexed:
            probs = temper_unindexed(probs)
        sp = system_scores(probs[None], sgs)[0]
        order = np.argsort(-probs)[:top]
        r = {
            "file": str(path),
            "space_groups": [
                {"number": int(sgs[i]), "probability": round(float(probs[i]), 4)} for i in order
            ],
            # The answer: none for a pattern no cell indexes (its ranking is the prior's
            # order of the low-symmetry groups, not evidence).
            "answer": None if unindexed else int(sgs[order[0]]),
            "crystal_system": CRYSTAL_SYSTEMS[int(sp.argmax())],
            "crystal_system_probability": round(float(sp.max()), 4),
            "wavelength": rad.wavelength,
            "radiation": rad.name,
        }
        if analysis is not None:
            r.update(describe(analysis, found, rad))
        if note:
            r["note"] = note
        results.append(r)
        if keep is not None:
            keep.append((x, y, analysis, found, rad))
    return results


#: Weight of the uniform distribution mixed into the answer of a pattern that no cell
#: indexes: the low-symmetry hypothesis won only by elimination, so its probabilities are
#: reported halved (the ranking is unchanged).
UNINDEXED_UNIFORM = 0.5


def temper_unindexed(probs: np.ndarray) -> np.ndarray:
    """Probabilities of a "not indexed" answer, mixed with the uniform distribution."""
    p = np.asarray(probs, float)
    return (1 - UNINDEXED_UNIFORM) * p + UNINDEXED_UNIFORM / p.size


def _file_radiation(lam: float | None) -> Radiation:
    """The file's wavelength: an anode's K-alpha1 (within 1e-3 angstrom) keeps its
    K-alpha2; any other is monochromatic; none recorded: Cu."""
    if lam is None:
        return radiation(None)
    for name, (k1, _) in ANODES.items():
        if abs(lam - k1) < 1e-3:
            return radiation(name)
    return radiation(lam)


def plot_files(target, results, kept) -> list[Path]:
    """Figures of predicted files: ``target`` for one, ``target_<n>.png`` for several."""
    target = Path(target)
    if len(results) == 1:
        paths = [target]
    else:
        paths = [target.with_name(f"{target.stem}_{i}.png") for i in range(len(results))]
    for path, r, (x, y, analysis, found, rad) in zip(paths, results, kept, strict=True):
        best = r["space_groups"][0]
        title = f"{r['file']}: {r.get('status', '')}; space group {best['number']} "
        title += f"({best['probability']:.2f}), {r['crystal_system']}"
        plot_prediction(path, x, y, analysis, found, rad, title)
    return paths
