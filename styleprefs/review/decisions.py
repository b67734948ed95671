"""The review log ``DATASET/review.jsonl``: one JSON object per line, appended on every action.

A line is ``{"pair": "<image_0_uid>:<image_1_uid>", "action": "drop" | "flip" | "keep", ...}`` (other keys are
kept for the record); the last line for a pair wins. ``--apply`` applies the lines written since the last
apply, relative to the dataset as it was then, and records in the manifest how many bytes of the log it has
applied (with their sha256), so a second apply finds nothing new.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from styleprefs.errors import StyleprefsError
from styleprefs.lock import folder_lock

LOG_NAME = "review.jsonl"
ACTIONS = ("drop", "flip", "keep")
# One writer at a time in this process: the folder lock (flock) would refuse a second thread of the same process.
WRITE_LOCK = threading.Lock()


@dataclass(frozen=True)
class Decision:
    pair: str
    action: str
    line: int  # 1-based line number in the log
    end: int  # byte offset just after the line


def pair_key(uid_0: str | None, uid_1: str | None) -> str:
    return f"{uid_0}:{uid_1}"


def check_action(action: object) -> str:
    if action not in ACTIONS:
        raise StyleprefsError(f"unknown review action {action!r}: use one of {', '.join(ACTIONS)}")
    return str(action)


def read_log(dataset: Path) -> tuple[bytes, list[Decision]]:
    """The log's bytes and its decisions in order (none if there is no log); a bad line is a one-line error."""
    path = Path(dataset) / LOG_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return b"", []
    except OSError as exc:
        raise StyleprefsError(f"{path} cannot be read: {exc.strerror or exc}") from None
    return data, parse_log(data, path)


def parse_log(data: bytes, path: Path) -> list[Decision]:
    decisions, end = [], 0
    for number, raw in enumerate(data.splitlines(keepends=True), 1):
        end += len(raw)
        if raw.strip():
            record = _record(raw, f"{path} line {number}")
            decisions.append(Decision(record["pair"], record["action"], number, end))
    return decisions


def _record(raw: bytes, where: str) -> dict:
    fix = "fix or delete that line, then run the command again"
    try:
        record = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise StyleprefsError(f"{where} is not JSON ({exc}): {fix}") from None
    if not isinstance(record, dict) or not isinstance(record.get("pair"), str):
        raise StyleprefsError(f'{where} is not an object with a "pair" string: {fix}')
    if record.get("action") not in ACTIONS:
        raise StyleprefsError(f"{where} has unknown action {record.get('action')!r} "
                              f"(expected {', '.join(ACTIONS)}): {fix}")
    return record


def append_decision(dataset: Path, pair: str, action: str, **extra: object) -> None:
    """Append one decision as one ``write`` to the log opened ``O_APPEND``, under the folder lock, and fsync it.

    Refused (StyleprefsError) while another command holds the folder lock."""
    record = {"pair": pair, "action": check_action(action), **extra,
              "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    line = (json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode()
    with WRITE_LOCK, folder_lock(dataset):
        fd = os.open(Path(dataset) / LOG_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.write(fd, line) != len(line):
                raise StyleprefsError(f"{Path(dataset) / LOG_NAME}: the disk took only part of a line; free space, "
                                      "then delete the log's last line")
            os.fsync(fd)
        finally:
            os.close(fd)


def latest(decisions: list[Decision]) -> dict[str, Decision]:
    """Each pair's last decision."""
    return {d.pair: d for d in decisions}


def tally(decisions: list[Decision], batch_ends: list[int]) -> dict[str, int]:
    """Pairs judged, dropped, flipped (net: an odd number of applied flips) and kept, over batches of the log
    that end at the byte offsets ``batch_ends`` (each apply's end; a last batch takes what follows)."""
    dropped: set[str] = set()
    flips: dict[str, int] = {}
    start = 0
    for end in [*batch_ends, float("inf")]:
        for pair, d in latest([d for d in decisions if start < d.end <= end]).items():
            flips.setdefault(pair, 0)
            if d.action == "drop":
                dropped.add(pair)
            elif d.action == "flip":
                flips[pair] += 1
        start = end
    flipped = sum(1 for pair, n in flips.items() if n % 2 and pair not in dropped)
    return {"judged": len(flips), "dropped": len(dropped), "flipped": flipped,
            "kept": len(flips) - len(dropped) - flipped}
