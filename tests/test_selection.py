"""`build --sample random` and the selection filters (--models, --has-label, --max-per-prompt) on local
multi-shard Parquet: what is read grows with the rows kept, not the source; seeds; filters; resume; errors."""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

from conftest import pickapic_rows
from styleprefs import build as build_module
from styleprefs.build import BuildConfig, build_dataset
from styleprefs.sources import PickapicSource, open_source
from styleprefs.sources.selection import SelectionConfig
from test_battery import assert_error, run

ROWS_PER_FILE, GROUP_ROWS = 20, 5
MODELS = ("dreamlike-art/dreamlike-photoreal-2.0", "stabilityai/stable-diffusion-xl-beta-v2-2-2")


def _noise_jpeg(seed: int) -> bytes:
    """A 128 px JPEG of noise (about 35 kB), so that images, not footers, make up a shard's bytes."""
    pixels = np.random.default_rng(seed).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_source(folder: Path, n_files: int) -> Path:
    """Pick-a-Pic-schema shards of ROWS_PER_FILE rows in row groups of GROUP_ROWS, with mixed generators."""
    folder.mkdir(parents=True)
    for f in range(n_files):
        rows = pickapic_rows(ROWS_PER_FILE, f * ROWS_PER_FILE)
        for i, row in enumerate(rows, f * ROWS_PER_FILE):
            row["model_0"], row["model_1"] = MODELS[i % 2], MODELS[(i // 2) % 2]
            if len(row["jpg_0"]) > 100:  # the fixture's corrupt rows stay corrupt
                row["jpg_0"], row["jpg_1"] = _noise_jpeg(2 * i), _noise_jpeg(2 * i + 1)
        pq.write_table(pa.Table.from_pylist(rows), folder / f"train-{f:05d}-of-{n_files:05d}.parquet",
                       row_group_size=GROUP_ROWS)
    return folder


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("selection")
    return {n: write_source(root / f"src-{n}", n) for n in (16, 32)}


class CountingFS(LocalFileSystem):
    """The local filesystem, counting the bytes read through it."""

    cachable = False

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def _open(self, path, mode="rb", **kwargs):
        handle = super()._open(path, mode, **kwargs)
        real_read = handle.read

        def read(*args, **kw):
            data = real_read(*args, **kw)
            self.bytes += len(data)
            return data

        handle.read = read
        return handle


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Everything the random plan reads: bytes through the filesystem, and each row group read by columns."""
    counted = {"fs": CountingFS(), "groups": []}
    monkeypatch.setattr(PickapicSource, "parquet_files", lambda self: (self.files, counted["fs"]))
    real = pq.ParquetFile.read_row_group

    def read_row_group(self, i, columns=None, **kwargs):
        chunks = [self.metadata.row_group(i).column(j) for j in range(self.metadata.num_columns)]
        size = sum(c.total_compressed_size for c in chunks if columns is None or c.path_in_schema in columns)
        counted["groups"].append((i, columns, size))
        return real(self, i, columns=columns, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", read_row_group)
    return counted


def _config(source: Path, **kwargs) -> BuildConfig:
    selection = SelectionConfig(**{k: kwargs.pop(k) for k in ("sample", "models", "has_label", "max_per_prompt")
                                   if k in kwargs})
    return BuildConfig(source=str(source), num_pairs=kwargs.pop("num_pairs", 20), shard_size=10, selection=selection,
                       **kwargs)


def _build(out: Path, cfg: BuildConfig) -> dict:
    return build_dataset(cfg, out, show_progress=False).manifest


def _sources(out: Path) -> list[str]:
    return pq.read_table(out / "data", columns=["source"]).column(0).to_pylist()


def test_reads_grow_with_the_rows_kept_not_with_the_source(sources, reads, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(build_module, "PART_ROWS", 8)  # a read-ahead of 16 rows, so the source dwarfs it
    lookahead = 2 * 8
    measured = {}
    for n_files, source in sources.items():
        reads["fs"].bytes, reads["groups"][:] = 0, []
        manifest = _build(tmp_path / f"out-{n_files}", _config(source, sample="random"))
        assert manifest["counts"]["kept"] == 20
        image_groups = [g for g in reads["groups"] if g[1] is None]
        assert len(image_groups) <= math.ceil((manifest["counts"]["read"] + lookahead) / GROUP_ROWS) + 1
        measured[n_files] = {"groups": len(image_groups), "total groups": n_files * ROWS_PER_FILE // GROUP_ROWS,
                             "group bytes": sum(g[2] for g in reads["groups"]), "bytes read": reads["fs"].bytes,
                             "source bytes": sum(f.stat().st_size for f in source.glob("*.parquet"))}
    with capsys.disabled():
        for n_files, m in measured.items():
            print(f"\n{n_files} shards: {m['groups']}/{m['total groups']} row groups read with images; row-group "
                  f"bytes {m['group bytes']}, all bytes read (footers too) {m['bytes read']} of {m['source bytes']} "
                  f"({m['bytes read'] / m['source bytes']:.3f})")
    small, large = measured.values()
    assert large["source bytes"] > 1.9 * small["source bytes"]
    assert abs(large["groups"] - small["groups"]) <= 2  # the same rows kept: about the same row groups read
    assert 0.5 < large["group bytes"] / small["group bytes"] < 2
    for m in (small, large):
        assert m["group bytes"] < 0.25 * m["source bytes"] and m["bytes read"] < 0.35 * m["source bytes"]


def test_same_seed_same_rows_other_seed_other_rows(sources, tmp_path):
    source = sources[16]
    first = _build(tmp_path / "a", _config(source, sample="random"))
    again = _build(tmp_path / "b", _config(source, sample="random"))
    other = _build(tmp_path / "c", _config(source, sample="random", seed=1))
    assert _sources(tmp_path / "a") == _sources(tmp_path / "b")
    assert first["selection"] == again["selection"] and first["config"]["selection"]["sample"] == "random"
    assert first["selection"]["rows_sha256"] != other["selection"]["rows_sha256"]
    assert set(_sources(tmp_path / "a")) != set(_sources(tmp_path / "c"))
    positions = sorted(int(s.split(":")[1].split("-")[0]) - 1000 for s in _sources(tmp_path / "a"))
    assert positions[-1] - positions[0] > 4 * ROWS_PER_FILE  # rows from groups spread over the shards
    for shard in first["shards"]:
        assert (tmp_path / "a" / shard["path"]).read_bytes() == (tmp_path / "b" / shard["path"]).read_bytes()


def _source_rows(source: Path) -> dict[str, dict]:
    return {f"pickapic:{p.key}": p for p in open_source(str(source))}


@pytest.mark.parametrize("sample", ["sequential", "random"])
def test_filters(sources, tmp_path, sample):
    source = sources[16]
    rows = _source_rows(source)
    manifest = _build(tmp_path / "out", _config(source, sample=sample, models="*DREAM*", has_label=True,
                                                max_per_prompt=1, num_pairs=15))
    kept = [rows[s] for s in _sources(tmp_path / "out")]
    assert len(kept) == 15
    assert all("dream" in p.model_0 and "dream" in p.model_1 for p in kept)
    assert all(p.label_0 in (0.0, 1.0) for p in kept)
    prompts = Counter(" ".join(p.caption.casefold().split()) for p in kept)
    assert max(prompts.values()) == 1
    skipped = manifest["selection"]["skipped"]
    assert skipped["model"] > 0 and skipped["no_label"] > 0
    assert manifest["counts"]["skipped_duplicate_captions"] == skipped.get("duplicate_caption", 0)
    counts = manifest["counts"]
    assert counts["read"] == counts["kept"] + counts["rejected"] + counts["quarantined"]
    assert "both models match `*DREAM*`" in (tmp_path / "out" / "README.md").read_text()


def test_regex_models_and_max_per_prompt(sources, tmp_path):
    source = sources[16]
    rows = _source_rows(source)
    _build(tmp_path / "out", _config(source, models="re:^stabilityai/", max_per_prompt=2, num_pairs=12))
    kept = [rows[s] for s in _sources(tmp_path / "out")]
    assert all(p.model_0 == p.model_1 == MODELS[1] for p in kept)
    assert max(Counter(p.caption for p in kept).values()) <= 2


def test_unique_captions_is_max_per_prompt_one(sources, tmp_path):
    source = sources[16]
    unique = _build(tmp_path / "u", replace(_config(source), unique_captions=True))
    one = _build(tmp_path / "m", _config(source, max_per_prompt=1))
    assert _sources(tmp_path / "u") == _sources(tmp_path / "m")
    assert unique["counts"] == one["counts"]
    assert "selection" not in unique and "selection" not in unique["config"]  # the default: recorded as before


def test_a_killed_random_build_resumes_to_the_same_dataset(sources, tmp_path, monkeypatch):
    monkeypatch.setattr(build_module, "PART_ROWS", 8)
    cfg = _config(sources[16], sample="random", has_label=True)
    _build(tmp_path / "whole", cfg)
    real_save = build_module._save_part
    saved: list[int] = []

    def killed_after_the_first_part(state, part):
        if saved:
            raise KeyboardInterrupt
        saved.append(part.index)
        real_save(state, part)

    monkeypatch.setattr(build_module, "_save_part", killed_after_the_first_part)
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path / "resumed", cfg)
    monkeypatch.setattr(build_module, "_save_part", real_save)
    resumed = _build(tmp_path / "resumed", cfg)
    whole = json.loads((tmp_path / "whole" / "manifest.json").read_text())
    assert resumed["selection"] == whole["selection"]
    for shard in whole["shards"]:
        assert (tmp_path / "resumed" / shard["path"]).read_bytes() == (tmp_path / "whole" / shard["path"]).read_bytes()


def test_a_changed_source_is_not_resumed_with_the_old_plan(sources, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for f in sorted(sources[16].glob("*.parquet"))[:4]:
        (source / f.name).write_bytes(f.read_bytes())
    _build(tmp_path / "out", _config(source, sample="random", num_pairs=5))
    (source / "train-00000-of-00016.parquet").unlink()
    with pytest.raises(Exception, match="differs in selection"):
        _build(tmp_path / "out", _config(source, sample="random", num_pairs=5))


@pytest.mark.parametrize("args,expected", [
    (["--source", "sample", "--sample", "random"], "--sample random reads Parquet row groups"),
    (["--source", "{wds}", "--sample", "random"], "webdataset tars have none"),
    (["--source", "{src}", "--sample", "shuffled"], "--sample must be sequential or random"),
    (["--source", "{src}", "--max-per-prompt", "0"], "--max-per-prompt must be at least 1"),
    (["--source", "{src}", "--max-per-prompt", "2", "--unique-captions"], "give one of them"),
    (["--source", "{src}", "--models", "re:(dream"], "is not a regular expression"),
])
def test_bad_selection_is_one_line(sources, wds_dir, tmp_path, args, expected, capsys):
    args = [a.format(src=sources[16], wds=wds_dir) for a in args]
    assert_error(run(["build", "--out", str(tmp_path / "out"), "--num-pairs", "2", *args], capsys), expected)
    assert not (tmp_path / "out").exists()


def test_random_hub_source_reads_through_the_hub_filesystem(sources, tmp_path, monkeypatch):
    """Offline stand-in for HfFileSystem: the Hub path lists datasets/<repo>/**/<split>-*.parquet and reads
    footers and row groups through it."""
    import huggingface_hub

    local = sources[16]

    class FakeHub(CountingFS):
        def glob(self, pattern, **kwargs):
            assert pattern == "datasets/owner/pickapic/**/train-*.parquet"
            return [str(p) for p in sorted(local.glob("train-*.parquet"))]

    monkeypatch.setattr(huggingface_hub, "HfFileSystem", FakeHub)
    manifest = _build(tmp_path / "hub", _config("owner/pickapic", sample="random", num_pairs=5))
    local_manifest = _build(tmp_path / "local", _config(local, sample="random", num_pairs=5))
    assert manifest["selection"] == local_manifest["selection"]
    assert _sources(tmp_path / "hub") == _sources(tmp_path / "local")
