"""CPU parallelism: worker processes for per-row work, a process beside this one for a long task, a thread pool
for per-image work, background prefetch."""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import os
import queue
import signal
import sys
import threading
from collections import deque
from contextlib import contextmanager
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import lru_cache
from typing import Callable, Generic, Iterable, Iterator, TypeVar

from styleprefs.errors import StyleprefsError

T = TypeVar("T")
R = TypeVar("R")
_DONE = object()
IN_FLIGHT_PER_WORKER = 4  # items submitted ahead per worker process: keeps each busy, bounds memory
_PR_SET_PDEATHSIG = 1


def usable_cores() -> int:
    return len(os.sched_getaffinity(0))


def auto_workers() -> int:
    """``--workers auto``: this process's cores, shared among the processes a launcher started on this node."""
    return max(1, usable_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def parse_workers(value: str) -> int | None:
    """``--workers``: ``auto`` (None) or a count; 0 and 1 mean the main process does the work."""
    if value == "auto":
        return None
    if not value.isdigit():
        raise StyleprefsError(f"--workers must be auto or a number of processes (0 or 1: none), got {value!r}")
    return int(value)


class WorkerPool(Generic[T, R]):
    """``workers`` processes running ``fn``; :meth:`map` gives results in input order, whatever order they finish in.

    The workers are forked when the pool is made (make it before starting threads), so ``fn`` and what it holds
    are inherited, never pickled; items and results are pickled. At most ``IN_FLIGHT_PER_WORKER`` items per worker
    are submitted ahead of the one being waited for, so memory does not grow with the number of items. Workers
    ignore SIGINT: Ctrl-C interrupts the main process, whose exit from the ``with`` block cancels what is queued
    and waits for the items being worked on. On Linux a worker dies with the main process (even on kill -9).
    """

    def __init__(self, fn: Callable[[T], R], workers: int):
        self.workers = workers
        self._executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                             initializer=_start_worker, initargs=(fn, os.getpid()))
        # The workers share this process's memory until a page is written. Frozen objects are left alone by the
        # workers' garbage collections, which would otherwise write to (and so copy) every page of them.
        gc.freeze()
        try:
            self._executor.submit(os.getpid)  # forks every worker now, while this process has no other threads
        finally:
            gc.unfreeze()

    def map(self, items: Iterable[T]) -> Iterator[R]:
        window = self.workers * IN_FLIGHT_PER_WORKER
        pending: deque[Future] = deque()
        for item in items:
            pending.append(self._executor.submit(_run, item))
            if len(pending) >= window:
                yield _result(pending.popleft())
        while pending:
            yield _result(pending.popleft())

    def __enter__(self) -> WorkerPool[T, R]:
        return self

    def __exit__(self, *exc) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


_worker_fn: Callable | None = None


@contextmanager
def beside(fn: Callable[[], R]) -> Iterator[Callable[[], R]]:
    """Run ``fn()`` in a forked process while the block runs; the block gets a call that waits for its result
    (and re-raises its error). The process is killed if the block fails or is interrupted, and dies with this
    one (even on kill -9). Fork before starting threads, as for :class:`WorkerPool`."""
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_run_beside, args=(fn, send, os.getpid()), daemon=True)
    process.start()
    send.close()

    def wait() -> R:
        try:
            ok, value = receive.recv()
        except EOFError:
            raise StyleprefsError("a worker process died (out of memory?); run the same command again to resume"
                                  ) from None
        process.join()
        if not ok:
            raise value
        return value

    try:
        yield wait
    except BaseException as exc:
        failure = _failure(receive)
        if failure is not None:  # the task failed first, and the block with it: the task's error explains both
            raise failure from exc
        raise
    finally:
        if process.is_alive():
            process.kill()
        process.join()
        receive.close()


def _failure(receive) -> BaseException | None:
    """The error a finished task sent, if it sent one."""
    try:
        if receive.poll():
            ok, value = receive.recv()
            return None if ok else value
    except EOFError:
        pass
    return None


def _run_beside(fn: Callable, send, parent: int) -> None:
    _die_with(parent)
    try:
        result = (True, fn())
    except BaseException as exc:  # handed to the waiting process, raised there
        result = (False, exc)
    send.send(result)


def _start_worker(fn: Callable, parent: int) -> None:
    global _worker_fn
    _worker_fn = fn
    _die_with(parent)


def _die_with(parent: int) -> None:
    """Ignore Ctrl-C (the parent handles it) and, on Linux, die when the parent process does."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)


def _run(item):
    return _worker_fn(item)


def _result(future: Future):
    try:
        return future.result()
    except BrokenProcessPool:
        raise StyleprefsError("a worker process died (out of memory?); run the same command again to resume, "
                              "with fewer --workers if it happens again") from None


@lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=usable_cores(), thread_name_prefix="styleprefs")


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
