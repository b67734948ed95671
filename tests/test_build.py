"""`styleprefs build`: format, accounting, determinism, resume, existing-output rules."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
from PIL import Image

from styleprefs import build as build_module
from styleprefs.build import BuildConfig, build_dataset
from styleprefs.editors import load_editor
from styleprefs.errors import StyleprefsError
from styleprefs.images import as_jpeg, decode, encode_jpeg
from styleprefs.schema import DATASET_SCHEMA
from styleprefs.sources import open_source
from styleprefs.style import load_style


def _build(src: Path, out: Path, **kw) -> dict:
    opts = {"batch_size": kw.pop("batch_size", 4), "overwrite": kw.pop("overwrite", False), "show_progress": False}
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
    assert {(q["category"], q["backend"]) for q in quarantine} == {("sexual", "text-lists")}
    assert counts["quarantined"] == 2 and counts["kept"] == 18
    assert manifest["safety"] == {"backends": ["text-lists"], "quarantined_by_category": {"sexual": 2}}
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


def test_shards_identical_whatever_the_batch_size(pickapic_dir, tmp_path):
    _build(pickapic_dir, tmp_path / "a", batch_size=1)
    _build(pickapic_dir, tmp_path / "b", batch_size=7)
    assert _shard_bytes(tmp_path / "a") == _shard_bytes(tmp_path / "b")


def test_seed_changes_the_dataset(pickapic_dir, tmp_path):
    _build(pickapic_dir, tmp_path / "a", seed=0)
    _build(pickapic_dir, tmp_path / "b", seed=1)
    assert _shard_bytes(tmp_path / "a") != _shard_bytes(tmp_path / "b")


def test_resume_after_interrupt_equals_uninterrupted(pickapic_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(build_module, "PART_ROWS", 4)
    _build(pickapic_dir, tmp_path / "full")
    calls = {"n": 0}
    real = build_module._edit_batch

    def interrupted(job, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(job, batch)

    monkeypatch.setattr(build_module, "_edit_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _build(pickapic_dir, tmp_path / "resumed", batch_size=2)
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    done = sorted(p.name for p in (tmp_path / "resumed" / ".build").glob("part-*.json"))
    assert done == ["part-000000.json"]
    monkeypatch.setattr(build_module, "_edit_batch", real)
    _build(pickapic_dir, tmp_path / "resumed")
    assert _shard_bytes(tmp_path / "resumed") == _shard_bytes(tmp_path / "full")
    assert not (tmp_path / "resumed" / ".build").exists()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from styleprefs.cli.app import main; main()", "build", *args]


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


def _kill_after_first_part(cmd: list[str], out: Path) -> None:
    proc = subprocess.Popen([*cmd, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    first_part = out / ".build" / "part-000000.json"
    deadline = time.time() + 120
    while not first_part.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
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
