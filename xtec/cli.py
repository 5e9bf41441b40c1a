"""The ``xtec`` command: a thin shell over the library.

Every subcommand parses options, calls the library, and prints.  Errors that are
the user's to fix (:class:`xtec.errors.XtecError`) become one line on stderr and
exit status 2; nothing else is caught, so real bugs still show a traceback.

Subcommands of the optional modules (``ae``, ``rankaae``, ``classify``) are
registered by ``register(subparsers)`` functions in their own ``cli`` modules,
which must not import PyTorch at module load.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from xtec.errors import XtecError

# (module, attribute) of the register functions of the optional modules.
_PLUGINS = [
    ("xtec.autoencoder.cli", "register"),
    ("xtec.classifier.cli", "register"),
    ("xtec.cli_report", "register"),
    ("xtec.cli_export", "register"),
]


# Optional packages -> how to install them (one line instead of a traceback).
_OPTIONAL = {
    "torch": "pip install torch==2.13.0 && pip install 'xtec[ml]'",
    "safetensors": "pip install 'xtec[ml]'",
    "pyxtal": "pip install 'xtec[classify]'",
    "pymatgen": "pip install 'xtec[classify]'",
    "spglib": "pip install 'xtec[classify]'",
    "ase": "pip install 'xtec[classify]'",
    "dask_jobqueue": "pip install 'xtec[hpc]'",
    "cupy": "pip install 'xtec[gpu]'",
}


def build_parser() -> argparse.ArgumentParser:
    import importlib

    from xtec import cli_core

    parser = argparse.ArgumentParser(
        prog="xtec",
        description="X-ray temperature clustering of reciprocal-space volume series.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    cli_core.register(sub)
    for module, attr in _PLUGINS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # Only a missing optional module is tolerated, not a broken one.
            if exc.name and exc.name.startswith(module):
                continue
            raise
        getattr(mod, attr)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # Dask's own INFO chatter (scheduler start, worker functions) drowns the
    # progress output; -v brings it back.
    logging.getLogger("distributed").setLevel(level)
    try:
        return int(args.func(args) or 0)
    except XtecError as exc:
        print(f"xtec {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        extra = _OPTIONAL.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"xtec {args.command}: error: this command needs the optional package "
              f"{exc.name!r}; install it with: {extra}", file=sys.stderr)
        return 2
    except OSError as exc:
        # The file system said no (permissions, a full disk, a vanished path):
        # the outputs are written under temporary names, so nothing half-done
        # looks complete.
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"xtec {args.command}: error: {exc.strerror or exc}{where}; check the path, "
              "its permissions and the free space", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"xtec {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
