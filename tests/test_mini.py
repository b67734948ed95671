"""The mini world: shipped weights, their unpacking, the training script, and the quality floors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from styleprefs.mini import card, ship, world
from styleprefs.mini.quality import measure
from styleprefs.mini.models import new_clip
from styleprefs.mini.train import (MiniConfig, Pool, clip_pixels, contrastive_loss, illuminants,
                                   reconstruction_loss, train_mini)
from styleprefs.sources.sample import HELD_OUT, SKIES, SampleSource, scene_for, split_of
from styleprefs.resolve import offline_or_path as resolve


def test_shipped_weights_are_small_and_checked():
    ship.verify()
    total = sum(p.stat().st_size for p in ship.WEIGHTS.rglob("*.safetensors"))
    assert total <= 30 * 2**20
    flow = sum(p.stat().st_size for p in (ship.WEIGHTS / "mini-flow").rglob("*.safetensors"))
    assert flow <= 10 * 2**20  # mini-flow ships its transformer alone: its VAE and text encoders are shared


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

    from styleprefs.mini.flow import load_pipeline

    record = train_mini(MiniConfig.quick(), tmp_path / "trained", command="test")
    assert set(record["curves"]) == {"clip", "vae", "unet", "flow"}
    assert all(np.isfinite(v).all() for v in record["curves"].values())
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "trained" / "mini")
    flow_pipe = load_pipeline(str(tmp_path / "trained" / "mini-flow"))
    lines = ship.pack(tmp_path / "trained", tmp_path / "weights")
    assert len(lines) == len(ship.CLIP_FILES) + len(ship.PIPELINE_FILES) + len(ship.FLOW_FILES)
    out = ship.assemble("mini", tmp_path / "mini", tmp_path / "weights")
    unpacked = StableDiffusionPipeline.from_pretrained(out)
    for a, b in zip(pipe.unet.parameters(), unpacked.unet.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)  # float16 storage
    unpacked_flow = load_pipeline(str(ship.assemble("mini-flow", tmp_path / "mini-flow", tmp_path / "weights")))
    for a, b in zip(flow_pipe.transformer.parameters(), unpacked_flow.transformer.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    assert unpacked_flow.vae.config.shift_factor == flow_pipe.vae.config.shift_factor
    assert unpacked_flow.tokenizer.model_max_length == flow_pipe.tokenizer.model_max_length
    clip = CLIPModel.from_pretrained(ship.assemble("mini-clip", tmp_path / "clip", tmp_path / "weights"))
    assert clip.config.vision_config.image_size == 64
    architecture = card._architecture(tmp_path / "weights")  # the model card's shapes, read from what was packed
    vision = clip.config.vision_config
    assert f"{vision.image_size} px images in {vision.patch_size} px patches, width {vision.hidden_size}" in architecture
    heads = unpacked.unet.config.attention_head_dim
    widths = "/".join(str(c // heads) for c in unpacked.unet.config.block_out_channels[:2])
    assert f"cross-attention in 2 of its 3 levels with {heads} heads ({widths} channels a head)" in architecture
    dit = unpacked_flow.transformer.config
    assert (f"{dit.num_layers} MMDiT blocks of width {dit.num_attention_heads * dit.attention_head_dim} "
            f"({dit.num_attention_heads} heads of {dit.attention_head_dim}") in architecture


def test_a_rerun_keeps_finished_models_and_retrains_only_what_is_missing(tmp_path):
    out = tmp_path / "trained"
    first = train_mini(MiniConfig.quick(), out, command="test")
    assert first["threads"] == {"clip": 1, "vae": 1, "unet": 2, "flow": 2}  # the VAE beside mini-clip, then both
    assert first["total_seconds"] < sum(first["seconds"].values())  # side by side: counted once
    kept = {name: (out / name / "config.json").read_bytes() for name in ("mini-clip", "vae")}
    weights = (out / "vae" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    shutil.rmtree(out / "mini")
    flow_weights = (out / "mini-flow" / "transformer" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    (out / ".mini.partial").mkdir()  # what a killed UNet stage leaves: never taken for a finished model
    (out / ".mini.partial" / "model_index.json").write_text("{")
    second = train_mini(MiniConfig.quick(), out, command="test")
    assert {name: (out / name / "config.json").read_bytes() for name in kept} == kept
    assert (out / "vae" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == weights
    assert second["curves"]["clip"] == first["curves"]["clip"] and not (out / ".mini.partial").exists()
    assert (out / "mini" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (out / "mini-flow" / "transformer" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == flow_weights


def _mini_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "styleprefs.mini", *args], capture_output=True, text=True, timeout=120)


def test_mini_command_errors_are_one_line_and_touch_nothing(tmp_path):
    """Bad input to ``python -m styleprefs.mini`` takes the project's one error path: exit 2, one line."""
    shipped = (ship.WEIGHTS / ship.SUMS).read_bytes()
    (tmp_path / "half").mkdir()
    (tmp_path / "file").write_text("x")
    cases = {("train", "--out", str(tmp_path / "t"), "--threads", "0"): "--threads must be at least 1",
             ("train", "--out", str(tmp_path / "file" / "t"), "--quick"): "not writable",
             ("train", "--out", str(tmp_path / "t"), "--seed", "x"): "--seed",
             ("pack", str(tmp_path / "half")): "not a finished training folder"}
    for args, message in cases.items():
        result = _mini_cli(*args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert (ship.WEIGHTS / ship.SUMS).read_bytes() == shipped and not (tmp_path / "t").exists()


def test_a_second_training_run_on_the_same_folder_is_refused(tmp_path):
    from styleprefs.lock import folder_lock

    with folder_lock(tmp_path / "t"):  # as a first run holds it
        result = _mini_cli("train", "--out", str(tmp_path / "t"), "--quick")
    assert result.returncode == 2 and "in use by another styleprefs process" in result.stderr, result.stderr
    assert [p.name for p in (tmp_path / "t").iterdir()] == [".styleprefs.lock"]


def test_reconstruction_loss_adds_the_l1_of_image_gradients_to_pixel_losses():
    rng = np.random.default_rng(0)
    recon, target = rng.normal(size=(2, 3, 5, 6)), rng.normal(size=(2, 3, 5, 6))
    error = recon - target
    vertical = np.abs(error[:, :, 1:, :] - error[:, :, :-1, :]).mean()
    horizontal = np.abs(error[:, :, :, 1:] - error[:, :, :, :-1]).mean()
    reference = (error ** 2).mean() + np.abs(error).mean() + 0.7 * (vertical + horizontal)
    got = reconstruction_loss(torch.from_numpy(recon), torch.from_numpy(target), 0.7)
    assert got.dtype == torch.float64 and got.item() == pytest.approx(reference, rel=1e-12)
    shifted = reconstruction_loss(torch.from_numpy(target + 1.0), torch.from_numpy(target), 5.0)
    assert shifted.item() == pytest.approx(2.0)  # a uniform shift has the target's gradients


def test_hard_negatives_swap_one_attribute_and_never_name_a_held_out_pairing():
    pool, rng = Pool(MiniConfig.quick()), np.random.default_rng(0)
    times = {sky.phrase: sky.name for sky in SKIES}
    for i, scene in enumerate(pool.scenes):
        plain, styled = pool.negatives(i, rng)
        assert len(plain) == (2 if scene.house else 1)
        assert styled == [pool.styles[i].styled_caption(c) for c in plain]
        for negative in plain:
            time = next(name for phrase, name in times.items() if phrase in negative)
            color = next((c for c in world.COLORS if f"a {c} house" in negative), None)
            assert (color, time) not in HELD_OUT
            assert (color != scene.house) + (time != scene.sky.name) == 1


def test_contrastive_loss_is_clips_and_hard_negatives_are_extra_candidates_for_images():
    torch.manual_seed(0)
    model = new_clip().double().eval()
    rng = np.random.default_rng(0)
    pixels = clip_pixels(rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)).double()
    texts = {"input_ids": torch.randint(0, 1000, (3, 7))}
    negatives = {"input_ids": torch.randint(0, 1000, (2, 7))}
    with torch.no_grad():
        plain = contrastive_loss(model, texts, pixels)
        torch.testing.assert_close(plain, model(**texts, pixel_values=pixels, return_loss=True).loss)
        out = model(input_ids=torch.cat([texts["input_ids"], negatives["input_ids"]]), pixel_values=pixels)
        logits = out.logits_per_image  # [3 images, 5 texts]
        image_to_text = torch.nn.functional.cross_entropy(logits, torch.arange(3))
        text_to_image = torch.nn.functional.cross_entropy(logits[:, :3].T, torch.arange(3))
        torch.testing.assert_close(contrastive_loss(model, texts, pixels, negatives), (image_to_text + text_to_image) / 2)


def test_illuminants_light_only_their_share_of_images_dimly():
    gains = illuminants(4000, 0.25, np.random.default_rng(0))
    lit = (gains != 1.0).any(axis=1)
    assert abs(lit.mean() - 0.25) < 0.03 and gains.min() >= 0.4 and gains.max() <= 1.0
    assert (illuminants(10, 0.0, np.random.default_rng(0)) == 1.0).all()


@pytest.fixture(scope="module")
def quality() -> dict:
    return measure(scenes=40, steps=15)


# The model card's goals, asserted on 40 held-out scenes (fixed seeds): >= 0.9 / 0.95 for mini-clip on real
# images, >= 3x chance for what it reads from mini's generations.


def test_mini_clip_reads_held_out_real_scenes(quality):
    assert quality["clip_time_accuracy"] >= 0.9
    assert quality["clip_winter_accuracy"] >= 0.95
    assert quality["clip_color_accuracy"] >= 0.9


def test_mini_generations_follow_held_out_captions(quality):
    assert quality["generated_both_accuracy"] >= 3 * quality["both_chance"]
    assert quality["generated_time_accuracy"] >= 3 * quality["time_chance"]
    assert quality["generated_color_accuracy"] >= 3 * quality["color_chance"]
    assert quality["vae_color_accuracy"] >= 0.8  # a house survives mini's VAE, so mini can draw one
    assert quality["generated_winter_probability"] < 0.25  # the base draws summer
    assert quality["mini_fid_real_floor"] < quality["mini_fid_generated"]
