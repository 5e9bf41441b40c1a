"""The HTML report: files, figures' colours, headless Chromium, the ``report`` command."""

from __future__ import annotations

import argparse
import io
import re
import shutil
from contextlib import redirect_stdout

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import xarray as xr  # noqa: E402
from browser import ensure_chromium, open_page, small_result  # noqa: E402

from xtec.errors import InputError, ParameterError, XtecError  # noqa: E402
from xtec.io.result import KEPT_GREY  # noqa: E402
from xtec.io.store import load_result
from xtec.results import figures, report  # noqa: E402


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return small_result(tmp_path_factory)[2]


@pytest.fixture(scope="module")
def written(result, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return report.write_report(result, out_dir=out)


@pytest.fixture(scope="session")
def chromium(tmp_path_factory):
    pytest.importorskip("playwright", reason="the browser test needs the test extra: "
                        "pip install -e '.[test]'")
    path, reason = ensure_chromium(tmp_path_factory.mktemp("apt"))
    if path is None:
        pytest.skip(reason)
    return path


def _palette(result):
    return np.asarray(xr.open_zarr(result, consolidated=False)["palette"].values, np.int64)


def _rgb(png_bytes_or_path):
    import matplotlib.image as mpimg

    src = (
        io.BytesIO(png_bytes_or_path) if isinstance(png_bytes_or_path, bytes) else png_bytes_or_path
    )
    img = mpimg.imread(src, format="png")
    return np.rint(img[..., :3] * 255).astype(np.int64)


def _count_colour(img, rgb, tol=3):
    return int(np.all(np.abs(img - np.asarray(rgb)) <= tol, axis=-1).sum())


# --------------------------------------------------------------------------- files
def test_report_writes_self_contained_html_and_pngs(written, result):
    out = written.parent
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert {"trajectories.png", "counts.png", "threshold.png"} <= set(pngs)
    slices = [p for p in pngs if p.startswith("slice_")]
    assert {s.split("_")[1] for s in slices} == {"Ql", "Qk", "Qh"}
    assert "bic.png" not in pngs  # the store has no BIC curve
    text = written.read_text()
    srcs = re.findall(r'<img[^>]*src="([^"]*)"', text)
    assert len(srcs) == len(pngs)
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in text and "https://" not in text and "<script" not in text
    # provenance and the palette are in the page
    for key in (
        "source_files",
        "threshold.method",
        "threshold.cutoff_intensity",
        "rescale",
        "parameters.k",
        "versions.xtec",
        "started",
    ):
        assert f">{key}<" in text
    for rgb in _palette(result):
        assert figures.hex_color(rgb) in text


def test_default_planes_are_the_most_clustered(result):
    ds = load_result(result)
    planes = figures.default_planes(ds)
    lab = ds.labels.values >= 0
    for dim, value in planes:
        axis = ("Ql", "Qk", "Qh").index(dim)
        counts = lab.sum(axis=tuple(a for a in range(3) if a != axis))
        i = int(np.argmin(np.abs(ds[dim].values - value)))
        assert counts[i] == counts.max()


def test_figures_show_the_palette_colours(written, result):
    out = written.parent
    pal = _palette(result)
    traj, counts = _rgb(out / "trajectories.png"), _rgb(out / "counts.png")
    for rgb in pal:
        assert _count_colour(traj, rgb) > 50, rgb  # the mean lines
        assert _count_colour(counts, rgb) > 200, rgb  # the bars
    # the slices together show every cluster's colour, voxel for voxel
    ds = load_result(result)
    for png in out.glob("slice_*.png"):
        dim, value = png.stem.split("_")[1], None
        value = next(v for d, v in figures.default_planes(ds) if d == dim)
        img = _rgb(png)
        labels = ds.labels.sel({dim: value}, method="nearest").values
        for c, rgb in enumerate(pal):
            if (labels == c).sum() >= 4:
                assert _count_colour(img, rgb, tol=1) > 20, (png.name, c)


def test_slice_rgb_colours_voxels_exactly():
    ds = xr.Dataset(
        {
            "labels": (("Ql", "Qk", "Qh"), np.array([[[0, 1, -1, -1]]], np.int16)),
            "mask": (("Ql", "Qk", "Qh"), np.array([[[True, True, True, False]]])),
            "mean_intensity": (("Ql", "Qk", "Qh"), np.array([[[9.0, 9.0, 5.0, 1.0]]])),
            "palette": (("cluster", "rgb"), np.array([[230, 159, 0], [86, 180, 233]], np.uint8)),
            "cluster_mean": (("cluster", "temperature"), np.zeros((2, 3))),
            "cluster_std": (("cluster", "temperature"), np.zeros((2, 3))),
        },
        coords={
            "Ql": [0.0],
            "Qk": [0.0],
            "Qh": [0.0, 0.5, 1.0, 1.5],
            "temperature": [10.0, 20.0, 30.0],
        },
    )
    img, info = figures.slice_rgb(ds, "Ql", 0.0)
    px = np.rint(img[0] * 255).astype(int)
    assert px[0].tolist() == [230, 159, 0] and px[1].tolist() == [86, 180, 233]
    assert px[2].tolist() == list(KEPT_GREY)
    assert px[3].max() < 128 and info["x"] == "Qh" and info["y"] == "Qk"


# --------------------------------------------------------------------------- browser
def test_report_in_headless_chromium(written, result, chromium, tmp_path):
    page = open_page(chromium, written)
    n_png = len(list(written.parent.glob("*.png")))
    assert len(page.images) == n_png
    for img in page.images:
        assert img["complete"] and img["decoded"], img
        assert img["naturalWidth"] > 0 and img["naturalHeight"] > 0, img
    assert page.errors == []
    # nothing but the file itself and its embedded images was requested
    assert all(u.startswith(("file://", "data:")) for u in page.requests), page.requests
    assert written.resolve().as_uri()[:80] in page.requests  # requests were seen at all
    assert page.title.startswith("xtec report")
    assert "Provenance" in page.text
    shot = tmp_path / "report.png"
    shot.write_bytes(page.screenshot)
    img = _rgb(page.screenshot)
    assert img.shape[0] > 1000 and img.shape[1] == 1280
    for rgb in _palette(result):
        assert _count_colour(img, rgb) > 200, rgb


def test_browser_check_sees_a_broken_page(chromium, tmp_path):
    """The checks above can fail: a missing image, a script error, a console error
    and a request off the machine are all reported."""
    page_html = tmp_path / "broken.html"
    page_html.write_text(
        "<html><head><title>broken</title></head><body><p>text</p>"
        '<img src="missing.png"><img src="http://127.0.0.1:9/x.png">'
        '<script>console.error("boom"); undefined_function();</script></body></html>'
    )
    page = open_page(chromium, page_html)
    assert page.title == "broken" and "text" in page.text
    assert [i["decoded"] for i in page.images] == [False, False]
    assert [i["naturalWidth"] for i in page.images] == [0, 0]
    joined = "\n".join(page.errors)
    assert "console: boom" in joined and "undefined_function" in joined
    assert "request failed" in joined
    assert any(u.startswith("http://127.0.0.1:9/") for u in page.requests)


# --------------------------------------------------------------------------- BIC, threshold
def test_bic_curve_when_present(result, tmp_path):
    store = tmp_path / "with_bic.zarr"
    shutil.copytree(result, store)
    ks = np.arange(2, 8)
    bic = np.array([5.0, 3.0, 1.0, 1.5, 2.5, 4.0]) * 1e4
    import zarr

    attrs = dict(zarr.open_group(result, mode="r").attrs)
    xr.Dataset({"bic": ("bic_k", bic)}, coords={"bic_k": ks}).to_zarr(
        store, mode="a", consolidated=False
    )
    zarr.open_group(store, mode="r+").attrs.update(attrs)  # appending resets the attributes
    ds = load_result(store)
    got = figures.bic_curve(ds)
    assert got is not None and np.allclose(got[0], ks) and np.allclose(got[1], bic)
    html = report.write_report(store, out_dir=tmp_path / "rep", planes=["Ql=0"])
    assert (html.parent / "bic.png").exists()
    assert "Model selection" in html.read_text()
    # attribute forms were never written by xtec: not read
    assert figures.bic_curve(xr.Dataset(attrs={"bic": {"2": 3.0, "3": 1.0}})) is None
    assert figures.bic_curve(xr.Dataset()) is None


def test_threshold_plot_without_stored_histogram(result):
    ds = load_result(result).drop_vars(["threshold_hist", "threshold_edges"])
    ds.attrs["threshold"] = {
        "method": "simple",
        "cutoff_log": 2.5,
        "gaussian_mean": 2.0,
        "gaussian_std": 0.3,
    }
    ax = figures.plot_threshold(ds)
    assert ax.get_title().startswith("threshold: simple")
    assert len(ax.lines) == 2  # Gaussian and cutoff


# --------------------------------------------------------------------------- CLI, errors
def _parser():
    from xtec.cli import report as cli_report

    parser = argparse.ArgumentParser(prog="xtec")
    sub = parser.add_subparsers(dest="command")
    cli_report.register(sub)
    return parser


def test_cli_report(result, tmp_path):
    args = _parser().parse_args(
        [
            "report",
            str(result),
            "--out",
            str(tmp_path / "r"),
            "--plane",
            "Ql=0",
            "--plane",
            "h=-1",
            "--dpi",
            "60",
        ]
    )
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert args.func(args) == 0
    assert "report.html" in buf.getvalue()
    names = sorted(p.name for p in (tmp_path / "r").glob("slice_*.png"))
    assert names == ["slice_Qh_m1_000.png", "slice_Ql_p0_000.png"]


def test_bad_input_is_one_clear_error(result, tmp_path):
    with pytest.raises(InputError, match="no such result store"):
        report.write_report(tmp_path / "missing.zarr")
    partial = tmp_path / "partial.zarr"
    xr.Dataset({"labels": ("x", np.zeros(3, np.int16))}, attrs={"complete": False}).to_zarr(
        partial, consolidated=False, zarr_format=3
    )
    with pytest.raises(InputError, match="incomplete"):
        report.write_report(partial)
    other = tmp_path / "other.zarr"
    xr.Dataset({"a": ("x", np.zeros(3))}, attrs={"complete": True}).to_zarr(
        other, consolidated=False, zarr_format=3
    )
    with pytest.raises(InputError, match="not an xtec result"):
        report.write_report(other)
    afile = tmp_path / "file.zarr"
    afile.write_text("x")
    with pytest.raises(InputError):
        report.write_report(afile)
    with pytest.raises(ParameterError, match="outside"):
        report.write_report(result, out_dir=tmp_path / "x", planes=["Ql=7"])
    with pytest.raises(ParameterError, match="DIM=VALUE"):
        report.write_report(result, out_dir=tmp_path / "x", planes=["Ql"])
    with pytest.raises(ParameterError, match="dimension"):
        figures.parse_plane("Qx=1")
    assert not (tmp_path / "x").exists()  # nothing written on bad planes


def test_cli_main_exit_status(tmp_path, capsys):
    from xtec.cli import main as cli

    if ("xtec.cli.report", "register") not in cli._PLUGINS:
        pytest.skip("xtec.cli.report is not registered in xtec.cli.main._PLUGINS yet")
    rc = cli.main(["report", str(tmp_path / "missing.zarr")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no such result store" in err[0]


def test_library_never_prints(written, result, tmp_path, capsys):
    report.write_report(result, out_dir=tmp_path / "quiet", planes=["Qk=0"], dpi=40)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_errors_are_xtec_errors():
    assert issubclass(InputError, XtecError) and issubclass(ParameterError, XtecError)
