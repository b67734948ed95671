"""Rows of Parquet files read a row group at a time: the page never loads a dataset whole.

Opening reads the footers only. A page of rows reads the row groups it covers (without the image columns);
an image reads its row group's column of that slot, and the last few such columns are kept for the rest of
the page. Filters and sorts read every row group's small columns once (captions, ids, scores), never images.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from styleprefs.errors import StyleprefsError, one_line

IMAGE_COLUMNS = ("jpg_0", "jpg_1")
CACHED_COLUMNS = 6  # image columns of row groups kept in memory: one page's worth


class ParquetRows:
    """The rows of ``paths``, in order, numbered from 0."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        self._lock = threading.Lock()  # ParquetFile reads from one thread at a time
        self._cache: OrderedDict[tuple[int, int, str], pa.Array] = OrderedDict()
        self._small: pa.Table | None = None
        self.groups_read = 0  # row-group reads so far (tests check pages read only what they show)
        self._files = [self._open(path) for path in paths]
        self._groups = [(f, g) for f, pf in enumerate(self._files) for g in range(pf.metadata.num_row_groups)]
        self._starts = [0]
        for f, g in self._groups:
            self._starts.append(self._starts[-1] + self._files[f].metadata.row_group(g).num_rows)
        self.schema = self._files[0].schema_arrow if self._files else pa.schema([])
        self.small_columns = [n for n in self.schema.names if n not in IMAGE_COLUMNS]

    @staticmethod
    def _open(path: Path) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as exc:
            raise StyleprefsError(f"{path} cannot be read ({one_line(exc)}): the dataset is damaged") from None

    @property
    def total(self) -> int:
        return self._starts[-1]

    def has(self, column: str) -> bool:
        return column in self.schema.names

    def non_null(self, column: str) -> bool:
        """Whether ``column`` holds a value in any row, from the footers' statistics (true where they are missing)."""
        index = self.schema.names.index(column)
        for f, g in self._groups:
            meta = self._files[f].metadata.row_group(g)
            stats = meta.column(index).statistics
            if stats is None or not stats.has_null_count or stats.null_count < meta.num_rows:
                return True
        return False

    def rows(self, start: int, count: int) -> list[dict]:
        """Rows ``start`` .. ``start + count`` (clipped), small columns only, each with its ``row`` number."""
        start, stop = max(0, start), min(self.total, start + count)
        if start >= stop:
            return []
        if self._small is not None:
            table = self._small.slice(start, stop - start)
        else:
            first, last = self._group_of(start), self._group_of(stop - 1)
            table = pa.concat_tables([self._read_group(i, self.small_columns) for i in range(first, last + 1)])
            table = table.slice(start - self._starts[first], stop - start)
        return [{"row": row, **values} for row, values in zip(range(start, stop), _to_pylist(table))]

    def take(self, rows: list[int]) -> list[dict]:
        """The given rows (small columns), in the order given."""
        table = self.small().take(pa.array(rows, pa.int64())) if rows else None
        return [] if table is None else [{"row": r, **v} for r, v in zip(rows, _to_pylist(table))]

    def small(self) -> pa.Table:
        """Every row's small columns, read once (filters and sorts need them all)."""
        with self._lock:
            if self._small is None:
                parts = [self._read_file(f, self.small_columns) for f in range(len(self._files))]
                self._small = pa.concat_tables(parts) if parts else self.schema.empty_table().select(self.small_columns)
            return self._small

    def value(self, row: int, column: str) -> Any:
        """One cell; its row group's whole column stays cached (the next rows of a page are in it)."""
        if not 0 <= row < self.total or column not in self.schema.names:
            raise IndexError(f"no {column} at row {row}")
        i = self._group_of(row)
        key = (*self._groups[i], column)
        with self._lock:
            array = self._cache.pop(key, None)
            if array is None:
                array = self._read(*self._groups[i], [column]).column(0).combine_chunks()
            self._cache[key] = array
            while len(self._cache) > CACHED_COLUMNS:
                self._cache.popitem(last=False)
        return array[row - self._starts[i]].as_py()

    def close(self) -> None:
        for pf in self._files:
            pf.close()

    def _group_of(self, row: int) -> int:
        return bisect.bisect_right(self._starts, row) - 1

    def _read_group(self, i: int, columns: list[str]) -> pa.Table:
        with self._lock:
            return self._read(*self._groups[i], columns)

    def _read_file(self, f: int, columns: list[str]) -> pa.Table:
        self.groups_read += self._files[f].metadata.num_row_groups
        try:
            return self._files[f].read(columns=columns)
        except (OSError, pa.ArrowException) as exc:
            raise StyleprefsError(f"{self.paths[f]} cannot be read ({one_line(exc)}): the file is damaged") from None

    def _read(self, f: int, g: int, columns: list[str]) -> pa.Table:
        self.groups_read += 1
        try:
            return self._files[f].read_row_group(g, columns=columns)
        except (OSError, pa.ArrowException) as exc:
            raise StyleprefsError(f"{self.paths[f]} row group {g} cannot be read ({one_line(exc)}): "
                                  "the file is damaged") from None


def _to_pylist(table: pa.Table) -> list[dict]:
    """``table.to_pylist()`` with timestamps as ISO text (pyarrow would import pandas for them: half a second)."""
    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type):
            table = table.set_column(i, field.name, pc.strftime(table.column(i), format="%Y-%m-%dT%H:%M:%S"))
    return table.to_pylist()


def checked_shards(dataset: Path, manifest: dict) -> list[Path]:
    """The shards ``manifest.json`` lists, each an existing file inside ``dataset`` (a manifest cannot point the
    page or ``--apply`` at files elsewhere)."""
    root = Path(dataset).resolve()
    names = [str(s["path"]) for s in manifest["shards"]]
    paths = [Path(dataset) / name for name in names]
    if not paths:
        raise StyleprefsError(f"{dataset} has no shards (manifest.json lists none): build it with `styleprefs build`")
    for name, path in zip(names, paths):
        if not path.resolve().is_relative_to(root):
            raise StyleprefsError(f"{dataset}/manifest.json lists shard {name} outside the dataset folder: "
                                  "the manifest is damaged")
        if not path.is_file():
            raise StyleprefsError(f"{dataset} is missing shard {name}: rebuild it with "
                                  "`styleprefs build ... --overwrite`")
    return paths
