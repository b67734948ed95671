"""What every source yields: one Pick-a-Pic pair in the schema's own terms."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator, Protocol


@dataclass(frozen=True)
class SourcePair:
    """One preference pair as read from a source, images still encoded.

    ``key`` identifies the pair within its source and is stable across runs; all of a row's
    randomness derives from ``(seed, key)``.
    """

    key: str
    caption: str
    jpg_0: bytes | None
    jpg_1: bytes | None
    label_0: float
    label_1: float
    image_0_uid: str = ""
    image_1_uid: str = ""
    model_0: str = ""
    model_1: str = ""
    ranking_id: int = 0
    user_id: int = 0
    num_example_per_prompt: int = 1
    image_0_url: str | None = None
    image_1_url: str | None = None
    created_at: datetime | None = None

    @property
    def preferred(self) -> str:
        """Which original image the source's user preferred: ``jpg_0``, ``jpg_1`` or ``tie``."""
        if self.label_0 > self.label_1:
            return "jpg_0"
        if self.label_1 > self.label_0:
            return "jpg_1"
        return "tie"


@dataclass(frozen=True)
class DeferredPair:
    """A pair known by key and caption whose images are made only when ``load()`` is called.

    A source whose images are expensive to make (the ``sample`` source draws them) offers these through
    ``deferred()``, so the work happens where the row is processed (a build's worker process) and not at all
    for rows that are skipped, quarantined or processed by another process. ``load`` must be picklable.
    """

    key: str
    caption: str
    load: Callable[[], SourcePair]


def materialize(item: SourcePair | DeferredPair) -> SourcePair:
    return item.load() if isinstance(item, DeferredPair) else item


def source_rows(source: Source) -> Iterator[SourcePair | DeferredPair]:
    """The source's rows in order: deferred where the source offers it, else its pairs."""
    deferred = getattr(source, "deferred", None)
    return deferred() if deferred is not None else iter(source)


def key_to_int(key: str) -> int:
    """A 63-bit integer for ``numpy.random.default_rng([seed, key_to_int(key)])``."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") >> 1


class Source(Protocol):
    name: str

    def __iter__(self) -> Iterator[SourcePair]: ...

    def describe(self) -> dict: ...

    def local_paths(self) -> list[Path]:
        """The local files and folders the rows are read from (none for the Hub or in-memory sources)."""
        ...
