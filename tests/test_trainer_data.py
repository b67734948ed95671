"""Trainer data side: pairs from labels, preprocessing, tiny SD/SDXL encoding, the latent cache and batches."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import pickapic_rows, write_pickapic_parquet
from PIL import Image
from safetensors.torch import load_file

from styleprefs.build import BuildConfig, build_dataset
from styleprefs.errors import StyleprefsError
from styleprefs.trainer import cache as cache_module
from styleprefs.trainer.cache import PairBatches, build_cache, cache_dir, clip_dir
from styleprefs.trainer.data import pair_augmentation, preprocess, read_pairs
from styleprefs.trainer.families.unet import StableDiffusion, sdxl_time_ids
from styleprefs.trainer.models import load_components, load_denoiser, resolve_model


FP16 = {"rtol": 2e-3, "atol": 2e-3}
BF16 = {"rtol": 1e-2, "atol": 1e-2}  # latent std is stored in bfloat16


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trainer-data")
    source = write_pickapic_parquet(root / "pickapic")
    out = root / "winter"
    build_dataset(BuildConfig(source=str(source), num_pairs=6, shard_size=4), out, show_progress=False)
    return out


@pytest.fixture(scope="module")
def sd():
    return load_components("tiny")


@pytest.fixture(scope="module")
def sdxl():
    return load_components("tiny-sdxl")


@pytest.fixture(scope="module")
def clip_cache(dataset: Path) -> Path:
    return build_cache(dataset, "tiny", 64, clip_model="tiny", shard_pairs=4, show_progress=False)


def _write_rows(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _jpeg(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _assert_batches_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], **(BF16 if name == "latent_std" else FP16), msg=name)


# --- read_pairs ----------------------------------------------------------------------------------

def test_read_pairs_takes_winner_from_labels_and_drops_ties(tmp_path: Path) -> None:
    rows = pickapic_rows(8)  # rows 1 and 4 are 0.5/0.5 ties
    pairs, stats = read_pairs(_write_rows(tmp_path / "p.parquet", rows))
    assert stats == {"read": 8, "ties_dropped": 2, "kept": 6}
    assert [p.index for p in pairs] == [0, 2, 3, 5, 6, 7]
    for pair in pairs:
        row = rows[pair.index]
        winner = "jpg_0" if row["label_0"] > row["label_1"] else "jpg_1"
        assert (pair.winner, pair.loser) == (row[winner], row["jpg_1" if winner == "jpg_0" else "jpg_0"])
        assert pair.caption == row["caption"]


def test_random_ties_keep_every_row_with_a_seeded_winner(tmp_path: Path) -> None:
    rows = pickapic_rows(8)
    path = _write_rows(tmp_path / "p.parquet", rows)
    dropped, _ = read_pairs(path)
    pairs, stats = read_pairs(path, ties="random", seed=3)
    assert stats == {"read": 8, "ties_dropped": 0, "kept": 8}
    assert [p for p in pairs if p.index not in (1, 4)] == dropped
    assert read_pairs(path, ties="random", seed=3)[0] == pairs
    tie_winners = {read_pairs(path, ties="random", seed=s)[0][1].winner for s in range(16)}
    assert tie_winners == {rows[1]["jpg_0"], rows[1]["jpg_1"]}


def test_read_pairs_of_a_styleprefs_dataset(dataset: Path) -> None:
    pairs, stats = read_pairs(dataset)
    assert stats == {"read": 6, "ties_dropped": 0, "kept": 6}
    table = pa.concat_tables(pq.read_table(p) for p in sorted((dataset / "data").glob("*.parquet")))
    for pair, row in zip(pairs, table.to_pylist()):
        assert pair.winner == row["jpg_0" if row["label_0"] == 1.0 else "jpg_1"]


def test_read_pairs_errors_are_one_line(tmp_path: Path) -> None:
    rows = [{k: v for k, v in row.items() if k != "label_1"} for row in pickapic_rows(2)]
    with pytest.raises(StyleprefsError, match="missing column.*label_1") as missing:
        read_pairs(_write_rows(tmp_path / "p.parquet", rows))
    with pytest.raises(StyleprefsError, match="does not exist") as absent:
        read_pairs(tmp_path / "nowhere")
    with pytest.raises(StyleprefsError, match="ties"):
        read_pairs(tmp_path / "p.parquet", ties="keep")
    assert "\n" not in str(missing.value) + str(absent.value)


# --- preprocessing --------------------------------------------------------------------------------

def test_preprocess_resizes_crops_and_flips() -> None:
    image = Image.open(io.BytesIO(_jpeg(80, 48, 0)))
    pixels, original, crop = preprocess(image, 32, None, False)
    assert pixels.shape == (3, 32, 32) and -1 <= pixels.min() and pixels.max() <= 1
    assert original == (48, 80) and crop == (0, 10)  # resized to 32x53, centred
    flipped, _, flipped_crop = preprocess(image, 32, None, True)
    assert torch.equal(flipped, pixels.flip(-1))
    assert flipped_crop == (0, 53 - 32 - 10)  # the same crop, measured from the mirrored image's left
    _, _, corner = preprocess(image, 32, (0, 21), False)
    assert corner == (0, 21)


def test_pair_augmentation_is_shared_by_both_images_and_deterministic() -> None:
    sizes = ((48, 80), (64, 160))  # resized to 32x53 and 32x80: horizontal room 21 and 48
    flips = set()
    for epoch in range(8):
        crop_w, crop_l, flip = pair_augmentation(0, 5, epoch, sizes, 32, True, True)
        assert (crop_w, crop_l, flip) == pair_augmentation(0, 5, epoch, sizes, 32, True, True)
        assert crop_w[0] == crop_l[0] == 0
        assert abs(crop_w[1] / 21 - crop_l[1] / 48) <= 0.5 / 21 + 0.5 / 48  # same relative position
        assert pair_augmentation(0, 5, epoch, sizes, 32, False, True) == (None, None, flip)
        assert pair_augmentation(0, 5, epoch, sizes, 32, True, False)[2] is False
        flips.add(flip)
    assert flips == {True, False}


# --- models ---------------------------------------------------------------------------------------

def test_encode_prompts_shapes(sd, sdxl) -> None:
    captions = ["a red fox in the snow", ""]
    assert sd.kind == "sd" and sdxl.kind == "sdxl" and StableDiffusion.prediction_type(sd) == "epsilon"
    assert {k: tuple(v.shape) for k, v in sd.family.encode_prompts(sd, captions).items()} == {"prompt_embeds": (2, 77, 32)}
    embeds = sdxl.family.encode_prompts(sdxl, captions)
    assert tuple(embeds["prompt_embeds"].shape) == (2, 77, 16 + 32)  # both encoders' widths
    assert tuple(embeds["pooled_prompt_embeds"].shape) == (2, 32)
    assert tuple(sdxl_time_ids((48, 80), (0, 10), (32, 32)).tolist()) == (48, 80, 0, 10, 32, 32)


def test_local_model_missing_vae_is_named(tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(resolve_model("tiny"), model, ignore=shutil.ignore_patterns("vae"))
    with pytest.raises(StyleprefsError, match="missing vae") as error:
        load_components(str(model))
    assert "unet" not in str(error.value)


def test_load_denoiser_from_pipeline_or_unet_folder(sd, tmp_path: Path) -> None:
    sd.denoiser.save_pretrained(tmp_path / "unet-only")
    for location in ("tiny", str(tmp_path / "unet-only")):
        unet = load_denoiser(location, sd.family)
        torch.testing.assert_close(unet.state_dict(), sd.denoiser.state_dict())


# --- cache and batches ----------------------------------------------------------------------------

def test_cached_batch_equals_on_the_fly_batch(dataset: Path, clip_cache: Path, sd) -> None:
    cached = PairBatches(dataset, "tiny", 64, clip_model="tiny")
    live = PairBatches(dataset, "tiny", 64, clip_model="tiny", components=sd, use_cache=False)
    assert cached.cache == clip_cache and live.cache is None and len(cached) == len(live) == 6
    for epoch in (0, 1):
        batch = cached.batch([5, 0, 3], epoch)  # pairs from both cache shards
        assert batch["latent_mean"].shape == (6, 4, 8, 8) and batch["prompt_embeds"].shape == (3, 77, 32)
        assert batch["clip_image_w"].shape == batch["clip_text"].shape == (3, 16)
        assert batch["index"].tolist() == [5, 0, 3] and batch["latent_mean"].dtype == torch.float32
        _assert_batches_close(batch, live.batch([5, 0, 3], epoch))


def test_same_flip_for_both_images_of_a_pair(dataset: Path, clip_cache: Path) -> None:
    stored = load_file(clip_cache / "pairs-0000000-0000004.safetensors")
    for random_flip in (True, False):
        batches = PairBatches(dataset, "tiny", 64, random_flip=random_flip)
        assert batches.cache == clip_cache  # a cache with CLIP embeddings serves a run without CLIP
        flips = set()
        for epoch in range(8):
            batch = batches.batch([2], epoch)
            slot_w = [k for k in (0, 1) if torch.allclose(batch["latent_mean"][0], stored["latent_mean_w"][2, k].float())]
            slot_l = [k for k in (0, 1) if torch.allclose(batch["latent_mean"][1], stored["latent_mean_l"][2, k].float())]
            assert slot_w == slot_l and len(slot_w) == 1
            flips.add(slot_w[0])
        assert flips == ({0, 1} if random_flip else {0})


def test_cache_is_keyed_and_reused(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = build_cache(dataset, "tiny", 64, show_progress=False)
    assert path == cache_dir(dataset, "tiny", 64) and path.parent == dataset / ".cache"
    assert cache_dir(dataset, "tiny", 32) != path
    assert cache_dir(dataset, "tiny", 64, ties="random") != path
    assert cache_dir(dataset, "tiny-sdxl", 64) != path
    assert clip_dir(path, "tiny").parent == path  # CLIP embeddings are kept within, per CLIP model

    def no_encoding(*args, **kwargs):
        raise AssertionError("a complete cache must not be recomputed")

    monkeypatch.setattr(cache_module, "load_components", no_encoding)
    monkeypatch.setattr(cache_module, "read_pairs", no_encoding)
    assert build_cache(dataset, "tiny", 64, show_progress=False) == path
    assert PairBatches(dataset, "tiny", 64).cache == path


def _no_encoding(*args, **kwargs):
    raise AssertionError("encoded again")


def test_clip_embeddings_added_to_a_finished_cache_are_all_that_is_computed(dataset: Path, sd, monkeypatch) -> None:
    path = build_cache(dataset, "tiny", 40, shard_pairs=4, show_progress=False)
    latents = {p.name: p.read_bytes() for p in path.glob("*.safetensors")}
    monkeypatch.setattr(cache_module, "load_components", _no_encoding)  # no VAE, no text encoder
    encode = cache_module._encode_for_cache
    seen = []
    monkeypatch.setattr(cache_module, "_encode_for_cache", lambda c, clip, *a: seen.append((c, clip)) or encode(c, clip, *a))
    assert build_cache(dataset, "tiny", 40, clip_model="tiny", shard_pairs=4, show_progress=False) == path
    assert seen and all(c is None and clip is not None for c, clip in seen)
    assert {p.name: p.read_bytes() for p in path.glob("*.safetensors")} == latents
    assert sorted(p.name for p in clip_dir(path, "tiny").glob("pairs-*")) == sorted(
        n for n in latents if n.startswith("pairs-"))
    cached = PairBatches(dataset, "tiny", 40, clip_model="tiny")
    live = PairBatches(dataset, "tiny", 40, clip_model="tiny", components=sd, use_cache=False)
    assert cached.cache == path
    _assert_batches_close(cached.batch([5, 0, 3], 1), live.batch([5, 0, 3], 1))


def test_a_cache_with_clip_embeddings_serves_stages_without_them(dataset: Path, clip_cache: Path, monkeypatch) -> None:
    """SFT and DPO (no CLIP model) take the RPO cache as it is: nothing is read or encoded again."""
    folders = sorted((dataset / ".cache").iterdir())
    monkeypatch.setattr(cache_module, "load_components", _no_encoding)
    monkeypatch.setattr(cache_module, "read_pairs", _no_encoding)
    assert build_cache(dataset, "tiny", 64, show_progress=False) == clip_cache
    batch = PairBatches(dataset, "tiny", 64).batch([0, 1], 0)
    assert "clip_image_w" not in batch and batch["latent_mean"].shape == (4, 4, 8, 8)
    assert sorted((dataset / ".cache").iterdir()) == folders


def test_each_clip_model_has_its_embeddings_in_the_one_cache(dataset: Path, tmp_path: Path) -> None:
    dataset = Path(shutil.copytree(dataset, tmp_path / "copy", ignore=shutil.ignore_patterns(".cache")))
    clip_cache = build_cache(dataset, "tiny", 64, clip_model="tiny", show_progress=False)
    assert build_cache(dataset, "tiny", 64, clip_model="mini-clip", show_progress=False) == clip_cache
    assert sorted(p.parent for p in clip_cache.glob("clip-*/clip.json")) == sorted(
        [clip_dir(clip_cache, "tiny"), clip_dir(clip_cache, "mini-clip")])
    tiny, mini = (PairBatches(dataset, "tiny", 64, clip_model=name).batch([0], 0)["clip_text"] for name in
                  ("tiny", "mini-clip"))
    assert tiny.shape[-1] != mini.shape[-1] or not torch.equal(tiny, mini)
    with pytest.raises(StyleprefsError, match="holds the embeddings of 2 CLIP models .*give --clip-model"):
        PairBatches(dataset, "tiny", 64, cached_clip=True)


def test_interrupted_cache_build_keeps_finished_shards(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    encode = cache_module._encode_for_cache
    calls, interrupt_at = [], 2

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return encode(*args, **kwargs)

    monkeypatch.setattr(cache_module, "_encode_for_cache", counted)
    with pytest.raises(KeyboardInterrupt):
        build_cache(dataset, "tiny", 32, batch_size=2, shard_pairs=2, show_progress=False)
    path = cache_dir(dataset, "tiny", 32)
    first = path / "pairs-0000000-0000002.safetensors"
    assert sorted(p.name for p in path.glob("pairs-*")) == [first.name] and not (path / "cache.json").exists()
    assert not list(path.glob(".*.tmp"))
    finished_at = first.stat().st_mtime_ns

    calls.clear()
    interrupt_at = None
    assert build_cache(dataset, "tiny", 32, batch_size=2, shard_pairs=2, show_progress=False) == path
    assert len(calls) == 2 and first.stat().st_mtime_ns == finished_at
    assert len(PairBatches(dataset, "tiny", 32)) == 6


def test_sdxl_batch_has_pooled_embeds_and_real_time_ids(tmp_path: Path, sdxl) -> None:
    rows = pickapic_rows(2)
    rows[0] |= {"jpg_0": _jpeg(80, 48, 1), "jpg_1": _jpeg(48, 96, 2), "label_0": 1.0, "label_1": 0.0}
    rows[1] |= {"jpg_0": _jpeg(64, 64, 3), "jpg_1": _jpeg(40, 40, 4), "label_0": 0.0, "label_1": 1.0}
    path = _write_rows(tmp_path / "p.parquet", rows)
    live = PairBatches(path, "tiny-sdxl", 32, components=sdxl, random_flip=False)
    batch = live.batch([0, 1], 0)
    assert batch["pooled_prompt_embeds"].shape == (2, 32) and batch["empty_pooled_prompt_embeds"].shape == (32,)
    assert batch["prompt_embeds"].shape == (2, 77, 48) and batch["empty_prompt_embeds"].shape == (77, 48)
    assert batch["latent_mean"].shape == (4, 4, 4, 4)
    assert batch["add_time_ids"].tolist() == [[48, 80, 0, 10, 32, 32], [40, 40, 0, 0, 32, 32],  # winners
                                              [96, 48, 16, 0, 32, 32], [64, 64, 0, 0, 32, 32]]  # losers
    build_cache(path, "tiny-sdxl", 32, show_progress=False)
    cached = PairBatches(path, "tiny-sdxl", 32, components=sdxl)
    live = PairBatches(path, "tiny-sdxl", 32, components=sdxl, use_cache=False)
    assert cached.cache is not None and cached.kind == "sdxl"
    for epoch in range(4):
        _assert_batches_close(cached.batch([0, 1], epoch), live.batch([0, 1], epoch))


def test_no_cache_and_no_components_is_an_error(tmp_path: Path) -> None:
    path = _write_rows(tmp_path / "p.parquet", pickapic_rows(1))
    with pytest.raises(StyleprefsError, match="styleprefs cache"):
        PairBatches(path, "tiny", 64)
