"""The rectified-flow family: Stable Diffusion 3 / 3.5 (MMDiT; two CLIP encoders and an optional T5) and FLUX.1
(CLIP pooled + T5; 2x2-packed latents with position ids; FLUX.1-dev's guidance embedding), trained on the velocity
``noise - x0`` (:mod:`styleprefs.trainer.flow_matching`). Prompts are encoded by the family's own pipeline class, so
training sees exactly the conditioning that sampling does.

The beta of DPO and RPO on flow errors (``default_beta``): a velocity error ``e_v`` at noise level sigma is an
epsilon error ``(1 - sigma)^2 e_v`` (``eps_hat = x_t + (1 - sigma) v_hat``), so Diffusion-DPO's 5000 on epsilon
errors corresponds to ``5000 * E[(1 - sigma)^2]`` on velocity errors. Under the logit-normal draw,
``E[(1 - sigma)^2]`` is 0.11 on SD3's schedule (shift 3) and 0.29 on FLUX.1's (its training schedule is unshifted:
the shift is dynamic, applied at sampling), hence 500 and 1500 (``tests/test_flow_family.py`` measures both).
flow_grpo's Flow-DPO uses 100 with the same ``-beta/2`` convention (online pairs, LoRA): lower beta if a run
saturates.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel, SD3Transformer2DModel,
                       StableDiffusion3Pipeline)
from torch import Tensor
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

from styleprefs.trainer.families.base import Components, Family, PairDraws, cast_inputs, with_empty_prompts
from styleprefs.trainer.flow_matching import FlowSampling, noisy_latents, schedule_index, training_schedule, velocity_target

# FLUX.1-dev is guidance-distilled: its transformer takes the guidance scale as an input. diffusers' FLUX
# fine-tuning scripts (and DanceGRPO) train with 3.5, the value FLUX.1-dev samples with.
FLUX_TRAINING_GUIDANCE = 3.5


class FlowFamily(Family):
    """What SD3 and FLUX share: noise levels, noisy latents, the velocity target, the loss weighting."""

    denoiser_folder = "transformer"
    scheduler_class = FlowMatchEulerDiscreteScheduler
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
    text_inputs = ("prompt_embeds", "pooled_prompt_embeds")
    max_sequence_length: int

    def __init__(self, sampling: FlowSampling | None = None):
        self.sampling = sampling or FlowSampling()
        self._schedule: tuple[object, tuple[Tensor, Tensor]] | None = None

    def for_training(self, weighting_scheme: str) -> FlowFamily:
        return type(self)(FlowSampling(scheme=weighting_scheme))

    def schedule(self, scheduler: FlowMatchEulerDiscreteScheduler) -> tuple[Tensor, Tensor]:
        """``training_schedule(scheduler)``, computed once per scheduler."""
        if self._schedule is None or self._schedule[0] is not scheduler:
            self._schedule = (scheduler, training_schedule(scheduler))
        return self._schedule[1]

    @torch.no_grad()
    def encode_prompts(self, c: Components, captions: list[str]) -> dict[str, Tensor]:
        pipe = self.pipeline_class(**self._pipeline_parts(c))
        return self._encode(pipe, captions)

    def _pipeline_parts(self, c: Components) -> dict[str, Any]:
        parts = {name: None for name in ("transformer", "scheduler", "vae")}
        for encoder, _, tokenizer, _ in self.text_parts:
            parts |= {encoder: c.text.get(encoder), tokenizer: c.text.get(tokenizer)}
        return parts

    def _encode(self, pipe, captions: list[str]) -> dict[str, Tensor]:
        raise NotImplementedError

    def draw_time(self, generator: torch.Generator, c: Components) -> Tensor:
        return schedule_index(self.sampling.draw_u(generator), c.noise_scheduler)

    def model_inputs(self, batch: dict[str, Tensor], draws: PairDraws, c: Components
                     ) -> tuple[dict[str, Any], Tensor]:
        timesteps, sigmas = (t.to(batch["latent_mean"].device) for t in self.schedule(c.noise_scheduler))
        index = torch.cat([draws.timesteps, draws.timesteps])
        posterior = torch.cat([draws.posterior_w, draws.posterior_l])
        latents = self.scale_latents(batch["latent_mean"] + batch["latent_std"] * posterior, c.vae)
        noise = torch.cat([draws.noise, draws.noise])
        inputs = {"hidden_states": noisy_latents(latents, noise, sigmas[index]), "timestep": timesteps[index],
                  **with_empty_prompts(batch, draws.dropped, self.text_inputs)}
        return inputs, velocity_target(latents, noise)

    def sft_weights(self, timesteps: Tensor, c: Components, snr_gamma: float | None) -> Tensor | None:
        if self.sampling.scheme not in ("sigma_sqrt", "cosmap"):
            return None
        _, sigmas = self.schedule(c.noise_scheduler)
        return self.sampling.weights(sigmas.to(timesteps.device)[timesteps])


class StableDiffusion3(FlowFamily):
    name = "sd3"
    pipeline_class = StableDiffusion3Pipeline
    denoiser_class = SD3Transformer2DModel
    fsdp_blocks = ("JointTransformerBlock",)
    text_parts = (("text_encoder", CLIPTextModelWithProjection, "tokenizer", CLIPTokenizer),
                  ("text_encoder_2", CLIPTextModelWithProjection, "tokenizer_2", CLIPTokenizer),
                  ("text_encoder_3", T5EncoderModel, "tokenizer_3", T5TokenizerFast))
    optional_text_parts = ("text_encoder_3",)
    default_beta = 500.0  # see the module docstring
    validation_guidance = 7.0  # StableDiffusion3Pipeline's default
    max_sequence_length = 256  # StableDiffusion3Pipeline's default T5 length

    def _pipeline_parts(self, c: Components) -> dict[str, Any]:
        parts = super()._pipeline_parts(c)
        if parts["text_encoder_3"] is None:  # the missing T5's zeros take their width from the transformer's config
            with torch.device("meta"):  # the config without the weights
                parts["transformer"] = self.denoiser_class.from_config(c.denoiser_config)
        return parts

    def t5_tokens(self, pipe) -> int:
        """The T5 part of the text sequence: the pipeline's 256 tokens with a T5; without one, a block of zeros as
        long as the CLIP tokens (the pipeline's 256 zeros would be mostly padding, and cost attention)."""
        return pipe.tokenizer_max_length if pipe.text_encoder_3 is None else self.max_sequence_length

    def sampling_kwargs(self, pipe) -> dict[str, Any]:
        return {"max_sequence_length": self.t5_tokens(pipe)}

    def _encode(self, pipe, captions: list[str]) -> dict[str, Tensor]:
        """``prompt_embeds`` [B, 77 + T5 tokens, D] (CLIP hidden states padded to D, then T5's; zeros without T5)
        and ``pooled_prompt_embeds`` [B, P1 + P2], as ``StableDiffusion3Pipeline.encode_prompt``."""
        device = pipe.text_encoder.device
        embeds, _, pooled, _ = pipe.encode_prompt(captions, None, None, device=device,
                                                  do_classifier_free_guidance=False, **self.sampling_kwargs(pipe))
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def predict(self, model: torch.nn.Module, inputs: dict[str, Any]) -> Tensor:
        cast = cast_inputs(inputs, next(model.parameters()).dtype)
        return model(hidden_states=cast["hidden_states"], timestep=cast["timestep"],
                     encoder_hidden_states=cast["prompt_embeds"], pooled_projections=cast["pooled_prompt_embeds"],
                     return_dict=False)[0]


class Flux(FlowFamily):
    name = "flux"
    pipeline_class = FluxPipeline
    denoiser_class = FluxTransformer2DModel
    fsdp_blocks = ("FluxTransformerBlock", "FluxSingleTransformerBlock")
    text_parts = (("text_encoder", CLIPTextModel, "tokenizer", CLIPTokenizer),
                  ("text_encoder_2", T5EncoderModel, "tokenizer_2", T5TokenizerFast))
    validation_guidance = 3.5  # FLUX.1-dev's sampling guidance
    default_beta = 1500.0  # see the module docstring
    max_sequence_length = 512  # FluxPipeline's default T5 length

    def _encode(self, pipe, captions: list[str]) -> dict[str, Tensor]:
        """``prompt_embeds`` [B, 512, D] (T5) and ``pooled_prompt_embeds`` [B, P] (CLIP's pooled output), as
        ``FluxPipeline.encode_prompt`` (its text ids are all zeros: :meth:`predict` makes them)."""
        embeds, pooled, _ = pipe.encode_prompt(captions, None, device=pipe.text_encoder.device,
                                               max_sequence_length=self.max_sequence_length)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def predict(self, model: torch.nn.Module, inputs: dict[str, Any]) -> Tensor:
        """Pack the latents 2x2 into tokens, call the transformer with t/1000, position ids and (FLUX.1-dev) the
        training guidance, and unpack its output to the latents' shape."""
        dtype = next(model.parameters()).dtype
        cast = cast_inputs(inputs, dtype)
        latents = cast["hidden_states"]
        b, channels, h, w = latents.shape
        text = cast["prompt_embeds"]
        guidance = (torch.full((b,), FLUX_TRAINING_GUIDANCE, device=latents.device, dtype=torch.float32)
                    if getattr(model, "module", model).config.guidance_embeds else None)  # DDP wraps the model
        out = model(hidden_states=FluxPipeline._pack_latents(latents, b, channels, h, w),
                    timestep=cast["timestep"] / 1000, guidance=guidance,
                    pooled_projections=cast["pooled_prompt_embeds"], encoder_hidden_states=text,
                    txt_ids=torch.zeros(text.shape[1], 3, device=latents.device, dtype=dtype),
                    img_ids=FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, latents.device, dtype),
                    return_dict=False)[0]
        return FluxPipeline._unpack_latents(out, h, w, 1)  # sizes in latent pixels: a scale factor of 1
