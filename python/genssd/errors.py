"""The one exception type the CLI turns into a clear message and exit code 2."""


class UsageError(ValueError):
    """Bad user input: a missing file, a malformed row, an unknown option or config key."""
