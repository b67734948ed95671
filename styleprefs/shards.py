"""Dataset shards: ``data/train-XXXXX-of-YYYYY.parquet``, re-cut from a stream of tables."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from styleprefs.errors import StyleprefsError, one_line
from styleprefs.io import remove_temp_files, sha256_file, write_parquet
from styleprefs.schema import DATASET_SCHEMA


def write_shards(tables: Iterator[pa.Table], rows: int, data_dir: Path, shard_size: int) -> list[dict]:
    """Re-cut a stream of tables into shards of ``shard_size`` rows, holding one shard in memory."""
    count = max(1, math.ceil(rows / shard_size))
    names = [f"train-{i:05d}-of-{count:05d}.parquet" for i in range(count)]
    data_dir.mkdir(parents=True, exist_ok=True)
    remove_temp_files(data_dir)
    for stale in data_dir.glob("*.parquet"):
        if stale.name not in names:
            stale.unlink()
    shards: list[dict] = []
    pending: list[pa.Table] = []

    def flush(table: pa.Table) -> None:
        name = names[len(shards)]
        write_parquet(table, data_dir / name)
        shards.append({"path": f"data/{name}", "rows": table.num_rows, "sha256": sha256_file(data_dir / name)})

    for table in tables:
        pending.append(table)
        buffered = pa.concat_tables(pending)
        while buffered.num_rows >= shard_size:
            flush(buffered.slice(0, shard_size))
            buffered = buffered.slice(shard_size)
        pending = [buffered]
    remainder = pa.concat_tables(pending) if pending else DATASET_SCHEMA.empty_table()
    if remainder.num_rows or not shards:
        flush(remainder)
    return shards


def read_table(path: Path, **kwargs) -> pa.Table:
    """``pq.read_table(path, **kwargs)``; a damaged or missing dataset file is a one-line StyleprefsError."""
    try:
        return pq.read_table(path, **kwargs)
    except (OSError, pa.ArrowException) as exc:
        raise StyleprefsError(f"{path} cannot be read ({one_line(exc)}): the dataset is damaged; "
                              "rebuild it with `styleprefs build ... --overwrite`") from None
