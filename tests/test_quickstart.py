"""`styleprefs quickstart`: the whole pipeline offline; report files and numbers; reuse; the page renders."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from styleprefs.quickstart import Plan, quickstart, seed_spread


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quickstart")
    quickstart(out, plan=Plan.reduced(), console=Console(quiet=True))
    return out


def test_report_files_and_numbers(report):
    for name in ("report.md", "report.html", "report.json", "report_grid.png", "report_bars.png", "dataset_grid.png",
                 "runs/sft/curves.png", "runs/rpo/curves.png", "runs/rpo/model_index.json"):
        assert (report / name).is_file(), name
    result = json.loads((report / "report.json").read_text())
    assert result["labels"] == ["base (mini)", "SFT", "SFT+RPO"]
    table = result["table"]
    for label in result["labels"]:
        for column in ("Style FID", "KID", "Winter score"):
            assert math.isfinite(table[label][column]), (label, column)
    for label in ("SFT", "SFT+RPO"):
        assert 0.0 <= table[label]["Implicit acc"] <= 1.0
    assert "mini FID" in (report / "report.md").read_text()
    page = (report / "report.html").read_text()
    for src in ("dataset_grid.png", "runs/sft/curves.png", "runs/rpo/curves.png", "report_grid.png"):
        assert f"src='{src}'" in page
    rpo_config = (report / "runs" / "rpo" / "train_config.yaml").read_text()
    assert f"init: {report / 'runs' / 'sft'}" in rpo_config and "model: mini" in rpo_config


def test_held_out_pairs_are_scenes_training_never_saw(report):
    import pyarrow.parquet as pq

    def sources(folder: Path) -> set[str]:
        return set(pq.read_table(folder / "data", columns=["source"]).column("source").to_pylist())

    assert sources(report / "data-heldout") and not sources(report / "data") & sources(report / "data-heldout")


def test_sft_on_winter_makes_the_mini_base_draw_snow(report):
    """The winter score rises from base to SFT by more than its spread over generation seeds, and the images
    themselves show it: more snow-white, grey-free pixels in the lower half (the ground)."""
    base, sft = (seed_spread(report / "generated" / name, "winter") for name in ("base", "sft"))
    assert sft["mean"] - base["mean"] > max(base["spread"], sft["spread"])
    assert min(sft["per_seed"]) > max(base["per_seed"])
    snow = {name: _snow_fraction(report / "generated" / name) for name in ("base", "sft")}
    assert snow["sft"] > snow["base"] + 0.05, snow


def _snow_fraction(folder: Path) -> float:
    fractions = []
    for path in sorted((folder / "images").glob("*.png")):
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"), dtype=np.int16)
        ground = rgb[rgb.shape[0] // 2:]
        white = (ground.min(-1) > 190) & (ground.max(-1) - ground.min(-1) < 40)
        fractions.append(white.mean())
    return float(np.mean(fractions))


def test_second_run_reuses_finished_stages(report):
    console = Console(record=True, width=200)
    quickstart(report, plan=Plan.reduced(), console=console)
    lines = console.export_text().splitlines()
    reused = [line for line in lines if line.endswith("(reused)")]
    assert len(reused) == 13  # 2 builds, filter, 2 trainings, 3 FIDs, 3 style scores, 2 implicit accuracies


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_page_renders_in_headless_chromium(report):
    shot = report / "screenshot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tempfile.mkdtemp()}", "--window-size=1200,3000", f"--screenshot={shot}"]
    subprocess.run(["chromium", *flags, (report / "report.html").as_uri()], check=True, capture_output=True, timeout=120)
    with Image.open(shot) as img:
        colours = img.convert("RGB").resize((60, 150)).getcolors(60 * 150)
    assert colours is not None and len(colours) > 200  # images and curves drawn, not a blank page
