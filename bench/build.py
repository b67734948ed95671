"""Benchmark: a 512 px `classic` build from the sample source against the sequential work it cannot avoid, and its
peak memory at two sizes.

    python bench/build.py [--pairs 256] [--style winter] [--rss-pairs 500 4000] [--tiny-pairs 8]
                          [--sections classic editors]

Baseline, measured in the same run on the same rows: one process reading the rows (drawing the sample pairs)
and editing them (decode, edit, encode JPEG), one after the other, numpy's BLAS on one thread (as the build runs it:
BLAS threads under parallel rows only spin). The build is timed in process
(``--workers 1``) and with its default workers (one per core); goal: the default build's time at most 0.70x the
baseline on 2 cores. Peak memory: the build of ``--rss-pairs`` pairs (the sample source with that many scenes)
runs in a child process; every 50 ms its resident set size is added to the unique set size (USS) of each of its
workers (the pages a worker holds alone: it shares the rest with the build process it was forked from);
goal: the larger build's peak at most 1.2x the smaller's.
The load average is printed with the table: on a shared machine repeat the run.

Instruction editors on their tiny models (``--tiny-pairs``, 2 steps, CPU, batch 4), a second table: per editor
(``kontext``, ``qwen-image-edit``) the build with the CLIP gate (tiny CLIP, thresholds open) against its baseline,
measured in the same run on the same rows: the editor alone editing them (decode, edit, encode, the same batches,
pipeline already loaded). Their ratio is the build's overhead (the gate, parts, shards). ``--sections`` runs one
table or both.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table
from threadpoolctl import threadpool_limits

from styleprefs import build as build_module
from styleprefs import shards as shards_module
from styleprefs.build import BuildConfig, build_dataset
from styleprefs.editors import load_editor
from styleprefs.images import decode, encode_jpeg
from styleprefs.pairs import plan_row
from styleprefs.parallel import auto_workers
from styleprefs.sources import open_source
from styleprefs.style import load_style

GOAL_TIME_RATIO = 0.70
GOAL_RSS_RATIO = 1.2
TINY_EDITORS = ("kontext", "qwen-image-edit")
TINY_STEPS = 2
TINY_BATCH = 4


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


def sequential(style: str, pairs: int) -> float:
    """Seconds to read the rows and to decode, edit and encode them, one after the other in this process (numpy's
    BLAS on one thread too, as in the build)."""
    start = time.perf_counter()
    with threadpool_limits(limits=1, user_api="blas"):
        rows = sample_rows(pairs)
        editor = load_editor("classic", load_style(style))
        for pair in rows:
            plan = plan_row(pair, 0)
            image = decode((pair.jpg_0, pair.jpg_1)[plan.edited])
            encode_jpeg(editor.edit([image], [pair.caption], [plan.edit_seed])[0])
    return time.perf_counter() - start


def timed_build(style: str, pairs: int, workers: int | None, totals: dict) -> float:
    with tempfile.TemporaryDirectory() as tmp, timed(build_module, "_save_part", totals), \
            timed(shards_module, "_write_groups", totals), timed(shards_module, "sha256_file", totals):
        start = time.perf_counter()
        build_dataset(BuildConfig(style=style, source="sample", num_pairs=pairs, shard_size=128),
                      Path(tmp) / "out", batch_size=8, show_progress=False, workers=workers)
        return time.perf_counter() - start


def sample_rows(pairs: int) -> list:
    rows = []
    for pair in open_source("sample"):
        rows.append(pair)
        if len(rows) == pairs:
            break
    return rows


def tiny_editor_alone(name: str, style: str, pairs: int) -> float:
    """Seconds for the tiny ``name`` editor to decode, edit and encode the build's rows in its batches (the pipeline
    loaded before the clock starts)."""
    editor = load_editor(name, load_style(style), model="tiny", device="cpu", steps=TINY_STEPS)
    plans = [(pair, plan_row(pair, 0)) for pair in sample_rows(pairs)]
    start = time.perf_counter()
    for first in range(0, len(plans), TINY_BATCH):
        batch = plans[first:first + TINY_BATCH]
        images = [decode((pair.jpg_0, pair.jpg_1)[plan.edited]) for pair, plan in batch]
        edits = editor.edit(images, [pair.caption for pair, _ in batch], [plan.edit_seed for _, plan in batch])
        for edit in edits:
            encode_jpeg(edit)
    return time.perf_counter() - start


def tiny_editor_build(name: str, style: str, pairs: int) -> float:
    """Seconds for ``styleprefs build`` with the tiny ``name`` editor and the CLIP gate (tiny CLIP, thresholds open)."""
    cfg = BuildConfig(style=style, source="sample", editor=name, num_pairs=pairs, editor_model="tiny",
                      editor_steps=TINY_STEPS, clip_model="tiny", min_direction=-1, min_image=-1, min_text=-1)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        manifest = build_dataset(cfg, Path(tmp) / "out", batch_size=TINY_BATCH, show_progress=False, device="cpu",
                                 workers=0).manifest
        seconds = time.perf_counter() - start
    assert manifest["counts"]["kept"] == pairs, manifest["counts"]
    return seconds


def tiny_editors_table(style: str, pairs: int) -> Table:
    load_before = os.getloadavg()[0]
    rows = []
    for name in TINY_EDITORS:
        alone, built = tiny_editor_alone(name, style, pairs), tiny_editor_build(name, style, pairs)
        rows.append((name, f"{pairs / alone:.2f}", f"{pairs / built:.2f}", f"{built / alone:.2f}"))
    table = Table("editor", "baseline: editor alone, pairs/s", "build with the gate, pairs/s", "build / baseline time",
                  title=f"instruction editors, tiny models, {pairs} pairs, {TINY_STEPS} steps, batch {TINY_BATCH}, "
                        f"CPU, style {style}",
                  caption=f"load average before {load_before:.2f}, after {os.getloadavg()[0]:.2f}")
    for row in rows:
        table.add_row(*row)
    return table


def child_build(style: str, pairs: int, out: str) -> None:
    """The build whose memory is measured: the sample source holds 2,000 scenes by default, so give it ``pairs``."""
    from styleprefs.sources import sample

    class ManyScenes(sample.SampleSource):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{"num_scenes": pairs, **kwargs})

    sample.SampleSource = ManyScenes
    manifest = build_dataset(BuildConfig(style=style, source="sample", num_pairs=pairs), Path(out),
                             show_progress=False).manifest
    assert manifest["counts"]["kept"] == pairs, manifest["counts"]


def peak_memory(style: str, pairs: int) -> float:
    """Peak memory, in MiB, of a child process building ``pairs``: its resident set plus the pages each of its
    worker processes holds alone (USS; the rest they share with it), sampled every 50 ms."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([sys.executable, __file__, "--child", str(pairs), "--style", style, "--out", tmp + "/o"])
        root, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            peak = max(peak, _memory(root, psutil.Process.memory_info, "rss")
                       + sum(_memory(p, psutil.Process.memory_full_info, "uss") for p in _children(root)))
            time.sleep(0.05)
        if proc.returncode:
            raise SystemExit(f"the {pairs}-pair build failed (exit {proc.returncode})")
    return peak / 2**20


def _children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _memory(proc: psutil.Process, read, field: str) -> int:
    try:
        return getattr(read(proc), field)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--style", default="winter")
    parser.add_argument("--rss-pairs", type=int, nargs=2, default=(500, 4000), metavar=("SMALL", "LARGE"))
    parser.add_argument("--tiny-pairs", type=int, default=8)
    parser.add_argument("--sections", nargs="+", choices=("classic", "editors"), default=("classic", "editors"))
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_build(args.style, args.child, args.out)
    if "classic" in args.sections:
        classic_table(args)
    if "editors" in args.sections:
        Console().print(tiny_editors_table(args.style, args.tiny_pairs))


def classic_table(args: argparse.Namespace) -> None:
    load_before = os.getloadavg()
    base_s = sequential(args.style, args.pairs)
    totals: dict[str, float] = {}
    in_process_s = timed_build(args.style, args.pairs, 1, {})
    workers_s = timed_build(args.style, args.pairs, None, totals)
    small, large = (peak_memory(args.style, n) for n in args.rss_pairs)

    table = Table(title=f"classic build, {args.pairs} pairs at 512px, style {args.style}, {os.cpu_count()} cores",
                  caption=f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    for col in ("measure", "value", "goal"):
        table.add_column(col)
    table.add_row("baseline: read + edit in one process, pairs/s", f"{args.pairs / base_s:.1f}", "")
    table.add_row("build in process (--workers 1), pairs/s", f"{args.pairs / in_process_s:.1f}", "")
    table.add_row("build, --workers auto (" + str(auto_workers()) + "), pairs/s", f"{args.pairs / workers_s:.1f}", "")
    table.add_row("in-process build time / baseline", f"{in_process_s / base_s:.2f}", "")
    table.add_row("build time / baseline", f"{workers_s / base_s:.2f}", f"<= {GOAL_TIME_RATIO:.2f}")
    for name, what in (("_save_part", "saving parts"), ("_write_groups", "writing shards"), ("sha256_file", "sha256 of shards")):
        table.add_row(f"share of build (main process): {what}", f"{totals.get(name, 0) / workers_s:.1%}", "")
    table.add_row(f"peak memory (RSS + workers' USS), build of {args.rss_pairs[0]} pairs, MiB", f"{small:.0f}", "")
    table.add_row(f"peak memory (RSS + workers' USS), build of {args.rss_pairs[1]} pairs, MiB", f"{large:.0f}", "")
    table.add_row(f"peak memory {args.rss_pairs[1]} / {args.rss_pairs[0]} pairs", f"{large / small:.2f}",
                  f"<= {GOAL_RSS_RATIO}")
    Console().print(table)


if __name__ == "__main__":
    main()
