"""``styleprefs inspect``: check a dataset folder against the format and show what is in it."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

from styleprefs.errors import StyleprefsError, one_line
from styleprefs.images import decode
from styleprefs.io import read_json, sha256_file
from styleprefs.schema import DATASET_SCHEMA
from styleprefs.shards import read_table

_STAT_COLUMNS = ["style", "editor", "label_0", "source_preferred"]
BUILD_STATE = ".build"  # a build's parts until its last step commits
FILTER_BACKUP = ".filter-old"  # the replaced files while filter-unsafe swaps its output in
RELABEL_BACKUP = ".relabel-old"  # the replaced files while relabel swaps its output in
REVIEW_BACKUP = ".review-old"  # the replaced files while `review --apply` swaps its output in
_UNFINISHED = {BUILD_STATE: "styleprefs build", FILTER_BACKUP: "styleprefs filter-unsafe",
               RELABEL_BACKUP: "styleprefs relabel", REVIEW_BACKUP: "styleprefs review --apply"}


@dataclass
class InspectReport:
    counts: dict
    styles: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def read_manifest(dataset: Path) -> dict:
    """``manifest.json`` of a dataset folder, checked to be one (see ``read_finished_manifest``)."""
    path = Path(dataset) / "manifest.json"
    if not path.is_file():
        raise StyleprefsError(f"{dataset} has no manifest.json: it is not a finished styleprefs dataset (run `styleprefs build` to finish it)")
    manifest = read_json(path)
    if not {"config", "counts", "shards"} <= set(manifest):
        raise StyleprefsError(f"{path} is not a styleprefs manifest (it lacks config, counts or shards)")
    return manifest


def read_finished_manifest(dataset: Path) -> dict:
    """The manifest of a dataset whose last build or filter step committed."""
    for marker, command in _UNFINISHED.items():
        if (Path(dataset) / marker).exists():
            raise StyleprefsError(f"{dataset} is not finished: `{command}` was interrupted (or is running) there; "
                                  "run the same command again to finish it")
    return read_manifest(dataset)


def read_verified_manifest(dataset: Path) -> dict:
    """The manifest of a finished dataset whose shards are all there and match their sha256. Every command that
    reads a dataset's rows calls it, so each refuses a damaged dataset with the same message."""
    manifest = read_finished_manifest(dataset)
    for shard, path in zip(manifest["shards"], shard_paths(dataset, manifest)):
        if not path.is_file():
            raise StyleprefsError(f"{dataset}: shard {shard['path']} is missing; rebuild the dataset")
        if _sha256(path) != shard["sha256"]:
            raise StyleprefsError(f"{dataset}: shard {shard['path']} does not match its sha256 in manifest.json; it "
                                  "changed after the build, rebuild it")
    return manifest


_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha256: a run that reads a dataset twice hashes it once


def _sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def shard_paths(dataset: Path, manifest: dict) -> list[Path]:
    return [Path(dataset) / s["path"] for s in manifest["shards"]]


def inspect_dataset(dataset: Path) -> InspectReport:
    manifest = read_finished_manifest(dataset)
    problems: list[str] = []
    tables = []
    rows = 0
    for shard, path in zip(manifest["shards"], shard_paths(dataset, manifest)):
        if not path.is_file():
            problems.append(f"shard {shard['path']} is missing")
            continue
        if sha256_file(path) != shard["sha256"]:
            problems.append(f"shard {shard['path']} does not match its sha256 in manifest.json")
        try:
            schema, n = pq.read_schema(path), pq.ParquetFile(path).metadata.num_rows
        except (OSError, pa.ArrowException) as exc:
            problems.append(f"shard {shard['path']} cannot be read: {one_line(exc)}")
            continue
        rows += n
        schema_problems = _schema_problems(schema, shard["path"])
        problems += schema_problems
        if not schema_problems:
            tables.append(read_table(path, columns=_STAT_COLUMNS))
    table = pa.concat_tables(tables) if tables else None
    counts = {**manifest["counts"], "rows in shards": rows}
    if rows != counts["kept"]:
        problems.append(f"shards hold {rows} rows but the manifest says {counts['kept']} were kept")
    return InspectReport(counts, _style_stats(table) if table is not None else [], problems)


def _schema_problems(schema: pa.Schema, where: str) -> list[str]:
    missing = [f.name for f in DATASET_SCHEMA if f.name not in schema.names]
    wrong = [f"{f.name} is {schema.field(f.name).type}, expected {f.type}"
             for f in DATASET_SCHEMA if f.name in schema.names and schema.field(f.name).type != f.type]
    problems = [f"{where}: missing column(s) {', '.join(missing)}"] if missing else []
    return problems + [f"{where}: {w}" for w in wrong]


def _style_stats(table: pa.Table) -> list[dict]:
    stats = []
    for style in sorted(set(table.column("style").to_pylist())):
        sub = table.filter(pc.equal(table.column("style"), style))
        stats.append({
            "style": style,
            "editor": ", ".join(sorted(set(sub.column("editor").to_pylist()))),
            "rows": sub.num_rows,
            "edit_slot0_share": pc.mean(sub.column("label_0")).as_py(),
            "source_ties": sub.column("source_preferred").to_pylist().count("tie"),
        })
    return stats


def save_grid(dataset: Path, out: Path, rows: int = 8, cell: int = 256) -> None:
    """A PNG of ``rows`` pairs: rejected original | preferred edit, caption under each pair."""
    if rows < 1:
        raise StyleprefsError(f"--rows must be at least 1, got {rows}")
    manifest = read_verified_manifest(dataset)
    pairs = _first_rows(shard_paths(dataset, manifest), rows)
    if not pairs:
        raise StyleprefsError(f"{dataset} holds no rows to draw")
    caption_h = 48
    grid = Image.new("RGB", (2 * cell, len(pairs) * (cell + caption_h)), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=13)
    for i, row in enumerate(pairs):
        edited = 0 if row["label_0"] == 1.0 else 1
        y = i * (cell + caption_h)
        for x, slot in ((0, 1 - edited), (cell, edited)):
            grid.paste(decode(row[f"jpg_{slot}"]).resize((cell, cell), Image.Resampling.BICUBIC), (x, y))
        text = "\n".join(textwrap.wrap(row["caption"], width=2 * cell // 7)[:3])
        draw.text((4, y + cell + 2), text, fill="black", font=font)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        grid.save(out)
    except (OSError, ValueError) as exc:  # ValueError: PIL knows no format for the file extension
        raise StyleprefsError(f"--grid {out} cannot be written: {getattr(exc, 'strerror', None) or exc}") from None


def _first_rows(paths: list[Path], n: int) -> list[dict]:
    rows: list[dict] = []
    for path in paths:
        if len(rows) >= n:
            break
        table = read_table(path, columns=["caption", "jpg_0", "jpg_1", "label_0"])
        rows += table.slice(0, n - len(rows)).to_pylist()
    return rows
