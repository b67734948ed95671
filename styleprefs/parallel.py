"""CPU parallelism for per-image work (numpy and PIL release the GIL) and background prefetch."""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")
_DONE = object()


@lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0)), thread_name_prefix="styleprefs")


def thread_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(x) for x in items]`` on a shared thread pool, results in order."""
    items = list(items)
    return [fn(items[0])] if len(items) == 1 else list(_pool().map(fn, items))


def prefetch(iterable: Iterable[T], depth: int) -> Iterator[T]:
    """Iterate ``iterable`` in a background thread, up to ``depth`` items ahead; its errors re-raise here."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in iterable:
                if stop.is_set():
                    return
                buffer.put(item)
        except BaseException as exc:  # handed to the consumer, raised there
            buffer.put(exc)
            return
        buffer.put(_DONE)

    threading.Thread(target=produce, daemon=True, name="styleprefs-prefetch").start()
    try:
        while (item := buffer.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while not buffer.empty():  # unblock a producer waiting on a full queue
            buffer.get_nowait()
