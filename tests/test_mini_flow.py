"""mini-flow: the shipped SD3-layout model, its unpacking and loading, its training objective, and its floors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from styleprefs.errors import StyleprefsError
from styleprefs.mini import flow, models, ship
from styleprefs.resolve import ensure_offline, is_offline_name, locate, offline_or_path
from styleprefs.tiny import bpe_tokenizer


@pytest.fixture(scope="module")
def pipe():
    return flow.load_pipeline(offline_or_path("mini-flow"))


def test_mini_flow_is_an_sd3_pipeline_on_mini_clips_text_tower_and_minis_vae(pipe):
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Pipeline)
    from transformers import CLIPModel

    assert isinstance(pipe, StableDiffusion3Pipeline) and isinstance(pipe.transformer, SD3Transformer2DModel)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert pipe.text_encoder_3 is None and pipe.tokenizer_3 is None
    config = pipe.transformer.config
    assert config.pooled_projection_dim == pipe.text_encoder.config.projection_dim * 2
    assert config.joint_attention_dim >= pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    clip = CLIPModel.from_pretrained(offline_or_path("mini-clip"))
    ids = pipe.tokenizer(["a red house at night"], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        for encoder in (pipe.text_encoder, pipe.text_encoder_2):
            out = encoder(ids, output_hidden_states=True)
            torch.testing.assert_close(out.text_embeds, clip.get_text_features(ids).pooler_output)
            torch.testing.assert_close(out.hidden_states[-2], clip.text_model(ids, output_hidden_states=True)
                                       .hidden_states[-2])
    mini_vae = AutoencoderKL.from_pretrained(offline_or_path("mini"), subfolder="vae")
    for a, b in zip(pipe.vae.parameters(), mini_vae.parameters()):
        assert torch.equal(a, b)
    assert pipe.vae.config.shift_factor is not None  # the pipeline decodes latents / scale + shift
    shipped = load_file(ship.WEIGHTS / "mini-flow" / "transformer" / "diffusion_pytorch_model.safetensors")
    name, tensor = next(iter(shipped.items()))
    assert torch.equal(pipe.transformer.state_dict()[name], tensor.float())


def test_mini_flow_samples_64px_images_with_its_own_scheduler(pipe):
    options = flow.sampling_options(pipe)
    assert options == {"max_sequence_length": models.FLOW_TEXT_TOKENS}
    images = pipe(["a red house at night"], num_inference_steps=3, guidance_scale=5.0,
                  generator=torch.Generator().manual_seed(0), **options).images
    assert images[0].size == (64, 64)


def test_the_offline_names_resolve_through_styleprefs_resolve(tmp_path):
    assert all(is_offline_name(name) for name in ("mini", "mini-clip", "mini-flow", "tiny"))
    assert locate("mini-flow").location == str(ensure_offline("mini-flow")) and locate("mini-flow").local
    folder = ensure_offline("mini-flow", tmp_path)
    assert folder.name == f"mini-flow-{ship.version()}"  # keyed by the shipped weights: new weights, new folder
    assert ensure_offline("mini-flow", tmp_path) == folder


def test_the_tiny_models_do_not_import_the_mini_world():
    """styleprefs.mini imports styleprefs.tiny (tokenizer, shapes); the dependency runs one way only."""
    code = "import sys, styleprefs.tiny; print(sorted(m for m in sys.modules if m.startswith('styleprefs.mini')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


def test_pack_refuses_a_mini_flow_whose_shared_vae_differs_from_minis(tmp_path):
    trained = tmp_path / "trained"
    for name in ship.NAMES:
        ship.assemble(name, trained / name)
    vae = trained / "mini-flow" / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(vae)
    key = next(iter(tensors))
    tensors[key] = tensors[key] + 1
    save_file(tensors, vae)
    weights = tmp_path / "weights"
    with pytest.raises(StyleprefsError, match="mini-flow/vae/diffusion_pytorch_model.safetensors differs"):
        ship.pack(trained, weights)
    assert not weights.exists()
    shutil.rmtree(trained / "mini-flow")
    ship.assemble("mini-flow", trained / "mini-flow")
    lines = ship.pack(trained, weights)  # unchanged shared parts pack, and ship only the transformer's weights
    assert len(lines) == sum(len(files) for files in ship.SHIPPED.values())
    assert not (weights / "mini-flow" / "vae" / "diffusion_pytorch_model.safetensors").exists()


def _toy_pipeline():
    torch.manual_seed(0)
    vae = flow.flow_vae(models.new_vae(), torch.randn(64, 4, 16, 16) * 2 + 0.5)
    return flow.flow_pipeline(models.new_transformer(), vae, models.text_encoder_with_projection(models.new_clip()),
                              bpe_tokenizer())


class _Recorder(torch.nn.Module):
    """Stands in for the transformer: records its inputs and predicts half its noisy input."""

    def forward(self, hidden_states, encoder_hidden_states, pooled_projections, timestep):
        self.seen = SimpleNamespace(x=hidden_states, text=encoder_hidden_states, pooled=pooled_projections, t=timestep)
        return SimpleNamespace(sample=0.5 * hidden_states)


def test_flow_loss_is_the_rectified_flow_objective_on_the_pipelines_own_prompt_encoding():
    pipe = _toy_pipeline()
    z = torch.randn(2000, 4, 16, 16)
    captions = ["a red house at night", ""] * 1000
    model = _Recorder()
    loss = flow.flow_loss(model, pipe, z, captions, flow.FlowSampling(), torch.Generator().manual_seed(0))
    seen = model.seen
    sigma = seen.t / 1000  # shift 1: the schedule's timesteps are its sigmas x 1000
    s = sigma.view(-1, 1, 1, 1)
    noise = (seen.x - (1 - s) * z) / s  # x_t = (1 - sigma) z + sigma n, so n is recovered from what the model saw
    assert noise.std().item() == pytest.approx(1.0, abs=0.02) and noise.mean().abs().item() < 0.02
    reference = ((0.5 * seen.x - (noise - z)) ** 2).mean()  # MSE against the velocity n - z, unweighted
    torch.testing.assert_close(loss, reference, rtol=1e-4, atol=1e-5)
    logit = torch.log(sigma / (1 - sigma))  # logit-normal draws (mean 0, std 1) of the unshifted schedule
    assert logit.mean().abs().item() < 0.1 and logit.std().item() == pytest.approx(1.0, abs=0.1)
    embeds, pooled = flow.encode(pipe, captions[:2])
    torch.testing.assert_close(seen.text[:2], embeds)
    torch.testing.assert_close(seen.pooled[:2], pooled)
    assert embeds.shape == (2, 2 * models.FLOW_TEXT_TOKENS, 2 * models.TEXT_WIDTH)
    assert not embeds[:, models.FLOW_TEXT_TOKENS:].any()  # no T5: the pipeline's zero tokens


def test_flow_vae_shifts_and_scales_latents_to_zero_mean_and_unit_deviation():
    means = torch.randn(500, 4, 16, 16) * 3 + 1.5
    vae = flow.flow_vae(models.new_vae(), means)
    normalised = (means - vae.config.shift_factor) * vae.config.scaling_factor
    assert normalised.mean().abs().item() < 1e-4 and normalised.std().item() == pytest.approx(1.0, abs=1e-4)


@pytest.fixture(scope="module")
def quality() -> dict:
    from styleprefs.mini.quality import FLOW_GUIDANCE, FLOW_STEPS, measure

    return measure("mini-flow", scenes=40, steps=FLOW_STEPS, guidance=FLOW_GUIDANCE)


def test_mini_flow_generations_follow_held_out_captions(quality):
    """The model card's goals for generations (>= 3x chance for what mini-clip reads), on 40 held-out scenes."""
    assert quality["generated_both_accuracy"] >= 3 * quality["both_chance"]
    assert quality["generated_time_accuracy"] >= 3 * quality["time_chance"]
    assert quality["generated_color_accuracy"] >= 3 * quality["color_chance"]
    assert quality["generated_winter_probability"] < 0.25  # the base draws summer
    assert quality["mini_fid_real_floor"] < quality["mini_fid_generated"]
