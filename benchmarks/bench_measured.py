"""CDW F1 and Tc on measured-like series: expansion, normalisation errors, bad frames (issue 27).

For each volume, seed and effect a measured-like series
(:func:`xtec.datasets.make_measured_series`: the realistic series of
``bench_realistic.py``, 11 x 81 x 81 voxels x 24 temperatures, |H|, |K| <= 2
("small"), or as many voxels at H = 4..8 ("farther", where expansion moves the
peaks more), with thermal expansion, per-temperature normalisation errors or
a bad frame) is written in both NeXus layouts and clustered through the real
pipeline by each method (NXRefine layout: ``--nxrefine-methods``);
each result is scored with :func:`xtec.results.evaluate.evaluate_result`
(best-cluster CDW F1, Tc through ``ds.xtec.fit_order_parameter``) and with the
frames the run flagged against the planted bad frames.

    python benchmarks/bench_measured.py [--seeds 0 1] [--grids small farther] [--effects ...]
                                        [--methods ...] [--nxrefine-methods ...]

Prints a table and writes benchmarks/results/measured.json (after every row).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

GRIDS = {
    # bench_realistic.py's volume: |H|, |K| <= 2
    "small": dict(h_range=(-2.0, 2.0), k_range=(-2.0, 2.0), l_range=(-0.5, 0.5)),
    # as many voxels farther out (H from 1 to 5), where expansion moves peaks more
    "far": dict(h_range=(1.0, 5.0), k_range=(-2.0, 2.0), l_range=(-0.5, 0.5)),
    "farther": dict(h_range=(4.0, 8.0), k_range=(-2.0, 2.0), l_range=(-0.5, 0.5)),
}

#: effect name -> keywords of make_measured_series
EFFECTS = {
    "none": {},
    "expansion 3e-5/K": dict(expansion=3e-5),
    "norm 2%": dict(norm_error=0.02),
    "expansion + norm 2%": dict(expansion=3e-5, norm_error=0.02),
    "bad frame 65 K (half beam)": dict(bad_frames={65.0: 0.5}),
    "bad frame 147 K (half beam)": dict(bad_frames={147.0: 0.5}),
    "bad frame 65 K (half lost)": dict(bad_frames={65.0: 0.5}, bad_kind="partial"),
    "drift 0.5 deg": dict(drift=0.5),
    "expansion 1e-4/K": dict(expansion=1e-4),
}
DEFAULT_EFFECTS = ("none", "expansion 3e-5/K", "norm 2%", "expansion + norm 2%",
                   "bad frame 65 K (half beam)", "bad frame 147 K (half beam)",
                   "bad frame 65 K (half lost)")

#: method name -> ClusterConfig keywords
METHODS = {
    "xtec-d -k 4": dict(method="xtec-d", k=4),
    "smooth -k 4": dict(method="smooth", k=4),
    "peaks -k 4": dict(method="peaks", k=4),
    "xtec-d -k 4 --no-normalize": dict(method="xtec-d", k=4, normalize=False),
    "smooth -k 4 --no-normalize": dict(method="smooth", k=4, normalize=False),
    "peaks -k 4 --no-normalize": dict(method="peaks", k=4, normalize=False),
    # before frame registration (the default, --register auto, resamples when
    # the lattice measurably moves)
    "xtec-d -k 4 --register off": dict(method="xtec-d", k=4, register="off"),
    "peaks -k 4 --register off": dict(method="peaks", k=4, register="off"),
    "xtec-d -k 4 --register on": dict(method="xtec-d", k=4, register="on"),
    "peaks -k 4 --register on": dict(method="peaks", k=4, register="on"),
    # hysteresis (xtec.spatial.grow, default --peak-grow 1): sub-cutoff voxels
    # joined to one peak; "peaks -k 4" ran with it off before it became the default
    "peaks -k 4 --peak-grow 1": dict(method="peaks", k=4, peak_grow=1.0),
    "peaks -k 4 --peak-grow 2": dict(method="peaks", k=4, peak_grow=2.0),
    "peaks -k 4 --peak-grow off": dict(method="peaks", k=4, peak_grow="off"),
}
DEFAULT_METHODS = ("xtec-d -k 4", "smooth -k 4", "peaks -k 4", "xtec-d -k 4 --no-normalize")


def _fmt(r: dict) -> str:
    tc = r.get("tc_rel_error")
    tc_s = f"{100 * tc:5.2f}%" if tc is not None and np.isfinite(tc) else "    - "
    return (f"{r['grid']:<6}{r['effect']:<28} {r['method']:<28} {r['layout']:<8} s{r['seed']} "
            f"{'N' if r['normalized'] else ' '} cdw {r['cdw_f1']:.3f} Tc {r['tc_fit']:7.2f} ({tc_s}) flagged {r['flagged']} "
            f"planted {r['bad_planted']} {'R' if r.get('registered') else ' '} "
            f"ref {r.get('cdw_f1_ref_lattice', r['cdw_f1']):.3f} {r['seconds']:.1f}s")


def run(seeds, effects, methods, nxrefine_methods, grids, workdir: Path, save) -> dict:
    from xtec.datasets import make_measured_series, write_nxrefine, write_xtec
    from xtec.errors import XtecError
    from xtec.io.store import open_result
    from xtec.pipeline import ClusterConfig, run_cluster
    from xtec.results.evaluate import evaluate_result

    result = dict(rows=[], complete=False)
    n = 0
    for grid, seed, effect in ((g, s, e) for g in grids for s in seeds for e in effects):
        s = make_measured_series(seed=seed, **EFFECTS[effect], **GRIDS[grid])
        # The truth of the lattice at the reference (coldest) temperature: the
        # same seed without expansion or drift (the generator's draws are the
        # same); a registered map puts every feature there.
        still = {k: v for k, v in EFFECTS[effect].items() if k not in ("expansion", "drift")}
        s_ref = s if still == EFFECTS[effect] else make_measured_series(seed=seed, **still,
                                                                         **GRIDS[grid])
        n += 1
        d = workdir / f"series{n}"
        inputs = {"xtec": [str(write_xtec(s, d.with_suffix(".nxs")))]}
        if nxrefine_methods:
            inputs["nxrefine"] = [str(p) for p in write_nxrefine(s, d / "nxr")[:-1]]
        for method, layout in [(m, "xtec") for m in methods] + [(m, "nxrefine")
                                                                for m in nxrefine_methods]:
            n += 1
            out = workdir / f"out{n}.zarr"
            t0 = time.perf_counter()
            run_cluster(ClusterConfig(inputs=inputs[layout], out=str(out), seed=0,
                                      overwrite=True, **METHODS[method]))
            secs = time.perf_counter() - t0
            ds = open_result(out)
            ev = evaluate_result(ds, s)
            ev_ref = ev if s_ref is s else evaluate_result(ds, s_ref)
            left_out = [float(t) for t in ds.xtec.attrs.get("lost_frames_left_out") or []]
            try:  # the fit as before frames were checked: flagged frames fitted too
                tc_all = float(ds.xtec.fit_order_parameter(exclude_flagged=False).tc)
            except XtecError:
                tc_all = float("nan")
            row = dict(grid=grid, effect=effect, method=method, layout=layout, seed=seed,
                       cdw_f1=ev.families["cdw"].f1, bragg_f1=ev.families["bragg"].f1,
                       tds_f1=ev.families["tds"].f1, tc_fit=ev.tc_fit,
                       tc_rel_error=ev.tc_rel_error, tc_flagged_fitted=tc_all,
                       flagged=sorted(ds.xtec.flagged_temperatures() + left_out),
                       left_out=left_out,
                       bad_planted=[float(s.temperature[i]) for i in s.bad_frames],
                       normalized=bool(ds.attrs.get("normalize")), seconds=round(secs, 1),
                       cdw_f1_ref_lattice=ev_ref.families["cdw"].f1,
                       registered=bool(ds.attrs.get("register")),
                       expansion_estimate=ds.attrs.get("expansion"))
            result["rows"].append(row)
            print(_fmt(row), flush=True)
            save(result)
            shutil.rmtree(out, ignore_errors=True)
    result["complete"] = True
    return result


def table(rows: list[dict]) -> str:
    """Markdown: per grid, effect and method the CDW F1 range and the largest Tc
    error over seeds and layouts, and the frames flagged (or left out, for a
    lost part) against the planted ones."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["grid"], r["effect"], r["method"]), []).append(r)
    lines = ["| grid | effect | method | runs | CDW F1 | max Tc error | frames flagged right "
             "| registered | CDW F1, truth at T_ref |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (grid, effect, method), rs in groups.items():
        f1 = [r["cdw_f1"] for r in rs]
        tc = [r["tc_rel_error"] for r in rs]
        right = sum(sorted(r["flagged"]) == sorted(r["bad_planted"]) for r in rs)
        reg = sum(bool(r.get("registered")) for r in rs)
        f1r = [r.get("cdw_f1_ref_lattice", r["cdw_f1"]) for r in rs]
        lines.append(f"| {grid} | {effect} | {method} | {len(rs)} | {min(f1):.3f}-{max(f1):.3f} "
                     f"| {100 * max(tc):.2f}% | {right}/{len(rs)} | {reg}/{len(rs)} "
                     f"| {min(f1r):.3f}-{max(f1r):.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--effects", nargs="+", default=list(DEFAULT_EFFECTS), choices=list(EFFECTS))
    ap.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(METHODS))
    ap.add_argument("--nxrefine-methods", nargs="*", default=["xtec-d -k 4", "peaks -k 4"],
                    choices=list(METHODS), help="methods also run on the NXRefine layout")
    ap.add_argument("--grids", nargs="+", default=["small", "farther"], choices=list(GRIDS))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "measured.json"))
    ap.add_argument("--table", metavar="JSON", help="only print the table of a saved run")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())["rows"]))
        return
    t0 = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(result):
        result.update(grids={g: GRIDS[g] for g in args.grids}, seeds=args.seeds, effects={e: EFFECTS[e] for e in args.effects},
                      methods={m: METHODS[m] for m in args.methods},
                      total_seconds=round(time.perf_counter() - t0, 1),
                      machine=dict(python=platform.python_version(), cpu=platform.processor()))
        out.write_text(json.dumps(result, indent=2, default=str))

    with tempfile.TemporaryDirectory(prefix="xtec-measured-") as tmp:
        result = run(args.seeds, args.effects, args.methods, args.nxrefine_methods, args.grids,
                     Path(tmp), save)
        save(result)
    print(table(result["rows"]))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
