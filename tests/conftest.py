"""Fixtures: small Pick-a-Pic-schema Parquet and webdataset sources built on the fly."""

from __future__ import annotations

import io
import os
import tarfile
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

# Tiny models run far faster on one thread, above all when other processes share the CPU; set before
# torch is imported by any test module, and inherited by the subprocesses tests start.
os.environ.setdefault("OMP_NUM_THREADS", "1")

CAPTIONS = [
    "a cozy cabin by a lake, golden hour, highly detailed, trending on artstation",
    "portrait of an old fisherman, oil painting, 8k",
    "un château médiéval sur une colline ☁️ — brume matinale",
    "cyberpunk street at night with neon signs and rain",
    "a bowl of ramen, studio photo",
    "   ",  # blank caption: rejected
    "a red fox in a snowy forest",
    "a " + "very " * 120 + "long caption",
    "n.u.d.e woman on a beach, photorealistic",  # unsafe: quarantined by the text filter
]
CORRUPT_ROW = 3  # jpg_0 and jpg_1 are truncated bytes
TIE_ROWS = (1, 4)
UNSAFE_ROW = 8


def image_bytes(seed: int, fmt: str = "JPEG", size: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    arr = np.zeros((size, size, 3), np.uint8)
    arr[: size // 2] = rng.integers(60, 255, 3)
    arr[size // 2 :] = rng.integers(0, 200, 3)
    y, x = rng.integers(0, size - 16, 2)
    arr[y : y + 16, x : x + 16] = rng.integers(0, 255, 3)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def pickapic_rows(n: int, start: int = 0) -> list[dict]:
    rows = []
    for i in range(start, start + n):
        label_0 = 0.5 if i % len(CAPTIONS) in TIE_ROWS else float(i % 2)
        jpg_0, jpg_1 = image_bytes(2 * i), image_bytes(2 * i + 1, "PNG" if i % 3 == 0 else "JPEG")
        if i % len(CAPTIONS) == CORRUPT_ROW:
            jpg_0, jpg_1 = jpg_0[:40], jpg_1[:40]
        rows.append({
            "caption": CAPTIONS[i % len(CAPTIONS)] + (f" #{i // len(CAPTIONS)}" if i >= len(CAPTIONS) else ""),
            "jpg_0": jpg_0, "jpg_1": jpg_1,
            "label_0": label_0, "label_1": 1.0 - label_0 if label_0 != 0.5 else 0.5,
            "image_0_uid": f"uid-{i}-0", "image_1_uid": f"uid-{i}-1",
            "image_0_url": f"https://images.example/uid-{i}-0.png", "image_1_url": None if i % 4 == 0 else f"https://images.example/uid-{i}-1.png",
            "best_image_uid": f"uid-{i}-{0 if label_0 == 1.0 else 1}",
            "model_0": "SDXL-beta", "model_1": "dreamlike",
            "ranking_id": 1000 + i, "user_id": i % 5, "num_example_per_prompt": 1 + i % 3,
            "has_label": True, "are_different": True,
            "created_at": datetime(2023, 4, 1) + timedelta(hours=i),
        })
    return rows


def write_pickapic_parquet(folder: Path, n_files: int = 2, rows_per_file: int = 12) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(n_files):
        table = pa.Table.from_pylist(pickapic_rows(rows_per_file, f * rows_per_file))
        pq.write_table(table, folder / f"train-{f:05d}-of-{n_files:05d}.parquet")
    return folder


def write_webdataset(folder: Path, n: int = 10) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / "00000.tar", "w") as tar:
        for row_i, row in enumerate(pickapic_rows(n)):
            members = {"original_prompt.txt": row["caption"].encode(), "jpg_0.jpg": row["jpg_0"],
                       "jpg_1.jpg": row["jpg_1"], "label_0.txt": str(row["label_0"]).encode(),
                       "label_1.txt": str(row["label_1"]).encode()}
            for name, data in members.items():
                info = tarfile.TarInfo(f"{row_i:06d}.{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return folder


@pytest.fixture(autouse=True)
def torch_threads_unchanged():
    """A test that leaves torch on another thread count changes later tests' floats (bit-for-bit resume
    checks compare an in-process run with a one-thread subprocess)."""
    import torch

    before = torch.get_num_threads()
    yield
    assert torch.get_num_threads() == before, f"the test left torch on {torch.get_num_threads()} threads, not {before}"


@pytest.fixture
def pickapic_dir(tmp_path: Path) -> Path:
    return write_pickapic_parquet(tmp_path / "pickapic")


@pytest.fixture
def wds_dir(tmp_path: Path) -> Path:
    return write_webdataset(tmp_path / "wds")


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for tiny models built by the tests themselves."""
    return tmp_path_factory.mktemp("tiny-cache")
