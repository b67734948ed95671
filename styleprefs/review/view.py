"""The page's filters and sort, from URL parameters, over every row's small columns.

Parameters: ``q`` (caption text, case ignored), ``editor``, ``min.COLUMN`` / ``max.COLUMN`` (a score column),
``flag`` (``editor_nsfw``; ``image``: an image score above, or ``text``: a text score at least, the threshold the
dataset's last ``filter-unsafe`` run with that backend used, see ``flag_thresholds``),
``disagree=1`` (labels that differ from ``original_label_0/1``: relabel or review changed them), ``decision``
(``undecided``, ``decided``, ``drop``, ``flip``, ``keep``), ``sort`` (a score column; nulls last) and
``desc=1``. Anything else is refused: no parameter names a file.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from styleprefs.review.decisions import ACTIONS
from styleprefs.safety.nsfw_image import DEFAULT_THRESHOLD as OPEN_NSFW_THRESHOLD
from styleprefs.safety.nsfw_image import OPEN_NSFW

SCORE_COLUMNS = ("clip_direction", "clip_image", "clip_text_edit", "clip_text_original", "safety_text_score",
                 "safety_image_score_0", "safety_image_score_1", "score_0", "score_1")
FLAGS = ("editor_nsfw", "image", "text")
DECISIONS = ("undecided", "decided", *ACTIONS)
PAGING = ("offset", "limit", "v")  # v: the page's cache key, ignored


class ViewError(ValueError):
    """A URL parameter the page does not know or cannot use (HTTP 400)."""


def flag_thresholds(manifest: dict) -> dict[str, float]:
    """The ``image`` and ``text`` flags' thresholds: those of the dataset's last ``filter-unsafe`` run that used
    each backend, else the defaults (open_nsfw's 0.8; the text classifier's 0.5)."""
    runs = manifest.get("safety", {}).get("runs", [])
    image = next((run for run in reversed(runs) if run.get("images")), {"image_model": OPEN_NSFW})
    text = next((run for run in reversed(runs) if run.get("text_model")), {})
    image_threshold = image.get("image_threshold")
    if image_threshold is None:  # the backend's own: open_nsfw's, or the SD checker's rule (above 0)
        image_threshold = OPEN_NSFW_THRESHOLD if image.get("image_model", OPEN_NSFW) == OPEN_NSFW else 0.0
    return {"image": float(image_threshold), "text": float(text.get("text_threshold", 0.5))}


def is_plain(params: Mapping[str, str]) -> bool:
    """No filter and no sort: the rows in dataset order, read a page of row groups at a time."""
    return all(key in PAGING for key in params)


def select(table: pa.Table, params: Mapping[str, str], decisions: list[str | None],
           thresholds: Mapping[str, float]) -> np.ndarray:
    """Row numbers of ``table`` that pass the filters, in the asked order. ``decisions``: each row's last action;
    ``thresholds``: the safety flags' (``flag_thresholds``)."""
    keep = np.ones(table.num_rows, bool)
    for key, value in params.items():
        if key in PAGING or key in ("sort", "desc"):
            continue
        keep &= _mask(table, key, value, decisions, thresholds)
    rows = np.flatnonzero(keep)
    sort = params.get("sort")
    if sort:
        values = _numbers(table, _score_column(table, sort))[rows]
        rows = rows[np.argsort(-values if params.get("desc") == "1" else values, kind="stable")]  # NaN (null) last
    return rows


def _mask(table: pa.Table, key: str, value: str, decisions: list[str | None],
          thresholds: Mapping[str, float]) -> np.ndarray:
    if key == "q":
        found = pc.match_substring(table.column("caption"), value, ignore_case=True)
        return np.asarray(pc.fill_null(found, False), bool)
    if key == "editor":
        return np.asarray(pc.fill_null(pc.equal(table.column("editor"), value), False), bool)
    if key.startswith(("min.", "max.")):
        numbers = _numbers(table, _score_column(table, key[4:]))
        bound = _float(key, value)
        with np.errstate(invalid="ignore"):
            return numbers >= bound if key.startswith("min.") else numbers <= bound
    if key == "flag":
        return _flag(table, value, thresholds)
    if key == "disagree":
        return _disagree(table) if value == "1" else np.ones(table.num_rows, bool)
    if key == "decision":
        if value not in DECISIONS:
            raise ViewError(f"decision must be one of {', '.join(DECISIONS)}, got {value!r}")
        wanted = {"undecided": (None,), "decided": ACTIONS}.get(value, (value,))
        return np.array([d in wanted for d in decisions], bool)
    raise ViewError(f"unknown parameter {key!r}")


def _score_column(table: pa.Table, name: str) -> str:
    if name not in SCORE_COLUMNS or name not in table.schema.names:
        present = [c for c in SCORE_COLUMNS if c in table.schema.names]
        raise ViewError(f"{name!r} is not a score column of this dataset ({', '.join(present)})")
    return name


def _numbers(table: pa.Table, name: str) -> np.ndarray:
    """The column as float64, null as NaN."""
    return np.asarray(pc.fill_null(table.column(name).cast(pa.float64()), np.nan), np.float64)


def _float(key: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ViewError(f"{key} must be a number, got {value!r}") from None


def _flag(table: pa.Table, flag: str, thresholds: Mapping[str, float]) -> np.ndarray:
    if flag not in FLAGS:
        raise ViewError(f"flag must be one of {', '.join(FLAGS)}, got {flag!r}")
    with np.errstate(invalid="ignore"):
        if flag == "editor_nsfw":
            return np.asarray(pc.fill_null(table.column("editor_nsfw"), False), bool)
        if flag == "text":
            return _numbers(table, "safety_text_score") >= thresholds["text"]
        return (_numbers(table, "safety_image_score_0") > thresholds["image"]) | \
            (_numbers(table, "safety_image_score_1") > thresholds["image"])


def _disagree(table: pa.Table) -> np.ndarray:
    if "original_label_0" not in table.schema.names:
        raise ViewError("this dataset has no original_label_0/1 (neither relabelled nor reviewed)")
    now = np.sign(_numbers(table, "label_0") - _numbers(table, "label_1"))
    before = np.sign(_numbers(table, "original_label_0") - _numbers(table, "original_label_1"))
    return (now != 0) & (before != 0) & (now != before)
