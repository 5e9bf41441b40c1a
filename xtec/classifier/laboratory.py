"""Powder patterns as a laboratory diffractometer records them (the evaluation's lab mode).

Every effect a Bragg-Brentano scan adds to the ideal pattern, drawn at random per
pattern within :class:`LabSettings`:

* K-alpha1 + K-alpha2 (ratio 0.5) of the anode, each reflection at its own angle;
* pseudo-Voigt peaks whose width follows Caglioti's ``U tan^2 + V tan + W`` plus
  Scherrer broadening of the crystallite size, Lorentzian fraction ``eta``;
* zero shift (uniform within ``zero_shift`` degrees) and sample displacement
  (``-2 s cos(theta) / R``, ``s`` within ``displacement_mm`` on a ``radius_mm`` goniometer);
* preferred orientation (March-Dollase, ratio ``r`` along a low-index direction) in a
  fraction of the patterns;
* background: a constant, a low-angle rise (exponential) and an amorphous hump;
* an optional impurity phase (its strongest peak a few percent of the main phase's);
* any 2-theta range and step, and Poisson counts with the strongest peak near
  ``peak_counts``.

The 2-theta grid, wavelength and every drawn value come back with the counts, so a
result can be traced.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from xtec.classifier.intake import ANODES, KA2_RATIO
from xtec.classifier.simulator import reflection_intensities
from xtec.errors import ParameterError


@dataclass
class LabSettings:
    """Ranges the lab mode draws from (uniform unless said otherwise)."""

    anode: str = "Cu"
    start: tuple[float, float] = (5.0, 15.0)  # first 2-theta, degrees
    stop: tuple[float, float] = (80.0, 120.0)
    step: tuple[float, float] = (0.01, 0.03)
    zero_shift: float = 0.05  # |zero shift| up to this, degrees
    displacement_mm: float = 0.1
    radius_mm: float = 240.0
    caglioti_u: tuple[float, float] = (0.001, 0.02)  # deg^2
    caglioti_v: tuple[float, float] = (-0.01, 0.0)
    caglioti_w: tuple[float, float] = (0.002, 0.01)
    crystallite_nm: tuple[float, float] = (50.0, 300.0)
    eta: tuple[float, float] = (0.2, 0.8)
    peak_counts: tuple[float, float] = (1e4, 4e4)  # log-uniform; strongest peak
    background: tuple[float, float] = (0.005, 0.05)  # flat level / strongest peak
    rise: tuple[float, float] = (0.0, 3.0)  # low-angle rise at the start / flat level
    rise_length: tuple[float, float] = (2.0, 8.0)  # degrees
    hump: tuple[float, float] = (0.0, 2.0)  # amorphous hump height / flat level
    hump_center: tuple[float, float] = (18.0, 30.0)
    hump_width: tuple[float, float] = (3.0, 8.0)  # sigma, degrees
    preferred_orientation: float = 0.5  # fraction of patterns with texture
    march_r: tuple[float, float] = (0.7, 0.95)
    impurity: float = 0.3  # fraction of patterns with an impurity phase
    impurity_level: tuple[float, float] = (0.02, 0.08)

    def to_dict(self) -> dict:
        return asdict(self)


_PO_DIRECTIONS = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0], [1, 1, 0], [1, 1, 1]])


class LabSimulator:
    """Draws laboratory patterns of crystals (:class:`.generator.Crystal`).

    ``simulate(crystal, impurity=None)`` returns ``(two_theta, counts, info)``.
    """

    def __init__(self, settings: LabSettings | None = None, seed=None) -> None:
        self.settings = settings or LabSettings()
        if self.settings.anode not in ANODES:
            raise ParameterError(f"anode must be one of {', '.join(ANODES)}")
        self.rng = np.random.default_rng(seed)

    def _u(self, lo_hi) -> float:
        return float(self.rng.uniform(*lo_hi))

    def _lines(self, crystal, lo, hi, texture):
        """Ka1 and Ka2 positions (deg) and intensities of a crystal's reflections."""
        k1, k2 = ANODES[self.settings.anode]
        tt, inten, hkl = reflection_intensities(crystal, k1, (lo, hi), return_hkl=True)
        if texture is not None and len(tt):
            direction, r = texture
            recip = np.linalg.inv(crystal.lattice).T
            g = hkl @ recip
            d = direction @ recip
            cos_a = np.abs(g @ d) / (np.linalg.norm(g, axis=1) * np.linalg.norm(d))
            sin2 = 1 - cos_a**2
            inten = inten * (r * r * cos_a**2 + sin2 / r) ** -1.5
        s2 = np.clip(k2 / k1 * np.sin(np.radians(tt / 2)), -1, 1)
        tt2 = 2 * np.degrees(np.arcsin(s2))
        keep2 = np.abs(s2) < 1
        return np.r_[tt, tt2[keep2]], np.r_[inten, KA2_RATIO * inten[keep2]]

    def simulate(self, crystal, impurity=None):
        s, rng = self.settings, self.rng
        start, stop, step = self._u(s.start), self._u(s.stop), self._u(s.step)
        x = np.arange(start, stop, step)
        texture = None
        if rng.random() < s.preferred_orientation:
            direction = _PO_DIRECTIONS[rng.integers(len(_PO_DIRECTIONS))].astype(float)
            texture = (direction, self._u(s.march_r))
        tt, inten = self._lines(crystal, max(start - 2, 0.5), min(stop + 2, 179), texture)
        if len(tt) == 0:
            raise ParameterError("no reflection in the scanned range")
        u, v, w = self._u(s.caglioti_u), self._u(s.caglioti_v), self._u(s.caglioti_w)
        size, eta = self._u(s.crystallite_nm), self._u(s.eta)
        zero = self._u((-s.zero_shift, s.zero_shift))
        disp = self._u((-s.displacement_mm, s.displacement_mm))
        k1 = ANODES[s.anode][0]
        profile = self._render(x, tt, inten, (u, v, w), size, eta, zero, disp, k1)
        info = {
            "start": start,
            "stop": stop,
            "step": step,
            "zero_shift": zero,
            "displacement_mm": disp,
            "caglioti": [u, v, w],
            "crystallite_nm": size,
            "eta": eta,
            "texture": None if texture is None else [texture[0].tolist(), texture[1]],
        }
        top = profile.max()
        if impurity is not None and rng.random() < s.impurity:
            t2, i2 = self._lines(impurity, max(start - 2, 0.5), min(stop + 2, 179), None)
            if len(t2):
                p2 = self._render(x, t2, i2, (u, v, w), size, eta, zero, disp, k1)
                level = self._u(s.impurity_level)
                profile = profile + p2 / max(p2.max(), 1e-300) * level * top
                info["impurity_level"] = level
        peak = float(np.exp(self._u(np.log(s.peak_counts))))
        flat = self._u(s.background) * peak
        bg = (
            flat
            + self._u(s.rise) * flat * np.exp(-(x - start) / self._u(s.rise_length))
            + self._u(s.hump)
            * flat
            * np.exp(-0.5 * ((x - self._u(s.hump_center)) / self._u(s.hump_width)) ** 2)
        )
        mean = profile / top * peak + bg
        info.update({"peak_counts": peak, "background_counts": flat})
        return x, rng.poisson(mean).astype(float), info

    def _render(self, x, tt, inten, uvw, size, eta, zero, disp, lam):
        u, v, w = uvw
        theta = np.radians(tt / 2)
        tan = np.tan(theta)
        h2 = np.maximum(u * tan**2 + v * tan + w, 1e-6)
        scherrer = np.degrees(0.9 * lam / (size * 10.0 * np.cos(theta)))
        fwhm = np.sqrt(h2 + scherrer**2)
        pos = tt + zero - np.degrees(2 * disp * np.cos(theta) / self.settings.radius_mm)
        out = np.zeros_like(x)
        keep = inten > inten.max() * 1e-5
        pos, fwhm, inten = pos[keep], fwhm[keep], inten[keep]
        for i in range(0, len(pos), 256):
            p, f, a = pos[i : i + 256, None], fwhm[i : i + 256, None], inten[i : i + 256, None]
            dx = (x[None, :] - p) / f
            gauss = np.sqrt(4 * np.log(2) / np.pi) / f * np.exp(-4 * np.log(2) * dx**2)
            lor = 2 / (np.pi * f) / (1 + 4 * dx**2)
            out += (a * (eta * lor + (1 - eta) * gauss)).sum(0)
        return out
