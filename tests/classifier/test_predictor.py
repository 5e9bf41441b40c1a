"""``xtec classify predict`` on measured patterns (from the registries) and bad files."""

import json

import numpy as np
import pytest

pytest.importorskip("pyxtal")
pytest.importorskip("spglib")

from xtec.classifier.realdata import MEASURED, fetch_measured_patterns  # noqa: E402
from xtec.cli.main import main  # noqa: E402


@pytest.fixture(scope="module")
def measured():
    files, missing = fetch_measured_patterns()
    return files, missing


def _predict(capsys, *args):
    assert main(["classify", "predict", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _need(measured, name):
    files, missing = measured
    if name not in files:
        pytest.skip(f"{name} ({MEASURED[name][0]}) unavailable: {missing.get(name)}")
    return files[name]


def test_lab6_is_221_at_top1(measured, capsys, tmp_path):
    (r,) = _predict(capsys, _need(measured, "LaB6"), "--plot", tmp_path / "lab6.png")
    assert r["space_groups"][0]["number"] == 221
    assert r["status"] == "indexed" and r["cell"]["system"] == "cubic"
    assert r["cell"]["a"] == pytest.approx(4.157, abs=0.005)  # LaB6: 4.1569 A
    assert abs(r["cell"]["zero_shift"]) <= 0.15 and r["cell"]["M20"] > 0
    assert len(r["peaks"]) >= 20 and "reason" in r
    assert (tmp_path / "lab6.png").stat().st_size > 10_000


def test_pbso4_is_orthorhombic_with_pnma_in_top5(measured, capsys):
    (r,) = _predict(capsys, _need(measured, "PbSO4"))
    assert r["crystal_system"] == "orthorhombic"
    assert 62 in [g["number"] for g in r["space_groups"]]
    # PbSO4, Pnma: 8.48, 6.96 (as b here, axes sorted), 5.40 A.
    assert sorted([r["cell"][k] for k in "abc"]) == pytest.approx([5.40, 6.96, 8.48], abs=0.02)


def test_nacl_energy_dispersive_is_cubic_with_225_in_top5(measured, capsys):
    path = _need(measured, "NaCl")
    # The file's first column is linear in 1/d (energy-dispersive, keV): as 2-theta its
    # sin^2 ratios are off by up to 5 %, so it must be read as energy.
    (r,) = _predict(capsys, path, "--axis", "energy")
    assert r["crystal_system"] == "cubic"
    assert 225 in [g["number"] for g in r["space_groups"]]
    assert "note" in r


def test_sic_zn_says_more_than_one_phase(measured, capsys):
    (r,) = _predict(capsys, _need(measured, "SiC_Zn"))
    assert r["status"] == "more than one phase"
    # The main phase is zinc (P6_3/mmc, a 2.665, c 4.947 A).
    assert r["space_groups"][0]["number"] == 194
    assert r["cell"]["a"] == pytest.approx(2.665, abs=0.01)
    assert r["cell"]["c"] == pytest.approx(4.947, abs=0.03)


def _write(path, x, y):
    path.write_text("\n".join(f"{a} {b}" for a, b in zip(x, y, strict=True)) + "\n")
    return path


@pytest.mark.parametrize(
    "name, message",
    [
        ("empty", "no numeric data"),
        ("one_column", "no numeric data"),
        ("text", "no numeric data"),
        ("negative", "negative counts"),
        ("backwards", "monotonic"),
        ("flat", "empty"),
        ("missing", "no such file"),
    ],
)
def test_bad_pattern_files_are_one_line_exit_2(tmp_path, capsys, name, message):
    x = np.linspace(10, 80, 400)
    y = 100 + 1000 * np.exp(-((x - 30) ** 2) / 0.01)
    p = tmp_path / f"{name}.xy"
    if name == "empty":
        p.write_text("")
    elif name == "one_column":
        p.write_text("\n".join(str(v) for v in y))
    elif name == "text":
        p.write_text("this is not\na pattern at all\n")
    elif name == "negative":
        _write(p, x, y - 200)
    elif name == "backwards":
        xb = x.copy()
        xb[200:] = xb[200:][::-1]
        _write(p, xb, y)
    elif name == "flat":
        _write(p, x, 0 * y)
    rc = main(["classify", "predict", str(p)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err


def test_wavelength_names_and_numbers(tmp_path, capsys):
    assert main(["classify", "predict", str(tmp_path / "x.xy"), "--wavelength", "Zz"]) == 2
    assert "--wavelength" in capsys.readouterr().err
