"""The mini architectures: real diffusers/transformers classes at a size that trains on a CPU.

``mini`` is SD1.5-shaped (AutoencoderKL with a 4x downsampling VAE, so 64 px images have 16x16
latents; an SD-layout UNet2DConditionModel; a CLIP text encoder) and ``mini-clip`` a CLIPModel
whose text tower is also ``mini``'s text encoder, as OpenAI's CLIP text tower is SD1.5's.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPConfig, CLIPModel

from styleprefs.tiny import MAX_LENGTH, SD_BETAS, VOCAB_SIZE

IMAGE_SIZE = 64
LATENT_SIZE = 16
TEXT_WIDTH = 64
EMBED_DIM = 64


def clip_config() -> CLIPConfig:
    text = {"vocab_size": VOCAB_SIZE, "hidden_size": TEXT_WIDTH, "intermediate_size": 4 * TEXT_WIDTH,
            "num_hidden_layers": 4, "num_attention_heads": 4, "max_position_embeddings": MAX_LENGTH,
            "hidden_act": "quick_gelu", "bos_token_id": VOCAB_SIZE - 2, "eos_token_id": VOCAB_SIZE - 1,
            "pad_token_id": VOCAB_SIZE - 1, "projection_dim": EMBED_DIM}
    vision = {"image_size": IMAGE_SIZE, "patch_size": 16, "hidden_size": 128, "intermediate_size": 512,
              "num_hidden_layers": 4, "num_attention_heads": 4, "hidden_act": "quick_gelu",
              "projection_dim": EMBED_DIM}
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=EMBED_DIM)


def new_clip() -> CLIPModel:
    return CLIPModel(clip_config())


def new_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64), norm_num_groups=8, sample_size=IMAGE_SIZE)


def new_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 128),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        # diffusers reads attention_head_dim as the number of heads: 2 heads of 16 and 32 channels. 8 heads of 4 and
        # 8 channels spent a third of a CPU training step in attention.
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=2, norm_num_groups=16)


def train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SD_BETAS, clip_sample=False)


def sampling_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
