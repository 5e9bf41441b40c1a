"""Loaders, writers and synthetic generators of xtec.autoencoder.data (no PyTorch needed)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from xtec.autoencoder.data import (
    SPECTRUM_DESCRIPTORS,
    load_curves,
    reflection_positions,
    save_curves,
    synthetic_alloy_series,
    synthetic_spectra,
)
from xtec.errors import InputError, ParameterError


@pytest.fixture(scope="module")
def series():
    return synthetic_alloy_series(12, seed=3)


@pytest.mark.parametrize("suffix", [".csv", ".nxs"])
def test_round_trip(tmp_path, series, suffix):
    path = save_curves(series, tmp_path / f"series{suffix}")
    back = load_curves(path)
    assert back.dims == ("pattern", "two_theta")
    np.testing.assert_allclose(back.values, series.values)
    np.testing.assert_allclose(back.two_theta.values, series.two_theta.values)
    np.testing.assert_allclose(back.composition.values, series.composition.values)


def test_spectra_round_trip_nexus(tmp_path):
    spectra = synthetic_spectra(20, seed=1)
    back = load_curves(save_curves(spectra, tmp_path / "s.nxs"), kind="spectrum")
    assert back.dims == ("spectrum", "energy")
    for name in SPECTRUM_DESCRIPTORS:
        np.testing.assert_allclose(back[name].values, spectra[name].values)


def test_two_column_text_files_with_descriptor_comments(tmp_path, series):
    paths = []
    for i in range(3):
        one = series.isel(pattern=[i])
        paths.append(save_curves(one, tmp_path / f"p{i}.xy"))
    text = paths[0].read_text()
    assert text.startswith("# composition = ")
    da = load_curves(paths)
    assert da.shape == (3, series.sizes["two_theta"])
    np.testing.assert_allclose(da.composition.values, series.composition.values[:3])


def test_column_layout_csv_and_decreasing_grid(tmp_path):
    x = np.linspace(50, 10, 41)  # decreasing: the loader sorts it
    lines = ["two_theta,a,b"] + [f"{v},{np.sin(v)},{np.cos(v)}" for v in x]
    path = tmp_path / "cols.csv"
    path.write_text("\n".join(lines))
    da = load_curves(path)
    assert da.shape == (2, 41)
    assert np.all(np.diff(da.two_theta.values) > 0)
    assert list(da.label.values) == ["a", "b"]
    np.testing.assert_allclose(da.values[0], np.sin(da.two_theta.values))


def test_nexus_written_by_nexusformat(tmp_path):
    from nexusformat.nexus import NXdata, NXentry, NXfield, NXroot

    y = np.random.default_rng(0).random((4, 30))
    data = NXdata(
        NXfield(y, name="counts"),
        [NXfield(np.arange(4), name="index"), NXfield(np.linspace(10, 40, 30), name="two_theta")],
    )
    data["composition"] = NXfield(np.array([0.1, 0.2, 0.3, 0.4]))
    root = NXroot(NXentry(data))
    root.save(tmp_path / "nf.nxs")
    da = load_curves(tmp_path / "nf.nxs")
    np.testing.assert_allclose(da.values, y)
    np.testing.assert_allclose(da.composition.values, [0.1, 0.2, 0.3, 0.4])


def test_bad_inputs_give_clear_errors(tmp_path, series):
    with pytest.raises(InputError, match="no such file"):
        load_curves(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("composition,10.0,10.1\n0.1,1.0\n")
    with pytest.raises(InputError, match="row 2 has 2 fields"):
        load_curves(bad)
    txt = tmp_path / "bad.txt"
    txt.write_text("10 1\n11 2\n12 abc\n")
    with pytest.raises(InputError, match="line 3"):
        load_curves(txt)
    junk = tmp_path / "junk.nxs"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(InputError, match="cannot open"):
        load_curves(junk)
    with h5py.File(tmp_path / "empty.nxs", "w") as h5:
        h5.create_group("entry")
    with pytest.raises(InputError, match="no NXdata"):
        load_curves(tmp_path / "empty.nxs")
    a = save_curves(series.isel(pattern=[0]), tmp_path / "a.xy")
    other = series.isel(pattern=[1], two_theta=slice(0, 100))
    b = save_curves(other, tmp_path / "b.xy")
    with pytest.raises(InputError, match="grid"):
        load_curves([a, b])


def test_vegard_shift_and_superlattice_intensity():
    x = [0.0, 0.5, 1.0]
    da = synthetic_alloy_series(composition=x, noise=0.0, size_spread=0.0)
    tt = da.two_theta.values
    # (110) follows Vegard's law: it moves to lower angle as the cell grows.
    for xi, row in zip(x, da.values, strict=True):
        expected = [p for hkl, p, _ in reflection_positions(xi) if hkl == (1, 1, 0)][0]
        window = (tt > expected - 1) & (tt < expected + 1)
        assert abs(tt[window][np.argmax(row[window])] - expected) < 0.06
    # The (100) superlattice peak exists only for the ordered mixed crystal.
    p100 = [p for hkl, p, sl in reflection_positions(0.5) if hkl == (1, 0, 0)][0]
    near = (tt > p100 - 0.3) & (tt < p100 + 0.3)
    heights = da.values[:, near].max(1) - da.values[:, near].min(1)
    assert heights[1] > 5 * max(heights[0], heights[2])


def test_generators_are_seeded_and_validated():
    a = synthetic_alloy_series(5, seed=7)
    b = synthetic_alloy_series(5, seed=7)
    np.testing.assert_array_equal(a.values, b.values)
    s1, s2 = synthetic_spectra(10, seed=2), synthetic_spectra(10, seed=2)
    np.testing.assert_array_equal(s1.values, s2.values)
    with pytest.raises(ParameterError):
        synthetic_alloy_series(5, composition_range=(0.5, 0.2))
    with pytest.raises(ParameterError):
        synthetic_spectra(0)


# --------------------------------------------------------------------------- XAS exchange formats


def _write_xdi(path, energy, mu, descriptors, units="eV"):
    scale = 1000.0 if units == "keV" else 1.0
    lines = [
        "# XDI/1.0 xtec-test/0.1",
        f"# Column.1: energy {units}",
        "# Column.2: mutrans",
        "# Column.3: i0",
        "# Element.symbol: Fe",
        "# Element.edge: K",
        "# Mono.d_spacing: 3.13555",
    ]
    lines += [f"# Descriptor.{k}: {v!r}" for k, v in descriptors.items()]
    lines += ["# ///", "# a test spectrum", "#----", "# energy mutrans i0"]
    lines += [f"{e / scale!r} {m!r} 1000.0" for e, m in zip(energy, mu, strict=True)]
    path.write_text("\n".join(lines) + "\n")


def _write_athena(path, labels, grid, signal):
    lines = ["# Athena data file -- Athena version 0.9.26", "# Element.symbol: Fe", "# ----"]
    lines.append("#  " + "  ".join(labels))
    other = len(labels) - 2
    lines += [f"  {g!r}  {s!r}" + "  0.5" * other for g, s in zip(grid, signal, strict=True)]
    path.write_text("\n".join(lines) + "\n")


def test_xdi_and_athena_files_load_like_the_csv(tmp_path):
    spectra = synthetic_spectra(4, seed=3)
    spectra = spectra.assign_coords(energy=7112.0 + spectra.energy.values)  # absolute eV
    csv = load_curves(save_curves(spectra, tmp_path / "all.csv"), kind="spectrum")
    names = [n for n, c in spectra.coords.items() if c.dims == ("spectrum",) and n != "spectrum"]
    e = spectra.energy.values.tolist()
    xdi, xdi_kev, xmu, nor, chik = [], [], [], [], []
    for i in range(4):
        mu = spectra.values[i].tolist()
        desc = {n: float(spectra[n].values[i]) for n in names}
        _write_xdi(tmp_path / f"s{i}.xdi", e, mu, desc)
        _write_xdi(tmp_path / f"k{i}.xdi", e, mu, desc, units="keV")
        _write_athena(tmp_path / f"s{i}.xmu", ["energy", "mu", "bkg", "pre_edge"], e, mu)
        _write_athena(tmp_path / f"s{i}.nor", ["energy", "norm", "flat", "bkg"], e, mu)
        _write_athena(tmp_path / f"s{i}.chik", ["k", "chi", "chik", "win"], e, mu)
        for lst, suffix in ((xdi, "s{}.xdi"), (xdi_kev, "k{}.xdi"), (xmu, "s{}.xmu")):
            lst.append(tmp_path / suffix.format(i))
        nor.append(tmp_path / f"s{i}.nor")
        chik.append(tmp_path / f"s{i}.chik")
    from_xdi = load_curves(xdi, kind="spectrum")
    assert from_xdi.dims == csv.dims == ("spectrum", "energy")
    np.testing.assert_array_equal(from_xdi.values, csv.values)
    np.testing.assert_array_equal(from_xdi.energy.values, csv.energy.values)
    for n in names:  # the Descriptor namespace gives the descriptors, bare
        np.testing.assert_array_equal(from_xdi[n].values, csv[n].values)
    assert from_xdi.attrs["Element.symbol"] == "Fe" and from_xdi.attrs["units_energy"] == "eV"
    # keV columns come back in eV.
    kev = load_curves(xdi_kev, kind="spectrum")
    np.testing.assert_allclose(kev.energy.values, csv.energy.values, rtol=1e-12)
    np.testing.assert_array_equal(kev.values, csv.values)
    for files in (xmu, nor):
        got = load_curves(files, kind="spectrum")
        np.testing.assert_array_equal(got.values, csv.values)
        np.testing.assert_array_equal(got.energy.values, csv.energy.values)
    got = load_curves(chik, kind="spectrum")  # chi(k): the grid is k
    np.testing.assert_array_equal(got.values, csv.values)
    assert got.attrs["grid_label"] == "k" and got.attrs["units_energy"] == "1/angstrom"


def test_xas_files_without_a_spectrum_column_say_so(tmp_path):
    bad = tmp_path / "raw.xdi"
    bad.write_text(
        "# XDI/1.0\n# Column.1: energy eV\n# Column.2: vfc01\n# Column.3: vfc02\n"
        "7100 1 2\n7101 1 2\n7102 1 2\n"
    )
    with pytest.raises(InputError, match="no absorption among the columns"):
        load_curves(bad, kind="spectrum")
    units = tmp_path / "units.xdi"
    units.write_text("# XDI/1.0\n# Column.1: energy degrees\n# Column.2: mu\n1 1\n2 2\n")
    with pytest.raises(InputError, match="units"):
        load_curves(units, kind="spectrum")
    raw = tmp_path / "raw2.xdi"  # i0 and itrans only: mu = ln(i0 / itrans)
    raw.write_text(
        "# XDI/1.0\n# Column.1: energy eV\n# Column.2: i0\n# Column.3: itrans\n"
        "7100 100 50\n7101 100 25\n"
    )
    np.testing.assert_allclose(load_curves(raw, kind="spectrum").values[0], np.log([2.0, 4.0]))
