"""The ``xtec`` command: a thin shell over the library.

Every subcommand parses options, calls the library, and prints.  Errors that are
the user's to fix (:class:`xtec.errors.XtecError`, a refused file-system call,
lost Dask workers) become one line on stderr and exit status 2; SIGTERM and
SIGINT stop the run cleanly with status 143 / 130 (:mod:`xtec.runtime.signals`);
nothing else is caught, so real bugs still show a traceback.

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
    ("xtec.cli.series", "register"),
    ("xtec.cli.report", "register"),
    ("xtec.cli.export", "register"),
    ("xtec.cli.prepare", "register"),
]


def build_parser() -> argparse.ArgumentParser:
    import importlib

    from xtec.cli import cluster as cli_core

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


# Commands that may start or reach a Dask cluster: Dask's logging is set up
# for them (for when ``distributed`` is imported, which resets its loggers).
_DASK_COMMANDS = ("cluster", "bic", "demo")


def main(argv: Sequence[str] | None = None) -> int:
    from xtec.runtime.signals import Interrupted, raise_if_stopped, stop_on_signals

    command = None
    # Signals are handled from the first line: a batch scheduler's SIGTERM may
    # come while the optional modules are still being imported.
    try:
        with stop_on_signals(name="xtec"):
            try:
                parser = build_parser()
                args = parser.parse_args(argv)
                command = args.command
                level = logging.WARNING - 10 * min(args.verbose, 2)
                logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
                if command in _DASK_COMMANDS:
                    from xtec.runtime.workers import quiet_dask_logs

                    quiet_dask_logs(args.verbose)
                status = int(args.func(args) or 0)
                raise_if_stopped()  # a library swallowed the interrupt; the run went on
                return status
            except SystemExit:
                raise
            except BaseException as exc:  # noqa: BLE001 - sorted below; real bugs re-raised
                return _exit_status(exc, command)
    except Interrupted as exc:  # came while the handlers were being installed
        return _exit_status(exc, command)


def _error(command: str | None, message: str) -> int:
    print(f"{_prog(command)}: error: {message}", file=sys.stderr)
    return 2


def _prog(command: str | None) -> str:
    return f"xtec {command}" if command else "xtec"


def _exit_status(exc: BaseException, command: str | None) -> int:
    """One line on stderr and the exit status for a failure; re-raise real bugs."""
    from xtec.runtime.signals import interruption
    from xtec.runtime.workers import worker_loss_message

    stop = interruption(exc)
    if stop is not None:
        from xtec.runtime.workers import close_leftover_clusters

        close_leftover_clusters()
        verb = "interrupted" if stop.args[0] == "SIGINT" else "stopped"
        print(f"{_prog(command)}: {verb} by {stop.args[0]}; partial output and scratch files "
              "were removed", file=sys.stderr)
        return stop.exit_status
    if isinstance(exc, XtecError):
        return _error(command, str(exc))
    if isinstance(exc, ModuleNotFoundError):
        from xtec.optional import missing_package_message

        missing = missing_package_message(exc)
        if missing is None:
            raise exc
        return _error(command, missing)
    lost = worker_loss_message(exc) if isinstance(exc, Exception) else None
    if lost is not None:
        return _error(command, lost)
    if isinstance(exc, OSError):
        # The file system said no (permissions, a full disk, a vanished path):
        # the outputs are written under temporary names, so nothing half-done
        # looks complete.
        where = f" ({exc.filename})" if exc.filename else ""
        return _error(command, f"{exc.strerror or exc}{where}; check the path, its "
                               "permissions and the free space")
    raise exc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
