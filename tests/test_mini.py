"""The mini world: shipped weights, their unpacking, the training script, and the quality floors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from styleprefs.mini import ship, world
from styleprefs.mini.quality import measure
from styleprefs.mini.train import MiniConfig, train_mini
from styleprefs.sources.sample import SampleSource, scene_for, split_of
from styleprefs.tiny import resolve


def test_shipped_weights_are_small_and_checked():
    ship.verify()
    total = sum(p.stat().st_size for p in ship.WEIGHTS.rglob("*.safetensors"))
    assert total <= 30 * 2**20


def test_a_tampered_file_is_named(tmp_path):
    weights = tmp_path / "weights"
    shutil.copytree(ship.WEIGHTS, weights)
    unet = weights / "mini" / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(unet.read_bytes())
    data[-1] ^= 1
    unet.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="unet/diffusion_pytorch_model.safetensors does not match its sha256"):
        ship.assemble("mini", tmp_path / "out", weights)


def test_mini_is_a_stable_diffusion_pipeline_whose_text_encoder_is_mini_clips():
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPModel

    pipe = StableDiffusionPipeline.from_pretrained(resolve("mini"))
    clip = CLIPModel.from_pretrained(resolve("mini-clip"))
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.vae_scale_factor == 4 and pipe.unet.config.sample_size * 4 == 64
    assert pipe.text_encoder.dtype == torch.float32
    ids = pipe.tokenizer(["a red house at night"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(pipe.text_encoder(ids)[0], clip.text_model(ids)[0])
    shipped = load_file(ship.WEIGHTS / "mini" / "unet" / "diffusion_pytorch_model.safetensors")
    name, tensor = next(iter(shipped.items()))
    assert torch.equal(pipe.unet.state_dict()[name], tensor.float())


def test_the_split_holds_out_colour_time_pairings_but_every_colour_and_time():
    scenes = [scene_for(i) for i in range(4000)]
    train = {(s.house, s.sky.name) for s in scenes if split_of(s) == "train"}
    test = {(s.house, s.sky.name) for s in scenes if split_of(s) == "test"}
    assert test == set(world.HELD_OUT) and not train & test
    assert {c for c, _ in train} >= set(world.COLORS) and {t for _, t in train} == set(world.TIMES)
    keys = [pair.key for pair in SampleSource(size=32, num_scenes=5, split="test")]
    assert all(split_of(scene_for(int(k.split("-")[1]))) == "test" for k in keys) and len(keys) == 5


def test_training_script_writes_loadable_models_that_pack_and_unpack(tmp_path):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPModel

    record = train_mini(MiniConfig.quick(), tmp_path / "trained", command="test")
    assert set(record["curves"]) == {"clip", "vae", "unet"}
    assert all(np.isfinite(v).all() for v in record["curves"].values())
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "trained" / "mini")
    lines = ship.pack(tmp_path / "trained", tmp_path / "weights")
    assert len(lines) == len(ship.CLIP_FILES) + len(ship.PIPELINE_FILES)
    out = ship.assemble("mini", tmp_path / "mini", tmp_path / "weights")
    unpacked = StableDiffusionPipeline.from_pretrained(out)
    for a, b in zip(pipe.unet.parameters(), unpacked.unet.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)  # float16 storage
    clip = CLIPModel.from_pretrained(ship.assemble("mini-clip", tmp_path / "clip", tmp_path / "weights"))
    assert clip.config.vision_config.image_size == 64


@pytest.fixture(scope="module")
def quality() -> dict:
    return measure(scenes=40, steps=15)


# Floors on 40 held-out scenes (fixed seeds). Where the shipped models meet the goals of the model card
# (>= 0.9 / 0.95 for mini-clip, >= 3x chance for generations) with a margin, the test asserts the goal; the
# house colour does not reach it (0.80 and 0.45 here), so it asserts a floor below the measured level.


def test_mini_clip_reads_held_out_real_scenes(quality):
    assert quality["clip_time_accuracy"] >= 0.9
    assert quality["clip_winter_accuracy"] >= 0.95
    assert quality["clip_color_accuracy"] >= 0.7  # goal 0.9, not met


def test_mini_generations_follow_held_out_captions(quality):
    assert quality["generated_both_accuracy"] >= 3 * quality["both_chance"]
    assert quality["generated_time_accuracy"] >= 2.5 * quality["time_chance"]
    assert quality["generated_color_accuracy"] >= 1.75 * quality["color_chance"]  # goal 3x chance, not met
    assert quality["generated_winter_probability"] < 0.25  # the base draws summer
    assert quality["mini_fid_real_floor"] < quality["mini_fid_generated"]
