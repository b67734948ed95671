"""Built datasets read by the public Pick-a-Pic loaders we claim to support.

Each loader below is our own restatement of how that project's code uses the columns (not its code):

- Diffusion-DPO ``train.py``: loads the split with ``datasets``, keeps rows whose ``label_0`` is 0 or 1
  (drops ties), and per row puts the preferred image first (swaps when ``label_0 == 0``), decoding
  ``jpg_0``/``jpg_1`` bytes with PIL and tokenising ``caption``.
- PickScore ``trainer/datasetss/clip_hf_dataset.py``: optionally keeps only ``are_different`` /
  ``has_label`` rows, then per row returns the caption, both decoded images and tensors of ``label_0``,
  ``label_1`` and ``num_example_per_prompt``; the collate concatenates them and the criterion divides by
  ``num_example_per_prompt``.
"""

from __future__ import annotations

import io
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from styleprefs.build import BuildConfig, build_dataset
from styleprefs.card import COLUMN_MEANINGS
from styleprefs.schema import DATASET_SCHEMA, PICKAPIC_FIELDS
from styleprefs.sources import open_source

PICKAPIC_V2_COLUMNS = {
    "caption": "string", "jpg_0": "binary", "jpg_1": "binary", "label_0": "double", "label_1": "double",
    "image_0_uid": "string", "image_1_uid": "string", "best_image_uid": "string", "model_0": "string",
    "model_1": "string", "ranking_id": "int64", "user_id": "int64", "num_example_per_prompt": "int64",
    "image_0_url": "string", "image_1_url": "string", "has_label": "bool", "are_different": "bool",
    "created_at": "timestamp[ns]",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from conftest import write_pickapic_parquet

    root = tmp_path_factory.mktemp("loaders")
    source = write_pickapic_parquet(root / "pickapic")
    out = root / "out"
    build_dataset(BuildConfig(source=str(source), num_pairs=12, shard_size=5), out, show_progress=False)
    return source, out


def _load(out: Path) -> datasets.Dataset:
    """What ``load_dataset(NAME, split="train")`` gives for the folder as pushed (README configs). The cache is the
    folder's own: the shared one can hand back rows of an earlier run's folder of the same name."""
    return datasets.load_dataset(str(out), split="train", cache_dir=str(out.parent / f".{out.name}-datasets-cache"))


def _pixels(data: bytes) -> torch.Tensor:
    image = Image.open(io.BytesIO(data)).convert("RGB").resize((32, 32))
    return torch.from_numpy(np.asarray(image, np.float32) / 127.5 - 1.0).permute(2, 0, 1)


def diffusion_dpo_rows(dataset: datasets.Dataset) -> list[dict]:
    """Diffusion-DPO's data handling: tie filter on ``label_0`` alone, winner first, 6-channel pixels."""
    keep = [i for i, label_0 in enumerate(dataset["label_0"]) if label_0 in (0, 1)]
    dataset = dataset.select(keep)

    def transform(batch: dict) -> dict:
        pixels = []
        for jpg_0, jpg_1, label_0 in zip(batch["jpg_0"], batch["jpg_1"], batch["label_0"]):
            first, second = (jpg_1, jpg_0) if label_0 == 0 else (jpg_0, jpg_1)
            pixels.append(torch.cat([_pixels(first), _pixels(second)]))
        return {"pixel_values": pixels, "caption": [str(c) for c in batch["caption"]],
                "winner": [j1 if l0 == 0 else j0 for j0, j1, l0 in zip(batch["jpg_0"], batch["jpg_1"], batch["label_0"])]}

    dataset.set_transform(transform)
    return [dataset[i] for i in range(len(dataset))]


def pickscore_batch(dataset: datasets.Dataset, *, keep_only_different: bool, keep_only_with_label: bool) -> dict:
    """PickScore's CLIP HF dataset: filters, per-row tensors, collate by concatenation."""
    if keep_only_different:
        dataset = dataset.filter(lambda x: x["are_different"])
    if keep_only_with_label:
        dataset = dataset.filter(lambda x: x["has_label"])
    items = []
    for example in dataset:
        items.append({
            "caption": example["caption"],
            "pixel_values_0": _pixels(example["jpg_0"])[None],
            "pixel_values_1": _pixels(example["jpg_1"])[None],
            "label_0": torch.tensor(example["label_0"])[None],
            "label_1": torch.tensor(example["label_1"])[None],
            "num_example_per_prompt": torch.tensor(example["num_example_per_prompt"])[None],
        })
    return {key: torch.cat([item[key] for item in items]) for key in items[0] if key != "caption"}


def test_every_pickapic_v2_column_with_its_type(built):
    _, out = built
    schema = pq.read_schema(next((out / "data").glob("*.parquet")))
    assert {f.name: str(f.type) for f in PICKAPIC_FIELDS} == PICKAPIC_V2_COLUMNS
    assert {name: str(schema.field(name).type) for name in PICKAPIC_V2_COLUMNS} == PICKAPIC_V2_COLUMNS


def test_every_column_has_a_card_meaning():
    assert [f.name for f in DATASET_SCHEMA if not COLUMN_MEANINGS.get(f.name)] == []


def test_carried_columns_come_from_the_source(built):
    source, out = built
    originals = {f"pickapic:{p.key}": p for p in open_source(str(source))}
    rows = pq.read_table(out / "data").to_pylist()
    assert rows
    for row in rows:
        pair = originals[row["source"]]
        edited = int(row["source_edited"][-1])
        original_slot = 0 if row["label_0"] == 0.0 else 1
        assert row["num_example_per_prompt"] == pair.num_example_per_prompt
        assert row[f"image_{original_slot}_url"] == (pair.image_0_url, pair.image_1_url)[edited]
        assert row[f"image_{1 - original_slot}_url"] is None  # the edit has no URL


def test_sources_without_them_give_one_and_null(tmp_path):
    out = tmp_path / "out"
    build_dataset(BuildConfig(source="sample", num_pairs=3), out, show_progress=False)
    table = pq.read_table(out / "data")
    assert set(table.column("num_example_per_prompt").to_pylist()) == {1}
    assert table.column("image_0_url").null_count == table.column("image_1_url").null_count == 3


def test_diffusion_dpo_loader_reads_it(built):
    _, out = built
    dataset = _load(out)
    rows = diffusion_dpo_rows(dataset)
    assert len(rows) == len(dataset) > 0  # no ties: nothing dropped
    for row, record in zip(rows, dataset.with_format(None)):
        assert row["pixel_values"].shape == (6, 32, 32)
        winner_slot = 0 if record["label_0"] == 1.0 else 1
        assert record[f"image_{winner_slot}_uid"] == record["best_image_uid"]
        assert row["winner"] == record[f"jpg_{winner_slot}"]
        assert row["caption"] == record["caption"]


@pytest.mark.parametrize("keep_only_different,keep_only_with_label", [(False, False), (True, True)])
def test_pickscore_loader_reads_it(built, keep_only_different, keep_only_with_label):
    _, out = built
    dataset = _load(out)
    batch = pickscore_batch(dataset, keep_only_different=keep_only_different,
                            keep_only_with_label=keep_only_with_label)
    n = len(dataset)
    assert batch["pixel_values_0"].shape == batch["pixel_values_1"].shape == (n, 3, 32, 32)
    assert batch["label_0"].is_floating_point() and batch["num_example_per_prompt"].dtype == torch.int64
    assert torch.all(batch["label_0"] + batch["label_1"] == 1.0)
    assert torch.all(batch["num_example_per_prompt"] >= 1)
