"""Optional dependencies: one way to import them and to say how to get them."""

from __future__ import annotations

import importlib
from types import ModuleType

from xtec.errors import XtecError


def require(module: str, extra: str, purpose: str, hint: str = "") -> ModuleType:
    """Import ``module``, or raise :class:`~xtec.errors.XtecError` saying which extra
    installs it.

    purpose : what needs it, e.g. ``"cluster='slurm'"``; the message reads
    "<purpose> needs <package>: pip install 'xtec[<extra>]'<hint>"; an installed
    module that fails to import (e.g. a missing shared library) gets a message
    of its own.
    """
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != top:
            raise
        raise XtecError(f"{purpose} needs {top}: pip install 'xtec[{extra}]'{hint}") from None
    except ImportError as exc:
        raise XtecError(f"{purpose}: {top} is installed but fails to import ({exc})") from None
