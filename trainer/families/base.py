"""What a model family tells the trainer: how prompts are encoded, how a noisy input and its target are made, how
the denoiser is called and saved. The loop, the losses, the cache and checkpoints are shared by every family."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from torch import Tensor


@dataclass
class PairDraws:
    """The random draws of one micro-batch, one row per pair (winner and loser share every one of them)."""

    timesteps: Tensor  # [B] long: an index into the family's training schedule
    noise: Tensor  # [B, C, h, w], shared by winner and loser
    posterior_w: Tensor  # [B, C, h, w], VAE posterior sample noise of the winner
    posterior_l: Tensor  # [B, C, h, w], and of the loser
    dropped: Tensor  # [B] bool, caption replaced by the empty prompt


@dataclass
class Components:
    """Everything the trainer needs from one diffusers pipeline folder or Hub id.

    ``text`` holds the text encoders and tokenizers under their pipeline names (``text_encoder``,
    ``tokenizer``, ``text_encoder_2``, ...), frozen; empty when only the denoiser and VAE were asked for.
    ``denoiser`` (the UNet or transformer) is None when it was not loaded.
    """

    family: Family
    denoiser: torch.nn.Module | None
    vae: AutoencoderKL
    noise_scheduler: Any
    text: dict[str, Any] = field(default_factory=dict)
    denoiser_config: dict[str, Any] = field(default_factory=dict)  # loaded even when the denoiser is not

    @property
    def kind(self) -> str:
        return self.family.name

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


class Family:
    """One model family. Subclasses set the class attributes and implement the methods that raise here."""

    name: ClassVar[str]
    pipeline_class: ClassVar[type[DiffusionPipeline]]
    denoiser_folder: ClassVar[str]  # "unet" or "transformer"
    denoiser_class: ClassVar[type[torch.nn.Module]]
    scheduler_class: ClassVar[type]
    text_parts: ClassVar[tuple[tuple[str, type, str, type], ...]]  # (encoder folder, class, tokenizer folder, class)
    optional_text_parts: ClassVar[tuple[str, ...]] = ()  # encoder folders a pipeline may leave out (SD3's T5)
    lora_targets: ClassVar[tuple[str, ...]]
    fsdp_blocks: ClassVar[tuple[str, ...]]  # the denoiser's block classes, each an FSDP shard unit
    default_beta: ClassVar[float]
    validation_guidance: ClassVar[float]

    def for_training(self, weighting_scheme: str) -> Family:
        """This family as a run with these options trains it (the UNet family has no such option)."""
        return self

    def encode_prompts(self, c: Components, captions: list[str]) -> dict[str, Tensor]:
        """The text conditioning of ``captions`` as the family's pipeline computes it (what the cache stores)."""
        raise NotImplementedError

    def draw_time(self, generator: torch.Generator, c: Components) -> Tensor:
        """One pair's time draw (a 0-d long index into the training schedule), from ``generator``."""
        raise NotImplementedError

    def model_inputs(self, batch: dict[str, Tensor], draws: PairDraws, c: Components
                     ) -> tuple[dict[str, Any], Tensor]:
        """Denoiser inputs for the 2B stacked latents (winners, then losers) and the target.

        Every tensor in the inputs is per sample (first dimension 2B), so the winners' half is the first half."""
        raise NotImplementedError

    def predict(self, model: torch.nn.Module, inputs: dict[str, Any]) -> Tensor:
        """One call of the denoiser on ``inputs`` (cast to its dtype), shaped like the target."""
        raise NotImplementedError

    def sft_weights(self, timesteps: Tensor, c: Components, snr_gamma: float | None) -> Tensor | None:
        """Per-sample weights of the SFT loss at the drawn ``timesteps`` (None: all equal)."""
        raise NotImplementedError

    def sampling_kwargs(self, pipe) -> dict[str, Any]:
        """Options of the family's pipeline call that sampling needs to match training (none by default)."""
        return {}

    def batch_extras(self, rows: dict[str, Tensor], resolution: int) -> dict[str, Tensor]:
        """Per-pair inputs the family computes from cached rows beyond latents and text (SDXL's time ids)."""
        return {}

    def save_lora(self, layers: dict[str, Tensor], out, weight_name: str) -> None:
        """Write LoRA ``layers`` (diffusers names) where the family's ``load_lora_weights`` finds them."""
        self.pipeline_class.save_lora_weights(out, weight_name=weight_name, safe_serialization=True,
                                              **{f"{self.denoiser_folder}_lora_layers": layers})

    def scale_latents(self, latents: Tensor, vae: AutoencoderKL) -> Tensor:
        """VAE latents as the denoiser sees them: ``(x - shift_factor) * scaling_factor``."""
        shift = vae.config.get("shift_factor") or 0.0
        return (latents - shift) * vae.config["scaling_factor"]


def cast_inputs(inputs: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """Floating-point tensors of ``inputs`` (nested dicts included) in ``dtype``; the rest as they are."""
    return {k: cast_inputs(v, dtype) if isinstance(v, dict) else
            v.to(dtype) if isinstance(v, Tensor) and torch.is_floating_point(v) else v for k, v in inputs.items()}


def with_empty_prompts(batch: dict[str, Tensor], dropped: Tensor, names: tuple[str, ...]) -> dict[str, Tensor]:
    """The text inputs ``names`` of ``batch``, each pair's replaced by the empty prompt's where ``dropped``,
    repeated for winners and losers ([2B, ...])."""
    out = {}
    for name in names:
        value, empty = batch[name], batch[f"empty_{name}"]
        mask = dropped.reshape(-1, *([1] * (value.dim() - 1)))
        chosen = torch.where(mask, empty[None], value)
        out[name] = torch.cat([chosen, chosen])
    return out
