"""Implicit reward accuracy, the report, and the `styleprefs eval` command line, end to end on tiny models."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import typer
from PIL import Image

from styleprefs.cli.eval_command import eval_app
from styleprefs.errors import StyleprefsError
from styleprefs.eval.implicit_acc import implicit_accuracy
from styleprefs.eval.report import make_report

STEPS = 2



def picture(seed: int, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = np.zeros((size, size, 3), np.uint8)
    arr[: size // 2] = rng.integers(40, 255, 3)
    arr[size // 2:] = rng.integers(0, 200, 3)
    return Image.fromarray(arr)


def jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [{"caption": f"a picture number {i}", "jpg_0": jpeg(picture(2 * i)), "jpg_1": jpeg(picture(2 * i + 1)),
             "label_0": float(i % 2), "label_1": float(1 - i % 2)} for i in range(5)]
    rows.append({**rows[0], "label_0": 0.5, "label_1": 0.5})  # a tie: dropped
    path = tmp_path_factory.mktemp("pairs") / "train-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture(scope="module")
def shifted_unet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A UNet folder: the tiny UNet with small random weight changes."""
    from styleprefs.trainer.families.unet import StableDiffusion
    from styleprefs.trainer.models import load_denoiser

    unet = load_denoiser("tiny", StableDiffusion())
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    folder = tmp_path_factory.mktemp("unet") / "unet"
    unet.save_pretrained(folder, safe_serialization=True)
    return folder


# ---------------------------------------------------------------------------------------------- implicit acc


def test_policy_equal_to_reference_has_zero_logits(pairs: Path) -> None:
    r = implicit_accuracy("tiny", "tiny", pairs, num_draws=2, show_progress=False)
    assert r["n_pairs"] == 5 and r["ties_dropped"] == 1 and r["n_draws"] == 2
    assert r["implicit_acc"] == 0.0 and r["ties"] == 10 and r["logit_mean"] == 0.0  # zero logits count as wrong


def test_implicit_accuracy_is_seeded_and_batch_size_free(pairs: Path, shifted_unet: Path, tmp_path: Path) -> None:
    a = implicit_accuracy(str(shifted_unet), "tiny", pairs, num_draws=3, batch_size=5, show_progress=False,
                          out=tmp_path / "acc.json")
    b = implicit_accuracy(str(shifted_unet), "tiny", pairs, num_draws=3, batch_size=2, show_progress=False)
    assert 0.0 <= a["implicit_acc"] <= 1.0 and a["ties"] == 0 and len(a["per_draw_acc"]) == 3
    assert a["implicit_acc"] == b["implicit_acc"] and a["logit_mean"] == pytest.approx(b["logit_mean"], rel=1e-4)
    assert json.loads((tmp_path / "acc.json").read_text())["implicit_acc"] == a["implicit_acc"]
    swapped = implicit_accuracy("tiny", str(shifted_unet), pairs, num_draws=3, show_progress=False)
    assert swapped["logit_mean"] == pytest.approx(-a["logit_mean"], rel=1e-4)  # reference and policy swap signs


def test_implicit_accuracy_bad_input(pairs: Path) -> None:
    with pytest.raises(StyleprefsError, match="no pairs in the range"):
        implicit_accuracy("tiny", "tiny", pairs, offset=100, show_progress=False)


# ---------------------------------------------------------------------------------------------- command line


def run(args: list[str], capsys) -> tuple[int, str, str]:
    """Like ``styleprefs.cli.app.main`` with the eval group: a StyleprefsError is exit code 2."""
    from styleprefs.cli import app as app_module

    if any(group.name == "eval" for group in app_module.app.registered_groups):
        root = app_module.app
    else:
        root = typer.Typer()
        root.add_typer(eval_app, name="eval")
    try:
        code = root(args=args, standalone_mode=False)
    except StyleprefsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    captured = capsys.readouterr()
    return code or 0, captured.out, captured.err


@pytest.mark.parametrize("command", ["generate", "style-fid", "rewards", "winrate", "vendi", "implicit-acc", "report"])
def test_help_on_every_eval_command(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        eval_app(args=[command, "--help"])
    assert exc.value.code == 0 and "Usage" in capsys.readouterr().out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    prompts = root / "prompts.txt"
    prompts.write_text("a red fox in the snow\na blue house\n")
    return root / "base", root / "tuned", prompts


def test_eval_commands_end_to_end_and_report(runs, pairs: Path, shifted_unet: Path, capsys) -> None:
    base, tuned, prompts = runs
    for out in (base, tuned):
        code, out_text, err = run(["eval", "generate", "--model", "tiny", "--prompts", str(prompts), "--out", str(out),
                                   "--images-per-prompt", "2", "--steps", str(STEPS), "--device", "cpu"], capsys)
        assert code == 0 and "4 image(s) generated" in out_text, err
    code, out_text, err = run(["eval", "style-fid", "--data", str(pairs), "--generated", str(base), "--device", "cpu"],
                              capsys)
    assert code == 2 and "--features random" in err and "--inception" in err
    code, out_text, _ = run(["eval", "style-fid", "--data", str(pairs), "--generated", str(base), "--features",
                             "random", "--device", "cpu"], capsys)
    assert code == 0 and "NOT comparable" in out_text and "N = 4 per set" in out_text and "4 < 2048" in out_text
    for out in (base, tuned):
        code, out_text, _ = run(["eval", "rewards", str(out), "--scorer", "clip=tiny-clip", "--scorer",
                                 "aesthetic=tiny-aesthetic", "--device", "cpu"], capsys)
        assert code == 0 and "clip" in out_text
        assert run(["eval", "vendi", str(out), "--embedding", "clip", "--clip-model", "tiny-clip", "--device", "cpu"],
                   capsys)[0] == 0
    code, out_text, _ = run(["eval", "winrate", str(tuned), str(base), "--scorer", "clip", "--n-bootstrap", "100",
                             "--device", "cpu"], capsys)
    assert code == 0 and "0.500" in out_text  # the same model: every prompt a tie
    code, out_text, _ = run(["eval", "implicit-acc", "--model", str(shifted_unet), "--ref", "tiny", "--data",
                             str(pairs), "--draws", "2", "--device", "cpu", "--out", str(tuned / "implicit_acc.json")],
                            capsys)
    assert code == 0 and "implicit accuracy" in out_text
    code, _, err = run(["eval", "rewards", str(base), "--scorer", "nope"], capsys)
    assert code == 2 and "unknown scorer 'nope'" in err

    report_path = base.parent / "report" / "report.md"
    code, out_text, _ = run(["eval", "report", str(base), str(tuned), "--out", str(report_path)], capsys)
    assert code == 0
    text = report_path.read_text()
    assert "| Method | Style FID ↓ | KID ↓ | Aesthetic ↑ | CLIP ↑ | Vendi ↑ | Implicit acc ↑" in text
    assert "| base |" in text and "| tuned |" in text and "Win vs base (CLIP) ↑" in text
    assert "not comparable to published FID" in text and "same seed in every column" in text
    data = json.loads(report_path.with_suffix(".json").read_text())
    assert data["table"]["tuned"]["Win vs base (CLIP)"] == 0.5 and "Style FID" not in data["table"]["tuned"]
    for name in ("report_grid.png", "report_bars.png"):
        with Image.open(report_path.parent / name) as img:
            assert img.width > 100 and img.height > 100


def test_report_without_results_and_bad_runs(tmp_path: Path) -> None:
    with pytest.raises(StyleprefsError, match="does not exist"):
        make_report([tmp_path / "missing"], tmp_path / "r.md")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StyleprefsError, match="no metrics found"):
        make_report([tmp_path / "empty"], tmp_path / "r.md")
    assert not (tmp_path / "r.md").exists()
