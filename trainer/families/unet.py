"""The UNet family: Stable Diffusion 1.5 (one CLIP text encoder) and SDXL (two, pooled embeddings, time ids),
epsilon or v prediction on a DDPM schedule."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.training_utils import compute_snr
from torch import Tensor
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from styleprefs.trainer.families.base import Components, Family, PairDraws, cast_inputs, with_empty_prompts
from styleprefs.trainer.losses import min_snr_weights


def sdxl_time_ids(original_size: tuple[int, int], crop_top_left: tuple[int, int], target_size: tuple[int, int]) -> Tensor:
    """SDXL micro-conditioning ``[orig_h, orig_w, crop_top, crop_left, target_h, target_w]``, float32 [6].

    Pass the image's real size before resizing and the crop actually taken, as SDXL was trained with.
    """
    return torch.tensor([*original_size, *crop_top_left, *target_size], dtype=torch.float32)


def token_ids(tokenizer, captions: list[str], device: torch.device) -> Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids.to(device)


class StableDiffusion(Family):
    name = "sd"
    pipeline_class = StableDiffusionPipeline
    denoiser_folder = "unet"
    denoiser_class = UNet2DConditionModel
    scheduler_class = DDPMScheduler
    text_parts = (("text_encoder", CLIPTextModel, "tokenizer", CLIPTokenizer),)
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    default_beta = 5000.0  # Diffusion-DPO's SD1.5 and SDXL runs
    validation_guidance = 7.5  # Diffusion-DPO's sampling setting
    text_inputs = ("prompt_embeds",)

    @torch.no_grad()
    def encode_prompts(self, c: Components, captions: list[str]) -> dict[str, Tensor]:
        """``{"prompt_embeds": [B, 77, D]}``, the text encoder's last hidden state."""
        encoder = c.text["text_encoder"]
        return {"prompt_embeds": encoder(token_ids(c.text["tokenizer"], captions, encoder.device)).last_hidden_state}

    def draw_time(self, generator: torch.Generator, c: Components) -> Tensor:
        return torch.randint(0, c.noise_scheduler.config.num_train_timesteps, (), generator=generator)

    def model_inputs(self, batch: dict[str, Tensor], draws: PairDraws, c: Components
                     ) -> tuple[dict[str, Any], Tensor]:
        scheduler = c.noise_scheduler
        posterior = torch.cat([draws.posterior_w, draws.posterior_l])
        latents = self.scale_latents(batch["latent_mean"] + batch["latent_std"] * posterior, c.vae)
        noise = torch.cat([draws.noise, draws.noise])
        timesteps = torch.cat([draws.timesteps, draws.timesteps])
        noisy = scheduler.add_noise(latents, noise, timesteps)
        target = noise if self.prediction_type(c) == "epsilon" else scheduler.get_velocity(latents, noise, timesteps)
        text = with_empty_prompts(batch, draws.dropped, self.text_inputs)
        inputs = {"sample": noisy, "timestep": timesteps, "encoder_hidden_states": text["prompt_embeds"]}
        return inputs | self._added_conditions(batch, text), target

    def _added_conditions(self, batch: dict[str, Tensor], text: dict[str, Tensor]) -> dict[str, Any]:
        return {}

    def predict(self, model: torch.nn.Module, inputs: dict[str, Any]) -> Tensor:
        return model(**cast_inputs(inputs, next(model.parameters()).dtype)).sample

    def sft_weights(self, timesteps: Tensor, c: Components, snr_gamma: float | None) -> Tensor | None:
        if snr_gamma is None:
            return None
        return min_snr_weights(compute_snr(c.noise_scheduler, timesteps), snr_gamma, self.prediction_type(c))

    @staticmethod
    def prediction_type(c: Components) -> str:
        return c.noise_scheduler.config.prediction_type


class StableDiffusionXL(StableDiffusion):
    name = "sdxl"
    pipeline_class = StableDiffusionXLPipeline
    text_parts = (("text_encoder", CLIPTextModel, "tokenizer", CLIPTokenizer),
                  ("text_encoder_2", CLIPTextModelWithProjection, "tokenizer_2", CLIPTokenizer))
    validation_guidance = 5.0
    text_inputs = ("prompt_embeds", "pooled_prompt_embeds")

    @torch.no_grad()
    def encode_prompts(self, c: Components, captions: list[str]) -> dict[str, Tensor]:
        """As ``StableDiffusionXLPipeline.encode_prompt``: ``prompt_embeds`` [B, 77, D1 + D2], both encoders'
        penultimate hidden states; ``pooled_prompt_embeds`` [B, P], text_encoder_2's projected ``text_embeds``."""
        outs = [c.text[encoder](token_ids(c.text[tokenizer], captions, c.text[encoder].device),
                                output_hidden_states=True) for encoder, _, tokenizer, _ in self.text_parts]
        return {"prompt_embeds": torch.cat([out.hidden_states[-2] for out in outs], dim=-1),
                "pooled_prompt_embeds": outs[-1].text_embeds}

    def batch_extras(self, rows: dict[str, Tensor], resolution: int) -> dict[str, Tensor]:
        """``add_time_ids`` [2B, 6]: each image's real size and crop, winners then losers."""
        target = (resolution, resolution)
        return {"add_time_ids": torch.stack([
            sdxl_time_ids(tuple(size), tuple(crop), target)
            for side in "wl"
            for size, crop in zip(rows[f"original_size_{side}"].tolist(), rows[f"crop_top_left_{side}"].tolist())])}

    def _added_conditions(self, batch: dict[str, Tensor], text: dict[str, Tensor]) -> dict[str, Any]:
        return {"added_cond_kwargs": {"text_embeds": text["pooled_prompt_embeds"], "time_ids": batch["add_time_ids"]}}
