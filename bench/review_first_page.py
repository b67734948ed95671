"""Benchmark: the first page of `styleprefs review` on a large dataset, against reading the dataset whole.

    python bench/review_first_page.py [--rows 100000] [--image-size 96] [--keep DIR]

Makes a dataset of ``--rows`` pairs (the pairs of a 100-pair sample build repeated with new ids, images
re-encoded at ``--image-size`` px to keep the folder small; 1000-row shards of 100-row groups, as `build` writes
them), starts `styleprefs review DATASET --port 0` and opens the page in headless Chromium (Debian's, through
playwright). Timed: the command until it prints its URL; the page from navigation until the first page's captions
and all its images are shown; the first caption search (it reads every row's small columns). Baselines, measured
in the same run: reading every row's small columns, and reading the whole dataset (images too), which a page that
loaded everything would need first. Goal: the first page in under 2 s on 2 cores. The load average is printed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from rich.console import Console
from rich.table import Table

from styleprefs.build import BuildConfig, build_dataset
from styleprefs.shards import write_shards

SHARD_ROWS = 1000
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def make_dataset(out: Path, rows: int, size: int) -> None:
    base_dir = out.parent / f"{out.name}-base"
    build_dataset(BuildConfig(style="winter", source="sample", num_pairs=100), base_dir, show_progress=False)
    base = pq.read_table(base_dir / "data")
    for slot in (0, 1):
        small = [_shrink(b, size) for b in base.column(f"jpg_{slot}").to_pylist()]
        base = base.set_column(base.schema.get_field_index(f"jpg_{slot}"), f"jpg_{slot}", pa.array(small, pa.binary()))

    def tables():
        for start in range(0, rows, SHARD_ROWS):
            index = list(range(start, min(rows, start + SHARD_ROWS)))
            table = base.take(pa.array([i % base.num_rows for i in index]))
            for name in ("image_0_uid", "image_1_uid", "source"):
                values = [f"{v}-{i}" for v, i in zip(table.column(name).to_pylist(), index)]
                table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, pa.string()))
            yield table

    manifest = json.loads((base_dir / "manifest.json").read_text())
    manifest["shards"] = write_shards(tables(), rows, out / "data", SHARD_ROWS)
    manifest["counts"].update(read=rows, kept=rows, requested=rows)
    (out / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(base_dir)


def _shrink(data: bytes, size: int) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").resize((size, size)).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def measure_page(dataset: Path) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "styleprefs.cli", "review", str(dataset), "--port", "0"],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        ready = time.perf_counter() - start
        address = line.split("open ")[1].split()[0]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto("about:blank")
            start = time.perf_counter()
            page.goto(address)
            page.wait_for_selector(".pair .caption")
            page.wait_for_function("() => [...document.querySelectorAll('.pair img')]"
                                   ".every(i => i.complete && i.naturalWidth)")
            first_page = time.perf_counter() - start
            start = time.perf_counter()
            before = page.inner_text("#range")
            page.fill("#f-q", "horse")
            with page.expect_response(lambda response: "q=horse" in response.url):
                page.click("#apply-filters")
            page.wait_for_function("before => document.querySelector('#range').textContent !== before", arg=before)
            search = time.perf_counter() - start
            browser.close()
    finally:
        proc.send_signal(2)
        proc.wait(30)
    return {"ready": ready, "first_page": first_page, "search": search}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--keep", type=Path, default=None, help="make (or reuse) the dataset here")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="review-bench-")) / "ds"
    if not (folder / "manifest.json").is_file():
        made, _ = timed(lambda: make_dataset(folder, args.rows, args.image_size))
        print(f"made {args.rows} pairs in {made:.1f} s: {folder}")
    page = measure_page(folder)
    small_columns = [n for n in pq.read_schema(next((folder / "data").glob("*.parquet"))).names
                     if n not in ("jpg_0", "jpg_1")]
    small, _ = timed(lambda: pq.read_table(folder / "data", columns=small_columns))
    whole, _ = timed(lambda: pq.read_table(folder / "data"))
    size = sum(p.stat().st_size for p in (folder / "data").glob("*.parquet"))
    table = Table(title=f"review, {args.rows} pairs, {size / 1e6:.0f} MB of shards, load average "
                        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    table.add_column("x whole read", justify="right")
    for name, seconds in [("baseline: read the whole dataset", whole),
                          ("baseline: read every row's small columns", small),
                          ("`styleprefs review` until it prints its URL", page["ready"]),
                          ("first page shown (10 pairs, 20 images)", page["first_page"]),
                          ("first caption search (reads every row's small columns)", page["search"])]:
        table.add_row(name, f"{seconds:.2f}", f"{seconds / whole:.3f}")
    Console().print(table)
    if args.keep is None:
        shutil.rmtree(folder.parent)


if __name__ == "__main__":
    main()
