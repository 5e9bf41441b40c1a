"""Powder-pattern formats of xtec.io.powder.read_powder: GSAS, start-step-end, CSV, text,
NeXus, the wavelength a file records, and one-line refusals."""

import numpy as np
import pytest

from xtec.errors import InputError
from xtec.io.powder import read_powder

X = 10 + 0.02 * np.arange(40)
Y = np.round(100 + 50 * np.sin(X), 0)


def _gsas_std(path, counts):
    lines = ["PbSO4 test pattern", "# Lam1 = 1.540560"]
    lines.append(f"BANK 1 {len(counts)} {len(counts) // 10} CONST 1000.00 2.00 0 0 STD")
    for i in range(0, len(counts), 10):
        lines.append("".join(f"{int(c):8d}" for c in counts[i : i + 10]).ljust(80))
    path.write_text("\n".join(lines) + "\n")


def test_gsas_std_esd_and_fxye(tmp_path):
    _gsas_std(tmp_path / "a.gsa", Y)
    x, y, lam = p = read_powder(tmp_path / "a.gsa")
    np.testing.assert_allclose(x, X)
    np.testing.assert_array_equal(y, Y)
    assert lam == pytest.approx(1.54056) and p.format == "GSAS"
    esd = ["esd", f"BANK 1 {len(Y)} 8 CONST 1000.00 2.00 0 0 ESD"]
    pairs = [f"{v:8.1f}{np.sqrt(v):8.2f}" for v in Y]
    esd += ["".join(pairs[i : i + 5]) for i in range(0, len(pairs), 5)]
    (tmp_path / "b.gsa").write_text("\n".join(esd) + "\n")
    np.testing.assert_array_equal(read_powder(tmp_path / "b.gsa")[1], Y)
    fx = ["fxye", f"BANK 1 {len(Y)} {len(Y)} FXYE"]
    fx += [f"{100 * a:.4f} {b:.2f} {np.sqrt(b):.3f}" for a, b in zip(X, Y, strict=True)]
    (tmp_path / "c.fxye").write_text("\n".join(fx) + "\n")
    x, y, lam = read_powder(tmp_path / "c.fxye")
    np.testing.assert_allclose(x, X)
    assert lam is None
    (tmp_path / "d.gsa").write_text("no bank here\n1 2 3\n")
    with pytest.raises(InputError, match="no BANK"):
        read_powder(tmp_path / "d.gsa")


def test_start_step_end_and_text_wavelength(tmp_path):
    body = [f"{X[0]:.3f} 0.020 {X[-1]:.3f}  test pattern, wavelength 0.7093"]
    body += [" ".join(f"{int(c)}" for c in Y[i : i + 10]) for i in range(0, len(Y), 10)]
    (tmp_path / "r.dat").write_text("\n".join(body) + "\n")
    x, y, lam = p = read_powder(tmp_path / "r.dat")
    assert p.format == "start-step-end" and lam == pytest.approx(0.7093)
    np.testing.assert_allclose(x, X)
    np.testing.assert_array_equal(y, Y)
    (tmp_path / "t.xye").write_text(
        "# wavelength = 1.78897\n"
        + "\n".join(f"{a} {b} {np.sqrt(b)}" for a, b in zip(X, Y, strict=True))
    )
    x, y, lam = read_powder(tmp_path / "t.xye")
    assert lam == pytest.approx(1.78897) and len(x) == 40
    # Written from high to low angle: reversed, as load_curves does.
    (tmp_path / "down.xy").write_text(
        "\n".join(f"{a} {b}" for a, b in zip(X[::-1], Y[::-1], strict=True))
    )
    np.testing.assert_allclose(read_powder(tmp_path / "down.xy")[0], X)


def test_csv_and_nexus(tmp_path):
    h5py = pytest.importorskip("h5py")
    rows = ["two_theta,counts,sigma"] + [f"{a},{b},{np.sqrt(b)}" for a, b in zip(X, Y, strict=True)]
    (tmp_path / "p.csv").write_text("\n".join(rows) + "\n")
    x, y, lam = read_powder(tmp_path / "p.csv")
    np.testing.assert_array_equal(y, Y)
    with h5py.File(tmp_path / "p.nxs", "w") as f:
        f.attrs["default"] = "entry"
        e = f.create_group("entry")
        e.attrs["default"] = "data"
        g = e.create_group("data")
        g.attrs.update({"NX_class": "NXdata", "signal": "counts", "axes": ["two_theta"]})
        g["counts"], g["two_theta"] = Y, X
        e.create_group("instrument/monochromator")["wavelength"] = 0.4959
    x, y, lam = read_powder(tmp_path / "p.nxs")
    assert lam == pytest.approx(0.4959)
    np.testing.assert_array_equal(y, Y)


def test_backwards_axis_and_missing_file_are_one_line(tmp_path):
    xs = np.r_[X[:20], X[10:30]]
    (tmp_path / "back.xy").write_text("\n".join(f"{a} {b}" for a, b in zip(xs, Y, strict=True)))
    with pytest.raises(InputError, match="goes backwards|not strictly monotonic") as exc:
        read_powder(tmp_path / "back.xy")
    assert "\n" not in str(exc.value)
    with pytest.raises(InputError, match="no such file"):
        read_powder(tmp_path / "none.xy")
