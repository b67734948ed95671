"""The ``improve`` editor: an improvement model (``styleprefs train --stage improve``) sampled with double
classifier-free guidance ("Iterative DPO with an improvement model", eq. 9)::

    e = e(0,0) + s_I (e(x,0) - e(0,0)) + s_T (e(x,c) - e(x,0))

x the input image's latent (VAE posterior mean, unscaled; zeros for "no image"), c the caption (the
empty prompt for "no prompt"); defaults s_T 3.5, s_I 3.0 (the paper's). diffusers'
``StableDiffusionInstructPix2PixPipeline`` has the same three terms but skips guidance altogether unless
s_T > 1 and s_I >= 1, so the loop here is its own, on the improver folder's own scheduler; the folder
is loaded with that pipeline class, which also checks its format. Images are resized to the working
size and back, as the ``instruct-pix2pix`` editor does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from diffusers import StableDiffusionInstructPix2PixPipeline
from PIL import Image
from torch import Tensor

from styleprefs.editors.loading import (
    SD_COMPONENTS,
    SafetyFlagger,
    dtype_name,
    edit_in_size_buckets,
    generators,
    load_error,
    load_prepared,
    quiet_loading,
    resolve_device,
    resolve_dtype,
    working_resolution,
)
from styleprefs.io import read_json
from styleprefs.resolve import ResolvedModel, resolve_model
from styleprefs.errors import StyleprefsError

if TYPE_CHECKING:
    from styleprefs.editors import EditResult

TEXT_GUIDANCE = 3.5
IMAGE_GUIDANCE = 3.0
DEFAULT_STEPS = 50


def double_guidance(uncond: Tensor, image: Tensor, full: Tensor, image_scale: float, text_scale: float) -> Tensor:
    """``e(0,0) + s_I (e(x,0) - e(0,0)) + s_T (e(x,c) - e(x,0))`` from uncond = e(0,0), image = e(x,0), full = e(x,c)."""
    return uncond + image_scale * (image - uncond) + text_scale * (full - image)


def resolve_improver(model: str) -> ResolvedModel:
    """Where the improvement model ``model`` loads from, checked without loading it (so a run checks it before any
    expensive work): a pipeline folder, Hub id or tiny name whose local ``unet/`` takes noise + image latent."""
    resolved = resolve_model(model, what="improvement", tiny="tiny-ip2p", components=SD_COMPONENTS)
    unet = read_json(Path(resolved.location) / "unet" / "config.json") if resolved.local else {}
    _check_unet(model, unet.get("in_channels"), unet.get("out_channels"))
    return resolved


def _check_unet(model: str, in_channels: int | None, out_channels: int | None) -> None:
    if in_channels is not None and in_channels != 2 * (out_channels or 4):
        raise StyleprefsError(f"improvement model {model}: unet/ takes {in_channels} input channels, not noise + "
                              "image latent; give a `styleprefs train --stage improve` output")


def _load_pipeline(model: ResolvedModel, device: torch.device, dtype: torch.dtype):
    with quiet_loading():
        try:
            pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(model.location, dtype=dtype)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise load_error("improvement", model, exc) from None
    _check_unet(model.name, pipe.unet.config.in_channels, pipe.unet.config.out_channels)
    pipe.set_progress_bar_config(disable=True)
    flagger = SafetyFlagger.detach_from(pipe)
    pipe.to(device)
    if flagger.active:
        flagger.checker.to(device)
    return pipe, flagger


@torch.inference_mode()
def improve_images(pipe: StableDiffusionInstructPix2PixPipeline, images: list[Image.Image], prompts: list[str],
                   generator: list[torch.Generator], steps: int, text_scale: float, image_scale: float
                   ) -> list[Image.Image]:
    """Sample the improvement of each image (all of one size) given its prompt, with double guidance."""
    device, dtype = pipe.unet.device, pipe.unet.dtype
    pixels = pipe.image_processor.preprocess(images).to(device, pipe.vae.dtype)
    condition = pipe.vae.encode(pixels).latent_dist.mode().to(dtype)
    text = _encode(pipe, prompts)
    empty = _encode(pipe, [""] * len(prompts))
    latents = torch.stack([torch.randn(condition.shape[1:], generator=g) for g in generator]).to(device, dtype)
    latents = latents * pipe.scheduler.init_noise_sigma
    conditions = torch.cat([condition, condition, torch.zeros_like(condition)])
    embeddings = torch.cat([text, empty, empty])
    pipe.scheduler.set_timesteps(steps, device=device)
    step_kwargs = pipe.prepare_extra_step_kwargs(generator, 0.0)
    for t in pipe.scheduler.timesteps:
        model_input = torch.cat([pipe.scheduler.scale_model_input(torch.cat([latents] * 3), t), conditions], dim=1)
        full, image, uncond = pipe.unet(model_input, t, encoder_hidden_states=embeddings).sample.chunk(3)
        noise = double_guidance(uncond, image, full, image_scale, text_scale)
        latents = pipe.scheduler.step(noise, t, latents, **step_kwargs).prev_sample
    decoded = pipe.vae.decode(latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(decoded, output_type="pil")


def _encode(pipe: StableDiffusionInstructPix2PixPipeline, prompts: list[str]) -> Tensor:
    tokens = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
    return pipe.text_encoder(tokens.to(pipe.text_encoder.device))[0].to(pipe.unet.dtype)


class ImproveEditor:
    """Output i depends only on (images[i], captions[i], seeds[i]): the caption is the prompt c, the seed
    draws the initial noise."""

    name = "improve"

    def __init__(self, *, model: str | None = None, device: str | None = None, dtype: str | None = None,
                 steps: int | None = None, resolution: int | None = None, text_guidance: float = TEXT_GUIDANCE,
                 image_guidance: float = IMAGE_GUIDANCE, channels_last: bool = False, compile: bool = False):
        if model is None:
            raise StyleprefsError("the improve editor needs --editor-model: a `styleprefs train --stage improve` "
                                  "output")
        if steps is not None and steps < 1:
            raise StyleprefsError("steps must be at least 1")
        resolved = resolve_improver(model)
        self.model_id = resolved.name
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self._pipe, self._safety = load_prepared(("improve", resolved.location, str(self.device), self.dtype),
                                                 lambda: _load_pipeline(resolved, self.device, self.dtype),
                                                 channels_last=channels_last, compile=compile)
        self.resolution = working_resolution(self._pipe, resolution)
        self.steps = int(steps or DEFAULT_STEPS)
        self.text_guidance, self.image_guidance = float(text_guidance), float(image_guidance)

    def params(self) -> dict:
        return {"num_inference_steps": self.steps, "text_guidance": self.text_guidance,
                "image_guidance": self.image_guidance, "guidance": "double (Iterative DPO eq. 9)",
                "resolution": self.resolution, "scheduler": type(self._pipe.scheduler).__name__,
                "dtype": dtype_name(self.dtype)}

    def edit(self, images: Sequence[Image.Image], captions: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]:
        return self.edit_with_flags(images, captions, seeds).images

    def edit_with_flags(self, images: Sequence[Image.Image], captions: Sequence[str],
                        seeds: Sequence[int]) -> EditResult:
        """The improved images and, per image, the model's safety-checker flag (None if it has no checker)."""

        def run(size: tuple[int, int], idx: list[int]) -> list[Image.Image]:
            return improve_images(self._pipe, [images[i].convert("RGB").resize(size, Image.LANCZOS) for i in idx],
                                  [captions[i] for i in idx], generators([seeds[i] for i in idx]), self.steps,
                                  self.text_guidance, self.image_guidance)

        return edit_in_size_buckets(images, captions, seeds, self.resolution, run, self._safety, self._pipe.vae)
