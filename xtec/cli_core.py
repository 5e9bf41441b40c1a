"""Core subcommands: synth, info, cluster, demo (filled in by the pipeline)."""

from __future__ import annotations


def register(sub) -> None:
    pass
