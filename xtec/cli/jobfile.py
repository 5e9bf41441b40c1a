"""TOML job files for ``xtec cluster --config``, validated before anything runs.

A job file holds the options of one job under their long names
(``threshold = "kl"``, ``workers = 4``, ``qh = [-2, 2]``,
``inputs = ["a.nxs"]``), either at the top level or all inside one
``[cluster]`` table.  Each value is checked against the option's type
(:mod:`xtec.config`); unknown names, tables where a value belongs, keys
beside a ``[cluster]`` table, and files that are not TOML text are refused
with one line naming the file and the key.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from xtec.config import cluster_keys, coerce, runtime_keys
from xtec.errors import ParameterError


def option_names() -> tuple[str, ...]:
    return cluster_keys() + runtime_keys()


def load_job_file(path: str | os.PathLike | None) -> dict:
    """Options of a TOML job file, checked, keyed by option name (``n_init``)."""
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ParameterError(f"no such job file: {path}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ParameterError(f"{path} is not a TOML text file (it is not UTF-8 text)") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ParameterError(f"{path} is not valid TOML ({exc})") from None
    if isinstance(data.get("cluster"), dict):
        others = sorted(k for k in data if k != "cluster")
        if others:
            raise ParameterError(
                f"{path}: options {others} sit beside a [cluster] table, where they would be "
                "ignored; put every option inside [cluster] or remove the table header"
            )
        data = data["cluster"]
    names = set(option_names())
    out = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in names:
            raise ParameterError(f"{path}: unknown option {key!r}")
        if isinstance(value, dict):
            raise ParameterError(f"{path}: {key!r} is a table; it must be a value "
                                 f"(e.g. {key} = ...)")
        try:
            out[name] = coerce(name, value, strict=True)
        except ParameterError as exc:
            raise ParameterError(f"{path}: {exc}") from None
    return out
