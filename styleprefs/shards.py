"""Dataset shards: ``data/train-XXXXX-of-YYYYY.parquet``, re-cut from a stream of tables."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from styleprefs.errors import StyleprefsError, one_line
from styleprefs.io import ROW_GROUP_ROWS, atomic_path, remove_temp_files, sha256_file, write_parquet
from styleprefs.schema import DATASET_SCHEMA


def write_shards(tables: Iterator[pa.Table], rows: int, data_dir: Path, shard_size: int) -> list[dict]:
    """Re-cut a stream of tables into shards of ``shard_size`` rows, written a row group at a time: the files are
    the bytes ``write_parquet`` gives a whole shard, and memory holds about one row group, not one shard."""
    count = max(1, math.ceil(rows / shard_size))
    names = [f"train-{i:05d}-of-{count:05d}.parquet" for i in range(count)]
    data_dir.mkdir(parents=True, exist_ok=True)
    remove_temp_files(data_dir)
    for stale in data_dir.glob("*.parquet"):
        if stale.name not in names:
            stale.unlink()
    if rows == 0:
        if any(table.num_rows for table in tables):
            raise ValueError("write_shards: the tables hold more rows than announced")
        write_parquet(DATASET_SCHEMA.empty_table(), data_dir / names[0])
        return [{"path": f"data/{names[0]}", "rows": 0, "sha256": sha256_file(data_dir / names[0])}]
    sizes = [min(shard_size, rows - start) for start in range(0, rows, shard_size)]
    groups = _recut(tables, [group for size in sizes for group in _pieces(size, ROW_GROUP_ROWS)])
    shards = []
    for name, size in zip(names, sizes):
        _write_groups(itertools.islice(groups, len(_pieces(size, ROW_GROUP_ROWS))), data_dir / name)
        shards.append({"path": f"data/{name}", "rows": size, "sha256": sha256_file(data_dir / name)})
    next(groups, None)  # runs _recut to its end: callers' generators (relabel's scoring) run to completion too
    return shards


def _pieces(n: int, size: int) -> list[int]:
    """``n`` cut into pieces of ``size``, the last one shorter."""
    return [size] * (n // size) + ([n % size] if n % size else [])


def _recut(tables: Iterator[pa.Table], sizes: list[int]) -> Iterator[pa.Table]:
    """The rows of ``tables``, in order, as tables of ``sizes`` rows."""
    tables = iter(tables)
    held = pa.concat_tables([next(tables)])
    for size in sizes:
        while held.num_rows < size:
            held = pa.concat_tables([held, next(tables)])
        yield held.slice(0, size)
        held = held.slice(size)
    if held.num_rows or any(table.num_rows for table in tables):
        raise ValueError("write_shards: the tables hold more rows than announced")


def _write_groups(groups: Iterator[pa.Table], path: Path) -> None:
    """One Parquet file of ``groups``, one row group each (``ROW_GROUP_ROWS`` rows but the last), written atomically."""
    with atomic_path(path) as tmp:
        first = next(groups)
        with pq.ParquetWriter(tmp, first.schema) as writer:
            for group in itertools.chain([first], groups):
                writer.write_table(group, row_group_size=ROW_GROUP_ROWS)


def read_table(path: Path, **kwargs) -> pa.Table:
    """``pq.read_table(path, **kwargs)``; a damaged or missing dataset file is a one-line StyleprefsError."""
    try:
        return pq.read_table(path, **kwargs)
    except (OSError, pa.ArrowException) as exc:
        raise StyleprefsError(f"{path} cannot be read ({one_line(exc)}): the dataset is damaged; "
                              "rebuild it with `styleprefs build ... --overwrite`") from None
