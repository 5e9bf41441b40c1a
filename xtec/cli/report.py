"""The ``report`` subcommand: figures and a self-contained HTML page for a result store."""

from __future__ import annotations

from xtec.cli.args import add_output


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="write an HTML report with figures of a result store",
        description="Write PNG figures (cluster trajectories, voxel counts, HKL slices, "
        "threshold histogram, BIC curve when present) and report.html, which "
        "embeds them and opens from disk without a server.",
    )
    p.add_argument("result", metavar="RESULT.zarr", help="result store of `xtec cluster`")
    add_output(p, "DIR", "output directory (default: RESULT_report beside the store)")
    p.add_argument(
        "--plane",
        action="append",
        default=None,
        metavar="DIM=VALUE",
        help="HKL plane to draw, in r.l.u. (repeatable; e.g. --plane Ql=0 "
        "--plane Qh=0.5); default: per axis the plane with the most "
        "clustered voxels",
    )
    p.add_argument("--dpi", type=int, default=110, help="resolution of the PNGs (default 110)")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from xtec.errors import ParameterError
    from xtec.results.report import write_report

    if args.dpi < 20 or args.dpi > 600:
        raise ParameterError(f"--dpi must be between 20 and 600 (got {args.dpi})")
    path = write_report(args.result, out_dir=args.out, planes=args.plane, dpi=args.dpi)
    pngs = sorted(p.name for p in path.parent.glob("*.png"))
    print(f"report: {path}")
    print(f"figures: {', '.join(pngs)}")
    return 0
