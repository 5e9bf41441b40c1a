"""Physics-level scores on the realistic synthetic series (issue 16).

For each seed the realistic series (:func:`xtec.datasets.make_realistic_series`,
halos around Bragg and CDW peaks, Poisson at 200 counts per unit intensity,
monitor-normalised, detector gaps) is written in both NeXus layouts and
clustered through the real pipeline:

* XTEC-d, label smoothing and peak averaging at K = 4 (both layouts);
* ``-k auto`` (BIC elbow) for XTEC-d and smoothing (XTEC layout);
* XTEC-d with K at the BIC *minimum* followed by component merging
  (:func:`xtec.mixture.merge.merge_components`: entropy criterion, then same shape),
  computed on the same kept trajectories (XTEC layout);

and scored with :func:`xtec.results.evaluate.evaluate_result`: per family the best-
cluster F1 against the planted (dominant-family signal) voxels, and the Tc fitted
through ``ds.xtec.fit_order_parameter``.  Beside them, two baselines on the
same kept voxels: *one cluster* (every kept voxel in one cluster, the majority
answer) and a *position rule* (kept voxels within 0.1 r.l.u. of an integer
point are Bragg, of an (h+1/2, k+1/2, l) point CDW: the lattice known in advance).

    python benchmarks/bench_realistic.py [--seeds 0 1] [--size small|medium] [--no-auto]

Prints a table and writes benchmarks/results/realistic.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = {  # ranges in r.l.u. (H and K, then L)
    "small": dict(h_range=(-2.0, 2.0), k_range=(-2.0, 2.0), l_range=(-0.5, 0.5)),
    "medium": dict(h_range=(-2.0, 2.0), k_range=(-2.0, 2.0), l_range=(-1.0, 1.0)),
}


def _row(name, layout, seed, ev, seconds, k, extra=None):
    fam = ev.families
    row = dict(variant=name, layout=layout, seed=seed, k=k, seconds=round(seconds, 1),
               bragg_f1=fam["bragg"].f1, cdw_f1=fam["cdw"].f1, tds_f1=fam["tds"].f1,
               tc_fit=ev.tc_fit, tc_rel_error=ev.tc_rel_error)
    row.update(extra or {})
    return row


def _labels_score(labels, series):
    """Best-cluster F1 per family of a label volume (no Tc)."""
    from xtec.datasets import BRAGG, CDW, TDS
    from xtec.results.evaluate import best_cluster_f1

    return {n: best_cluster_f1(labels, series.signal & (series.classes == f))[1]
            for n, f in (("bragg", BRAGG), ("cdw", CDW), ("tds", TDS))}


def baselines(series, mask) -> list[dict]:
    """One-cluster and position-rule labels on the kept voxels."""
    L, K, H = np.meshgrid(series.ql, series.qk, series.qh, indexing="ij")
    d_int = np.sqrt((H - np.rint(H)) ** 2 + (K - np.rint(K)) ** 2 + (L - np.rint(L)) ** 2)
    d_half = np.sqrt((H - np.floor(H) - 0.5) ** 2 + (K - np.floor(K) - 0.5) ** 2
                     + (L - np.rint(L)) ** 2)
    one = np.where(mask, 0, -1)
    rule = np.where(mask, 2, -1)
    rule[mask & (d_int < 0.1)] = 0
    rule[mask & (d_half < 0.1)] = 1
    out = []
    for name, lab in (("baseline: one cluster", one), ("baseline: position rule", rule)):
        out.append(dict(variant=name, **{f"{k}_f1": v for k, v in _labels_score(lab, series).items()}))
    return out


def merged_variant(series, mask, seed: int, ks=range(2, 15)) -> dict:
    """BIC-minimum K, then merge_components, on the kept trajectories (mean rescaling)."""
    from xtec.mixture import GaussianMixture
    from xtec.mixture.merge import merge_components
    from xtec.mixture.select import bic_scan, choose_k

    t0 = time.perf_counter()
    intensity = series.intensity[:, mask].T.astype(np.float64)
    X = np.ascontiguousarray((intensity / intensity.mean(axis=1, keepdims=True) - 1.0)
                             .astype(np.float32))
    bic = bic_scan(X, ks=ks, seeds=(0, 1, 2))
    k_min, k_elbow = choose_k(bic, "min"), choose_k(bic, "elbow")
    gmm = GaussianMixture(k_min, random_state=0, n_init=3).fit(X)
    resp = np.asarray(gmm.predict_proba(X))
    raw = resp.argmax(axis=1)
    merged = merge_components(gmm.means_, resp)
    rows = []
    for name, lab in ((f"xtec-d K=BIC min ({k_min}), unmerged", raw),
                      (f"xtec-d K=BIC min ({k_min}) + merge", merged.mapping[raw])):
        vol = np.full(mask.shape, -1)
        vol[mask] = lab
        rows.append(dict(variant=name, layout="xtec", seed=seed,
                         k=int(lab.max()) + 1,
                         **{f"{k}_f1": v for k, v in _labels_score(vol, series).items()}))
    rows[-1].update(groups=merged.groups, k_elbow=k_elbow,
                    seconds=round(time.perf_counter() - t0, 1))
    return rows


def run(seeds, size: str, auto: bool, workdir: Path, save) -> dict:
    """K = 4 on every seed and layout first, then -k auto and merging; ``save``
    is called with the partial result after every row (a long run keeps what it did)."""
    from xtec.datasets import make_series, write_nxrefine, write_xtec
    from xtec.io.store import open_result
    from xtec.pipeline import ClusterConfig, run_cluster
    from xtec.results.evaluate import evaluate_result

    result = dict(rows=[], baselines=[], complete=False)
    series, inputs, masks = {}, {}, {}

    def add(row, key="rows"):
        result[key].append(row)
        print(_fmt(row), flush=True)
        save(result)

    def cluster(seed, method, layout, k):
        out = workdir / f"{method}-{layout}-{k}-{seed}.zarr"
        t0 = time.perf_counter()
        res = run_cluster(ClusterConfig(inputs=inputs[seed][layout], out=str(out), k=k,
                                        method=method, seed=0, overwrite=True))
        secs = time.perf_counter() - t0
        ev = evaluate_result(out, series[seed])
        masks.setdefault(seed, open_result(out).mask.values)
        add(_row(f"{method} -k {k}", layout, seed, ev, secs, int(res.summary.get("k", k)),
                 dict(n_kept=int(res.summary["n_kept"]), n_cdw=ev.families["cdw"].n_truth,
                      n_bragg=ev.families["bragg"].n_truth)))

    for seed in seeds:
        s = series[seed] = make_series(kind="realistic", seed=seed, **SIZES[size])
        d = workdir / f"seed{seed}"
        inputs[seed] = {"xtec": [str(write_xtec(s, d.with_suffix(".nxs")))],
                        "nxrefine": [str(p) for p in write_nxrefine(s, d / "nxr")[:-1]]}
        for method in ("xtec-d", "smooth", "peaks"):
            for layout in ("xtec", "nxrefine"):
                cluster(seed, method, layout, 4)
        for b in baselines(s, masks[seed]):
            b.update(seed=seed)
            add(b, "baselines")
    if auto:
        for seed in seeds:
            for r in merged_variant(series[seed], masks[seed], seed):
                add(r)
            for method in ("smooth", "xtec-d"):
                cluster(seed, method, "xtec", "auto")
    result["complete"] = True
    return result


def _fmt(r: dict) -> str:
    tc = r.get("tc_rel_error")
    tc_s = f"{100 * tc:5.2f}%" if tc is not None and np.isfinite(tc) else "    - "
    return (f"{r['variant']:<38} {r.get('layout', ''):<8} s{r.get('seed', '')} "
            f"K={r.get('k', '-')!s:<3} bragg {r['bragg_f1']:.3f} cdw {r['cdw_f1']:.3f} "
            f"tds {r['tds_f1']:.3f} Tc err {tc_s} {r.get('seconds', '')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--no-auto", action="store_true", help="skip -k auto and the merge variant")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "realistic.json"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(result):
        result.update(size=args.size, grid=SIZES[args.size], seeds=args.seeds,
                      total_seconds=round(time.perf_counter() - t0, 1),
                      machine=dict(python=platform.python_version(), cpu=platform.processor()))
        out.write_text(json.dumps(result, indent=2, default=float))

    with tempfile.TemporaryDirectory(prefix="xtec-realistic-") as tmp:
        save(run(args.seeds, args.size, not args.no_auto, Path(tmp), save))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
