"""A battery of bad inputs, damaged files, crashes and concurrent writers, against every command.

Every failure must be one ``error:`` line on stderr with exit code 2 and no traceback, and must lose
nothing already written. Crashes are injected at the N-th rename/unlink/rmtree of a build or filter,
for every N, with every later call failing too (a dead process cleans nothing up); the rerun must
give a folder equal to an uninterrupted run's.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import pickapic_rows, write_pickapic_parquet
from styleprefs.build import BuildConfig, build_dataset
from styleprefs.cli.app import main
from styleprefs.errors import StyleprefsError
from styleprefs.filter_unsafe import SafetyOptions, filter_unsafe
from styleprefs.inspect import inspect_dataset, read_finished_manifest
from styleprefs.lock import folder_lock
from styleprefs.relabel import RelabelOptions, relabel

NUM_PAIRS, SHARD_SIZE = 7, 3
RELABEL_SCORER = "clip=tiny-clip"


# ---------------------------------------------------------------------------------------------
# helpers and fixtures


def run(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def assert_error(result: tuple[int, str, str], expected: str = "") -> str:
    code, out, err = result
    lines = err.strip().splitlines()
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in out + err
    assert expected.lower() in lines[0].lower(), lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes (the card's loading example names the folder it was written in: masked)."""
    def content(path: Path) -> bytes:
        data = path.read_bytes()
        return re.sub(rb"path/to/[\w.-]+", b"path/to/FOLDER", data) if path.name == "README.md" else data

    return {str(p.relative_to(folder)): content(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_finished_and_sound(dataset: Path) -> None:
    """A folder that says it is a finished dataset really is one: shards match, card present, no temp files."""
    manifest = read_finished_manifest(dataset)
    assert inspect_dataset(dataset).problems == []
    assert (dataset / "README.md").is_file()
    assert not list(dataset.rglob("*.tmp"))
    assert manifest["counts"]["kept"] == sum(s["rows"] for s in manifest["shards"])


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("battery")


@pytest.fixture(scope="module")
def source(root: Path) -> Path:
    return write_pickapic_parquet(root / "src", n_files=1, rows_per_file=10)


@pytest.fixture(scope="module")
def config(source: Path) -> BuildConfig:
    return BuildConfig(source=str(source), num_pairs=NUM_PAIRS, shard_size=SHARD_SIZE)


@pytest.fixture(scope="module")
def built(root: Path, config: BuildConfig) -> Path:
    """A finished dataset; tests copy it before changing anything."""
    build_dataset(config, root / "built", show_progress=False)
    return root / "built"


@pytest.fixture
def dataset(built: Path, tmp_path: Path) -> Path:
    shutil.copytree(built, tmp_path / "ds")
    return tmp_path / "ds"


@pytest.fixture(scope="module")
def blocklist(root: Path) -> Path:
    path = root / "block.txt"
    path.write_text("ramen\n")
    return path


def build_args(source: Path, out: Path, *extra: str) -> list[str]:
    return ["build", "--source", str(source), "--out", str(out), "--num-pairs", str(NUM_PAIRS),
            "--shard-size", str(SHARD_SIZE), *extra]


# ---------------------------------------------------------------------------------------------
# usage errors: typer's own exceptions become one line


USAGE = {
    "no --out": (["build"], "missing option '--out'"),
    "unknown option": (["build", "--out", "x", "--bogus"], "no such option: --bogus"),
    "not an integer": (["build", "--out", "x", "--num-pairs", "many"], "--num-pairs"),
    "option without value": (["build", "--out"], "--out"),
    "unknown command": (["frobnicate"], "no such command"),
    "inspect without dataset": (["inspect"], "missing argument"),
    "filter without dataset": (["filter-unsafe"], "missing argument"),
    "push without repo": (["push", "somewhere"], "missing argument"),
    "cache bad resolution": (["cache", "d", "--resolution", "big"], "--resolution"),
    "eval without subcommand args": (["eval", "report"], "missing argument"),
    "eval generate without model": (["eval", "generate", "--prompts", "p", "--out", "o"], "--model"),
    "train unknown option": (["train", "--bogus"], "no such option"),
    "extra argument": (["inspect", "a", "b"], "unexpected extra argument"),
    "style experiment without seeds": (["experiment", "style-alignment", "--seeds", "0"], "--seeds"),
    "online experiment without seeds": (["experiment", "online-improvement", "--seeds", "0"], "--seeds"),
}


@pytest.mark.parametrize("case", sorted(USAGE))
def test_usage_error(case, capsys):
    args, expected = USAGE[case]
    line = assert_error(run(args, capsys), expected)
    assert "--help" in line


# ---------------------------------------------------------------------------------------------
# build: bad styles


def _style(tmp_path: Path, body: str | bytes) -> str:
    path = tmp_path / "style.yaml"
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    return str(path)


BASE_STYLE = ("name: mine\nclip_text: '{{caption}}, snowy'\ninstruct_pix2pix: {{instruction: snow{ip2p}}}\n"
              "prompt_diffusion: {{prompt: '{{caption}} in snow'}}\nclassic: {{filter: {filter}{params}}}\n")


def _base(filter: str = "winter", params: str = "", ip2p: str = "") -> str:
    return BASE_STYLE.format(filter=filter, params=f", params: {{{params}}}" if params else "", ip2p=ip2p)


BAD_STYLES = {
    "NaN parameter": (_base(params="haze: .nan"), "'haze' must be between 0 and 1"),
    "infinite parameter": (_base(params="snowflakes: .inf"), "'snowflakes' must be between"),
    "huge parameter": (_base("van_gogh", "swirl_count: 100000000000"), "'swirl_count' must be between 0 and 100"),
    "string parameter": (_base(params="haze: lots"), "'haze' must be a number"),
    "boolean parameter": (_base(params="haze: true"), "'haze' must be a number"),
    "fractional integer": (_base("van_gogh", "levels: 3.5"), "whole number"),
    "unknown parameter": (_base(params="wind: 1"), "unknown params"),
    "unknown filter": (_base("cubism"), "unknown classic filter"),
    "huge step count": (_base(ip2p=", num_inference_steps: 1000000000"), "num_inference_steps"),
    "NaN guidance": (_base(ip2p=", guidance_scale: .nan"), "guidance_scale"),
    "steps as text": (_base(ip2p=", num_inference_steps: many"), "must be of type int"),
    "template with another field": (_base().replace("snowy", "{season}"), "no field but {caption}"),
    "template without caption": (_base().replace("'{caption}, snowy'", "snowy"), "must contain {caption}"),
    "not UTF-8": (b"name: \xff\xfe\n", "cannot be read"),
    "YAML syntax": ("name: [unclosed\n", "cannot be read"),
    "a list, not a mapping": ("- a\n- b\n", "must be a YAML mapping"),
    "too long a text": (_base().replace("snowy", "x" * 5000), "longer than"),
}


@pytest.mark.parametrize("case", sorted(BAD_STYLES))
def test_bad_style(case, source, tmp_path, capsys):
    body, expected = BAD_STYLES[case]
    out = tmp_path / "out"
    assert_error(run(build_args(source, out, "--style", _style(tmp_path, body)), capsys), expected)
    assert not out.exists()  # refused before anything is written


def test_huge_style_file_is_refused(source, tmp_path, capsys):
    path = tmp_path / "huge.yaml"
    path.write_text(_base() + "#" * (2 << 20))
    assert_error(run(build_args(source, tmp_path / "out", "--style", str(path)), capsys), "larger than")


def test_good_style_file_builds(source, tmp_path, capsys):
    code, _, err = run(build_args(source, tmp_path / "out", "--style", _style(tmp_path, _base(params="haze: 0.5"))), capsys)
    assert code == 0, err
    assert_finished_and_sound(tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# build: bad options and sources


BAD_OPTIONS = {
    "zero pairs": (["--num-pairs", "0"], "at least 1"),
    "zero shard size": (["--shard-size", "0"], "at least 1"),
    "negative seed": (["--seed", "-1"], "--seed must be between"),
    "NaN gate threshold": (["--min-direction", "nan"], "--min-direction"),
    "gate threshold above 1": (["--min-image", "2"], "--min-image"),
    "zero editor steps": (["--editor", "instruct-pix2pix", "--editor-steps", "0"], "--editor-steps"),
    "unknown editor": (["--editor", "magic"], "unknown editor"),
    "unknown style": (["--style", "cubism"], "unknown style"),
    "negative workers": (["--workers", "-1"], "--workers must be auto or a number"),
}
# The instruction editors' options (styleprefs.editors.instruction), refused before any model loads.
BAD_OPTIONS.update({
    "offload without CUDA": (["--editor", "kontext", "--editor-model", "tiny", "--offload", "model"],
                             "needs a CUDA device"),
    "unknown offload": (["--editor", "kontext", "--editor-model", "tiny", "--offload", "disk"], "unknown --offload"),
    "tiny max area": (["--editor", "qwen-image-edit", "--editor-model", "tiny", "--max-area", "100"],
                      "--max-area must be at least"),
    "max area for another editor": (["--editor", "instruct-pix2pix", "--editor-model", "tiny", "--max-area", "4096"],
                                    "has no option(s) max_area"),
})


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_bad_build_option(case, source, tmp_path, capsys):
    extra, expected = BAD_OPTIONS[case]
    assert_error(run(build_args(source, tmp_path / "out", *extra), capsys), expected)


def _column_source(tmp_path: Path, column: str, values: list) -> Path:
    rows = pickapic_rows(3)
    table = pa.Table.from_pylist(rows)
    table = table.set_column(table.schema.get_field_index(column), column, pa.array(values))
    pq.write_table(table, tmp_path / "bad.parquet")
    return tmp_path / "bad.parquet"


BAD_COLUMNS = {
    "int caption": ("caption", [1, 2, 3], "column 'caption' is int64"),
    "string ranking_id": ("ranking_id", ["a", "b", "c"], "column 'ranking_id' is string"),
    "paths instead of image bytes": ("jpg_0", ["a.jpg", "b.jpg", "c.jpg"], "column 'jpg_0' is string"),
    "string labels": ("label_0", ["1", "0", "1"], "column 'label_0' is string"),
    "float user_id": ("user_id", [1.5, 2.5, 3.5], "column 'user_id' is double"),
    "string created_at": ("created_at", ["2023", "2023", "2023"], "column 'created_at' is string"),
}


@pytest.mark.parametrize("case", sorted(BAD_COLUMNS))
def test_source_column_types(case, tmp_path, capsys):
    column, values, expected = BAD_COLUMNS[case]
    src = _column_source(tmp_path, column, values)
    assert_error(run(build_args(src, tmp_path / "out"), capsys), expected)
    assert not (tmp_path / "out").exists()


def test_image_struct_column_is_accepted(tmp_path, capsys):
    """``datasets``' Image feature stores {bytes, path}: that is image bytes, not a path."""
    rows = [{**r, "jpg_0": {"bytes": r["jpg_0"], "path": None}, "jpg_1": {"bytes": r["jpg_1"], "path": None}}
            for r in pickapic_rows(3)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "struct.parquet")
    code, _, err = run(build_args(tmp_path / "struct.parquet", tmp_path / "out"), capsys)
    assert code == 0, err
    assert_finished_and_sound(tmp_path / "out")


def test_missing_and_junk_sources(tmp_path, capsys):
    assert_error(run(build_args(tmp_path / "nowhere", tmp_path / "o1"), capsys), "does not exist")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    assert_error(run(build_args(tmp_path / "junk.parquet", tmp_path / "o2"), capsys), "cannot read Parquet file")


# ---------------------------------------------------------------------------------------------
# build: --out guards and damaged outputs


def test_out_around_its_own_source_is_refused(dataset, capsys):
    """The issue's data loss: `build --source D/data --out D --overwrite` deleted its input."""
    before = snapshot(dataset)
    assert_error(run(build_args(dataset / "data", dataset, "--overwrite"), capsys), "overlaps --source")
    assert snapshot(dataset) == before


def test_out_inside_its_source_is_refused(source, capsys):
    before = snapshot(source)
    assert_error(run(build_args(source, source / "sub"), capsys), "overlaps --source")
    assert snapshot(source) == before


def test_out_equal_to_a_source_file_is_refused(source, capsys):
    file = next(source.glob("*.parquet"))
    assert_error(run(build_args(file, file), capsys), "overlaps --source")


def test_out_is_a_file(source, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert_error(run(build_args(source, tmp_path / "f" / "sub"), capsys), "not writable")


def test_other_arguments_need_overwrite(dataset, source, capsys):
    before = snapshot(dataset)
    assert_error(run(build_args(source, dataset, "--seed", "5"), capsys), "--overwrite")
    assert snapshot(dataset) == before


def test_overwrite_moves_the_review_log_aside(dataset, source, capsys):
    log = b'{"pair": "a:b", "action": "drop"}\n'
    (dataset / "review.jsonl").write_bytes(log)
    code, _, err = run(build_args(source, dataset, "--seed", "5", "--overwrite"), capsys)
    assert code == 0, err
    assert not (dataset / "review.jsonl").exists()  # its pairs name the old dataset: never applied to the new one
    assert (dataset / "review.jsonl.before-overwrite").read_bytes() == log


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00", b"[1, 2]"])
def test_build_over_a_corrupt_manifest(dataset, source, content, capsys):
    (dataset / "manifest.json").write_bytes(content)
    before = snapshot(dataset)
    assert_error(run(build_args(source, dataset), capsys), "manifest.json cannot be read")
    assert snapshot(dataset) == before


def test_build_over_a_corrupt_state_file(dataset, source, capsys):
    (dataset / ".build").mkdir()
    (dataset / ".build" / "state.json").write_text("{trunc")
    assert_error(run(build_args(source, dataset), capsys), "state.json cannot be read")
    assert (dataset / "data").is_dir()


def test_data_folder_that_is_not_a_build(source, tmp_path, capsys):
    (tmp_path / "out" / "data").mkdir(parents=True)
    (tmp_path / "out" / "data" / "mine.txt").write_text("keep me")
    assert_error(run(build_args(source, tmp_path / "out"), capsys), "not a styleprefs build")
    assert (tmp_path / "out" / "data" / "mine.txt").read_text() == "keep me"


# ---------------------------------------------------------------------------------------------
# inspect and push on damaged datasets


def _truncate_first_shard(dataset: Path) -> None:
    shard = sorted((dataset / "data").glob("*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:100])


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "no manifest": (lambda d: (d / "manifest.json").unlink(), "no manifest.json"),
    "manifest not JSON": (lambda d: (d / "manifest.json").write_text("{oops"), "manifest.json cannot be read"),
    "manifest not UTF-8": (lambda d: (d / "manifest.json").write_bytes(b"\xff\xfe"), "manifest.json cannot be read"),
    "manifest a list": (lambda d: (d / "manifest.json").write_text("[]"), "JSON list"),
    "manifest without shards": (lambda d: (d / "manifest.json").write_text('{"config": {}}'), "not a styleprefs manifest"),
    "unfinished build": (lambda d: (d / ".build").mkdir(), "not finished"),
    "unfinished filter": (lambda d: (d / ".filter-old").mkdir(), "not finished"),
}


@pytest.mark.parametrize("command", ["inspect", "push", "filter-unsafe"])
@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_dataset(command, case, dataset, capsys):
    damage, expected = DAMAGE[case]
    damage(dataset)
    before = snapshot(dataset)
    args = {"inspect": ["inspect", str(dataset)], "push": ["push", str(dataset), "me/data", "--dry-run"],
            "filter-unsafe": ["filter-unsafe", str(dataset)]}[command]
    if command == "filter-unsafe" and case == "unfinished filter":
        assert run(args, capsys)[0] == 0  # filter-unsafe finishes (here: rolls back) its own interrupted run
        return
    assert_error(run(args, capsys), expected)
    assert snapshot(dataset) == before


def test_inspect_reports_a_truncated_shard(dataset, capsys):
    _truncate_first_shard(dataset)
    code, out, err = run(["inspect", str(dataset)], capsys)
    assert code == 1 and "cannot be read" in out and "Traceback" not in err


TRUNCATED = "does not match its sha256 in manifest.json"


def test_grid_from_a_truncated_shard(dataset, tmp_path, capsys):
    _truncate_first_shard(dataset)
    assert_error(run(["inspect", str(dataset), "--grid", str(tmp_path / "g.png")], capsys), TRUNCATED)


def test_filter_on_a_truncated_shard(dataset, capsys):
    _truncate_first_shard(dataset)
    before = snapshot(dataset)
    assert_error(run(["filter-unsafe", str(dataset)], capsys), TRUNCATED)
    assert snapshot(dataset) == before


@pytest.mark.parametrize("grid, expected", [("file/g.png", "cannot be written"), ("g.unknownext", "cannot be written")])
def test_unwritable_grid(dataset, tmp_path, grid, expected, capsys):
    (tmp_path / "file").write_text("x")
    assert_error(run(["inspect", str(dataset), "--grid", str(tmp_path / grid)], capsys), expected)


def test_grid_of_zero_rows(dataset, tmp_path, capsys):
    assert_error(run(["inspect", str(dataset), "--grid", str(tmp_path / "g.png"), "--rows", "0"], capsys), "--rows")


def test_push_bad_repo_and_tampered_shard(dataset, capsys):
    assert_error(run(["push", str(dataset), "not a repo", "--dry-run"], capsys))
    shard = sorted((dataset / "data").glob("*.parquet"))[0]
    shard.write_bytes(shard.read_bytes() + b"x")
    assert_error(run(["push", str(dataset), "me/data", "--dry-run"], capsys), "sha256")


# ---------------------------------------------------------------------------------------------
# filter-unsafe: guards


def test_filter_out_equal_to_dataset(dataset, capsys):
    before = snapshot(dataset)
    assert_error(run(["filter-unsafe", str(dataset), "--out", str(dataset)], capsys), "overlaps DATASET")
    assert snapshot(dataset) == before


def test_filter_out_inside_dataset(dataset, capsys):
    assert_error(run(["filter-unsafe", str(dataset), "--out", str(dataset / "data" / "x")], capsys), "overlaps")
    assert not (dataset / "data" / "x").exists()


def test_filter_out_around_dataset(dataset, capsys):
    assert_error(run(["filter-unsafe", str(dataset), "--out", str(dataset.parent)], capsys), "overlaps")


def test_filter_out_not_empty(dataset, tmp_path, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    assert_error(run(["filter-unsafe", str(dataset), "--out", str(tmp_path / "o")], capsys), "not empty")
    assert (tmp_path / "o" / "notes.txt").read_text() == "mine"


def test_filter_missing_blocklist(dataset, tmp_path, capsys):
    before = snapshot(dataset)
    assert_error(run(["filter-unsafe", str(dataset), "--blocklist", str(tmp_path / "nope.txt")], capsys), "nope.txt")
    assert snapshot(dataset) == before


def test_filter_non_utf8_blocklist(dataset, tmp_path, capsys):
    (tmp_path / "b.txt").write_bytes(b"\xff\xfeterm\n")
    assert_error(run(["filter-unsafe", str(dataset), "--blocklist", str(tmp_path / "b.txt")], capsys))


# ---------------------------------------------------------------------------------------------
# eval report


def test_cache_batch_size_zero(dataset, capsys):
    assert_error(run(["cache", str(dataset), "--model", "tiny", "--batch-size", "0"], capsys), "--batch-size must be at least 1")


def test_eval_report_of_an_empty_folder(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert_error(run(["eval", "report", str(tmp_path / "run"), "--out", str(tmp_path / "r.md")], capsys), "empty")
    assert not (tmp_path / "r.md").exists()


def test_eval_report_of_a_missing_folder(tmp_path, capsys):
    assert_error(run(["eval", "report", str(tmp_path / "nope"), "--out", str(tmp_path / "r.md")], capsys), "does not exist")


def test_eval_report_of_a_folder_without_metrics(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("no metrics here\n")
    assert_error(run(["eval", "report", str(tmp_path / "run"), "--out", str(tmp_path / "r.md")], capsys),
                 "no metrics found")
    assert not (tmp_path / "r.md").exists()


@pytest.mark.parametrize(("content", "expected"), [(b"", "is empty (0 bytes)"), (b"\x89PNG junk", "cannot be decoded")])
def test_bad_image_in_an_eval_folder(content, expected, tmp_path):
    from styleprefs.eval.fid import generated_images
    from styleprefs.images import read_image

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "00000-00.png").write_bytes(content)
    images = generated_images(tmp_path / "images")
    for load in (lambda: list(images.load([0])), lambda: read_image(tmp_path / "images" / "00000-00.png")):
        with pytest.raises(StyleprefsError, match=re.escape(expected)) as exc:
            load()
        assert "00000-00.png" in str(exc.value) and "\n" not in str(exc.value)


# ---------------------------------------------------------------------------------------------
# train and cache: --out guards, damaged trainer state, resume by place and content


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--stage", "sft", "--data", str(data), "--out", str(out), "--model", "tiny", "--resolution", "32",
            "--max-steps", "1", *extra]


def test_train_out_inside_its_data_is_refused(dataset, capsys):
    before = snapshot(dataset)
    assert_error(run(train_args(dataset, dataset / "run"), capsys), "overlaps --data")
    assert snapshot(dataset) == before


def test_train_out_around_its_data_is_refused(dataset, capsys):
    assert_error(run(train_args(dataset, dataset.parent), capsys), "overlaps --data")


def test_train_out_equal_to_its_init_is_refused(dataset, tmp_path, capsys):
    (tmp_path / "sft").mkdir()
    assert_error(run(train_args(dataset, tmp_path / "sft", "--init", str(tmp_path / "sft")), capsys), "overlaps --init")


def test_train_out_inside_its_ref_is_refused(dataset, tmp_path, capsys):
    (tmp_path / "ref").mkdir()
    args = train_args(dataset, tmp_path / "ref" / "run", "--ref", str(tmp_path / "ref"))
    assert_error(run(args, capsys), "overlaps --ref")


def _train_config(data: str, out: str):
    from styleprefs.trainer.config import TrainConfig

    return TrainConfig(stage="sft", data=data, out=out, model="tiny", resolution=32)


def _state(cfg, **changes) -> dict:
    import dataclasses

    from styleprefs.trainer.checkpoint import run_inputs

    return {"step": 1, "nan_steps": 0, "weights_hash": cfg.weights_hash(), "config": dataclasses.asdict(cfg.resolved()),
            "inputs": run_inputs(cfg.resolved()), **changes}


@pytest.mark.parametrize(("content", "expected"), [
    ("{not json", "trainer_state.json cannot be read"),
    ('["a list"]', "not an object"),
    ('{"step": 1}', "lacks config, nan_steps, weights_hash"),
])
def test_resume_from_a_damaged_trainer_state(content, expected, dataset, tmp_path):
    from styleprefs.trainer.checkpoint import load_checkpoint

    checkpoint = tmp_path / "run" / "checkpoints" / "step-000001"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(content)
    with pytest.raises(StyleprefsError, match=re.escape(expected)):
        load_checkpoint(None, _train_config(str(dataset), str(tmp_path / "run")), checkpoint)


def test_resume_compares_places_not_spellings(dataset, tmp_path, monkeypatch):
    from styleprefs.trainer.checkpoint import changed_options

    monkeypatch.chdir(dataset.parent)
    saved = _train_config(dataset.name, "run")
    assert changed_options(_train_config(f"./{dataset.name}", "./run"), _state(saved)) == []
    assert changed_options(_train_config(str(dataset), str(tmp_path / "moved-run")), _state(saved)) == []


def test_resume_follows_a_moved_dataset_by_its_manifest(dataset, tmp_path):
    from styleprefs.trainer.checkpoint import changed_options

    state = _state(_train_config(str(dataset), "run"))
    moved = tmp_path / "elsewhere" / "data"
    shutil.copytree(dataset, moved)
    assert changed_options(_train_config(str(moved), "run"), state) == []
    (moved / "manifest.json").write_text((moved / "manifest.json").read_text().replace("{", '{"x": 1, ', 1))
    assert [c.split(" ")[0] for c in changed_options(_train_config(str(moved), "run"), state)] == ["data"]


# ---------------------------------------------------------------------------------------------
# environment failures, Ctrl-C, --debug


def test_disk_full_then_rerun(source, config, built, tmp_path, monkeypatch, capsys):
    """ENOSPC while writing a shard: one line, and the rerun completes the same dataset."""
    real = pq.write_table
    calls = []

    def full(table, where, *args, **kwargs):
        calls.append(where)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where))
        return real(table, where, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", full)
    assert_error(run(build_args(source, tmp_path / "out"), capsys), "No space left on device")
    monkeypatch.undo()
    assert run(build_args(source, tmp_path / "out"), capsys)[0] == 0
    assert snapshot(tmp_path / "out") == snapshot(built)


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def test_disk_full_on_a_real_tmpfs(source, tmp_path, capsys):
    small = tmp_path / "small"
    if not _mount_tmpfs(small, "64k"):
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        assert_error(run(build_args(source, small / "out"), capsys), "No space left on device")
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)  # lazy: pyarrow may still hold a file open


def test_read_only_output(dataset, source, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes through permissions")
    os.chmod(dataset, 0o500)
    try:
        assert_error(run(build_args(source, dataset, "--overwrite"), capsys), "permission denied")
    finally:
        os.chmod(dataset, 0o700)


def test_ctrl_c_prints_the_resume_hint(source, tmp_path, monkeypatch, capsys):
    import styleprefs.build

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(styleprefs.build, "build_dataset", interrupted)
    args = build_args(source, tmp_path / "out")
    code, _, err = run(args, capsys)
    assert code == 130 and err.strip() == "interrupted; to resume, run: styleprefs " + " ".join(args)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(how, source, tmp_path, monkeypatch):
    args = build_args(source, tmp_path / "out", "--style", "cubism")
    if how == "env":
        monkeypatch.setenv("STYLEPREFS_DEBUG", "1")
    with pytest.raises(StyleprefsError, match="unknown style"):
        main(["--debug", *args] if how == "flag" else args)


def test_a_bug_keeps_its_traceback(source, tmp_path, monkeypatch):
    import styleprefs.build

    def bug(*args, **kwargs):
        raise ZeroDivisionError("a real bug")

    monkeypatch.setattr(styleprefs.build, "build_dataset", bug)
    with pytest.raises(ZeroDivisionError):
        main(build_args(source, tmp_path / "out"))


# ---------------------------------------------------------------------------------------------
# concurrent writers


HOLD = """
import sys, time
from styleprefs.lock import folder_lock
with folder_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def holder(dataset: Path):
    """Another process holding the dataset's lock."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(dataset)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("command", ["build", "build --overwrite", "filter-unsafe", "filter-unsafe --out", "relabel",
                                     "relabel --out"])
def test_second_writer_is_refused(command, holder, dataset, source, tmp_path, capsys):
    before = snapshot(dataset)
    args = {"build": build_args(source, dataset), "build --overwrite": build_args(source, dataset, "--overwrite"),
            "filter-unsafe": ["filter-unsafe", str(dataset)],
            "filter-unsafe --out": ["filter-unsafe", str(dataset), "--out", str(tmp_path / "copy")],
            "relabel": ["relabel", str(dataset), "--scorer", RELABEL_SCORER],
            "relabel --out": ["relabel", str(dataset), "--scorer", RELABEL_SCORER, "--out", str(tmp_path / "copy")],
            }[command]
    assert_error(run(args, capsys), f"in use by another styleprefs process (pid {holder.pid})")
    assert snapshot(dataset) == before


@pytest.fixture
def folder_holder(tmp_path: Path):
    """Start another process holding the lock of a folder; returns a function folder -> its pid."""
    procs = []

    def hold(folder: Path) -> int:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc.pid

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


def test_second_train_on_the_same_out_is_refused(folder_holder, dataset, tmp_path, capsys):
    pid = folder_holder(tmp_path / "run")
    assert_error(run(train_args(dataset, tmp_path / "run"), capsys), f"in use by another styleprefs process (pid {pid})")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".styleprefs.lock"]


def test_second_cache_builder_is_refused(folder_holder, dataset, capsys):
    from styleprefs.trainer.cache import _dir_for, cache_key

    pid = folder_holder(_dir_for(dataset, cache_key(dataset, "tiny", 32)))
    args = ["cache", str(dataset), "--model", "tiny", "--resolution", "32", "--clip-model", "none"]
    assert_error(run(args, capsys), f"pid {pid}")


def test_second_eval_generate_is_refused(folder_holder, tmp_path, capsys):
    pid = folder_holder(tmp_path / "gen")
    (tmp_path / "prompts.txt").write_text("a red cube\n")
    args = ["eval", "generate", "--model", "tiny", "--prompts", str(tmp_path / "prompts.txt"), "--out", str(tmp_path / "gen")]
    assert_error(run(args, capsys), f"pid {pid}")
    assert sorted(p.name for p in (tmp_path / "gen").iterdir()) == [".styleprefs.lock"]


def test_lock_is_released_when_the_holder_dies(holder, dataset, source, capsys):
    holder.kill()
    holder.wait()
    assert run(build_args(source, dataset), capsys)[0] == 0


def test_lock_in_one_process_two_threads(tmp_path):
    import threading

    errors: list[str] = []
    with folder_lock(tmp_path / "f"):
        thread = threading.Thread(target=lambda: _try_lock(tmp_path / "f", errors))
        thread.start()
        thread.join()
    assert len(errors) == 1 and f"pid {os.getpid()}" in errors[0]
    _try_lock(tmp_path / "f", errors)  # released
    assert len(errors) == 1


def _try_lock(folder: Path, errors: list[str]) -> None:
    try:
        with folder_lock(folder):
            pass
    except StyleprefsError as exc:
        errors.append(str(exc))


def test_two_concurrent_filters_never_lose_a_row(dataset, blocklist):
    """The issue's data loss: two in-place filters at once. Now one runs, the other is refused."""
    rows_before = read_finished_manifest(dataset)["counts"]["kept"]
    cmd = [sys.executable, "-m", "styleprefs.cli", "filter-unsafe", str(dataset), "--blocklist", str(blocklist)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(), p.stderr.read()) for p in procs]
    for code, err in results:
        assert code == 0 or (code == 2 and "in use by another styleprefs process" in err and "Traceback" not in err), err
    assert any(code == 0 for code, _ in results)
    assert_finished_and_sound(dataset)
    manifest = read_finished_manifest(dataset)
    quarantined = pq.read_table(dataset / "quarantine.parquet").num_rows
    assert manifest["counts"]["kept"] == rows_before - 1 and quarantined == manifest["counts"]["quarantined"]


# ---------------------------------------------------------------------------------------------
# crash injection: every rename/unlink/rmtree, then rerun


class Crash(BaseException):
    """A kill: not an Exception, so no handler of ours swallows it."""


class Killer:
    """Makes the N-th filesystem step (os.replace, os.unlink, os.rmdir, shutil.rmtree) crash, and every
    later one too, as if the process had died there."""

    NAMES = ("replace", "unlink", "rmdir")

    def __init__(self, monkeypatch: pytest.MonkeyPatch, at: int | None):
        self.at, self.calls = at, 0
        self.real = {name: getattr(os, name) for name in self.NAMES}
        self.real_rmtree = shutil.rmtree
        for name in self.NAMES:
            monkeypatch.setattr(os, name, self._wrap(self.real[name]))
        monkeypatch.setattr(shutil, "rmtree", self._wrap(self.real_rmtree))

    def _wrap(self, real: Callable) -> Callable:
        def step(*args, **kwargs):
            self.calls += 1
            if self.at is not None and self.calls >= self.at:
                raise Crash(f"killed at step {self.at}")
            return real(*args, **kwargs)

        return step


def _crash_every_step(monkeypatch: pytest.MonkeyPatch, prepare: Callable[[], Path], act: Callable[[Path], None],
                      expected: dict[str, bytes], check_after_crash: Callable[[Path], None]) -> int:
    """For N = 1, 2, ...: fresh folder, crash at step N, check, rerun, compare. Returns the steps tried."""
    counter = Killer(monkeypatch, None)
    act(prepare())
    monkeypatch.undo()
    total = counter.calls
    assert total > 5
    for at in range(1, total + 1):
        folder = prepare()
        Killer(monkeypatch, at)
        with pytest.raises(Crash):
            act(folder)
        monkeypatch.undo()
        check_after_crash(folder)
        act(folder)
        assert snapshot(folder) == expected, f"crash at step {at} of {total}"
    return total


def _unfinished_or_sound(folder: Path) -> None:
    try:
        read_finished_manifest(folder)
    except StyleprefsError:
        return  # says it is unfinished: fine, the rerun finishes it
    assert_finished_and_sound(folder)


def test_build_crash_at_every_step(config, built, tmp_path, monkeypatch):
    outs = iter(range(10**6))
    _crash_every_step(monkeypatch, lambda: tmp_path / f"o{next(outs)}",
                      lambda out: build_dataset(config, out, show_progress=False), snapshot(built),
                      _unfinished_or_sound)


def test_build_overwrite_crash_at_every_step(config, built, tmp_path, monkeypatch):
    """Replacing a dataset built with other arguments: killed anywhere, rerun, same result."""
    from dataclasses import replace

    other = tmp_path / "other"
    build_dataset(replace(config, seed=3), other, show_progress=False)
    outs = iter(range(10**6))

    def prepare() -> Path:
        out = tmp_path / f"o{next(outs)}"
        shutil.copytree(other, out)
        return out

    _crash_every_step(monkeypatch, prepare,
                      lambda out: build_dataset(config, out, overwrite=True, show_progress=False), snapshot(built),
                      _unfinished_or_sound)


@pytest.fixture(scope="module")
def filtered(built: Path, blocklist: Path, root: Path) -> Path:
    shutil.copytree(built, root / "filtered")
    filter_unsafe(root / "filtered", SafetyOptions(blocklists=(str(blocklist),)), show_progress=False)
    return root / "filtered"


def test_filter_in_place_crash_at_every_step(built, filtered, blocklist, tmp_path, monkeypatch):
    options = SafetyOptions(blocklists=(str(blocklist),))
    outs = iter(range(10**6))

    def prepare() -> Path:
        out = tmp_path / f"d{next(outs)}"
        shutil.copytree(built, out)
        return out

    def unfiltered_or_sound(folder: Path) -> None:
        try:
            read_finished_manifest(folder)
        except StyleprefsError:
            return
        untouched = {k: v for k, v in snapshot(folder).items() if not k.startswith(".filter-tmp/")} == snapshot(built)
        if not untouched:  # the dataset as it was (plus staging the next run clears), or a sound filtered one
            assert_finished_and_sound(folder)

    _crash_every_step(monkeypatch, prepare, lambda d: filter_unsafe(d, options, show_progress=False),
                      snapshot(filtered), unfiltered_or_sound)


def test_filter_out_crash_at_every_step(built, filtered, blocklist, tmp_path, monkeypatch):
    """`filter-unsafe --out X` resumes after a kill anywhere (it used to say "X is not empty")."""
    options = SafetyOptions(blocklists=(str(blocklist),))
    expected = snapshot(filtered)
    outs = iter(range(10**6))

    def act(out: Path) -> None:
        filter_unsafe(built, options, out=out, show_progress=False)

    def unfinished_or_sound(out: Path) -> None:
        if (out / "manifest.json").exists():
            _unfinished_or_sound(out)

    before = snapshot(built)
    _crash_every_step(monkeypatch, lambda: tmp_path / f"o{next(outs)}", act, expected, unfinished_or_sound)
    assert snapshot(built) == before  # the source dataset is never touched


@pytest.fixture(scope="module")
def relabelled(built: Path, root: Path) -> Path:
    shutil.copytree(built, root / "relabelled")
    relabel(root / "relabelled", RelabelOptions(RELABEL_SCORER), show_progress=False)
    return root / "relabelled"


def test_relabel_in_place_crash_at_every_step(built, relabelled, tmp_path, monkeypatch):
    outs = iter(range(10**6))

    def prepare() -> Path:
        return Path(shutil.copytree(built, tmp_path / f"d{next(outs)}"))

    def untouched_or_sound(folder: Path) -> None:
        try:
            read_finished_manifest(folder)
        except StyleprefsError:
            return
        leftovers = (".relabel/", ".relabel-tmp/")
        if {k: v for k, v in snapshot(folder).items() if not k.startswith(leftovers)} != snapshot(built):
            assert_finished_and_sound(folder)

    _crash_every_step(monkeypatch, prepare, lambda d: relabel(d, RelabelOptions(RELABEL_SCORER), show_progress=False),
                      snapshot(relabelled), untouched_or_sound)


def test_relabel_out_crash_at_every_step(built, tmp_path, monkeypatch):
    expected_out = tmp_path / "expected"
    relabel(built, RelabelOptions(RELABEL_SCORER), out=expected_out, show_progress=False)
    before = snapshot(built)
    outs = iter(range(10**6))

    def unfinished_or_sound(out: Path) -> None:
        if (out / "manifest.json").exists():
            _unfinished_or_sound(out)

    _crash_every_step(monkeypatch, lambda: tmp_path / f"o{next(outs)}",
                      lambda out: relabel(built, RelabelOptions(RELABEL_SCORER), out=out, show_progress=False),
                      snapshot(expected_out), unfinished_or_sound)
    assert snapshot(built) == before


def test_filter_out_resumes_through_the_cli(built, filtered, blocklist, tmp_path, monkeypatch, capsys):
    Killer(monkeypatch, 4)
    with pytest.raises(Crash):
        main(["filter-unsafe", str(built), "--out", str(tmp_path / "x"), "--blocklist", str(blocklist), "--no-images"])
    monkeypatch.undo()
    capsys.readouterr()
    assert run(["filter-unsafe", str(built), "--out", str(tmp_path / "x"), "--blocklist", str(blocklist), "--no-images"], capsys)[0] == 0
    assert snapshot(tmp_path / "x") == snapshot(filtered)
    code, out, _ = run(["filter-unsafe", str(built), "--out", str(tmp_path / "x"), "--blocklist", str(blocklist), "--no-images"], capsys)
    assert code == 0 and "nothing to do" in out


def test_kill_9_during_a_build_then_rerun(source, built, tmp_path):
    """A real SIGKILL (no Python cleanup at all) while the build is finishing, then the same command."""
    script = ("import os, signal, sys\n"
              "import styleprefs.build as b\n"
              "real = b.write_card\n"
              "def die(*a, **k):\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n"
              "b.write_card = die\n"
              "from styleprefs.cli.app import main\n"
              "main(sys.argv[1:])\n")
    args = build_args(source, tmp_path / "out")
    assert subprocess.run([sys.executable, "-c", script, *args], capture_output=True).returncode == -9
    _unfinished_or_sound(tmp_path / "out")
    assert subprocess.run([sys.executable, "-m", "styleprefs.cli", *args], capture_output=True).returncode == 0
    assert snapshot(tmp_path / "out") == snapshot(built)


# ---------------------------------------------------------------------------------------------
# the first hour of a new user (issue 27)


@pytest.mark.parametrize("case", ["narrow --models", "empty source"])
def test_a_build_that_keeps_nothing_is_an_error(case, source, tmp_path, capsys):
    if case == "empty source":
        pq.write_table(pa.Table.from_pylist(pickapic_rows(1)).slice(0, 0), tmp_path / "empty.parquet")
        args, expected = build_args(tmp_path / "empty.parquet", tmp_path / "out"), "the source has no rows"
    else:
        args, expected = build_args(source, tmp_path / "out", "--models", "nomatch*"), "10 skipped by the selection (model: 10)"
    line = assert_error(run(args, capsys), expected)
    assert "kept 0 of the 7 pairs" in line
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".styleprefs.lock"]  # nothing to resume or block
    assert run(build_args(source, tmp_path / "out"), capsys)[0] == 0  # the corrected command runs


def test_a_short_build_says_so_on_its_last_line(source, tmp_path, capsys):
    code, out, err = run(build_args(source, tmp_path / "out", "--num-pairs", "99999999999999999999"), capsys)
    assert code == 0, err
    assert out.strip().splitlines()[-1] == (
        f"{tmp_path / 'out'}: kept 7 of the 99999999999999999999 pairs asked for: the source ran out after 10 rows; "
        "2 rejected (empty caption: 1, jpg_0 cannot be decoded: 1); 1 quarantined as unsafe")
    code, out, _ = run(build_args(source, tmp_path / "out", "--num-pairs", "99999999999999999999"), capsys)
    assert code == 0 and "kept 7 of the 99999999999999999999" in out.strip().splitlines()[-1]  # and when complete
    assert "asked for" not in run(build_args(source, tmp_path / "full"), capsys)[1]


def test_a_build_that_failed_before_its_first_part_does_not_block_the_next(source, tmp_path, monkeypatch, capsys):
    import styleprefs.build

    def cannot_load(*args, **kwargs):
        raise StyleprefsError("the editor model cannot be loaded")

    monkeypatch.setattr(styleprefs.build, "_process_part", cannot_load)
    assert_error(run(build_args(source, tmp_path / "out"), capsys), "cannot be loaded")
    assert (tmp_path / "out" / ".build" / "state.json").is_file()
    monkeypatch.undo()
    code, _, err = run(build_args(source, tmp_path / "out", "--seed", "1"), capsys)  # the corrected command
    assert code == 0, err
    assert_finished_and_sound(tmp_path / "out")


def test_a_build_with_finished_parts_still_needs_overwrite(source, tmp_path, monkeypatch, capsys):
    import styleprefs.build

    real, calls = styleprefs.build._process_part, []

    def fail_second(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise StyleprefsError("the second part fails")
        return real(*args, **kwargs)

    monkeypatch.setattr(styleprefs.build, "_process_part", fail_second)
    monkeypatch.setattr(styleprefs.build, "PART_ROWS", 3)
    assert_error(run(build_args(source, tmp_path / "out"), capsys), "second part fails")
    monkeypatch.undo()
    assert_error(run(build_args(source, tmp_path / "out", "--seed", "1"), capsys), "--overwrite")


def test_outputs_honour_the_umask(source, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        assert run(build_args(source, tmp_path / "out"), capsys)[0] == 0
        assert run(["cache", str(tmp_path / "out"), "--model", "tiny", "--resolution", "32", "--clip-model", "none"],
                   capsys)[0] == 0  # safetensors shards: its writer makes 0600 files
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert {"manifest.json", "train-00000-of-00003.parquet", "cache.json"} <= {p.name for p in files}
    assert any(p.suffix == ".safetensors" for p in files)
    assert {p.stat().st_mode & 0o777 for p in files} == {0o644}, [(p, oct(p.stat().st_mode)) for p in files]
    old = os.umask(0o077)
    try:
        from styleprefs.io import write_text

        write_text("x", tmp_path / "private.txt")
    finally:
        os.umask(old)
    assert (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o600


def test_honour_umask_leaves_shared_files_alone(tmp_path, _umask_022):
    from styleprefs.io import honour_umask

    (tmp_path / "run" / "sub").mkdir(parents=True)
    for name in ("own", "base"):
        (tmp_path / "run" / "sub" / name).write_text(name)
        os.chmod(tmp_path / "run" / "sub" / name, 0o600)
    os.link(tmp_path / "run" / "sub" / "base", tmp_path / "base-in-its-cache")
    os.chmod(tmp_path / "run" / "sub", 0o700)
    honour_umask(tmp_path / "run")
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").rglob("*")}
    assert modes == {"sub": 0o755, "own": 0o644, "base": 0o600}


@pytest.mark.parametrize("command", ["train from its cache", "cache", "relabel", "push", "filter-unsafe", "grid"])
def test_every_reader_refuses_a_truncated_shard(command, dataset, tmp_path, capsys):
    cache = ["cache", str(dataset), "--model", "tiny", "--resolution", "32", "--clip-model", "none"]
    if command == "train from its cache":
        assert run(cache, capsys)[0] == 0
    _truncate_first_shard(dataset)
    args = {"train from its cache": train_args(dataset, tmp_path / "run"), "cache": cache,
            "relabel": ["relabel", str(dataset), "--scorer", RELABEL_SCORER],
            "push": ["push", str(dataset), "me/data", "--dry-run"], "filter-unsafe": ["filter-unsafe", str(dataset)],
            "grid": ["inspect", str(dataset), "--grid", str(tmp_path / "g.png")]}[command]
    line = assert_error(run(args, capsys), TRUNCATED)
    assert f"{dataset}: shard data/train-00000-of-00003.parquet does not match" in line  # the same words everywhere
    assert not (tmp_path / "run" / "model_index.json").exists()


@pytest.mark.parametrize(("flag", "value"), [("--beta", "inf"), ("--beta", "nan"), ("--learning-rate", "inf"),
                                             ("--caption-dropout", "nan"), ("--max-grad-norm", "inf"),
                                             ("--weight-decay", "nan"), ("--text-guidance", "inf")])
def test_train_refuses_non_finite_numbers(flag, value, dataset, tmp_path, capsys):
    args = train_args(dataset, tmp_path / "run", flag, value)
    assert_error(run([*args[:2], "dpo", *args[3:]], capsys), f"{flag} must be a finite number, got {value}")
    assert not (tmp_path / "run").exists()


@pytest.fixture
def _umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_the_printed_command_resumes_an_interrupted_train(dataset, tmp_path, monkeypatch, capsys, _umask_022):
    import shlex

    import styleprefs.trainer.loop as loop

    real = loop._train_step

    def interrupt_at_step_2(cfg, run_, step):
        if step == 2:
            raise KeyboardInterrupt
        return real(cfg, run_, step)

    monkeypatch.setattr(loop, "_train_step", interrupt_at_step_2)
    args = train_args(dataset, tmp_path / "run", "--max-steps", "3", "--checkpoint-every", "1", "--batch-size", "1",
                      "--gradient-accumulation-steps", "1")
    code, _, err = run(args, capsys)
    assert code == 130
    message = err.strip().splitlines()[-1]
    assert message.startswith("interrupted; to resume, run: styleprefs train ")
    command = shlex.split(message.split("run: ", 1)[1])
    monkeypatch.undo()
    code, out, err = run(command[1:], capsys)
    assert code == 0, err
    assert "resuming from" in out + err and (tmp_path / "run" / "model_index.json").is_file()
    steps = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert len(steps) == 3
    # Under umask 022 (_umask_022) what the run wrote (weights, checkpoints, curves, config) is readable by others;
    # the base's components are hard links to the base's own files, which keep their mode.
    written = [p for p in (tmp_path / "run").rglob("*") if p.is_dir() or p.stat().st_nlink == 1]
    assert any(p.name == "diffusion_pytorch_model.safetensors" for p in written)
    private = [str(p) for p in written if p.stat().st_mode & 0o044 != 0o044]
    assert private == [], [(p, oct(Path(p).stat().st_mode)) for p in private]


def test_resume_command_of_each_interruption():
    from styleprefs.cli.app import resume_command

    assert resume_command(["build", "--out", "my data"]) == "styleprefs build --out 'my data'"
    assert resume_command(["--debug", "train", "--data", "d", "--no-resume"]) == "styleprefs --debug train --data d --resume"
    assert resume_command(["train", "--resume", "--data", "d"]) == "styleprefs train --resume --data d"


@pytest.mark.parametrize(("args", "expected"), [
    (["eval", "generate", "--model", "tiny", "--guidance", "nan"], "--guidance must be a finite number"),
    (["eval", "generate", "--model", "tiny", "--guidance", "inf"], "--guidance must be a finite number"),
    (["eval", "implicit-acc", "--model", "tiny", "--ref", "tiny", "--beta", "inf"], "--beta must be a positive finite"),
    (["filter-unsafe", "DATA", "--text-threshold", "nan"], "--text-threshold is a probability"),
    (["filter-unsafe", "DATA", "--image-threshold", "-inf"], "--image-threshold must be a finite number"),
    (["relabel", "DATA", "--scorer", RELABEL_SCORER, "--tie-tolerance", "inf"], "--tie-tolerance"),
    (["eval", "winrate", "DATA", "DATA", "--scorer", "clip=tiny-clip", "--confidence", "nan"],
     "--confidence must be in (0, 1)"),
])
def test_float_options_are_finite(args, expected, dataset, tmp_path, capsys):
    (tmp_path / "prompts.txt").write_text("a red cube\n")
    args = [str(dataset) if a == "DATA" else a for a in args]
    if args[:2] == ["eval", "generate"]:
        args += ["--prompts", str(tmp_path / "prompts.txt"), "--out", str(tmp_path / "gen")]
    if args[:2] == ["eval", "implicit-acc"]:
        args += ["--data", str(dataset)]
    before = snapshot(dataset)
    assert_error(run(args, capsys), expected)
    assert not (tmp_path / "gen" / "generate.json").exists() and snapshot(dataset) == before


def test_json_files_never_hold_nan(tmp_path):
    from styleprefs.io import write_json

    with pytest.raises(ValueError, match="not JSON compliant"):
        write_json({"guidance": float("nan")}, tmp_path / "x.json")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("label", [float("inf"), 7.0, -1.0, float("nan")])
def test_source_labels_out_of_range_are_rejected(label, tmp_path, capsys):
    rows = pickapic_rows(3)
    rows[0] |= {"caption": "a lighthouse at dusk", "label_0": label, "label_1": 0.0}
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "src.parquet")
    code, _, err = run(build_args(tmp_path / "src.parquet", tmp_path / "out"), capsys)
    assert code == 0, err
    rejects = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()
    assert [r["reason"] for r in rejects if "lighthouse" in r["caption"]] == [
        f"labels are not numbers from 0 to 1 (label_0 {label:g}, label_1 0)"]
    # the trainer reads a raw Pick-a-Pic file too: it refuses the row rather than calling jpg_0 preferred
    from styleprefs.trainer.data import read_pairs

    with pytest.raises(StyleprefsError, match="labels are numbers from 0 to 1"):
        read_pairs(tmp_path / "src.parquet")


def _commands():
    """(command path, click command) for the app and every command and subcommand."""
    import typer

    from styleprefs.cli.app import app

    def walk(command, path):
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, f"{path} {name}")

    return list(walk(typer.main.get_command(app), "styleprefs"))


def test_no_help_text_loses_brackets_to_rich_markup():
    """Typer renders help through rich markup, which drops `[default: 7.5]` (it reads it as a style tag)."""
    from rich.text import Text

    swallowed = []
    for path, command in _commands():
        for name, text in [("(summary)", command.help or "")] + [(p.name, getattr(p, "help", None) or "")
                                                                  for p in command.params]:
            shown = Text.from_markup(text).plain
            swallowed += [f"{path} {name}: {group}" for group in re.findall(r"\[[^\[\]]*\]", text) if group not in shown]
    assert swallowed == []
    assert {"styleprefs train", "styleprefs eval generate"} <= set(dict(_commands()))  # the walk reaches subcommands


def test_help_shows_every_default():
    """An option with a default shows it: typer's own `[default: ...]`, or the help says it (train's options)."""
    hidden = [f"{path} {p.opts[0]}" for path, command in _commands() for p in command.params
              if getattr(p, "param_type_name", "") == "option" and p.default not in (None, [], ())
              and not p.show_default and "default" not in (p.help or "").lower()]
    assert hidden == []


def test_help_lists_every_editor_and_stage(capsys):
    from styleprefs.editors import EDITORS
    from styleprefs.trainer.config import Stage

    import typing

    code, out, _ = run(["build", "--help"], capsys)
    assert code == 0 and all(editor in " ".join(out.split()) for editor in EDITORS)
    summary = dict(_commands())["styleprefs train"].help.split("\n")[0]
    assert all(re.search(rf"\b{stage}\b", summary) for stage in typing.get_args(Stage)), summary
    code, out, _ = run(["eval", "generate", "--help"], capsys)
    assert "(default: 7.5 for SD1.5, 5.0 for SDXL, 7.0 for SD3, 3.5 for FLUX.1)" in " ".join(out.replace("│", " ").split())


def test_the_quickstart_prints_commands_that_reproduce_its_runs(tmp_path, capsys):
    """Running the printed `styleprefs train` line gives the run the quickstart's own stage makes."""
    import dataclasses
    import shlex

    import yaml

    from styleprefs.quickstart import Plan, _stages, _train_config

    plan = Plan(num_pairs=8, heldout_pairs=4, sft_steps=2, batch_size=2)
    stages = {stage.name: stage for stage in _stages(tmp_path, "mini", "winter", None, plan)}
    stages["build the training set (sample scenes, train split)"].run()
    command = shlex.split(stages["train SFT"].command)
    assert command[:2] == ["styleprefs", "train"]
    code, _, err = run(command[1:], capsys)
    assert code == 0, err
    written = yaml.safe_load((tmp_path / "runs" / "sft" / "train_config.yaml").read_text())
    expected = _train_config("sft", tmp_path / "data", tmp_path / "runs" / "sft", plan, "mini").resolved()
    assert written == dataclasses.asdict(expected)
    assert written["max_steps"] == 2 and written["batch_size"] == 2 and written["snr_gamma"] == 5.0


def test_a_config_command_line_round_trips(monkeypatch):
    import shlex

    import styleprefs.trainer.loop as loop
    from styleprefs.trainer.config import TrainConfig

    cfg = TrainConfig(stage="rpo", data="my data", out="o", random_flip=False, clip_model=None,
                      validation_prompts=["a 'quoted' cat", "two"], scale_lr=False, reconstruct_prob=0.25, tau=0.01)
    seen = []
    monkeypatch.setattr(loop, "train", lambda config: seen.append(config) or Path(config.out))
    main_args = shlex.split(cfg.command_line())
    assert main_args[:2] == ["styleprefs", "train"]
    with pytest.raises(SystemExit) as exc:
        main(main_args[1:])
        raise SystemExit(0)
    assert exc.value.code == 0 and seen == [cfg]
    with pytest.raises(StyleprefsError, match="--checkpoints-total-limit None has no command-line form"):
        TrainConfig(stage="sft", data="d", out="o", checkpoints_total_limit=None).command_line()


@pytest.mark.parametrize(("license", "expected"), [("not-a-license", "not a Hub license identifier"),
                                                   ("cc-by-nc-4", "did you mean cc-by-nc-4.0?"),
                                                   ("Apache-2.0", "did you mean apache-2.0?")])
def test_push_checks_the_license_against_the_hub_list(license, expected, dataset, capsys):
    assert_error(run(["push", str(dataset), "me/data", "--license", license, "--dry-run"], capsys), expected)
    code, out, err = run(["push", str(dataset), "me/data", "--license", "llama3.1", "--dry-run"], capsys)
    assert code == 0, err


def test_filter_rerun_into_out_names_the_out_folder(dataset, tmp_path, capsys):
    args = ["filter-unsafe", str(dataset), "--out", str(tmp_path / "f")]
    assert run(args, capsys)[0] == 0
    code, out, _ = run(args, capsys)
    assert code == 0 and " ".join(out.split()) == f"{tmp_path / 'f'} already holds {dataset} filtered with these options; nothing to do."


def test_a_changed_source_is_not_called_other_arguments(source, tmp_path, capsys):
    src = Path(shutil.copytree(source, tmp_path / "src"))
    assert run(build_args(src, tmp_path / "out"), capsys)[0] == 0
    write_pickapic_parquet(tmp_path / "more", n_files=1, rows_per_file=3)
    shutil.copy(next((tmp_path / "more").glob("*.parquet")), src / "extra.parquet")
    line = assert_error(run(build_args(src, tmp_path / "out"), capsys), "the source has changed since")
    assert "differs in source.files" in line and "other arguments" not in line
    line = assert_error(run(build_args(src, tmp_path / "out", "--seed", "3"), capsys), "other arguments")


def test_a_scorer_path_that_does_not_exist(dataset, tmp_path, capsys):
    line = assert_error(run(["relabel", str(dataset), "--scorer", f"winter={tmp_path}/no/such/path"], capsys),
                        f"--scorer winter={tmp_path}/no/such/path: no such path")
    assert "repo" not in line.lower()


def test_a_model_folder_as_prompts(tmp_path, capsys):
    from styleprefs.tiny import ensure_tiny

    model = ensure_tiny("tiny")
    line = assert_error(run(["eval", "generate", "--model", "tiny", "--prompts", str(model), "--out",
                             str(tmp_path / "g")], capsys), "is a model (pipeline) folder, not prompts")
    assert "--model" in line


@pytest.mark.parametrize("improver", ["dataset", "plain pipeline"])
def test_the_improver_is_checked_before_any_image_is_generated(improver, dataset, tmp_path, monkeypatch, capsys):
    import styleprefs.eval.generate
    from styleprefs.tiny import ensure_tiny

    def generating(*args, **kwargs):
        raise AssertionError("images were generated before the improver was checked")

    monkeypatch.setattr(styleprefs.eval.generate, "generate", generating)
    model = str(dataset) if improver == "dataset" else str(ensure_tiny("tiny"))
    args = ["train", "--stage", "iterative", "--data", str(dataset), "--out", str(tmp_path / "run"), "--model", "tiny",
            "--resolution", "32", "--improver", model, "--online-pairs", "2", "--iterations", "1"]
    expected = ("is not a model folder: it holds none of model_index.json, unet/" if improver == "dataset"
                else "unet/ takes 4 input channels, not noise + image latent")
    line = assert_error(run(args, capsys), expected)
    assert "(expected" not in line  # says what is wrong once
    assert not (tmp_path / "run" / "iter-1").exists()


def test_implicit_accuracy_prints_no_loading_bars(dataset, capfd):
    from styleprefs.eval.implicit_acc import implicit_accuracy

    implicit_accuracy("tiny", "tiny", dataset, num_draws=1, limit=2, resolution=32, device="cpu", show_progress=False)
    captured = capfd.readouterr()
    assert "Loading weights" not in captured.out + captured.err


def test_experiment_tables_of_one_seed(capsys):
    from styleprefs.experiments.common import render_rows
    from styleprefs.experiments.online_improvement import render_table

    one = {"Style FID": {"mean": 0.25, "std": 0.0, "values": [0.25]}}
    two = {"Style FID": {"mean": 0.25, "std": 0.05, "values": [0.2, 0.3]}}
    assert render_rows({"a": one}, "winter")[2].startswith("| a | 0.25 |")
    assert render_rows({"a": two}, "winter")[2].startswith("| a | 0.25 ± 0.05 |")
    plan = {"seeds": (0,), "iteration_steps": 1, "batch_size": 1, "online_pairs": 1, "style": "winter"}
    text = render_table({"plan": plan, "rows": {"a": one}})
    assert "± 0" not in text and "One seed (0); every method spends 1 DPO step at 1 pair per iteration" in text



def test_experiment_tables_are_not_wrapped_mid_row(tmp_path, monkeypatch, capsys):
    import styleprefs.experiments.style_alignment as experiment
    from styleprefs.experiments.common import METRICS

    metric = {"mean": 0.123456, "std": 0.0123, "values": [0.11, 0.13]}
    rows = {"SFT+RPO (tau 0.01), a long method name": {m: metric for m in METRICS}}
    results = {"plan": {"seeds": (0, 1), "steps": 60, "batch_size": 8, "style": "winter"}, "rows": rows}
    monkeypatch.setattr(experiment, "run_experiment", lambda *args, **kwargs: results)
    code, out, _ = run(["experiment", "style-alignment", "--out", str(tmp_path)], capsys)
    assert code == 0
    table = experiment.render_table(results).strip().splitlines()[:3]
    assert max(map(len, table)) > 80 and all(line in out.splitlines() for line in table)


def test_vendi_offline_names_the_embedding_that_works(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no Inception weights there
    (tmp_path / "prompts.txt").write_text("a red cube\na blue ball\n")
    generate = ["eval", "generate", "--model", "tiny", "--prompts", str(tmp_path / "prompts.txt"), "--out",
                str(tmp_path / "gen"), "--images-per-prompt", "2", "--steps", "1", "--device", "cpu"]
    assert run(generate, capsys)[0] == 0
    line = assert_error(run(["eval", "vendi", str(tmp_path / "gen")], capsys), "--weights PATH")
    assert "--embedding clip --clip-model mini-clip" in line
    code, out, err = run(["eval", "vendi", str(tmp_path / "gen"), "--embedding", "clip", "--clip-model", "mini-clip"],
                         capsys)
    assert code == 0 and "Vendi" in out, err
    assert "--embedding clip --clip-model mini-clip" in Path(__file__).parents[1].joinpath("README.md").read_text()


def test_push_refuses_a_dataset_without_pairs(dataset, tmp_path, capsys):
    everything = tmp_path / "all.txt"
    everything.write_text("".join(f"{row['caption']}\n" for row in pickapic_rows(10) if row["caption"].strip()))
    assert run(["filter-unsafe", str(dataset), "--blocklist", str(everything)], capsys)[0] == 0
    assert read_finished_manifest(dataset)["counts"]["kept"] == 0  # every caption quarantined
    assert_error(run(["push", str(dataset), "me/data", "--dry-run"], capsys), "holds no pairs (0 kept)")


def test_a_filtered_dataset_is_not_called_short(dataset, source, blocklist, capsys):
    assert run(["filter-unsafe", str(dataset), "--blocklist", str(blocklist)], capsys)[0] == 0
    code, out, _ = run(build_args(source, dataset), capsys)
    assert code == 0 and "already complete" in out and "asked for" not in out
