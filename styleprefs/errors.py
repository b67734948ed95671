"""The one exception type that reaches users as a one-line message (exit code 2).

``as_user_error`` maps the failures a user can cause or fix (a full disk, a permission, a corrupt
JSON/YAML/Parquet file, text that is not UTF-8) to a ``StyleprefsError``; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import json


class StyleprefsError(Exception):
    """Bad input or an unusable environment: the message names the problem and the fix."""


def as_user_error(exc: BaseException) -> StyleprefsError | None:
    """``exc`` as a one-line StyleprefsError, or None if it is a bug."""
    if isinstance(exc, StyleprefsError):
        return exc
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return StyleprefsError(f"{where}{exc.strerror or one_line(exc)}")
    if isinstance(exc, (UnicodeDecodeError, json.JSONDecodeError)) or _is_yaml_or_arrow(exc):
        return StyleprefsError(f"a file cannot be read ({type(exc).__name__}: {one_line(exc)})")
    return None


def _is_yaml_or_arrow(exc: BaseException) -> bool:
    import pyarrow as pa
    import yaml

    return isinstance(exc, (yaml.YAMLError, pa.ArrowException))


def one_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, or its type name if it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
