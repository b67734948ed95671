"""`styleprefs build`: format, accounting, determinism, resume, existing-output rules."""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import datasets
import psutil
import pyarrow.parquet as pq
import pytest
from PIL import Image

from styleprefs import build as build_module
from styleprefs.build import BuildConfig, build_dataset
from styleprefs.editors import load_editor
from styleprefs.errors import StyleprefsError
from styleprefs.images import as_jpeg, decode, encode_jpeg
from styleprefs.safety.learned import PromptModel
from styleprefs.schema import DATASET_SCHEMA
from styleprefs.sources import open_source
from styleprefs.style import load_style


def _build(src: Path, out: Path, **kw) -> dict:
    opts = {"batch_size": kw.pop("batch_size", 4), "overwrite": kw.pop("overwrite", False), "show_progress": False,
            "workers": kw.pop("workers", None)}
    cfg = BuildConfig(**{"source": str(src), "num_pairs": 15, "shard_size": 6, **kw})
    return build_dataset(cfg, out, **opts).manifest


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "data").glob("*.parquet"))}


def test_output_is_pickapic_format(pickapic_dir, tmp_path):
    out = tmp_path / "out"
    manifest = _build(pickapic_dir, out)
    assert [s["rows"] for s in manifest["shards"]] == [6, 6, 3]
    assert [s["path"] for s in manifest["shards"]] == [f"data/train-0000{i}-of-00003.parquet" for i in range(3)]
    for shard in (out / "data").glob("*.parquet"):
        assert pq.read_schema(shard).remove_metadata() == DATASET_SCHEMA
    ds = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
    assert len(ds) == 15
    assert ds.features["jpg_0"] == datasets.Value("binary")
    assert ds.features["label_0"] == datasets.Value("float64")


def test_a_pickapic_reader_finds_the_edit_preferred_on_every_row(pickapic_dir, tmp_path):
    out = tmp_path / "out"
    _build(pickapic_dir, out, style="sketch")
    originals = {f"pickapic:{p.key}": p for p in open_source(str(pickapic_dir))}
    editor = load_editor("classic", load_style("sketch"))
    table = pq.read_table(out / "data")
    slots_used = set()
    for row in table.to_pylist():
        # What Diffusion-DPO's loader does: label_0 picks the preferred image, PIL opens the bytes.
        preferred, rejected = (row["jpg_0"], row["jpg_1"]) if row["label_0"] == 1.0 else (row["jpg_1"], row["jpg_0"])
        assert {row["label_0"], row["label_1"]} == {0.0, 1.0}
        Image.open(io.BytesIO(preferred)).verify()
        source = originals[row["source"]]
        edited = int(row["source_edited"][-1])
        original = (source.jpg_0, source.jpg_1)[edited]
        assert rejected == as_jpeg(original, decode(original))  # PNG originals are re-encoded as JPEG
        expected = editor.edit([decode(original)], [row["caption"]], [row["seed"]])[0]
        assert preferred == encode_jpeg(expected)
        slot = 0 if row["label_0"] == 1.0 else 1
        assert row["best_image_uid"] == row[f"image_{slot}_uid"]
        assert row[f"model_{slot}"] == "styleprefs/classic"
        assert row[f"model_{1 - slot}"] in ("SDXL-beta", "dreamlike")
        assert row["source_preferred"] == source.preferred
        slots_used.add(slot)
    assert slots_used == {0, 1}


def test_nothing_read_is_dropped(pickapic_dir, tmp_path):
    out = tmp_path / "out"
    manifest = _build(pickapic_dir, out, num_pairs=100)  # more than the source holds
    counts = manifest["counts"]
    assert counts["read"] == 24
    assert counts["kept"] + counts["rejected"] + counts["quarantined"] == counts["read"]
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    reasons = sorted(r["reason"].split(" (")[0] for r in rejects)
    # one blank caption (row 5) and three truncated images (rows 3, 12, 21; which side is read varies)
    assert reasons[0] == "empty caption" and len(reasons) == counts["rejected"] == 4
    assert all(r.endswith("cannot be decoded") for r in reasons[1:])
    quarantine = pq.read_table(out / "quarantine.parquet").to_pylist()
    assert [q["source"] for q in quarantine] == ["pickapic:1008-uid-8-0-uid-8-1", "pickapic:1017-uid-17-0-uid-17-1"]
    model = f"text-model:{PromptModel().name}"  # the lists and the caption model both flag "n.u.d.e woman"
    assert {(q["category"], q["backend"]) for q in quarantine} == {("sexual", f"text-lists+{model}")}
    assert counts["quarantined"] == 2 and counts["kept"] == 18
    assert manifest["safety"] == {"backends": ["text-lists", model], "quarantined_by_category": {"sexual": 2}}
    assert "tie" in pq.read_table(out / "data", columns=["source_preferred"]).column(0).to_pylist()


def test_no_safety_keeps_flagged_captions(pickapic_dir, tmp_path):
    manifest = _build(pickapic_dir, tmp_path / "out", num_pairs=100, safety=False)
    assert manifest["counts"]["quarantined"] == 0 and "safety" not in manifest
    captions = pq.read_table(tmp_path / "out" / "data", columns=["caption"]).column(0).to_pylist()
    assert any(c.startswith("n.u.d.e") for c in captions)
    assert "No safety filter was run" in (tmp_path / "out" / "README.md").read_text()


def test_webdataset_source(wds_dir, tmp_path):
    manifest = _build(wds_dir, tmp_path / "out", num_pairs=5)
    assert manifest["counts"]["kept"] == 5
    rows = pq.read_table(tmp_path / "out" / "data").to_pylist()
    assert all(r["source"].startswith("pickapic:00000.tar/") for r in rows)


def test_unique_captions_skips_and_counts(tmp_path):
    from conftest import write_pickapic_parquet

    src = write_pickapic_parquet(tmp_path / "src", n_files=2, rows_per_file=4)
    # make file 2 repeat file 1's captions
    t0 = pq.read_table(src / "train-00000-of-00002.parquet")
    t1 = pq.read_table(src / "train-00001-of-00002.parquet").set_column(0, "caption", t0.column("caption"))
    pq.write_table(t1, src / "train-00001-of-00002.parquet")
    manifest = _build(src, tmp_path / "out", num_pairs=8, unique_captions=True)
    assert manifest["counts"]["skipped_duplicate_captions"] == 4
    assert manifest["counts"]["read"] == 4


def _shard_hashes(out: Path) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in _shard_bytes(out).items()}


@pytest.mark.parametrize("source", ["pickapic", "sample"])
def test_shards_identical_whatever_the_batch_size_and_workers(source, pickapic_dir, tmp_path, monkeypatch):
    """In process (batches through the thread pool) and in 2 or 3 worker processes (rows drawn, decoded, edited
    and encoded there): the same shard bytes. The sample source's rows are drawn in the workers."""
    monkeypatch.setattr(build_module, "PART_ROWS", 5)  # several parts
    src, n = (pickapic_dir, 15) if source == "pickapic" else ("sample", 6)
    hashes = []
    for name, batch_size, workers in (("a", 1, 1), ("b", 7, 2), ("c", 3, 3)):
        manifest = _build(src, tmp_path / name, num_pairs=n, batch_size=batch_size, workers=workers)
        hashes.append(_shard_hashes(tmp_path / name))
        assert manifest["counts"]["kept"] == n
    assert hashes[0] == hashes[1] == hashes[2]
    assert len(hashes[0]) == -(-n // 6)


def test_seed_changes_the_dataset(pickapic_dir, tmp_path):
    _build(pickapic_dir, tmp_path / "a", seed=0)
    _build(pickapic_dir, tmp_path / "b", seed=1)
    assert _shard_bytes(tmp_path / "a") != _shard_bytes(tmp_path / "b")


def test_shards_are_streamed_a_row_group_at_a_time_into_the_bytes_of_whole_shard_writes(pickapic_dir, tmp_path,
                                                                                          monkeypatch):
    """write_shards re-cuts parts of any size into row groups, never holding a shard: each file is still the
    bytes write_parquet gives the whole shard."""
    from styleprefs import io as io_module
    from styleprefs import shards as shards_module

    _build(pickapic_dir, tmp_path / "out")
    table = pq.read_table(tmp_path / "out" / "data", schema=DATASET_SCHEMA)  # 15 rows
    for module in (io_module, shards_module):
        monkeypatch.setattr(module, "ROW_GROUP_ROWS", 4)
    parts = iter([table.slice(0, 3), table.slice(3, 5), table.slice(8, 7)])
    shards = shards_module.write_shards(parts, 15, tmp_path / "streamed", shard_size=6)
    assert [s["rows"] for s in shards] == [6, 6, 3]
    for i, shard in enumerate(shards):
        io_module.write_parquet(table.slice(6 * i, 6), tmp_path / "whole.parquet")
        assert (tmp_path / "streamed" / Path(shard["path"]).name).read_bytes() == (tmp_path / "whole.parquet").read_bytes()
        assert pq.ParquetFile(tmp_path / "whole.parquet").metadata.num_row_groups == (2 if i < 2 else 1)
    # Every table is pulled, even empty ones after the last row (callers compute things as they are pulled),
    # and more rows than announced is an error, not a silent cut.
    pulled = []

    def tables():
        for part in (table.slice(0, 15), table.slice(0, 0)):
            yield part
            pulled.append(part.num_rows)

    shards_module.write_shards(tables(), 15, tmp_path / "drained", shard_size=6)
    assert pulled == [15, 0]
    with pytest.raises(ValueError, match="more rows than announced"):
        shards_module.write_shards(iter([table]), 14, tmp_path / "over", shard_size=6)


def _interrupt_in_the_second_part(monkeypatch, workers: int) -> Callable[[], None]:
    """Ctrl-C in the main process during the second part of 4 rows: at its 2nd batch of 2 (in process), or once
    6 rows have come back from the workers; returns the undo."""
    calls = {"n": 0}

    def count() -> None:
        calls["n"] += 1
        if calls["n"] == (3 if workers <= 1 else 6):
            raise KeyboardInterrupt

    real_edit, real_pool = build_module._edit_batch, build_module.WorkerPool

    def interrupted(job, batch):
        count()
        return real_edit(job, batch)

    class InterruptedPool(real_pool):
        def map(self, items):
            for result in super().map(items):
                count()
                yield result

    if workers <= 1:
        monkeypatch.setattr(build_module, "_edit_batch", interrupted)
    else:
        monkeypatch.setattr(build_module, "WorkerPool", InterruptedPool)
    return lambda: (setattr(build_module, "_edit_batch", real_edit), setattr(build_module, "WorkerPool", real_pool))


@pytest.mark.parametrize("workers", [1, 2])
def test_resume_after_interrupt_equals_uninterrupted(pickapic_dir, tmp_path, monkeypatch, workers):
    monkeypatch.setattr(build_module, "PART_ROWS", 4)
    _build(pickapic_dir, tmp_path / "full")
    undo = _interrupt_in_the_second_part(monkeypatch, workers)
    with pytest.raises(KeyboardInterrupt):
        _build(pickapic_dir, tmp_path / "resumed", batch_size=2, workers=workers)
    assert multiprocessing.active_children() == []  # the workers have exited
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    done = sorted(p.name for p in (tmp_path / "resumed" / ".build").glob("part-*.json"))
    assert done == ["part-000000.json"]
    undo()
    _build(pickapic_dir, tmp_path / "resumed")
    assert _shard_bytes(tmp_path / "resumed") == _shard_bytes(tmp_path / "full")
    assert not (tmp_path / "resumed" / ".build").exists()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from styleprefs.cli.app import main; main()", "build", *args]


def _terminal_cli(*args: str) -> list[str]:
    """``_cli`` with Ctrl-C handled as in a terminal's foreground job, even when the test process (a pytest-xdist
    worker, after some other test) ignores SIGINT: a child inherits an ignored SIGINT, and Python keeps it ignored."""
    return [sys.executable, "-c", "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from styleprefs.cli.app import main; main()", "build", *args]


def _torchrun(n: int, *args: str) -> list[str]:
    torchrun = str(Path(sys.executable).parent / "torchrun")
    return [torchrun, "--standalone", f"--nproc_per_node={n}", "--no-python", str(Path(sys.executable).parent / "styleprefs"), "build", *args]


def _dataset_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != "README.md"}


@pytest.fixture(scope="module")
def big_source(tmp_path_factory) -> Path:
    from conftest import write_pickapic_parquet

    return write_pickapic_parquet(tmp_path_factory.mktemp("big") / "src", n_files=4, rows_per_file=200)  # 800 rows


BIG_ARGS = ("--style", "sketch", "--num-pairs", "300", "--shard-size", "64")  # three parts of 128 rows


def _big_config(source: Path) -> BuildConfig:
    return BuildConfig(style="sketch", source=str(source), num_pairs=300, shard_size=64)


@pytest.fixture(scope="module")
def big_full(big_source, tmp_path_factory) -> Path:
    """BIG_ARGS built in one go, in process."""
    out = tmp_path_factory.mktemp("big") / "full"
    build_dataset(_big_config(big_source), out, show_progress=False, workers=0)
    return out


def _start_until_first_part(cmd: list[str], out: Path, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    """The build started in a session of its own, once its first part is on disk."""
    proc = subprocess.Popen([*cmd, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    first_part = out / ".build" / "part-000000.json"
    deadline = time.time() + 120
    while not first_part.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    return proc


def _kill_after_first_part(cmd: list[str], out: Path) -> None:
    proc = _start_until_first_part(cmd, out)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "build finished before it could be killed"


@pytest.mark.parametrize("resume_with", ["one process", "two processes"])
def test_resume_after_kill_9_equals_uninterrupted(big_source, tmp_path, resume_with):
    """A real SIGKILL once the first part is on disk, then the same command again (or with torchrun)."""
    args = ("--source", str(big_source), *BIG_ARGS)
    _kill_after_first_part(_cli(*args), tmp_path / "killed")
    resume = _cli(*args) if resume_with == "one process" else _torchrun(2, *args)
    subprocess.run([*resume, "--out", str(tmp_path / "killed")], check=True, capture_output=True)
    subprocess.run([*_cli(*args), "--out", str(tmp_path / "full"), "--batch-size", "3"], check=True, capture_output=True)
    assert _dataset_files(tmp_path / "killed") == _dataset_files(tmp_path / "full")
    manifest = json.loads((tmp_path / "killed" / "manifest.json").read_text())
    assert manifest["counts"]["kept"] == 300


def _alive_in_session(sid: int) -> list[int]:
    def in_session(pid: int) -> bool:
        try:
            return os.getsid(pid) == sid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except (ProcessLookupError, psutil.NoSuchProcess):
            return False

    return [pid for pid in psutil.pids() if in_session(pid)]


@pytest.mark.parametrize("how", ["ctrl-c", "kill -9 of the main process"])
def test_stopping_a_build_stops_its_workers(big_source, big_full, tmp_path, how):
    """Ctrl-C (SIGINT to the whole foreground group, as a terminal sends it): the resume hint alone, no worker
    traceback, every worker gone. kill -9 of the main process alone: its workers die too. Either way the rerun
    (in process) equals an uninterrupted build."""
    args = ("--source", str(big_source), *BIG_ARGS)
    proc = _start_until_first_part(_terminal_cli(*args, "--workers", "2"), tmp_path / "stopped", stderr=subprocess.PIPE)
    assert len(psutil.Process(proc.pid).children()) == 2
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 130
        hint = proc.stderr.read().decode().strip()
        assert hint.startswith("interrupted; to resume, run: styleprefs build ") and str(tmp_path / "stopped") in hint
    else:
        proc.kill()
        assert proc.wait(60) == -signal.SIGKILL
    deadline = time.time() + 30
    while _alive_in_session(proc.pid) and time.time() < deadline:
        time.sleep(0.05)
    assert _alive_in_session(proc.pid) == []
    assert not (tmp_path / "stopped" / "manifest.json").exists()
    build_dataset(_big_config(big_source), tmp_path / "stopped", show_progress=False, workers=0)
    assert _dataset_files(tmp_path / "stopped") == _dataset_files(big_full)


def test_two_process_build_equals_one_process_build(big_source, tmp_path):
    args = ("--source", str(big_source), *BIG_ARGS)
    subprocess.run([*_torchrun(2, *args), "--out", str(tmp_path / "two")], check=True, capture_output=True)
    subprocess.run([*_cli(*args), "--out", str(tmp_path / "one")], check=True, capture_output=True)
    assert _dataset_files(tmp_path / "two") == _dataset_files(tmp_path / "one")
    card = (tmp_path / "two" / "README.md").read_text().replace("path/to/two", "path/to/one")
    assert card == (tmp_path / "one" / "README.md").read_text()


def test_rerun_is_a_no_op_and_other_arguments_are_refused(pickapic_dir, tmp_path):
    out = tmp_path / "out"
    _build(pickapic_dir, out)
    before = _shard_bytes(out)
    result = build_dataset(BuildConfig(source=str(pickapic_dir), num_pairs=15, shard_size=6), out, show_progress=False)
    assert result.status == "complete"
    with pytest.raises(StyleprefsError, match="other arguments.*build.num_pairs.*--overwrite"):
        _build(pickapic_dir, out, num_pairs=10)
    assert _shard_bytes(out) == before
    manifest = _build(pickapic_dir, out, num_pairs=10, overwrite=True)
    assert manifest["counts"]["kept"] == 10
    assert len(_shard_bytes(out)) == 2


def test_bad_sources_name_the_problem(tmp_path):
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(StyleprefsError, match="cannot read Parquet file .*junk.parquet"):
        open_source(str(tmp_path / "junk.parquet"))
    pq.write_table(datasets.Dataset.from_dict({"caption": ["a"], "jpg_0": [b"x"]}).data.table, tmp_path / "w.parquet")
    with pytest.raises(StyleprefsError, match="missing column\\(s\\) jpg_1, label_0, label_1"):
        open_source(str(tmp_path / "w.parquet"))
    with pytest.raises(StyleprefsError, match="does not exist"):
        open_source(str(tmp_path / "nowhere"))
    with pytest.raises(StyleprefsError, match="no .parquet or .tar files for split 'test'"):
        open_source(str(tmp_path), split="test")
