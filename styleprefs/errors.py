"""The one exception type that reaches users as a one-line message (exit code 2)."""


class StyleprefsError(Exception):
    """Bad input or an unusable environment: the message names the problem and the fix."""
