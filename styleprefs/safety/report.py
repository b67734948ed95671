"""The manifest's ``safety`` section: which backends ran and what they quarantined."""

from __future__ import annotations

from collections import Counter
from typing import Iterable

TEXT_LISTS_BACKEND = "text-lists"


def safety_summary(backends: Iterable[str], quarantine: list[dict], previous: dict | None = None) -> dict:
    """Merge this run's backends and quarantined rows into an earlier summary (if any)."""
    previous = previous or {}
    by_category = Counter(previous.get("quarantined_by_category", {}))
    by_category.update(q["category"] for q in quarantine)
    ran = list(previous.get("backends", []))
    ran += [b for b in backends if b not in ran]
    return {"backends": ran, "quarantined_by_category": dict(sorted(by_category.items()))}
