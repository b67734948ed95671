"""``mini-flow``: an SD3-layout pipeline trained from scratch with the rectified-flow objective.

Its transformer learns the same data as ``mini``'s UNet (the training scenes' originals, in ``mini``'s VAE latents)
with the flow family's objective from ``styleprefs.trainer.flow_matching``: ``x_t = (1 - sigma) x0 + sigma n``,
target ``n - x0``, sigma drawn logit-normally through the scheduler's schedule. Its two CLIP text encoders are
both ``mini-clip``'s frozen text tower with its projection; prompts are encoded by the pipeline's own
``encode_prompt`` (at ``models.FLOW_TEXT_TOKENS``), so training sees exactly what sampling feeds the transformer.
The VAE is ``mini``'s, with SD3's latent normalisation (a shift factor, then a scaling factor) fitted here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, SD3Transformer2DModel, StableDiffusion3Pipeline
from torch import Tensor
from transformers import CLIPModel, CLIPTokenizer, CLIPTextModelWithProjection

from styleprefs.mini import models
from styleprefs.trainer.families.flow import StableDiffusion3
from styleprefs.trainer.flow_matching import (FlowSampling, noisy_latents, schedule_index, training_schedule,
                                              velocity_target)


def flow_vae(vae: AutoencoderKL, means: Tensor) -> AutoencoderKL:
    """``vae`` with SD3's latent normalisation ``(z - shift_factor) * scaling_factor`` fitted to the latent
    posterior means ``means``: the shifted latents have mean 0 and standard deviation 1."""
    shift = float(means.mean())
    normalised = copy.deepcopy(vae)
    normalised.register_to_config(shift_factor=shift, scaling_factor=float(1.0 / (means - shift).std()))
    return normalised


def flow_pipeline(transformer: SD3Transformer2DModel, vae: AutoencoderKL, text_encoder: CLIPTextModelWithProjection,
                  tokenizer: CLIPTokenizer) -> StableDiffusion3Pipeline:
    """The SD3 pipeline: ``text_encoder`` serves as both CLIP encoders (``tokenizer`` padding to
    ``models.FLOW_TEXT_TOKENS``), no T5, the flow-matching Euler scheduler."""
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.model_max_length = models.FLOW_TEXT_TOKENS
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=models.flow_scheduler(), vae=vae,
                                    text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder,
                                    tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None)


@dataclass
class FlowInputs:
    mean: Tensor  # latent posteriors of the originals, unscaled
    std: Tensor
    captions: list[str]
    vae: AutoencoderKL  # with its shift and scaling factors
    text_encoder: CLIPTextModelWithProjection
    tokenizer: CLIPTokenizer

    def pipeline(self, transformer: SD3Transformer2DModel) -> StableDiffusion3Pipeline:
        return flow_pipeline(transformer, self.vae, self.text_encoder, self.tokenizer)


def flow_inputs(mean: Tensor, std: Tensor, captions: list[str], vae: AutoencoderKL, clip: CLIPModel,
                tokenizer: CLIPTokenizer) -> FlowInputs:
    return FlowInputs(mean, std, captions, flow_vae(vae, mean), models.text_encoder_with_projection(clip), tokenizer)


@torch.no_grad()
def encode(pipe: StableDiffusion3Pipeline, captions: list[str]) -> tuple[Tensor, Tensor]:
    """(prompt_embeds, pooled_projections) as ``pipe`` builds them when sampling without guidance."""
    embeds, _, pooled, _ = pipe.encode_prompt(captions, captions, captions, do_classifier_free_guidance=False,
                                              max_sequence_length=models.FLOW_TEXT_TOKENS)
    return embeds, pooled


def flow_loss(model: torch.nn.Module, pipe: StableDiffusion3Pipeline, z: Tensor, captions: list[str],
              sampling: FlowSampling, generator: torch.Generator) -> Tensor:
    """The rectified-flow loss of ``model`` on clean latents ``z`` (already shifted and scaled)."""
    timesteps, sigmas = training_schedule(pipe.scheduler)
    u = torch.stack([sampling.draw_u(generator) for _ in range(len(z))])
    index = schedule_index(u, pipe.scheduler)
    noise = torch.randn(z.shape, generator=generator)
    embeds, pooled = encode(pipe, captions)
    prediction = model(hidden_states=noisy_latents(z, noise, sigmas[index]), encoder_hidden_states=embeds,
                       pooled_projections=pooled, timestep=timesteps[index]).sample
    error = F.mse_loss(prediction, velocity_target(z, noise), reduction="none").mean(dim=(1, 2, 3))
    return (sampling.weights(sigmas[index]) * error).mean()


def flow_step(inputs: FlowInputs, pipe: StableDiffusion3Pipeline, model: torch.nn.Module, batch: int,
              uncond_prob: float, rng: np.random.Generator, generator: torch.Generator) -> Tensor:
    """One batch of training scenes (captions dropped to "" with ``uncond_prob``, for guidance) and its loss."""
    pick = rng.choice(len(inputs.mean), batch, replace=False)
    mean, std = inputs.mean[torch.from_numpy(pick)], inputs.std[torch.from_numpy(pick)]
    sample = mean + std * torch.randn(mean.shape, generator=generator)
    z = (sample - inputs.vae.config.shift_factor) * inputs.vae.config.scaling_factor
    dropped = rng.random(batch) < uncond_prob
    captions = ["" if drop else inputs.captions[i] for i, drop in zip(pick, dropped)]
    return flow_loss(model, pipe, z, captions, FlowSampling(), generator)


def load_pipeline(location: str) -> StableDiffusion3Pipeline:
    """A mini-flow folder as a StableDiffusion3Pipeline (without T5: text_encoder_3 and tokenizer_3 are None)."""
    return StableDiffusion3Pipeline.from_pretrained(location, text_encoder_3=None, tokenizer_3=None)


def sampling_options(pipe: StableDiffusion3Pipeline) -> dict:
    """The pipeline-call options that give the transformer the text sequence it was trained on (the SD3 family's:
    as many zero, no-T5, tokens as its CLIP tokenizers pad to)."""
    return StableDiffusion3().sampling_kwargs(pipe)
