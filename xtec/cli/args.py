"""Argument types and flags shared by the subcommands, so that every flag has one
spelling: the output is ``-o/--output`` everywhere (``--out`` and a trailing
positional path, the spellings of earlier versions, are still accepted and
hidden from the help), Q ranges are ``--ql/--qk/--qh MIN:MAX``."""

from __future__ import annotations

import argparse

from xtec.config import as_range
from xtec.errors import ParameterError


def add_output(p: argparse.ArgumentParser, metavar: str, help: str,  # noqa: A002
               legacy_positional: bool = False) -> None:
    """``-o/--output`` (dest ``out``), with ``--out`` accepted; ``legacy_positional``
    also accepts the output as a last positional argument, as before."""
    p.add_argument("-o", "--output", dest="out", default=None, metavar=metavar, help=help)
    p.add_argument("--out", dest="out", default=None, help=argparse.SUPPRESS)
    if legacy_positional:
        p.add_argument("legacy_out", nargs="?", default=None, help=argparse.SUPPRESS)


def output_of(args: argparse.Namespace, what: str) -> str:
    """The output path given by ``-o`` or positionally; one line if both or neither."""
    flag, positional = getattr(args, "out", None), getattr(args, "legacy_out", None)
    if flag and positional:
        raise ParameterError(f"give {what} once: as -o/--output or as the last argument")
    if not (flag or positional):
        raise ParameterError(f"no output: give -o/--output {what}")
    return flag or positional


def parse_range(text, name: str = "range") -> tuple[float, float] | None:
    """``"MIN:MAX"`` or ``[MIN, MAX]`` -> (min, max) in r.l.u.; None stays None."""
    return None if text is None else as_range(name, text)


def add_range_options(p: argparse.ArgumentParser) -> None:
    for ax in ("ql", "qk", "qh"):
        p.add_argument(f"--{ax}", default=None, metavar="MIN:MAX",
                       help=f"{ax[0].upper()}{ax[1:]} range in r.l.u.")
    p.add_argument("--chunks", default=None, help="spatial chunks L,K,H or auto")
