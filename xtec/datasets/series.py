"""The synthetic series in memory, its class codes, and the grid both kinds share."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

BACKGROUND, BRAGG, CDW, CRITICAL, TDS = 0, 1, 2, 3, 4
GAP = -1
CLASS_NAMES = {GAP: "gap", BACKGROUND: "background", BRAGG: "bragg", CDW: "cdw",
               CRITICAL: "critical", TDS: "tds"}


@dataclass
class SyntheticSeries:
    """A synthetic series held in memory.

    Attributes
    ----------
    intensity : ndarray of shape (n_temperatures, n_l, n_k, n_h), float32
    temperature : ndarray of shape (n_temperatures,), K
    ql, qk, qh : ndarray, r.l.u.
    classes : ndarray of shape (n_l, n_k, n_h), int8
        Dominant planted feature per voxel (``GAP``, ``BACKGROUND`` or a class).
    signal : ndarray of shape (n_l, n_k, n_h), bool
        Voxels whose dominant feature is at least ``signal_ratio`` x background.
    tc : float
        Planted transition temperature (K).
    kind : "separated", "realistic" or "measured"
    contributions : dict of class code -> ndarray of shape (n_l, n_k, n_h), optional
        Mean over temperature of each family's expected intensity (realistic kind).
    frame_scale, bad_frames : truth of the measured kind (see :mod:`xtec.datasets.measured`).
    """

    intensity: np.ndarray
    temperature: np.ndarray
    ql: np.ndarray
    qk: np.ndarray
    qh: np.ndarray
    classes: np.ndarray
    signal: np.ndarray
    tc: float
    params: dict = field(default_factory=dict)
    kind: str = "separated"
    # Mean over temperature of each family's expected intensity, (n_l, n_k, n_h)
    # float32 per class code; None for the separated kind.
    contributions: dict | None = None
    # Measured-like kind (xtec.datasets.measured): the scale each stored frame
    # carries (T,), and the indices of the bad frames; None / () otherwise.
    frame_scale: np.ndarray | None = None
    bad_frames: tuple = ()

    @property
    def n_classes(self) -> int:
        return int(len(np.unique(self.classes[self.signal])))


@dataclass(frozen=True)
class Grid:
    """Where a synthetic series is sampled: reciprocal-space axes and temperatures.

    The keywords :func:`~xtec.datasets.make_series` and
    :func:`~xtec.datasets.make_realistic_series` share.

    Attributes
    ----------
    shape : (n_l, n_k, n_h), optional
        Overrides the ranges: a grid of this shape centred on the origin with the
        given steps (used to make large volumes for benchmarks).
    h_range, k_range, l_range : (min, max), r.l.u.
    hk_step, l_step : float
        Steps along H and K, and along L (r.l.u.).
    temperatures : array of shape (n_temperatures,), optional
        Default 24 temperatures from 20 K to 300 K.
    """

    shape: tuple[int, int, int] | None = None
    h_range: tuple[float, float] = (-3.0, 3.0)
    k_range: tuple[float, float] = (-3.0, 3.0)
    l_range: tuple[float, float] = (-1.0, 1.0)
    hk_step: float = 0.05
    l_step: float = 0.1
    temperatures: np.ndarray | None = None

    def keywords(self) -> dict:
        """The grid as keyword arguments of the series makers."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def temperature(self) -> np.ndarray:
        """Temperatures (K), float64."""
        if self.temperatures is None:
            return default_temperatures()
        return np.asarray(self.temperatures, dtype=np.float64)

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ql, qk, qh)`` in r.l.u."""
        if self.shape is not None:
            return centred_axes(self.shape, self.hk_step, self.l_step)
        return (_axis(*self.l_range, self.l_step), _axis(*self.k_range, self.hk_step),
                _axis(*self.h_range, self.hk_step))


def default_temperatures() -> np.ndarray:
    return np.linspace(20.0, 300.0, 24)


def centred_axes(shape, hk_step: float, l_step: float):
    """``(ql, qk, qh)`` of a grid of ``shape`` (n_l, n_k, n_h) centred on the origin."""
    nl, nk, nh = shape
    ql = np.round((np.arange(nl) - nl // 2) * l_step, 6)
    qk = np.round((np.arange(nk) - nk // 2) * hk_step, 6)
    qh = np.round((np.arange(nh) - nh // 2) * hk_step, 6)
    return ql, qk, qh


def span(ql, qk, qh) -> int:
    """Largest |index| of a reflection near the grid (the size of per-peak tables)."""
    return int(max(np.abs(qh).max(), np.abs(qk).max(), np.abs(ql).max())) + 2


def _axis(lo: float, hi: float, step: float) -> np.ndarray:
    n = int(round((hi - lo) / step)) + 1
    return np.round(lo + step * np.arange(n), 6)


def blank_gaps(gap: np.ndarray, intensity: np.ndarray, classes: np.ndarray,
               signal: np.ndarray) -> None:
    """Detector gaps ``gap`` (n_l, n_k, n_h): zero at every temperature, class
    ``GAP``, never signal (in place)."""
    intensity[:, gap] = 0.0
    classes[gap] = GAP
    signal &= ~gap
