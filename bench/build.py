"""Benchmark: pairs/s of a 512px `classic` build and where the time goes.

    python bench/build.py [--pairs 256] [--style winter]

Baseline, measured in the same run on the same rows: the editor alone (decode, edit, encode JPEG),
so the table shows the build's throughput as a share of the editing work it cannot avoid.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.table import Table

from styleprefs import build as build_module
from styleprefs import shards as shards_module
from styleprefs.build import BuildConfig, build_dataset
from styleprefs.editors import load_editor
from styleprefs.images import decode, encode_jpeg
from styleprefs.pairs import plan_row
from styleprefs.sources import open_source
from styleprefs.style import load_style


@contextmanager
def timed(module, name: str, totals: dict):
    """Accumulate the wall time spent in ``module.name``."""
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - start

    setattr(module, name, wrapper)
    try:
        yield
    finally:
        setattr(module, name, real)


def editor_only(style: str, pairs: int) -> tuple[float, float]:
    """Seconds to read the rows, and seconds to decode, edit and encode them, outside the build."""
    start = time.perf_counter()
    rows = []
    for pair in open_source("sample"):
        rows.append(pair)
        if len(rows) == pairs:
            break
    read = time.perf_counter() - start
    editor = load_editor("classic", load_style(style))
    start = time.perf_counter()
    for pair in rows:
        plan = plan_row(pair, 0)
        image = decode((pair.jpg_0, pair.jpg_1)[plan.edited])
        encode_jpeg(editor.edit([image], [pair.caption], [plan.edit_seed])[0])
    return read, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--style", default="winter")
    args = parser.parse_args()

    read_s, edit_s = editor_only(args.style, args.pairs)
    totals: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, timed(shards_module, "write_parquet", totals), \
            timed(build_module, "_edit_batch", totals), timed(shards_module, "sha256_file", totals):
        start = time.perf_counter()
        build_dataset(BuildConfig(style=args.style, source="sample", num_pairs=args.pairs, shard_size=128),
                      Path(tmp) / "out", batch_size=8, show_progress=False)
        total = time.perf_counter() - start

    table = Table(title=f"classic build, {args.pairs} pairs at 512px, style {args.style}")
    for col in ("measure", "value"):
        table.add_column(col)
    table.add_row("build pairs/s", f"{args.pairs / total:.1f}")
    table.add_row("baseline: read + edit alone, pairs/s", f"{args.pairs / (read_s + edit_s):.1f}")
    table.add_row("build time / baseline time", f"{total / (read_s + edit_s):.2f}")
    table.add_row("share of build: edit + encode", f"{totals.get('_edit_batch', 0) / total:.1%}")
    table.add_row("share of build: writing Parquet", f"{totals.get('write_parquet', 0) / total:.1%}")
    table.add_row("share of build: sha256 of shards", f"{totals.get('sha256_file', 0) / total:.1%}")
    table.add_row("share of build: reading the sample source", f"{read_s / total:.1%} (measured outside)")
    Console().print(table)


if __name__ == "__main__":
    main()
