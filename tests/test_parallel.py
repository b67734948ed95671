"""styleprefs.parallel.WorkerPool: input order, bounded work in flight, a dead worker, memory shared after fork."""

from __future__ import annotations

import gc
import os
import time

import psutil
import pytest

from styleprefs.errors import StyleprefsError
from styleprefs.parallel import IN_FLIGHT_PER_WORKER, WorkerPool, beside, parse_workers


def _square_slowly_every_tenth(i: int) -> int:
    time.sleep(0.2 if i % 10 == 0 else 0.001)  # later items finish first
    return i * i


def test_results_in_input_order_with_a_bounded_number_in_flight():
    pulled: list[int] = []

    def items():
        for i in range(40):
            pulled.append(i)
            yield i

    results = []
    with WorkerPool(_square_slowly_every_tenth, 2) as pool:
        for result in pool.map(items()):
            results.append(result)
            assert len(pulled) - len(results) < 2 * IN_FLIGHT_PER_WORKER
    assert results == [i * i for i in range(40)]


def _die_on_three(i: int) -> int:
    if i == 3:
        os._exit(1)
    return i


def test_a_dead_worker_is_a_one_line_error():
    with pytest.raises(StyleprefsError, match="a worker process died"), WorkerPool(_die_on_three, 2) as pool:
        list(pool.map(range(8)))


def _unique_memory_after_a_full_collection(_: int) -> int:
    before = psutil.Process().memory_full_info().uss
    gc.collect()
    return psutil.Process().memory_full_info().uss - before


def test_a_workers_garbage_collection_leaves_the_parents_pages_shared():
    """Without gc.freeze() before the fork, a full collection writes to every page of the parent's objects (here
    torch's and diffusers' modules) and copies about 150 MB into each worker."""
    import styleprefs.build  # noqa: F401  the objects of a build's parent process

    with WorkerPool(_unique_memory_after_a_full_collection, 1) as pool:
        assert list(pool.map([0]))[0] < 20 * 2**20


def test_workers_option():
    assert parse_workers("auto") is None and parse_workers("0") == 0 and parse_workers("3") == 3
    for bad in ("-1", "two", "1.5"):
        with pytest.raises(StyleprefsError, match="--workers"):
            parse_workers(bad)


def test_beside_runs_alongside_the_block_and_hands_back_its_result():
    parent = os.getpid()
    started = time.time()
    with beside(lambda: (os.getpid(), time.sleep(3.0))[0]) as wait:
        time.sleep(3.0)
        child = wait()
    assert child != parent and time.time() - started < 5.0  # the two three-second sleeps overlapped


def _fail() -> None:
    raise ValueError("bad stage")


def test_beside_re_raises_the_error_of_its_task_and_names_a_dead_process():
    with pytest.raises(ValueError, match="bad stage"), beside(_fail) as wait:
        wait()
    with pytest.raises(StyleprefsError, match="a worker process died"), beside(lambda: os._exit(3)) as wait:
        wait()


def test_beside_kills_its_process_when_the_block_fails(tmp_path):
    pid_file = tmp_path / "pid"

    def long_task() -> None:
        pid_file.write_text(str(os.getpid()))
        time.sleep(60)

    with pytest.raises(KeyboardInterrupt), beside(long_task):
        while not pid_file.exists() or not pid_file.read_text():
            time.sleep(0.01)
        interrupted = time.time()
        raise KeyboardInterrupt
    assert time.time() - interrupted < 10 and not psutil.pid_exists(int(pid_file.read_text()))


def test_when_the_block_fails_because_the_task_did_the_tasks_error_is_raised():
    with pytest.raises(ValueError, match="bad stage") as raised, beside(_fail):
        time.sleep(2.0)  # the task fails meanwhile; the block then fails for want of its result
        raise ConnectionError("peer closed")
    assert isinstance(raised.value.__cause__, ConnectionError)
