"""NeXus export: ``xtec cluster --nexus`` and ``xtec export``, read back with nexusformat."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import xarray as xr
from conftest import assert_one_line_error, run
from nexusformat.nexus import NXdata, NXnote, nxload

from xtec.cli.main import main
from xtec.datasets import make_series, write_xtec
from xtec.errors import InputError
from xtec.io.nexus_export import check_nexus, write_nexus

# One real `xtec cluster --nexus` run (about 10 s) is shared by the module.
pytestmark = pytest.mark.slow

Q = ["Ql", "Qk", "Qh"]




def leftovers(directory, name):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(name))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A real ``xtec cluster --nexus`` run on a small synthetic series."""
    d = tmp_path_factory.mktemp("export")
    series = make_series(h_range=(-1.0, 1.0), k_range=(-1.0, 1.0), l_range=(-0.2, 0.2),
                         temperatures=np.linspace(20, 300, 10), seed=1)
    src = write_xtec(series, d / "series.nxs")
    store, nxs = d / "result.zarr", d / "result.nxs"
    code = main(["cluster", str(src), "-o", str(store), "-k", "3", "--seed", "0",
                 "--no-progress", "--nexus", str(nxs)])
    assert code == 0
    ds = xr.open_zarr(store, consolidated=False).load()
    return store, nxs, ds


@pytest.fixture()
def root(exported):
    r = nxload(str(exported[1]))
    yield r
    r.nxfile.close()


def test_cluster_writes_the_export_and_nothing_else(exported):
    store, nxs, _ = exported
    assert nxs.exists() and store.exists()
    assert leftovers(nxs.parent, "result.nxs") == ["result.nxs"]  # no .partial left
    check_nexus(nxs)


def test_default_plot_is_labels_over_q(root):
    assert root.attrs["default"] == "entry" and root.entry.attrs["default"] == "labels"
    data = root.get_default()
    assert isinstance(data, NXdata) and data.nxname == "labels"
    assert data.nxsignal.nxname == "labels"
    assert [a.nxname for a in data.nxaxes] == Q
    for i, q in enumerate(Q):
        assert data.attrs[f"{q}_indices"] == i
        assert data[q].attrs["units"] == "rlu" and "r.l.u." in data[q].attrs["long_name"]
    assert data.nxsignal.shape == tuple(len(data[q]) for q in Q)


def test_values_equal_the_store_exactly(root, exported):
    ds = exported[2]
    e = root.entry
    for name in ("labels", "mask", "mean_intensity", "color"):
        got = e[name][name].nxvalue
        want = ds[name].values
        assert got.shape == want.shape, name
        assert np.array_equal(got, want), name
        if name != "mask":
            assert got.dtype == want.dtype, name
        for q in Q:
            assert np.array_equal(e[name][q].nxvalue, ds[q].values)
    assert set(np.unique(e["mask"]["mask"].nxvalue)) <= {0, 1}
    assert e.color.color.attrs["interpretation"] == "rgb-image"
    assert e.color.attrs["axes"][-1] == "."
    assert np.array_equal(e.color.palette.nxvalue, ds.palette.values)
    assert np.array_equal(e.threshold.threshold_hist.nxvalue, ds.threshold_hist.values)
    assert np.array_equal(e.threshold.log_intensity.nxvalue, ds.threshold_edges.values)


def test_trajectories_with_errors(root, exported):
    ds = exported[2]
    t = root.entry.trajectories
    k = ds.sizes["cluster"]
    names = [f"cluster_{c}" for c in range(k)]
    assert t.nxsignal.nxname == "cluster_0"
    assert [s.nxname for s in t.nxauxiliary_signals] == names[1:]
    assert [a.nxname for a in t.nxaxes] == ["temperature"]
    assert t.temperature.attrs["units"] == "K"
    assert np.array_equal(t.temperature.nxvalue, ds.temperature.values)
    assert np.array_equal(t.nxerrors.nxvalue, ds.cluster_std.values[0])
    for c, name in enumerate(names):
        assert t[name].dtype == np.float32
        assert np.array_equal(t[name].nxvalue, ds.cluster_mean.values[c])
        assert np.array_equal(t[f"{name}_errors"].nxvalue, ds.cluster_std.values[c])
        assert t[name].attrs["voxels"] == int(ds.cluster_count.values[c])
        r, g, b = (int(x) for x in ds.palette.values[c])
        assert t[name].attrs["color"] == f"#{r:02X}{g:02X}{b:02X}"


def test_provenance_note(root, exported):
    store, _, ds = exported
    note = root.entry.provenance
    assert isinstance(note, NXnote) and note.type.nxvalue == "application/json"
    stored = {k: v for k, v in ds.attrs.items() if k != "complete"}
    decoded = {k: json.loads(v) if isinstance(v, str) and v[:1] in "[{" else v
               for k, v in stored.items()}
    assert json.loads(note.data.nxvalue) == decoded
    assert note.source_result.nxvalue == str(store.resolve())
    assert note.attrs["method"] == ds.attrs["method"] == "xtec-d"
    assert note.attrs["k"] == 3 and note.attrs["seed"] == 0
    assert note.attrs["threshold.method"] == decoded["threshold"]["method"]
    assert note.attrs["threshold.cutoff_intensity"] == decoded["threshold"]["cutoff_intensity"]
    assert json.loads(note.attrs["source_files"]) == decoded["source_files"]
    assert note.attrs["versions.xtec"] == decoded["versions"]["xtec"]
    assert root.entry.program_name.nxvalue == "xtec"
    assert root.entry.start_time.nxvalue == decoded["started"]


def test_export_command_matches_and_refuses_to_overwrite(exported, tmp_path, capsys):
    store, nxs, _ = exported
    out = tmp_path / "again.nxs"
    code, stdout, _ = run(capsys, "export", store, out)
    assert code == 0 and str(out) in stdout
    a, b = nxload(str(nxs)), nxload(str(out))
    try:
        for name in ("labels", "color", "mask"):
            assert np.array_equal(a.entry[name][name].nxvalue, b.entry[name][name].nxvalue)
    finally:
        a.nxfile.close()
        b.nxfile.close()
    before = out.stat().st_mtime_ns
    code, _, err = run(capsys, "export", store, out)
    assert_one_line_error(code, err, "--overwrite")
    assert out.stat().st_mtime_ns == before
    code, _, _ = run(capsys, "export", store, out, "--overwrite")
    assert code == 0 and leftovers(tmp_path, "again") == ["again.nxs"]


def test_bad_inputs_are_one_line_and_leave_nothing(exported, tmp_path, capsys):
    store = exported[0]
    out = tmp_path / "out.nxs"
    cases = [(tmp_path / "missing.zarr", out, "no such result store")]
    afile = tmp_path / "file.zarr"
    afile.write_text("x")
    cases.append((afile, out, "not a readable Zarr result store"))
    partial = tmp_path / "partial.zarr"
    xr.Dataset({"labels": ("x", np.zeros(3, np.int16))}, attrs={"complete": False}).to_zarr(
        partial, consolidated=False, zarr_format=3)
    cases.append((partial, out, "incomplete"))
    other = tmp_path / "other.zarr"
    xr.Dataset({"a": ("x", np.zeros(3))}, attrs={"complete": True}).to_zarr(
        other, consolidated=False, zarr_format=3)
    cases.append((other, out, "not an xtec result"))
    # bad outputs
    cases.append((store, tmp_path / "out.txt", "must end in"))
    cases.append((store, tmp_path / "no" / "such" / "out.nxs", "does not exist"))
    cases.append((store, afile / "out.nxs", "does not exist"))
    (tmp_path / "adir.nxs").mkdir()
    cases.append((store, tmp_path / "adir.nxs", "is a directory"))
    for src, dst, msg in cases:
        code, stdout, err = run(capsys, "export", src, dst)
        assert_one_line_error(code, err, msg)
        assert stdout == ""
    assert not out.exists() and not (tmp_path / "out.txt").exists()
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        code, _, err = run(capsys, "export", store, ro / "out.nxs")
        assert_one_line_error(code, err, "not writable")
        assert list(ro.iterdir()) == []


def test_damaged_store_fails_midway_and_leaves_nothing(exported, tmp_path, capsys):
    store = tmp_path / "damaged.zarr"
    shutil.copytree(exported[0], store)
    chunks = [p for p in (store / "color").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert chunks
    for p in chunks:
        p.write_bytes(b"not a compressed chunk")
    out = tmp_path / "damaged.nxs"
    code, _, err = run(capsys, "export", store, out)
    assert_one_line_error(code, err, "'color'", "damaged")  # refused when opened: its chunks fail their checksum
    assert leftovers(tmp_path, "damaged.nxs") == []


def test_cluster_refuses_a_bad_nexus_path_before_running(exported, tmp_path, capsys):
    store, nxs, _ = exported
    src = store.parent / "series.nxs"
    code, _, err = run(capsys, "cluster", src, "-o", tmp_path / "r.zarr",
                       "--nexus", tmp_path / "r.txt", "--no-progress")
    assert_one_line_error(code, err, "must end in")
    assert list(tmp_path.iterdir()) == []  # refused before the run wrote anything


def test_check_nexus_refuses_other_files(exported):
    with pytest.raises(InputError, match="default plot"):
        check_nexus(exported[0].parent / "series.nxs")


def test_library_accepts_an_opened_dataset_and_never_prints(exported, tmp_path, capsys):
    from xtec.io.store import open_result

    ds = open_result(exported[0]).load()  # in memory: NumPy, not Dask, volumes
    path = write_nexus(ds, tmp_path / "from_ds.h5")
    assert capsys.readouterr().out == ""
    r = nxload(str(path))
    try:
        for name in ("labels", "color", "mean_intensity"):
            assert np.array_equal(r.entry[name][name].nxvalue, exported[2][name].values)
    finally:
        r.nxfile.close()


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # nexusformat's colormap call
def test_nexusformat_plots_the_default_as_opened(root):
    """The plot NeXpy draws: the default NXdata (a Ql plane of it: nexusformat's own
    plotter draws 1-D and 2-D; NeXpy adds the slider) and the trajectories with errors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plane = root.get_default()[0]
    plane.plot()
    ax = plt.gca()
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("Qh (r.l.u.)", "Qk (r.l.u.)")
    assert len(ax.collections) == 1  # the label map
    plt.figure()
    root.entry.trajectories.plot()
    ax = plt.gca()
    assert ax.get_xlabel() == "temperature (K)" and len(ax.containers) == 1  # error bars
    plt.close("all")
