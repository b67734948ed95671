"""The rectified-flow family (SD3, FLUX.1): float64 references for the noise levels, noisy latents and target; the
target's sign against the scheduler that samples; FLUX's packing; prompt encoding equal to the pipelines'; the beta
scale; and the families chosen from model_index.json."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline

from styleprefs.trainer import loop
from styleprefs.trainer.families import FAMILIES, family_from_index
from styleprefs.trainer.families.flow import FLUX_TRAINING_GUIDANCE, Flux, StableDiffusion3
from styleprefs.trainer.flow_matching import (FlowSampling, noisy_latents, schedule_index, training_schedule,
                                              velocity_target)
from styleprefs.trainer.models import family_of, load_components, resolve_model


def test_noisy_latents_and_target_equal_a_float64_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 16, 4, 4, generator=gen, dtype=torch.float64), torch.randn(3, 16, 4, 4, generator=gen,
                                                                                        dtype=torch.float64)
    sigmas = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    expected = torch.stack([(1 - s) * x + s * n for s, x, n in zip(sigmas.tolist(), x0, noise)])
    torch.testing.assert_close(noisy_latents(x0, noise, sigmas), expected, rtol=0, atol=1e-15)
    assert torch.equal(noisy_latents(x0, noise, sigmas)[0], x0[0]) and torch.equal(noisy_latents(x0, noise, sigmas)[2], noise[2])
    torch.testing.assert_close(velocity_target(x0, noise), noise - x0, rtol=0, atol=0)


def test_the_target_is_what_the_euler_scheduler_integrates() -> None:
    """A model predicting the target exactly takes x_t at sigma to x_t at the next sigma in one scheduler step."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(10)
    gen = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(1, 4, 2, 2, generator=gen, dtype=torch.float64), torch.randn(1, 4, 2, 2, generator=gen,
                                                                                       dtype=torch.float64)
    for i in (0, 4, 9):
        sigma, next_sigma = scheduler.sigmas[i].double(), scheduler.sigmas[i + 1].double()
        scheduler._step_index = i
        prev = scheduler.step(velocity_target(x0, noise), scheduler.timesteps[i],
                              noisy_latents(x0, noise, sigma[None])).prev_sample
        torch.testing.assert_close(prev.double(), noisy_latents(x0, noise, next_sigma[None]), rtol=0, atol=1e-6)


def test_noise_levels_are_logit_normal_through_the_shifted_schedule() -> None:
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    timesteps, sigmas = training_schedule(scheduler)
    s = torch.linspace(1, 1000, 1000, dtype=torch.float64).flip(0) / 1000
    torch.testing.assert_close(sigmas.double(), 3 * s / (1 + 2 * s), rtol=0, atol=1e-6)  # SD3's shift
    torch.testing.assert_close(timesteps.double(), sigmas.double() * 1000, rtol=0, atol=1e-3)
    u = FlowSampling().draw_u(torch.Generator().manual_seed(7))
    reference = torch.sigmoid(torch.normal(0.0, 1.0, (1,), generator=torch.Generator().manual_seed(7)))[0]
    assert u.item() == pytest.approx(reference.item(), abs=1e-7)
    index = schedule_index(torch.tensor([0.0, 0.5, 0.9999, 1.0]), scheduler)
    assert index.tolist() == [0, 500, 999, 999]
    many = torch.sigmoid(torch.randn(100_000, generator=torch.Generator().manual_seed(0)))
    assert sigmas[schedule_index(many, scheduler)].median().item() == pytest.approx(0.75, abs=0.01)  # 3s/(1+2s), s=0.5


@pytest.mark.parametrize("family, shift, dynamic", [(StableDiffusion3, 3.0, False), (Flux, 3.0, True)])
def test_default_beta_is_diffusion_dpo_s_5000_on_the_velocity_scale(family, shift, dynamic) -> None:
    """An epsilon error is (1 - sigma)^2 times a velocity error: 5000 on epsilon is 5000 E[(1 - sigma)^2] here."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift, use_dynamic_shifting=dynamic)
    _, sigmas = training_schedule(scheduler)
    u = torch.sigmoid(torch.randn(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    scale = ((1 - sigmas.double()[schedule_index(u, scheduler)]) ** 2).mean().item()
    assert family.default_beta == pytest.approx(5000 * scale, rel=0.15)


def test_flux_packing_round_trips_and_the_transformer_gets_its_inputs() -> None:
    seen = {}

    class Echo(torch.nn.Module):
        config = SimpleNamespace(guidance_embeds=True)

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, hidden_states, **kw):
            seen.update(kw, hidden_states=hidden_states)
            return (hidden_states,)

    latents = torch.randn(2, 16, 8, 6)
    inputs = {"hidden_states": latents, "timestep": torch.tensor([500.0, 250.0]),
              "prompt_embeds": torch.randn(2, 5, 8), "pooled_prompt_embeds": torch.randn(2, 4)}
    assert torch.equal(Flux().predict(Echo(), inputs), latents)
    assert seen["hidden_states"].shape == (2, 4 * 3, 64)  # 2x2 patches of 16 channels
    assert seen["timestep"].tolist() == [0.5, 0.25] and seen["guidance"].tolist() == [FLUX_TRAINING_GUIDANCE] * 2
    assert seen["img_ids"].shape == (12, 3) and seen["txt_ids"].shape == (5, 3) and not seen["txt_ids"].any()


def test_flow_model_inputs_share_noise_and_sigma_within_a_pair_and_scale_with_the_shift() -> None:
    family = StableDiffusion3()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    c = SimpleNamespace(noise_scheduler=scheduler, vae=SimpleNamespace(config={"scaling_factor": 1.5, "shift_factor": 0.1}),
                        family=family)
    b, shape = 2, (16, 2, 2)
    batch = {"latent_mean": torch.randn(2 * b, *shape), "latent_std": torch.rand(2 * b, *shape),
             "prompt_embeds": torch.randn(b, 7, 8), "empty_prompt_embeds": torch.zeros(7, 8),
             "pooled_prompt_embeds": torch.randn(b, 4), "empty_pooled_prompt_embeds": torch.zeros(4)}
    draws = loop.draw_pairs(0, 3, [0, 1], shape, lambda gen: family.draw_time(gen, c), caption_dropout=0.5)
    inputs, target = family.model_inputs(batch, draws, c)
    timesteps, sigmas = training_schedule(scheduler)
    posterior = torch.cat([draws.posterior_w, draws.posterior_l])
    x0 = (batch["latent_mean"] + batch["latent_std"] * posterior - 0.1) * 1.5
    noise = torch.cat([draws.noise, draws.noise])
    sigma = sigmas[torch.cat([draws.timesteps, draws.timesteps])]
    torch.testing.assert_close(inputs["hidden_states"], noisy_latents(x0, noise, sigma))
    torch.testing.assert_close(target, noise - x0)
    assert torch.equal(inputs["timestep"][:b], inputs["timestep"][b:])
    assert torch.equal(inputs["timestep"], timesteps[torch.cat([draws.timesteps, draws.timesteps])])
    for i, dropped in enumerate(draws.dropped.tolist()):
        expected = batch["empty_pooled_prompt_embeds"] if dropped else batch["pooled_prompt_embeds"][i]
        assert torch.equal(inputs["pooled_prompt_embeds"][i], expected)
        assert torch.equal(inputs["pooled_prompt_embeds"][i + b], expected)


def test_families_come_from_model_index() -> None:
    assert family_from_index({"_class_name": "StableDiffusion3Pipeline"}).name == "sd3"
    assert family_from_index({"_class_name": "FluxPipeline"}).name == "flux"
    assert family_from_index({"_class_name": "StableDiffusionXLPipeline"}).name == "sdxl"
    # The trap of the old check: a second text encoder does not make SD3 or FLUX an SDXL.
    assert family_from_index({"_class_name": "FluxPipeline", "text_encoder_2": ["transformers", "T5EncoderModel"]}).name == "flux"
    assert family_from_index({"_class_name": "QwenImagePipeline", "transformer": ["diffusers", "X"]}) is None
    assert family_of("tiny-sd3").name == "sd3" and family_of("tiny-flux").name == "flux"
    assert set(FAMILIES) == {"sd", "sdxl", "sd3", "flux"}


@pytest.mark.parametrize("name, pipeline_class, shapes", [
    ("tiny-sd3", StableDiffusion3Pipeline, {"prompt_embeds": (2, 77 + 256, 48), "pooled_prompt_embeds": (2, 40)}),
    ("tiny-flux", FluxPipeline, {"prompt_embeds": (2, 512, 48), "pooled_prompt_embeds": (2, 32)}),
])
def test_prompt_encoding_equals_the_pipeline_s(name, pipeline_class, shapes) -> None:
    c = load_components(name, include_denoiser=False)
    captions = ["a red house in the snow", ""]
    encoded = c.family.encode_prompts(c, captions)
    assert {k: tuple(v.shape) for k, v in encoded.items()} == shapes
    pipe = pipeline_class.from_pretrained(resolve_model(name))
    if name == "tiny-sd3":
        embeds, _, pooled, _ = pipe.encode_prompt(captions, None, None, do_classifier_free_guidance=False)
    else:
        embeds, pooled, _ = pipe.encode_prompt(captions, None)
    # The same function on separately loaded encoders: equal up to float32 round-off of the attention kernels.
    torch.testing.assert_close(encoded["prompt_embeds"], embeds, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(encoded["pooled_prompt_embeds"], pooled, rtol=1e-4, atol=1e-4)
    assert not torch.equal(encoded["prompt_embeds"][0], encoded["prompt_embeds"][1])


def test_sd3_prediction_equals_the_transformer_call() -> None:
    c = load_components("tiny-sd3")
    gen = torch.Generator().manual_seed(0)
    inputs = {"hidden_states": torch.randn(2, 16, 8, 8, generator=gen), "timestep": torch.tensor([900.0, 20.0]),
              "prompt_embeds": torch.randn(2, 10, 48, generator=gen), "pooled_prompt_embeds": torch.randn(2, 40, generator=gen)}
    direct = c.denoiser(hidden_states=inputs["hidden_states"], timestep=inputs["timestep"],
                        encoder_hidden_states=inputs["prompt_embeds"], pooled_projections=inputs["pooled_prompt_embeds"],
                        return_dict=False)[0]
    assert torch.equal(c.family.predict(c.denoiser, inputs), direct)


def test_weighting_schemes_draw_and_weight_as_diffusers() -> None:
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    c = SimpleNamespace(noise_scheduler=scheduler)
    index = torch.tensor([0, 500, 999])
    _, sigmas = training_schedule(scheduler)
    assert StableDiffusion3().for_training("logit_normal").sft_weights(index, c, None) is None
    torch.testing.assert_close(StableDiffusion3().for_training("sigma_sqrt").sft_weights(index, c, None),
                               sigmas[index] ** -2.0)
    cosmap = Flux().for_training("cosmap")
    torch.testing.assert_close(cosmap.sft_weights(index, c, None),
                               2 / (torch.pi * (1 - 2 * sigmas[index] + 2 * sigmas[index] ** 2)))
    uniform = [StableDiffusion3().for_training("uniform").sampling.draw_u(torch.Generator().manual_seed(k)).item()
               for k in range(3)]
    assert uniform == [torch.rand(1, generator=torch.Generator().manual_seed(k)).item() for k in range(3)]


def test_sd3_without_t5_encodes_with_a_zero_block_as_long_as_the_clip_tokens(tmp_path) -> None:
    from styleprefs.tiny import build_tiny_sd3

    folder = build_tiny_sd3(tmp_path / "no-t5", t5=False)
    c = load_components(str(folder), include_denoiser=False)
    assert c.text["text_encoder_3"] is None and c.denoiser is None
    encoded = c.family.encode_prompts(c, ["a red house", ""])
    assert encoded["prompt_embeds"].shape == (2, 77 + 77, 48) and not encoded["prompt_embeds"][:, 77:].any()
    pipe = StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None)
    assert c.family.sampling_kwargs(pipe) == {"max_sequence_length": 77}
    embeds, _, _, _ = pipe.encode_prompt(["a red house", ""], None, None, do_classifier_free_guidance=False,
                                         **c.family.sampling_kwargs(pipe))
    torch.testing.assert_close(encoded["prompt_embeds"], embeds, rtol=1e-4, atol=1e-4)
