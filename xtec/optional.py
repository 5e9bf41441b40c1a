"""Optional dependencies: one way to import them and to say how to get them."""

from __future__ import annotations

import importlib
from types import ModuleType

from xtec.errors import XtecError

#: Optional packages -> the extra of ``xtec`` that installs them.
EXTRAS = {
    "torch": "ml",
    "safetensors": "ml",
    "pyxtal": "classify",
    "pymatgen": "classify",
    "spglib": "classify",
    "ase": "classify",
    "dask_jobqueue": "hpc",
    "cupy": "gpu",
}
# PyTorch's CPU wheel must be installed before the extra, or pip pulls the CUDA one.
_FIRST = {"torch": "pip install torch==2.13.0 && "}


def install_command(package: str) -> str | None:
    """The command that installs an optional ``package``, or None if it is not one."""
    extra = EXTRAS.get(package)
    if extra is None:
        return None
    return f"{_FIRST.get(package, '')}pip install 'xtec[{extra}]'"


def missing_package_message(exc: ModuleNotFoundError) -> str | None:
    """One line for an optional package a command imported at module level (not
    through :func:`require`), or None when the missing module is not optional."""
    command = install_command((exc.name or "").split(".")[0])
    if command is None:
        return None
    return f"this command needs the optional package {exc.name!r}; install it with: {command}"


def require(module: str, extra: str, purpose: str, hint: str = "", *,
            package: str | None = None, error: type[XtecError] = XtecError) -> ModuleType:
    """Import ``module``, or raise :class:`~xtec.errors.XtecError` saying which extra
    installs it.

    purpose : what needs it, e.g. ``"cluster='slurm'"``; the message reads
    "<purpose> needs <package>: pip install 'xtec[<extra>]'<hint>"; an installed
    module that fails to import (e.g. a missing shared library) gets a message
    of its own.
    package : the name the message gives the package (default: the top module).
    error : the :class:`~xtec.errors.XtecError` subclass raised.
    """
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != top:
            raise
        raise error(f"{purpose} needs {package or top}: pip install 'xtec[{extra}]'{hint}") \
            from None
    except ImportError as exc:
        raise error(f"{purpose}: {top} is installed but fails to import ({exc})") from None
