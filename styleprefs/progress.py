"""Rich progress bars for long work, with a rate column."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text


class RateColumn(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} {self.unit}/s" if speed else f"- {self.unit}/s", style="progress.data.speed")


@contextmanager
def pair_progress(total: int, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """Yield ``advance(kept, read)``; the bar counts kept pairs toward ``total``."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  RateColumn("pairs"), TextColumn("read {task.fields[read]}"), TimeElapsedColumn(),
                  TimeRemainingColumn(), disable=not enabled) as progress:
        task = progress.add_task("pairs", total=total, read=0)
        read = 0

        def advance(kept: int, n_read: int) -> None:
            nonlocal read
            read += n_read
            progress.update(task, advance=kept, read=read)

        yield advance
