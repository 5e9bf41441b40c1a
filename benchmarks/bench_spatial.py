"""XTEC-s benchmark: neighbour matrix and peak averaging at the published tutorial sizes.

The published tutorial (Sr3Rh4Sn13, 24 temperatures, a 21 x 401 x 601 slice)
kept 457,679 voxels with its threshold and built the label-smoothing matrix for
118,445; its O(N^2) matrix took 825 s and its peak averaging 141 s.  Here a
synthetic series on that grid keeps the N brightest voxels for N = 118,445 and
457,679 (same grid, same run), and we time

* ``neighbour_matrix`` (local kernel, L = 1 pixel: 32 neighbours + self);
* peak averaging (``fit_peaks``: components, per-component mean trajectories
  streamed over the chunks, GMM K=4, painting the component clusters);
* the published O(N^2) row loop for the matrix and the per-peak whole-grid loop
  for peak averaging, on subsets, extrapolated (written from the description).

    python benchmarks/bench_spatial.py [--repeats 3]

Prints a table and writes benchmarks/results/spatial.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

SIZES = (118_445, 457_679)
GRID = (21, 401, 601)


def _best(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def published_matrix_time(coords: np.ndarray, n_sub: int, length_scale: float = 1.0) -> float:
    """Seconds per row of the published O(N^2) loop (one kernel row over all N per
    voxel), measured on the first n_sub rows against all N."""
    t0 = time.perf_counter()
    for i in range(n_sub):
        w = np.exp(-np.sum((coords[i] - coords) ** 2, axis=1) / length_scale**2)
        np.flatnonzero(w > 0.01)
    return (time.perf_counter() - t0) / n_sub


def published_peaks_time(lab: np.ndarray, data: np.ndarray, n_sub: int) -> float:
    """Seconds per peak of the published loop (a whole-grid comparison per peak)."""
    t0 = time.perf_counter()
    for i in range(1, n_sub + 1):
        sel = lab == i
        data[:, sel].mean(axis=1)
    return (time.perf_counter() - t0) / n_sub


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunks", type=int, nargs=3, default=(21, 101, 151))
    args = ap.parse_args()

    import dask
    import dask.array as da

    from xtec.datasets import make_series
    from xtec.spatial.peaks import fit_peaks, label_components
    from xtec.spatial.smoothing import neighbour_matrix

    dask.config.set(scheduler="threads")
    t0 = time.perf_counter()
    s = make_series(shape=GRID, seed=0)
    t_gen = time.perf_counter() - t0
    data_np = s.intensity
    mean = data_np.mean(axis=0)
    order = np.argsort(mean.ravel(), kind="stable")[::-1]
    data = da.from_array(data_np, chunks=(data_np.shape[0], *args.chunks))
    rows = []
    for n in SIZES:
        index = np.sort(order[:n])
        m = np.zeros(mean.size, bool)
        m[index] = True
        m = m.reshape(GRID)
        mask = da.from_array(m, chunks=tuple(args.chunks))
        t_w, w = _best(
            lambda index=index: neighbour_matrix(index, GRID, "local", 1.0), args.repeats
        )

        def peaks(mask=mask):
            res = fit_peaks(data, mask, 4, n_init=1, random_state=0)
            return res, res.paint().compute()

        t_p, (res, _) = _best(peaks, args.repeats)
        t_l, _ = _best(lambda mask=mask: label_components(mask)[0].compute(), args.repeats)
        rows.append(
            dict(
                n_kept=n,
                neighbour_matrix_s=t_w,
                nnz=int(w.nnz),
                peaks_s=t_p,
                labelling_s=t_l,
                n_components=res.n_components,
            )
        )
    # Published approaches on subsets, extrapolated.
    small = rows[0]["n_kept"]
    coords = np.array(np.unravel_index(np.sort(order[:small]), GRID)).T.astype(np.float64)
    per_row = published_matrix_time(coords, 300)
    lab_big = label_components(
        da.from_array(
            np.isin(np.arange(mean.size), order[: SIZES[1]]).reshape(GRID), chunks=args.chunks
        )
    )[0]
    lab_big = lab_big.compute()
    per_peak = published_peaks_time(lab_big, data_np, 5)
    published = dict(
        matrix_118445_s_extrapolated=per_row * small,
        peaks_457679_s_extrapolated=per_peak * rows[1]["n_components"],
    )

    r0, r1 = rows
    ratios = dict(
        voxels=r1["n_kept"] / r0["n_kept"],
        neighbour_matrix=r1["neighbour_matrix_s"] / r0["neighbour_matrix_s"],
        peaks=r1["peaks_s"] / r0["peaks_s"],
    )
    print(
        f"grid {GRID}, T={data_np.shape[0]}, chunks {tuple(args.chunks)}, "
        f"{os.cpu_count()} CPUs, best of {args.repeats} (series generated in {t_gen:.1f} s)"
    )
    print(
        f"{'kept voxels':>12} {'W build s':>10} {'us/voxel':>9} {'nnz/row':>8} "
        f"{'peaks s':>8} {'us/voxel':>9} {'labelling s':>11} {'components':>10}"
    )
    for r in rows:
        print(
            f"{r['n_kept']:>12,} {r['neighbour_matrix_s']:>10.3f} "
            f"{1e6 * r['neighbour_matrix_s'] / r['n_kept']:>9.2f} {r['nnz'] / r['n_kept']:>8.1f} "
            f"{r['peaks_s']:>8.3f} {1e6 * r['peaks_s'] / r['n_kept']:>9.2f} "
            f"{r['labelling_s']:>11.3f} {r['n_components']:>10,}"
        )
    print(
        f"ratios 457,679 / 118,445: voxels {ratios['voxels']:.2f}x, neighbour matrix "
        f"{ratios['neighbour_matrix']:.2f}x, peak averaging {ratios['peaks']:.2f}x"
    )
    print(
        f"published O(N^2) matrix at 118,445 (extrapolated from 300 rows): "
        f"{published['matrix_118445_s_extrapolated']:.0f} s; published per-peak loop at "
        f"457,679 ({r1['n_components']} peaks, from 5): "
        f"{published['peaks_457679_s_extrapolated']:.0f} s"
    )
    out = Path(__file__).parent / "results" / "spatial.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            dict(
                grid=GRID,
                temperatures=int(data_np.shape[0]),
                chunks=list(args.chunks),
                repeats=args.repeats,
                rows=rows,
                ratios=ratios,
                published=published,
                cpus=os.cpu_count(),
                machine=platform.platform(),
            ),
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
