"""The trained mini models load through every command that takes a model, as a user would pass them:
`train --model mini`, `build --editor-model` (an improver trained from mini) with `--clip-model mini-clip`,
`eval generate --model mini`, `eval style-fid --features mini` and `eval rewards --scorer clip=mini-clip`."""

from __future__ import annotations

import json
import math
from pathlib import Path

from styleprefs.cli.app import main


def run(*args) -> None:
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        assert exc.code == 0, args


def test_mini_and_mini_clip_load_through_every_command(tmp_path: Path) -> None:
    data, improver, edited, gen = (tmp_path / n for n in ("data", "improver", "edited", "gen"))
    run("build", "--source", "sample", "--num-pairs", "8", "--shard-size", "8", "--out", data)
    run("train", "--stage", "improve", "--data", data, "--out", improver, "--model", "mini", "--resolution", 64,
        "--batch-size", 2, "--max-steps", 1, "--checkpoint-every", 0, "--report-to", "none")
    assert json.loads((improver / "unet" / "config.json").read_text())["in_channels"] == 8

    run("build", "--source", "sample", "--num-pairs", "2", "--out", edited, "--editor", "improve",
        "--editor-model", improver, "--editor-steps", 2, "--quality-gate", "--clip-model", "mini-clip",
        "--max-tries", 1)
    manifest = json.loads((edited / "manifest.json").read_text())
    assert manifest["config"]["editor"]["name"] == "improve"
    assert "mini-clip" in json.dumps(manifest["config"]), "the gate's CLIP is recorded"
    assert manifest["counts"]["read"] >= 2

    run("eval", "generate", "--model", "mini", "--prompts", data, "--out", gen, "--limit", 2,
        "--images-per-prompt", 1, "--steps", 2, "--device", "cpu")
    assert len(list((gen / "images").glob("*.png"))) == 2
    run("eval", "style-fid", "--data", data, "--generated", gen, "--features", "mini", "--kid-subset-size", 2,
        "--device", "cpu")
    fid = json.loads((gen / "style_fid.json").read_text())
    assert fid["features"]["name"].startswith("mini") and math.isfinite(fid["fid"])
    run("eval", "rewards", gen, "--scorer", "clip=mini-clip", "--device", "cpu")
    rewards = json.loads((gen / "rewards.json").read_text())
    assert math.isfinite(rewards["clip"]["mean"])
