"""The one exception type for bad user input (scenario files, traces, CLI arguments).

Its message is meant to be shown to a person as is: it names the field (or file and line) and the
offending value. The CLI turns it into exit status 2 without a traceback.
"""


class InputError(ValueError):
    """Invalid user input; ``str(err)`` is a complete, human-readable message."""
