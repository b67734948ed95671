"""The ``instruct-pix2pix`` editor: diffusers' ``StableDiffusionInstructPix2PixPipeline``.

Instruction, steps, text guidance and image guidance come from the style spec's ``instruct_pix2pix``
settings (paper defaults: 100 steps, 7.5, 1.5); ``steps`` overrides the step count. The output has the
input's size, and the model works best near its training size, so each image is resized to a working
size (long side ``resolution``, 512 for SD1.5-sized models, both sides multiples of 64, the rule of
InstructPix2Pix's edit_cli.py), edited, and resized back. One pipeline call takes one size: a batch
is split by working size. The bundled safety checker's flag is returned beside the images
(``edit_with_flags``) and never blackens an image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from diffusers import StableDiffusionInstructPix2PixPipeline
from PIL import Image

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
from styleprefs.resolve import ResolvedModel, resolve_model
from styleprefs.errors import StyleprefsError
from styleprefs.style import InstructPix2PixSettings

if TYPE_CHECKING:
    from styleprefs.editors import EditResult

DEFAULT_MODEL = "timbrooks/instruct-pix2pix"


def _load_pipeline(model: ResolvedModel, device: torch.device, dtype: torch.dtype):
    with quiet_loading():
        try:
            pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(model.location, dtype=dtype)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise load_error("InstructPix2Pix", model, exc) from None
    channels = pipe.unet.config.in_channels
    if channels != 8:
        raise StyleprefsError(f"InstructPix2Pix model {model.name}: unet/ takes {channels} input channels, not 8 "
                              "(noise + image latent); is it a text-to-image model?")
    pipe.set_progress_bar_config(disable=True)
    flagger = SafetyFlagger.detach_from(pipe)
    pipe.to(device)
    if flagger.active:
        flagger.checker.to(device)
    return pipe, flagger


class InstructPix2PixEditor:
    """Output i depends only on (images[i], seeds[i]) and the style's instruction: its generator is
    seeded with seeds[i] (captions are not used: the instruction is the text)."""

    name = "instruct-pix2pix"

    def __init__(self, settings: InstructPix2PixSettings, *, model: str | None = None, device: str | None = None,
                 dtype: str | None = None, steps: int | None = None, resolution: int | None = None,
                 channels_last: bool = False, compile: bool = False):
        if steps is not None and steps < 1:
            raise StyleprefsError("steps must be at least 1")
        resolved = resolve_model(model or DEFAULT_MODEL, what="InstructPix2Pix", tiny="tiny-ip2p",
                                 components=SD_COMPONENTS)
        self.model_id = resolved.name
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self._pipe, self._safety = load_prepared(
            ("instruct-pix2pix", resolved.location, str(self.device), self.dtype),
            lambda: _load_pipeline(resolved, self.device, self.dtype), channels_last=channels_last, compile=compile)
        self.resolution = working_resolution(self._pipe, resolution)
        self.settings = settings
        self.steps = int(steps or settings.num_inference_steps)

    def params(self) -> dict:
        return {"instruction": self.settings.instruction, "num_inference_steps": self.steps,
                "guidance_scale": self.settings.guidance_scale,
                "image_guidance_scale": self.settings.image_guidance_scale, "resolution": self.resolution,
                "scheduler": type(self._pipe.scheduler).__name__, "dtype": dtype_name(self.dtype)}

    def edit(self, images: Sequence[Image.Image], captions: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]:
        return self.edit_with_flags(images, captions, seeds).images

    def edit_with_flags(self, images: Sequence[Image.Image], captions: Sequence[str],
                        seeds: Sequence[int]) -> EditResult:
        """The edits and, per edit, the model's safety-checker flag (None if it has no checker)."""

        def run(size: tuple[int, int], idx: list[int]) -> list[Image.Image]:
            with torch.inference_mode():
                return self._pipe(
                    prompt=[self.settings.instruction] * len(idx),
                    image=[images[i].convert("RGB").resize(size, Image.LANCZOS) for i in idx],
                    num_inference_steps=self.steps, guidance_scale=self.settings.guidance_scale,
                    image_guidance_scale=self.settings.image_guidance_scale,
                    generator=generators([seeds[i] for i in idx]), output_type="pil").images

        return edit_in_size_buckets(images, captions, seeds, self.resolution, run, self._safety, self._pipe.vae)
