"""Pick-a-Pic pairs from the Hub (streamed), local Parquet, or webdataset tar shards.

The Hub and webdataset tars are read by ``datasets`` in streaming mode, so nothing close to
Pick-a-Pic's 335 GB is downloaded; local Parquet is read by pyarrow a record batch at a time
(``datasets`` adds seconds of setup and nothing else there). All rows map through one function.
"""

from __future__ import annotations

import glob
import math
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.types as pat

from styleprefs.errors import StyleprefsError, one_line
from styleprefs.schema import PICKAPIC_FIELDS, missing_columns
from styleprefs.sources.base import SourcePair

HUB_DEFAULT = "yuvalkirstain/pickapic_v2"
# sayakpaul/pickapic_v2_webdataset's member names, as datasets' webdataset builder names columns.
WDS_COLUMNS = {"caption": "original_prompt.txt", "jpg_0": "jpg_0.jpg", "jpg_1": "jpg_1.jpg",
               "label_0": "label_0.txt", "label_1": "label_1.txt"}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class PickapicSource:
    """Rows in Pick-a-Pic v2's schema, in a stable order (files sorted, rows in file order)."""

    name = "pickapic"

    def __init__(self, location: str = HUB_DEFAULT, split: str | None = None):
        self.location = location
        self.split = split
        self.files = _local_files(location, split)
        self.kind = _kind(self.files)
        if self.kind == "parquet":
            _check_parquet(self.files)

    def describe(self) -> dict:
        return {"source": self.name, "location": self.location, "split": self.split,
                "format": self.kind, "files": [Path(f).name for f in self.files]}

    def local_paths(self) -> list[Path]:
        location = [Path(self.location)] if self.files and not glob.has_magic(self.location) else []
        return location + [Path(f) for f in self.files]

    def __iter__(self) -> Iterator[SourcePair]:
        if self.kind == "parquet":
            rows, wds = _parquet_rows(self.files), False
        else:
            stream = self._open()
            rows, wds = iter(stream), "original_prompt.txt" in (stream.features or {})
        index = 0
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except Exception as exc:  # datasets raises many types for a file it cannot read
                raise StyleprefsError(f"cannot read source {self.location}: {one_line(exc)}") from None
            yield _wds_pair(row) if wds else pickapic_pair(row, index)
            index += 1

    def parquet_files(self) -> tuple[list[str], Any]:
        """The Parquet files and the filesystem to read them with (None: local), for reading by row group."""
        if self.kind == "parquet":
            return self.files, None
        if self.kind == "hub":
            return _hub_parquet_files(self.location, self.split or "train")
        raise StyleprefsError("--sample random reads Parquet row groups and webdataset tars have none: "
                              "use --sample sequential")

    def _open(self):
        import datasets  # deferred: importing it costs about a second

        try:
            if self.kind == "hub":
                stream = datasets.load_dataset(self.location, split=self.split or "train", streaming=True)
            else:
                stream = datasets.load_dataset("webdataset", data_files=self.files, split="train", streaming=True)
        except Exception as exc:
            raise StyleprefsError(
                f"cannot open source {self.location}: {one_line(exc)} (for offline use pass a local Parquet/tar path or --source sample)"
            ) from None
        # Keep images as encoded bytes: decoding is the build's job, and a corrupt image must reach it.
        for column, feature in (stream.features or {}).items():
            if isinstance(feature, datasets.Image):
                stream = stream.cast_column(column, datasets.Image(decode=False))
        if stream.features is not None and self.kind == "hub":
            check_column_types(stream.features.arrow_schema, self.location)
        return stream


def _hub_parquet_files(repo: str, split: str) -> tuple[list[str], Any]:
    """The split's Parquet files in a Hub dataset repo, read through ``HfFileSystem`` (ranges, not whole files)."""
    from huggingface_hub import HfFileSystem

    filesystem = HfFileSystem()
    try:
        files = sorted(filesystem.glob(f"datasets/{repo}/**/{split}-*.parquet"))
    except Exception as exc:  # network and Hub errors of many types
        raise StyleprefsError(f"cannot list the Parquet files of {repo} on the Hub: {one_line(exc)} "
                              "(offline? pass local Parquet shards as --source)") from None
    if not files:
        raise StyleprefsError(f"the Hub dataset {repo} has no {split}-*.parquet files")
    return files, filesystem


def _parquet_rows(files: list[str]) -> Iterator[dict[str, Any]]:
    for f in files:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=64):
            yield from batch.to_pylist()


def _local_files(location: str, split: str | None) -> list[str]:
    path = Path(location)
    if glob.has_magic(location):
        files = sorted(glob.glob(location, recursive=True))
    elif path.is_file():
        files = [str(path)]
    elif path.is_dir():
        files = sorted(str(p) for p in path.rglob("*.parquet")) or sorted(str(p) for p in path.rglob("*.tar"))
    elif _REPO_ID.match(location) and not location.startswith("."):
        return []  # a Hub repo id
    else:
        raise StyleprefsError(f"source {location!r} does not exist: give a Parquet/tar file, folder, glob, Hub repo id, 'pickapic' or 'sample'")
    if split is not None:
        files = [f for f in files if Path(f).name.startswith(f"{split}-") or split in Path(f).parent.parts]
    if not files:
        where = f" for split {split!r}" if split else ""
        raise StyleprefsError(f"source {location!r} holds no .parquet or .tar files{where}")
    return files


def _kind(files: list[str]) -> str:
    if not files:
        return "hub"
    suffixes = {Path(f).suffix for f in files}
    if suffixes == {".parquet"}:
        return "parquet"
    if suffixes == {".tar"}:
        return "webdataset"
    raise StyleprefsError(f"source files must be all .parquet or all .tar, got {', '.join(sorted(suffixes))}")


def _check_parquet(files: list[str]) -> None:
    for f in files:
        try:
            schema = pq.read_schema(f)
        except Exception as exc:
            raise StyleprefsError(f"cannot read Parquet file {f}: {one_line(exc)}") from None
        check_parquet_schema(schema, f)


def check_parquet_schema(schema: pa.Schema, path: str) -> None:
    """Refuse a Parquet file that lacks a required Pick-a-Pic column or holds one of the wrong type."""
    missing = missing_columns(schema.names)
    if missing:
        raise StyleprefsError(f"Parquet file {path} is not in Pick-a-Pic's schema: missing column(s) {', '.join(missing)}")
    check_column_types(schema, f"Parquet file {path}")


def _is_image(t: pa.DataType) -> bool:
    """Encoded bytes, or ``datasets``' Image struct of bytes and path."""
    if pat.is_struct(t):
        index = t.get_field_index("bytes")
        return index >= 0 and _is_image(t.field(index).type)
    return pat.is_binary(t) or pat.is_large_binary(t)


_COMPATIBLE = {  # Pick-a-Pic's type -> what a source may hold instead
    pa.string(): lambda t: pat.is_string(t) or pat.is_large_string(t),
    pa.binary(): _is_image,
    pa.float64(): lambda t: pat.is_floating(t) or pat.is_integer(t),
    pa.int64(): pat.is_integer,
    pa.bool_(): pat.is_boolean,
    pa.timestamp("ns"): pat.is_timestamp,
}


def check_column_types(schema: pa.Schema, where: str) -> None:
    """Refuse, naming the column, a Pick-a-Pic column of the wrong type (a null column is missing data)."""
    for field in PICKAPIC_FIELDS:
        if field.name in schema.names:
            actual = schema.field(field.name).type
            if not (pat.is_null(actual) or _COMPATIBLE[field.type](actual)):
                raise StyleprefsError(f"{where}: column {field.name!r} is {actual}, expected {field.type} "
                                      "as in Pick-a-Pic's schema")


def pickapic_pair(row: dict[str, Any], index: int) -> SourcePair:
    uid0, uid1 = str(row.get("image_0_uid") or ""), str(row.get("image_1_uid") or "")
    key = f"{row.get('ranking_id', '')}-{uid0}-{uid1}" if uid0 and uid1 else f"row-{index}"
    return SourcePair(
        key=key,
        caption=row.get("caption") or "",
        jpg_0=_image_bytes(row.get("jpg_0")),
        jpg_1=_image_bytes(row.get("jpg_1")),
        label_0=_float(row.get("label_0")),
        label_1=_float(row.get("label_1")),
        image_0_uid=uid0,
        image_1_uid=uid1,
        model_0=str(row.get("model_0") or ""),
        model_1=str(row.get("model_1") or ""),
        ranking_id=int(row.get("ranking_id") or 0),
        user_id=int(row.get("user_id") or 0),
        num_example_per_prompt=int(row.get("num_example_per_prompt") or 1),
        image_0_url=row.get("image_0_url") or None,
        image_1_url=row.get("image_1_url") or None,
        created_at=_datetime(row.get("created_at")),
    )


def _wds_pair(row: dict[str, Any]) -> SourcePair:
    key = f"{Path(str(row.get('__url__', ''))).name}/{row['__key__']}"
    return SourcePair(
        key=key,
        caption=row.get(WDS_COLUMNS["caption"]) or "",
        jpg_0=_image_bytes(row.get(WDS_COLUMNS["jpg_0"])),
        jpg_1=_image_bytes(row.get(WDS_COLUMNS["jpg_1"])),
        label_0=_float(row.get(WDS_COLUMNS["label_0"])),
        label_1=_float(row.get(WDS_COLUMNS["label_1"])),
    )


def _image_bytes(value: Any) -> bytes | None:
    if isinstance(value, dict):
        value = value.get("bytes")
    return bytes(value) if value else None


def _float(value: Any) -> float:
    try:
        return float(str(value).strip()) if not isinstance(value, float) else value
    except ValueError:
        return math.nan


def _datetime(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return None
