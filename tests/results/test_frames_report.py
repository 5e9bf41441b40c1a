"""The report's per-temperature figure and the accessor's frame helpers (issue 27)."""

from __future__ import annotations

import numpy as np

from xtec.datasets import make_measured_series, write_xtec
from xtec.io.store import open_result
from xtec.pipeline import ClusterConfig, run_cluster
from xtec.results.report import write_report

GRID = dict(h_range=(-1.5, 1.5), k_range=(-1.5, 1.5), l_range=(-0.2, 0.2))


def test_report_shows_the_frames_and_names_the_flagged_one(tmp_path):
    s = make_measured_series(seed=0, bad_frames={147.0: 0.5}, **GRID)
    bad_t = float(s.temperature[s.bad_frames[0]])
    out = tmp_path / "r.zarr"
    run_cluster(ClusterConfig(inputs=[str(write_xtec(s, tmp_path / "s.nxs"))], out=str(out), k=3))
    ds = open_result(out)
    assert ds.xtec.flagged_temperatures() == [bad_t]
    assert ds.xtec.plot_frames() is not None
    page = write_report(out, out_dir=tmp_path / "report")
    html = page.read_text()
    assert "Frames" in html and f"flagged as bad frames: {bad_t:g} K" in html
    assert (page.parent / "frames.png").stat().st_size > 1000
    # The order-parameter fit leaves the flagged frame out unless asked.
    fit = ds.xtec.fit_order_parameter()
    assert not fit.used[s.bad_frames[0]]
    assert ds.xtec.fit_order_parameter(exclude_flagged=False).used.all()
    assert np.isfinite(fit.tc)
