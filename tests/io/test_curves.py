"""The shared 1-D readers of xtec.io.curves: text rows, the NXdata finder, both callers."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from xtec.classifier.data import read_pattern
from xtec.errors import InputError
from xtec.io.curves import NEXUS_SUFFIXES, find_nxdata, load_curves, text_rows


def test_text_rows_splits_fields_and_keeps_comment_order(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("# head = 1\n\n2theta;I\n10.0, 5\n' note\n11.0\t6 7\n% tail\n")
    rows, comments = text_rows(p, "text")
    assert rows == [(3, ["2theta", "I"]), (4, ["10.0", "5"]), (6, ["11.0", "6", "7"])]
    assert [n for n, _ in comments] == [1, 5, 7]


def test_text_rows_refuses_binary_in_one_line(tmp_path):
    p = tmp_path / "b.dat"
    p.write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(InputError, match=r"cannot read as text \(") as info:
        text_rows(p, "text")
    assert "\n" not in str(info.value)


def _nexus(path, *, default=True, nx_class=True, signal=True):
    x = np.linspace(10, 80, 50)
    with h5py.File(path, "w") as f:
        f.create_group("other").attrs["NX_class"] = "NXcollection"
        entry = f.create_group("entry")
        g = entry.create_group("data")
        if nx_class:
            g.attrs["NX_class"] = "NXdata"
        if signal:
            g.attrs["signal"] = "y"
        g.attrs["axes"] = ["x"]
        g["x"] = x
        g["y"] = np.exp(-((x - 40) ** 2))
        if default:
            f.attrs["default"] = "entry"
            entry.attrs["default"] = "data"
    return x


@pytest.mark.parametrize(
    "kw", [{}, {"default": False}, {"nx_class": False}, {"default": False, "nx_class": False}]
)
def test_find_nxdata_by_default_chain_class_or_signal(tmp_path, kw):
    p = tmp_path / "p.nxs"
    _nexus(p, **kw)
    with h5py.File(p, "r") as f:
        assert find_nxdata(f).name == "/entry/data"


def test_find_nxdata_none(tmp_path):
    p = tmp_path / "e.h5"
    with h5py.File(p, "w") as f:
        f.create_group("entry")
    with h5py.File(p, "r") as f:
        assert find_nxdata(f) is None


def test_both_callers_read_the_same_nexus_and_text(tmp_path):
    assert ".hdf" in NEXUS_SUFFIXES and ".nxs" in NEXUS_SUFFIXES
    p = tmp_path / "p.nxs"
    x = _nexus(p)
    tt, y = read_pattern(p)
    da = load_curves(p)
    np.testing.assert_array_equal(tt, x)
    np.testing.assert_array_equal(da.two_theta.values, x)
    np.testing.assert_array_equal(da.values[0], y)
    t = tmp_path / "p.xy"
    t.write_text(
        "# composition = 0.25\n2theta intensity\n" + "".join(f"{a};{b}\n" for a, b in zip(x, y))
    )
    tt2, y2 = read_pattern(t)
    da2 = load_curves(t)
    np.testing.assert_array_equal(tt2, da2.two_theta.values)
    np.testing.assert_array_equal(y2, da2.values[0])
    assert float(da2.composition.values[0]) == 0.25


def test_read_pattern_messages_stay_one_line(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_text("1 2\n3 x\n")
    with pytest.raises(InputError, match=r"bad.txt:2: not a number"):
        read_pattern(p)
    p.write_text("1\n")
    with pytest.raises(InputError, match="expected two columns"):
        read_pattern(p)
    e = tmp_path / "e.nxs"
    with h5py.File(e, "w") as f:
        f.create_group("entry")
    with pytest.raises(InputError, match="no NXdata group with a signal"):
        read_pattern(e)


def test_xas_header_fields_only_before_the_data(tmp_path):
    p = tmp_path / "s.xmu"
    e = np.linspace(8900, 9100, 30)
    body = "".join(f"{a} {b}\n" for a, b in zip(e, np.linspace(0, 1, 30)))
    p.write_text("# Element.symbol: Cu\n# energy mu\n" + body + "# trailing note\n")
    da = load_curves(p, kind="spectrum")
    np.testing.assert_array_equal(da.energy.values, e)
    assert da.attrs["Element.symbol"] == "Cu"
