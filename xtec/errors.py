"""Exceptions that the command line turns into one clear line and a non-zero exit."""


class XtecError(Exception):
    """A problem with the user's input or options; the message says what to do."""


class InputError(XtecError):
    """The input files cannot be read as a temperature series."""


class ParameterError(XtecError, ValueError):
    """An option or parameter is out of range."""


def check_choice(value, choices, name: str) -> None:
    """Raise ParameterError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ParameterError(f"{name} must be one of {tuple(choices)} (got {value!r})")
