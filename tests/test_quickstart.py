"""`styleprefs quickstart`: the whole pipeline offline; report files and numbers; reuse; the page renders."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from styleprefs.quickstart import quickstart


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quickstart")
    quickstart(out, console=Console(quiet=True))
    return out


def test_report_files_and_numbers(report):
    for name in ("report.md", "report.html", "report.json", "report_grid.png", "report_bars.png", "dataset_grid.png",
                 "runs/sft/curves.png", "runs/rpo/curves.png", "runs/rpo/model_index.json"):
        assert (report / name).is_file(), name
    result = json.loads((report / "report.json").read_text())
    assert result["labels"] == ["base (tiny)", "SFT", "SFT+RPO"]
    table = result["table"]
    for label in result["labels"]:
        assert math.isfinite(table[label]["Style FID"]) and math.isfinite(table[label]["KID"])
    for label in ("SFT", "SFT+RPO"):
        assert 0.0 <= table[label]["Implicit acc"] <= 1.0
    text = (report / "report.md").read_text()
    assert "not comparable to published FID" in text
    page = (report / "report.html").read_text()
    for src in ("dataset_grid.png", "runs/sft/curves.png", "runs/rpo/curves.png", "report_grid.png"):
        assert f"src='{src}'" in page
    assert f"init: {report / 'runs' / 'sft'}" in (report / "runs" / "rpo" / "train_config.yaml").read_text()


def test_second_run_reuses_finished_stages(report):
    console = Console(record=True, width=200)
    quickstart(report, console=console)
    lines = console.export_text().splitlines()
    reused = [line for line in lines if line.endswith("(reused)")]
    assert len(reused) >= 9  # build, filter, both trainings, three FIDs, two implicit accuracies


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
