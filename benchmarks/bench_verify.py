"""What checking a result store's chunks costs ``xtec report`` (issue 26).

``open_result`` reads every chunk file of the store once and checks its crc32c
(``xtec.io.output.verify_chunks``) before anything else reads it.  This writes
synthetic result stores with ``write_result`` (the writer of ``xtec cluster``:
Zstandard level 1 + crc32c, every chunk of the grid), the sizes of the results
of the 1.5 GB benchmark series (16 x 986 x 986 voxels, ``bench_pipeline.py``)
and of a larger one (16 x 2500 x 2500, 1 GB of result variables), then times

* ``verify_chunks`` alone,
* ``xtec report`` (``write_report``: open, check, every figure, the HTML) with
  the check, and with ``verify_chunks`` replaced by a no-op,

alternating the two (and which goes first), ``--repeats`` times each (median; page cache warm after
the first round, which is not counted), in one process.

    python benchmarks/bench_verify.py --shapes 16x986x986,16x2500x2500 --repeats 3

Prints a table and writes benchmarks/results/verify.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_result(shape, k: int = 4, chunk=(16, 208, 208)):
    """A result Dataset as ``build_result`` makes it, with labels in blocks, a mask
    and a log-normal mean intensity (compresses about as poorly as a real one)."""
    import dask.array as da
    import xarray as xr

    from xtec.io.result import Q_DIMS, color_block, palette

    chunks = tuple(min(c, n) for c, n in zip(chunk, shape))

    def block(kind, block_info=None):
        loc = block_info[None]["array-location"]
        sl = tuple(slice(a, b) for a, b in loc)
        rng = np.random.default_rng(abs(hash((kind, *[a for a, _ in loc]))) % 2**32)
        li, ki, hi = np.ogrid[sl]
        base = (li // 4 + ki // 60 + hi // 60) % k
        if kind == "mean":
            return rng.lognormal(1.0 + 0.3 * base, 1.0).astype(np.float32)
        keep = rng.random(base.shape) < 0.3
        if kind == "mask":
            return keep
        return np.where(keep, base, -1).astype(np.int16)

    def lazy(kind, dtype):
        return da.map_blocks(block, kind, dtype=dtype, chunks=da.core.normalize_chunks(
            chunks, shape))

    labels, mask = lazy("labels", np.int16), lazy("mask", bool)
    pal = palette(k)
    color = da.map_blocks(color_block, labels, mask, pal, dtype=np.uint8, new_axis=3,
                          chunks=labels.chunks + ((3,),))
    temps = np.linspace(20, 300, 24)
    curves = np.linspace(0, 1, 24)[None, :] * np.arange(1, k + 1)[:, None]
    ds = xr.Dataset(
        {"labels": (Q_DIMS, labels), "color": ((*Q_DIMS, "rgb"), color),
         "mask": (Q_DIMS, mask), "mean_intensity": (Q_DIMS, lazy("mean", np.float32)),
         "palette": (("cluster", "rgb"), pal),
         "cluster_mean": (("cluster", "temperature"), curves.astype(np.float32)),
         "cluster_std": (("cluster", "temperature"), 0.1 * np.ones((k, 24), np.float32)),
         "cluster_count": (("cluster",), np.full(k, 1000, np.int64)),
         "weights": (("cluster",), np.full(k, 1 / k, np.float32)),
         "threshold_hist": (("bin",), np.ones(50)),
         "threshold_edges": (("edge",), np.linspace(0, 5, 51))},
        coords={"Ql": np.linspace(-1, 1, shape[0]), "Qk": np.linspace(-5, 5, shape[1]),
                "Qh": np.linspace(-5, 5, shape[2]), "temperature": temps,
                "cluster": np.arange(k), "rgb": np.arange(3)})
    ds.attrs.update(method="xtec-d", k=k, source_files=["synthetic"], versions={},
                    started="2026-12-05T00:00:00+00:00", ended="2026-12-05T00:00:01+00:00",
                    threshold={"method": "kl", "cutoff_log": 1.0, "n_nonzero": 1,
                               "n_kept": 1})
    return ds


def store_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    import xtec.io.output as output
    import xtec.io.store as store
    from xtec.io.store import write_result
    from xtec.results.report import write_report

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="16x986x986,16x2500x2500")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write the stores (default: a temp dir)")
    args = ap.parse_args()
    rows = []
    real_verify = store.verify_chunks
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for text in args.shapes.split(","):
            shape = tuple(int(v) for v in text.split("x"))
            path = Path(tmp) / f"r{text}.zarr"
            tick = time.perf_counter()
            ds = synthetic_result(shape)
            variables_bytes = sum(v.nbytes for v in ds.variables.values())
            write_result(ds, path)
            write_s = time.perf_counter() - tick
            inventory = json.loads(json.loads((path / "zarr.json").read_text())
                                   ["attributes"][output.CHUNK_INVENTORY])
            n_chunks = sum(n for n, _ in inventory.values())

            def report(verify: bool, path=path):
                store.verify_chunks = real_verify if verify else (lambda *a, **k: None)
                try:
                    tick = time.perf_counter()
                    write_report(path, out_dir=Path(tmp) / "report")
                    return time.perf_counter() - tick
                finally:
                    store.verify_chunks = real_verify

            report(True)  # warm-up: page cache, imports, Matplotlib's font cache
            with_v, without_v, alone = [], [], []
            for i in range(args.repeats):
                tick = time.perf_counter()
                real_verify(path, inventory)
                alone.append(time.perf_counter() - tick)
                if i % 2:  # alternate which goes first
                    without_v.append(report(False))
                    with_v.append(report(True))
                else:
                    with_v.append(report(True))
                    without_v.append(report(False))
            row = {"shape": list(shape), "voxels": int(np.prod(shape)),
                   "result_variables_bytes": int(variables_bytes),
                   "store_bytes": store_bytes(path), "chunks": n_chunks,
                   "write_s": round(write_s, 2),
                   "verify_alone_s": [round(v, 3) for v in alone],
                   "report_with_verify_s": [round(v, 3) for v in with_v],
                   "report_without_verify_s": [round(v, 3) for v in without_v]}
            med_with, med_without = statistics.median(with_v), statistics.median(without_v)
            row.update(median_verify_s=round(statistics.median(alone), 3),
                       median_report_with_s=round(med_with, 3),
                       median_report_without_s=round(med_without, 3),
                       overhead=round(med_with / med_without - 1, 4))
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path(__file__).parent / "results" / "verify.json"
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"{'voxels':>12} {'result':>9} {'store':>9} {'chunks':>6} {'verify':>7} "
          f"{'report+v':>9} {'report':>8} {'overhead':>8}")
    for r in rows:
        print(f"{r['voxels']:>12,} {r['result_variables_bytes'] / 1e6:>7.0f}MB "
              f"{r['store_bytes'] / 1e6:>7.0f}MB {r['chunks']:>6} {r['median_verify_s']:>6.3f}s "
              f"{r['median_report_with_s']:>8.2f}s {r['median_report_without_s']:>7.2f}s "
              f"{100 * r['overhead']:>7.1f}%")


if __name__ == "__main__":
    main()
