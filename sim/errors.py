"""The exceptions a person sees: bad user input, and a simulation that failed.

Their messages are meant to be shown as is: an InputError names the field (or file and line) and
the offending value, and the CLI turns it into exit status 2 without a traceback; a
SimulationFailed says which simulation failed and why, and the CLI exits with status 1.
"""


class InputError(ValueError):
    """Invalid user input; ``str(err)`` is a complete, human-readable message."""


class SimulationFailed(RuntimeError):
    """A simulation that a command depends on (a plan's evaluation) raised: its answer would be
    wrong, so the command stops; ``str(err)`` says which simulation and the error."""


def one_line(err: BaseException) -> str:
    """A library's error message on one line (pandas' parser errors end in blank lines)."""
    return " ".join(str(err).split())
