"""The powder simulator against pymatgen's XRDCalculator on real structures."""

import copy
import warnings

import numpy as np
import pytest

pytest.importorskip("pymatgen")
pytest.importorskip("spglib")
pytest.importorskip("pyxtal")

from pymatgen.analysis.diffraction.xrd import XRDCalculator  # noqa: E402
from pymatgen.core import Structure  # noqa: E402

from xtec.classifier.generator import Crystal, CrystalGenerator  # noqa: E402
from xtec.classifier.simulator import (  # noqa: E402
    CU_KA1,
    PatternGrid,
    PowderSimulator,
    peak_list,
    reflection_intensities,
)
from xtec.classifier.structures import installed_structure_files  # noqa: E402
from xtec.errors import ParameterError  # noqa: E402

RANGE = (5.0, 90.0)


def _real_structures(per_source=12, max_atoms=200):
    """Up to ``per_source`` parseable CIFs from each package's folder of structures."""
    out, taken = [], {}
    for path in installed_structure_files():
        if path.suffix != ".cif" or taken.get(path.parent, 0) >= per_source:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                s = Structure.from_file(str(path))
        except Exception:  # noqa: BLE001 - some shipped CIFs are deliberately odd
            continue
        if len(s) <= max_atoms:
            out.append((path.name, s))
            taken[path.parent] = taken.get(path.parent, 0) + 1
    return out


STRUCTURES = _real_structures()


def test_enough_real_structures():
    assert len(STRUCTURES) >= 10


def test_peaks_match_pymatgen_on_real_structures():
    calc = XRDCalculator(wavelength=CU_KA1)
    compared = 0
    for name, s in STRUCTURES:
        try:
            ref = calc.get_pattern(s, two_theta_range=RANGE)
        except (ValueError, IndexError):
            continue  # pymatgen cannot do this one (e.g. no peaks in range)
        rx, ry = np.asarray(ref.x), np.asarray(ref.y)
        x, y = peak_list(Crystal.from_pymatgen(s), CU_KA1, RANGE)
        # Every pymatgen peak above 0.5 % of the strongest has a partner and vice versa.
        for a_x, a_y, b_x, b_y in ((rx, ry, x, y), (x, y, rx, ry)):
            for px, py in zip(a_x[a_y > 0.5], a_y[a_y > 0.5], strict=False):
                j = np.argmin(np.abs(b_x - px))
                assert abs(b_x[j] - px) < 0.01, (name, px)
                assert abs(b_y[j] - py) < 2.0, (name, px, py, b_y[j])
        compared += 1
    assert compared >= 10


def test_rendered_maximum_sits_on_a_strong_pymatgen_peak():
    calc = XRDCalculator(wavelength=CU_KA1)
    sim = PowderSimulator(precision="double")
    tt = sim.grid.two_theta
    step = tt[1] - tt[0]
    checked = 0
    for name, s in STRUCTURES[:20]:
        try:
            ref = calc.get_pattern(s, two_theta_range=RANGE)
        except (ValueError, IndexError):
            continue
        checked += 1
        # Big crystallites keep peaks apart, so the rendered maximum is a single reflection group.
        p = sim.simulate_one(Crystal.from_pymatgen(s), crystallite_size=100.0)
        strong = np.asarray(ref.x)[np.asarray(ref.y) > 30]
        assert np.min(np.abs(strong - tt[np.argmax(p)])) <= step + 0.01, name
    assert checked >= 10


def test_scherrer_width():
    # Simple cubic, one atom: the (100) peak is isolated; its FWHM must follow Scherrer.
    a, size_nm, k = 4.0, 30.0, 0.9
    c = Crystal(np.eye(3) * a, [[0, 0, 0]], [29])
    sim = PowderSimulator(
        PatternGrid(n_points=17001), sqrt_scale=False, scherrer_k=k, precision="double"
    )
    p = sim.simulate_one(c, size_nm)
    tt = sim.grid.two_theta
    theta = np.arcsin(CU_KA1 / (2 * a))
    expected = np.degrees(k * CU_KA1 / (size_nm * 10 * np.cos(theta)))
    window = np.abs(tt - np.degrees(2 * theta)) < 1.5
    half = p[window] >= p[window].max() / 2
    measured = half.sum() * (tt[1] - tt[0])
    assert measured == pytest.approx(expected, rel=0.05)


def test_normalised_sqrt_scaled_and_batched_equals_single():
    gen = CrystalGenerator(seed=3)
    crystals = gen.generate_many(6)
    sim = PowderSimulator(seed=0)
    sizes = np.linspace(20, 100, 6)
    batch = sim.simulate(crystals, sizes)
    assert batch.shape == (6, 8501) and batch.dtype == np.float32
    np.testing.assert_allclose(batch.max(1), 1.0, rtol=1e-6)
    assert batch.min() >= 0
    for c, s, row in zip(crystals, sizes, batch, strict=False):
        np.testing.assert_allclose(sim.simulate_one(c, s), row, atol=1e-5)


def test_symmetry_reduction_and_single_precision_agree_with_full_sum():
    gen = CrystalGenerator(space_groups=[62, 139, 166, 194, 225, 227], seed=5)
    for c in gen.generate_many(6):
        assert c.rotations is not None
        full = copy.copy(c)
        full.rotations = None
        x1, y1 = peak_list(c)
        x2, y2 = peak_list(full)
        np.testing.assert_allclose(x1, x2, atol=1e-9)
        np.testing.assert_allclose(y1, y2, atol=1e-6)
        t32, i32 = reflection_intensities(c, CU_KA1, RANGE, np.float32)
        t64, i64 = reflection_intensities(c, CU_KA1, RANGE, np.float64)
        np.testing.assert_allclose(i32 / i64.max(), i64 / i64.max(), atol=1e-4)


def test_parameters_are_validated():
    with pytest.raises(ParameterError):
        PatternGrid(two_theta_min=50, two_theta_max=10)
    with pytest.raises(ParameterError):
        PowderSimulator(crystallite_size=(0, 10))
    with pytest.raises(ParameterError):
        PowderSimulator().simulate([Crystal(np.eye(3) * 4, [[0, 0, 0]], [29])], [-1.0])
