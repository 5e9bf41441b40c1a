"""Subcommands around the input series: ``synth`` (a synthetic series with its
ground truth), ``info`` (what would be loaded) and ``demo`` (synthesise,
cluster, score)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xtec.cli.args import add_output, add_range_options, output_of, parse_range
from xtec.cli.cluster import format_clusters, run_with_runtime
from xtec.errors import ParameterError


def register(sub) -> None:
    p = sub.add_parser("synth", help="write a synthetic temperature series with ground truth")
    add_output(p, "OUT", "a .nxs file (xtec layout) or a directory (nxrefine)",
               legacy_positional=True)
    p.add_argument("--layout", choices=("xtec", "nxrefine"), default="xtec")
    p.add_argument("--shape", default=None, help="grid L,K,H (default 21,121,121)")
    p.add_argument("--temperatures", type=int, default=24, help="number of temperatures")
    p.add_argument("--tc", type=float, default=130.0, help="CDW transition temperature (K)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("info", help="show what would be loaded from NeXus file(s)")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    add_range_options(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="synthesise a series, cluster it, summarise the clusters")
    p.add_argument("--dir", default="xtec-demo", help="working directory (default ./xtec-demo)")
    p.add_argument("--layout", choices=("xtec", "nxrefine"), default="xtec")
    p.add_argument("--workers", type=int, default=0, help="local Dask workers (0: in-process)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kind", choices=("separated", "realistic"), default="separated",
                   help="synthetic series: families apart (default) or with halos (issue 16)")
    p.set_defaults(func=cmd_demo)


def cmd_synth(args) -> int:
    from xtec.datasets import make_series, write_nxrefine, write_xtec

    shape = None
    if args.shape:
        try:
            shape = tuple(int(v) for v in args.shape.split(","))
        except ValueError:
            shape = ()
        if len(shape) != 3 or min(shape) < 1:
            raise ParameterError(f"--shape must be three positive integers L,K,H "
                                 f"(got {args.shape!r})")
    if args.temperatures < 2:
        raise ParameterError("--temperatures must be at least 2")
    series = make_series(shape=shape, tc=args.tc, seed=args.seed,
                         temperatures=np.linspace(20.0, 300.0, args.temperatures))
    if args.layout == "xtec":
        path = write_xtec(series, output_of(args, "OUT"))
        print(f"wrote {path} ({series.intensity.shape}, Tc = {series.tc:g} K)")
    else:
        paths = write_nxrefine(series, output_of(args, "OUT"))
        print(f"wrote {len(paths) - 1} wrapper files and the parent {paths[-1]}")
    return 0


def cmd_info(args) -> int:
    from xtec.io.nexus import describe, open_nexus
    from xtec.runtime.chunks import parse_chunks

    arr = open_nexus(args.inputs, ql=parse_range(args.ql, "ql"),
                     qk=parse_range(args.qk, "qk"), qh=parse_range(args.qh, "qh"), chunks=parse_chunks(args.chunks))
    print(describe(arr))
    return 0


def cmd_demo(args) -> int:
    from xtec.datasets import make_series, write_nxrefine, write_xtec
    from xtec.pipeline import ClusterConfig
    from xtec.results.evaluate import evaluate_result

    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    series = make_series(kind=args.kind, seed=args.seed)
    if args.layout == "xtec":
        inputs = [str(write_xtec(series, work / "synthetic.nxs"))]
    else:
        inputs = [str(p) for p in write_nxrefine(series, work / "nxrefine")[:-1]]
    print(f"synthetic series: {series.intensity.shape[0]} temperatures x "
          f"{series.intensity.shape[1:]} voxels, CDW transition at {series.tc:g} K")
    config = ClusterConfig(inputs=inputs, out=str(work / "result.zarr"), k=4, seed=args.seed,
                           overwrite=True)
    result = run_with_runtime(config, {"workers": args.workers, "progress": False})
    s = result.summary
    print(f"kept {s['n_kept']} of {s['n_nonzero']} non-zero voxels")
    print(format_clusters(s))
    print(evaluate_result(result.path, series).format())
    print(f"result: {result.path}  (xarray.open_zarr to explore it)")
    for note in s["notes"]:
        print(f"note: {note}")
    return 0
