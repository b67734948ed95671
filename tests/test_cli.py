"""The command line: help everywhere, one-line errors with exit code 2, build and inspect."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from styleprefs.cli.app import app, main


def run(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


@pytest.mark.parametrize("command", [[], ["build"], ["inspect"], ["quickstart"]])
def test_help_on_every_command(command, capsys):
    code, out, _ = run([*command, "--help"], capsys)
    assert code == 0 and "Usage" in out


def test_every_registered_command_has_help():
    assert {c.name or c.callback.__name__ for c in app.registered_commands} >= {"build", "inspect", "quickstart"}
    assert all(c.callback.__doc__ for c in app.registered_commands)


def _bad_style(tmp_path: Path) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nclip_text: '{caption}'\nclassic: {filter: winter}\ncolour: blue\n")
    return str(path)


BAD_INPUTS = {
    "unknown style": (lambda p: ["--style", "cubism"], "unknown style 'cubism'"),
    "bad style file": (lambda p: ["--style", _bad_style(p)], "unknown key(s) colour"),
    "missing source": (lambda p: ["--source", str(p / "nowhere")], "does not exist"),
    "unknown editor": (lambda p: ["--editor", "magic"], "unknown editor 'magic'"),
    "unreadable parquet": (lambda p: ["--source", str(_junk(p))], "cannot read Parquet file"),
    "unwritable output": (lambda p: ["--out", str(_file(p) / "sub")], "not writable"),
}


def _junk(tmp_path: Path) -> Path:
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 nope")
    return tmp_path / "junk.parquet"


def _file(tmp_path: Path) -> Path:
    (tmp_path / "a-file").write_text("x")
    return tmp_path / "a-file"


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, pickapic_dir, capsys):
    extra, expected = BAD_INPUTS[case]
    args = ["build", "--source", str(pickapic_dir), "--out", str(tmp_path / "out"), "--num-pairs", "3", *extra(tmp_path)]
    code, out, err = run(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert "Traceback" not in err + out


def test_wrong_schema_names_missing_columns(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"caption": ["a"], "jpg_0": [b"x"], "label_0": [1.0]}), tmp_path / "x.parquet")
    code, _, err = run(["build", "--source", str(tmp_path / "x.parquet"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "missing column(s) jpg_1, label_1" in err


def test_build_then_inspect_with_grid(tmp_path, pickapic_dir, capsys):
    out = tmp_path / "out"
    code, _, _ = run(["build", "--source", str(pickapic_dir), "--out", str(out), "--num-pairs", "6"], capsys)
    assert code == 0
    code, stdout, _ = run(["build", "--source", str(pickapic_dir), "--out", str(out), "--num-pairs", "6"], capsys)
    assert code == 0 and "already complete" in stdout
    grid = tmp_path / "grid.png"
    code, stdout, _ = run(["inspect", str(out), "--grid", str(grid), "--rows", "4"], capsys)
    assert code == 0 and "winter" in stdout
    with Image.open(grid) as img:
        assert img.size[0] == 512 and img.size[1] > 4 * 256


def test_inspect_reports_a_tampered_shard(tmp_path, pickapic_dir, capsys):
    out = tmp_path / "out"
    run(["build", "--source", str(pickapic_dir), "--out", str(out), "--num-pairs", "6"], capsys)
    manifest = json.loads((out / "manifest.json").read_text())
    shard = out / manifest["shards"][0]["path"]
    shard.write_bytes(shard.read_bytes())  # same bytes: still fine
    code, _, _ = run(["inspect", str(out)], capsys)
    assert code == 0
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(shard).drop_columns(["style"]), shard)
    code, stdout, _ = run(["inspect", str(out)], capsys)
    assert code == 1 and "sha256" in stdout and "missing column(s) style" in stdout


def test_inspect_without_manifest_is_exit_2(tmp_path, capsys):
    code, _, err = run(["inspect", str(tmp_path)], capsys)
    assert code == 2 and "no manifest.json" in err


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "styleprefs"
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "build" in result.stdout


@pytest.fixture
def built(tmp_path, pickapic_dir, capsys) -> Path:
    out = tmp_path / "built"
    run(["build", "--source", str(pickapic_dir), "--out", str(out), "--num-pairs", "4"], capsys)
    return out


@pytest.mark.parametrize("args, expected", [
    (lambda d, t: ["push", str(t), "me/x", "--dry-run"], "no manifest.json"),
    (lambda d, t: ["push", str(d), "not a repo", "--dry-run"], "malformed repo id"),
    (lambda d, t: ["filter-unsafe", str(t)], "no manifest.json"),
    (lambda d, t: ["filter-unsafe", str(d), "--blocklist", str(t / "missing.txt")], "missing.txt"),
])
def test_publish_and_filter_bad_input(args, expected, built, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(args(built, empty), capsys)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1


def test_push_dry_run_lists_the_plan(built, capsys):
    code, out, _ = run(["push", str(built), "me/style-prefs", "--config-name", "winter", "--dry-run"], capsys)
    assert code == 0
    assert "me/style-prefs:winter/train-00000-of-00001.parquet" in out and "me/style-prefs:README.md" in out
    assert "quarantine" not in out.split("\n")[1]


def test_filter_unsafe_reports_categories(built, tmp_path, capsys):
    blocklist = tmp_path / "b.txt"
    blocklist.write_text("violence\tramen\n")
    code, out, _ = run(["filter-unsafe", str(built), "--blocklist", str(blocklist)], capsys)
    assert code == 0 and "violence" in out and "of 4" in out


def test_train_flags_are_the_config_fields():
    from styleprefs.cli.train_command import train
    from styleprefs.trainer.config import config_options

    import inspect

    assert set(inspect.signature(train).parameters) == {o.name for o in config_options()} | {"config"}


@pytest.mark.parametrize("args, expected", [
    (["train", "--stage", "kto", "--data", "d", "--out", "o"], "stage"),
    (["train", "--data", "d", "--out", "o"], "stage"),
    (["train", "--config", "/nonexistent.yaml", "--stage", "dpo", "--data", "d", "--out", "o"], "nonexistent.yaml"),
])
def test_train_bad_input_is_exit_2(args, expected, capsys):
    code, _, err = run(args, capsys)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1


def test_yaml_config_and_flags_merge(tmp_path):
    from styleprefs.trainer.config import TrainConfig

    path = tmp_path / "run.yaml"
    path.write_text("stage: rpo\ndata: d\nout: o\nbeta: 2000\ntau: 0.5\n")
    cfg = TrainConfig.from_yaml_and_overrides(path, {"tau": 2.0, "beta": None})
    assert (cfg.stage, cfg.beta, cfg.tau) == ("rpo", 2000.0, 2.0)


@pytest.mark.parametrize("record, problem", [
    (b"model: [tiny\n", "cannot be read"),        # broken YAML
    (b"- tiny\n", "not a mapping"),
    (b"model: \xff\xfe\n", "cannot be read"),     # not UTF-8
])
def test_init_with_a_corrupt_run_record_is_one_line(tmp_path, record, problem):
    from styleprefs.errors import StyleprefsError
    from styleprefs.trainer.config import CONFIG_FILE, TrainConfig

    (tmp_path / CONFIG_FILE).write_bytes(b"model: tiny\n")
    assert TrainConfig(stage="rpo", data="d", out="o", init=str(tmp_path)).resolved().model == "tiny"
    (tmp_path / CONFIG_FILE).write_bytes(record)
    with pytest.raises(StyleprefsError) as error:
        TrainConfig(stage="rpo", data="d", out="o", init=str(tmp_path)).resolved()
    message = str(error.value)
    assert str(tmp_path / CONFIG_FILE) in message and problem in message and "\n" not in message
