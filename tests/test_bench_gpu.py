"""`bench/gpu.py --model tiny --device cpu`: the smoke run prints every row of both tables.

The --compile rows run with TORCHDYNAMO_DISABLE=1 (torch.compile then runs the module eagerly): compiling
every variant takes minutes on one core. That --compile reaches torch.compile is tested in test_gpu_settings.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _expected_rows() -> list[str]:
    rows = [f"{editor} images/s, batch 1" for editor in ("instruct-pix2pix", "prompt-diffusion")]
    rows.append("cache pairs/s")
    rows += [f"{stage} pairs/s per GPU, {cache}, {compile}" for stage in ("DPO", "RPO", "SFT")
             for cache in ("cached", "re-encoding") for compile in ("eager", "--compile")]
    rows += [f"GPU-hours, 2000-step {stage} run at 2048 pairs/step" for stage in ("DPO", "RPO", "SFT")]
    return rows


def test_smoke_run_prints_every_row() -> None:
    env = os.environ | {"TORCHDYNAMO_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--model", "tiny", "--device", "cpu", "--editor-steps", "1",
         "--batches", "1", "--pairs", "4", "--train-batch", "2", "--steps", "1"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    sections = result.stdout.strip().split("\n\n")
    assert [s.splitlines()[0].split(" at ")[0] for s in sections] == ["SD1.5 (tiny)", "SDXL (tiny)"]
    for section in sections:
        lines = section.splitlines()[2:]
        for row in _expected_rows():
            assert sum(line.startswith(row) for line in lines) == 1, (row, section)
        assert all(line.rstrip().endswith("-") for line in lines)  # no CUDA: no peak memory
    sd15, sdxl = sections
    assert sum("GPU-hours, 10000 pairs built with" in line for line in sd15.splitlines()) == 2
    assert "n/a: the editors are SD1.5 models" in sdxl and "10000 pairs built" not in sdxl
