"""Tiny offline models: real tokenizer, loadable pipelines, 2-step generation, determinism, caching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from safetensors import safe_open
from transformers import CLIPModel, CLIPProcessor, CLIPTokenizer

from styleprefs import tiny

SENTENCES = [
    "A cozy cabin by a lake, golden hour!!! (8k) -- don't miss it...",
    "un château médiéval sur une colline ☁️ — brume matinale, 東京",
    "a very long prompt " * 40,  # truncated to 77 tokens
]




def generate(pipe, **kwargs) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a red fox in the snow", num_inference_steps=2, output_type="np",
               generator=torch.Generator().manual_seed(0), **kwargs)
    return out.images


def test_tokenizer_matches_open_clip(tmp_path: Path) -> None:
    tiny.clip_tokenizer(tmp_path)
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    assert {"vocab.json", "merges.txt"} <= {p.name for p in tmp_path.iterdir()}
    assert tokenizer.model_max_length == 77 and len(tokenizer) == 49408
    enc = tokenizer(SENTENCES, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
    expected = open_clip.tokenize(SENTENCES)  # pads with 0 where SD1.5 pads with <|endoftext|>
    assert torch.equal(enc.input_ids, expected.masked_fill(enc.attention_mask == 0, 49407))
    assert enc.input_ids[2, -1] == tokenizer.eos_token_id == 49407


def test_sdxl_tokenizer_2_pads_like_open_clip(tmp_path: Path) -> None:
    tiny.clip_tokenizer(tmp_path, pad_token="!")
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    no_bang = [s.replace("!", "") for s in SENTENCES]
    ids = tokenizer(no_bang, padding="max_length", truncation=True, max_length=77, return_tensors="pt").input_ids
    assert torch.equal(ids, open_clip.tokenize(no_bang))
    # "!" is a special token, so "!!!" becomes three pad ids, as in the real SDXL (diffusers issue #4153).
    assert tokenizer("wow!!!").input_ids == [49406, 2781, 0, 0, 0, 49407]


def test_tiny_sd_generates(cache: Path) -> None:
    pipe = StableDiffusionPipeline.from_pretrained(tiny.ensure_tiny("tiny", cache))
    assert pipe.safety_checker is None and pipe.vae_scale_factor == 8
    images = generate(pipe)
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()


def test_tiny_sdxl_generates(cache: Path) -> None:
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny.ensure_tiny("tiny-sdxl", cache))
    assert pipe.tokenizer_2.pad_token == "!"
    assert pipe.text_encoder.config.hidden_size != pipe.text_encoder_2.config.hidden_size
    images = generate(pipe)
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()


def test_tiny_ip2p_generates(cache: Path) -> None:
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(tiny.ensure_tiny("tiny-ip2p", cache))
    assert pipe.unet.config.in_channels == 8
    images = generate(pipe, image=Image.new("RGB", (64, 64), (200, 120, 40)))
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()


def test_tiny_clip_features(cache: Path) -> None:
    path = tiny.ensure_tiny("tiny-clip", cache)
    model, processor = CLIPModel.from_pretrained(path), CLIPProcessor.from_pretrained(path)
    inputs = processor(text=["a cat", "a painting of a dog"], images=[Image.new("RGB", (64, 48), "red")],
                       return_tensors="pt", padding=True)
    with torch.no_grad():
        image = model.get_image_features(pixel_values=inputs.pixel_values)
        text = model.get_text_features(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask)
    # transformers 5 returns a ModelOutput whose pooler_output is the projected embedding; 4.x a tensor.
    image, text = (x if isinstance(x, torch.Tensor) else x.pooler_output for x in (image, text))
    assert image.shape == (1, 16) and text.shape == (2, 16)


def test_tiny_prompt_diffusion_controlnet(cache: Path) -> None:
    path = tiny.ensure_tiny("tiny-prompt-diffusion", cache)
    unet = UNet2DConditionModel.from_pretrained(path / "unet")
    controlnet = ControlNetModel.from_pretrained(path / "controlnet")
    assert controlnet.config.conditioning_channels == 6
    with safe_open(path / "controlnet" / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert any(k.startswith("controlnet_query_cond_embedding.") for k in f.keys())
    sample, text = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 32)
    with torch.no_grad():
        down, mid = controlnet(sample, 10, text, controlnet_cond=torch.rand(1, 6, 64, 64), return_dict=False)
        controlled = unet(sample, 10, text, down_block_additional_residuals=down, mid_block_additional_residual=mid)
        plain = unet(sample, 10, text)
    assert not torch.allclose(controlled.sample, plain.sample)


def test_same_seed_same_bytes(cache: Path, tmp_path: Path) -> None:
    first = tiny.ensure_tiny("tiny", cache)
    second = tiny.build_tiny_sd(tmp_path / "again", seed=0)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    other = tiny.build_tiny_sd(tmp_path / "other", seed=1)
    unet = Path("unet/diffusion_pytorch_model.safetensors")
    assert (other / unet).read_bytes() != (first / unet).read_bytes()


def test_ensure_tiny_is_idempotent(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tiny.ensure_tiny("tiny-clip", cache)
    assert path == cache / "tiny-clip-v1"
    monkeypatch.setitem(tiny.BUILDERS, "tiny-clip", lambda p: pytest.fail("rebuilt"))
    assert tiny.ensure_tiny("tiny-clip", cache) == path
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []


def test_ensure_tiny_lost_race_keeps_winner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def build_while_another_process_finishes(path: Path) -> Path:
        (tmp_path / "tiny-clip-v1").mkdir()
        (tmp_path / "tiny-clip-v1" / "winner").touch()
        (path / "loser").touch()
        return path

    monkeypatch.setitem(tiny.BUILDERS, "tiny-clip", build_while_another_process_finishes)
    path = tiny.ensure_tiny("tiny-clip", tmp_path)
    assert [p.name for p in path.iterdir()] == ["winner"]
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-clip-v1"]


def test_ensure_tiny_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(path: Path) -> Path:
        raise RuntimeError("boom")

    monkeypatch.setitem(tiny.BUILDERS, "tiny", broken)
    with pytest.raises(RuntimeError, match="boom"):
        tiny.ensure_tiny("tiny", tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="unknown tiny model"):
        tiny.ensure_tiny("huge", tmp_path)


def test_default_cache_dir_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STYLEPREFS_CACHE", str(tmp_path))
    assert tiny.default_cache_dir() == tmp_path / "tiny"


def test_a_first_use_that_builds_a_model_prints_nothing(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """Building a model on first use must not leak transformers' "Writing model shards" bars into a command's
    output (a one-line error would read as seven lines), and the bars come back afterwards."""
    from transformers.utils import logging as transformers_logging

    tiny.ensure_tiny("tiny-clip", tmp_path)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
    assert transformers_logging.is_progress_bar_enabled()
