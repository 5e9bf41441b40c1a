"""The ``export`` subcommand: a result store as a NeXus file for NeXpy."""

from __future__ import annotations

from xtec.cli.args import add_output, output_of


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a result store as a NeXus file (NeXpy plots its labels as opened)",
        description="Write OUT.nxs with one NXentry: NXdata for labels (the default plot), "
        "color (RGB), mask, mean intensity and the cluster mean trajectories (errors: "
        "the clusters' standard deviation) over Ql, Qk, Qh in r.l.u. or temperature, "
        "and the run's provenance as an NXnote.",
    )
    p.add_argument("result", metavar="RESULT.zarr", help="result store of `xtec cluster`")
    add_output(p, "OUT.nxs", "NeXus file to write (.nxs, .nx5, .h5, .hdf5)", legacy_positional=True)
    p.add_argument("--overwrite", action="store_true", help="replace OUT.nxs if it exists")
    p.set_defaults(func=cmd_export)


def export_nexus(result, out, overwrite: bool = False) -> int:
    """Export and say where; shared by ``xtec export`` and ``xtec cluster --nexus``."""
    from xtec.io.nexus_export import write_nexus

    path = write_nexus(result, out, overwrite=overwrite)
    print(f"wrote {path} (NeXus; open it in NeXpy or with nexusformat.nxload)")
    return 0


def cmd_export(args) -> int:
    return export_nexus(args.result, output_of(args, "OUT.nxs"), overwrite=args.overwrite)
