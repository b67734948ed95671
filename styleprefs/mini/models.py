"""The mini architectures: real diffusers/transformers classes at a size that trains on a CPU.

``mini`` is SD1.5-shaped (AutoencoderKL with a 4x downsampling VAE, so 64 px images have 16x16
latents; an SD-layout UNet2DConditionModel; a CLIP text encoder) and ``mini-clip`` a CLIPModel
whose text tower is also ``mini``'s text encoder, as OpenAI's CLIP text tower is SD1.5's.
``mini-flow`` is SD3-shaped: an MMDiT (SD3Transformer2DModel) over ``mini``'s VAE latents, conditioned
on two CLIP text encoders with projection (both ``mini-clip``'s text tower) and no T5.
"""

from __future__ import annotations

import torch
from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler,
                       SD3Transformer2DModel, UNet2DConditionModel)
from transformers import CLIPConfig, CLIPModel, CLIPTextModelWithProjection

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


# mini-flow's CLIP tokenizers pad to this many tokens (every sample caption, styled or not, fits), and without T5
# StableDiffusion3Pipeline appends as many zero tokens as its max_sequence_length: mini-flow is trained on the
# sequence the pipeline builds with max_sequence_length=FLOW_TEXT_TOKENS, so sample with it too. 77 + 77 text
# tokens would cost 1.5x as much a step as 40 + 40 beside the 64 image tokens.
FLOW_TEXT_TOKENS = 40
FLOW_SHIFT = 1.0  # SD3 shifts its schedule by 3 at 128x128 latents; at 16x16 the unshifted schedule is used


def new_transformer() -> SD3Transformer2DModel:
    """An MMDiT on 2x2 patches of the 16x16x4 latents (64 image tokens), 6 joint blocks of width 128 (4 heads),
    RMS-normed queries and keys (as SD3.5). Its text input is the two CLIP towers' hidden states side by side
    (2 x 64) and its pooled input their two projections (2 x 64)."""
    return SD3Transformer2DModel(
        sample_size=LATENT_SIZE, patch_size=2, in_channels=4, out_channels=4, num_layers=6, attention_head_dim=32,
        num_attention_heads=4, caption_projection_dim=128, joint_attention_dim=2 * TEXT_WIDTH,
        pooled_projection_dim=2 * EMBED_DIM, pos_embed_max_size=LATENT_SIZE // 2, qk_norm="rms_norm")


def flow_scheduler() -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(shift=FLOW_SHIFT)


def text_encoder_with_projection(clip: CLIPModel) -> CLIPTextModelWithProjection:
    """``clip``'s text tower and text projection as one CLIPTextModelWithProjection (what SD3 takes)."""
    config = clip.config.text_config
    config.projection_dim = clip.config.projection_dim
    encoder = CLIPTextModelWithProjection(config)
    encoder.text_model.load_state_dict(clip.text_model.state_dict())
    encoder.text_projection.load_state_dict(clip.text_projection.state_dict())
    return encoder.eval()


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
