"""The instruction editors: ``kontext`` (FLUX.1 Kontext [dev], diffusers' ``FluxKontextPipeline``) and
``qwen-image-edit`` (Qwen-Image-Edit-2509 / Qwen-Image-Edit, ``QwenImageEditPlusPipeline`` /
``QwenImageEditPipeline``).

The text is the style's instruction (``StyleSpec.edit_instruction``); sampling follows each model card (Kontext
dev: guidance 2.5, 28 steps; Qwen-Image-Edit-2509: true CFG 4.0 with the negative prompt " ", 40 steps;
Qwen-Image-Edit: the same with 50 steps); ``steps`` overrides the step count. Each image is resized to a working
size, edited, and resized back to its own size:

- Kontext: the preferred resolution (diffusers' ``PREFERRED_KONTEXT_RESOLUTIONS``, about 1 MP) whose aspect ratio
  is closest to the image's, the pipeline's own rule; with ``max_area`` below its area, scaled down to that area
  (sides multiples of 16). The pipeline is called with that size and no resizing of its own, so condition and
  output have the working size.
- Qwen-Image-Edit: the image's aspect ratio at ``max_area`` pixels (default 1024 x 1024, the pipeline's target;
  sides multiples of 32, diffusers' ``calculate_dimensions``). diffusers 0.42 encodes the condition image at a
  hard-coded 1 MP whatever the output size, so for another ``max_area`` the condition is encoded at that area too
  (the pipeline module's ``calculate_dimensions`` is redirected for the call); at 1 MP the pipeline runs as is.
  A batch is edited image by image (diffusers' ``QwenImageEditPlusPipeline`` takes one image per call).

Tiny offline models (``tiny``) work at 64 x 64 px of area by default, as the other tiny editors work at their
native 64 px. ``dtype`` ``auto`` is bf16 on CUDA (the model cards' dtype; FLUX.1 overflows in fp16), fp32 on CPU.
``offload`` (``model``: diffusers' model CPU offload, whole components moved to the GPU in turn; ``group``:
diffusers' group offloading at leaf level, layer by layer, slowest and least GPU memory; accelerate's sequential
offload is not offered: with transformers 5.25 and accelerate 1.16 it failed in the CLIP text encoder, on CPU) runs the 12B/20B models on smaller
cards; it does not change the edits and does not enter ``params()``.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import torch
from diffusers import DiffusionPipeline
from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS
from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_dimensions
from PIL import Image

from styleprefs.editors.loading import (
    SafetyFlagger,
    dtype_name,
    edit_in_size_buckets,
    generators,
    load_error,
    load_once,
    quiet_loading,
    resolve_device,
    resolve_dtype,
)
from styleprefs.errors import StyleprefsError
from styleprefs.gpu import to_channels_last
from styleprefs.resolve import ResolvedModel, is_offline_name, resolve_model
from styleprefs.style import StyleSpec

if TYPE_CHECKING:
    from styleprefs.editors import EditResult

OFFLOAD = ("none", "model", "group")
PIPELINE_AREA = 1024 * 1024  # Qwen-Image-Edit's target area, hard-coded in diffusers' pipelines
TINY_AREA = 64 * 64
MIN_AREA = 32 * 32
KONTEXT_MULTIPLE = 16  # VAE factor 8 x 2x2 packing
# Sampling of each pipeline class, from the model cards.
CARD_SETTINGS: dict[str, dict] = {
    "FluxKontextPipeline": {"num_inference_steps": 28, "guidance_scale": 2.5},
    "QwenImageEditPlusPipeline": {"num_inference_steps": 40, "true_cfg_scale": 4.0, "negative_prompt": " "},
    "QwenImageEditPipeline": {"num_inference_steps": 50, "true_cfg_scale": 4.0, "negative_prompt": " "},
}
_AREA_LOCK = threading.Lock()


@dataclass(frozen=True)
class InstructionModel:
    editor: str  # registry name
    what: str  # for messages
    default_model: str
    tiny: str
    pipelines: tuple[str, ...]  # pipeline classes the model folder may name
    components: tuple[str, ...]
    resolution_policy: str  # recorded in params()


KONTEXT = InstructionModel(
    "kontext", "FLUX.1 Kontext", "black-forest-labs/FLUX.1-Kontext-dev", "tiny-kontext", ("FluxKontextPipeline",),
    ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
    "kontext preferred resolution")
QWEN_IMAGE_EDIT = InstructionModel(
    "qwen-image-edit", "Qwen-Image-Edit", "Qwen/Qwen-Image-Edit-2509", "tiny-qwen-image-edit",
    ("QwenImageEditPlusPipeline", "QwenImageEditPipeline"),
    ("transformer", "vae", "text_encoder", "tokenizer", "processor", "scheduler"), "area")
MODELS = {spec.editor: spec for spec in (KONTEXT, QWEN_IMAGE_EDIT)}


def kontext_size(size: tuple[int, int], max_area: int | None = None) -> tuple[int, int]:
    """The Kontext preferred resolution closest to ``size``'s aspect ratio (ties as diffusers breaks them), scaled
    down to ``max_area`` pixels if it is larger, sides multiples of 16."""
    ratio = size[0] / size[1]
    _, width, height = min((abs(ratio - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
    if max_area is not None and width * height > max_area:
        scale = math.sqrt(max_area / (width * height))
        width, height = (max(KONTEXT_MULTIPLE, int(side * scale) // KONTEXT_MULTIPLE * KONTEXT_MULTIPLE)
                         for side in (width, height))
    return width, height


def qwen_size(size: tuple[int, int], max_area: int) -> tuple[int, int]:
    """``size``'s aspect ratio at ``max_area`` pixels, sides multiples of 32 (diffusers' rule)."""
    width, height = calculate_dimensions(max_area, size[0] / size[1])
    return max(32, width), max(32, height)


@contextlib.contextmanager
def condition_area(pipe, area: int) -> Iterator[None]:
    """During the block, ``pipe`` (a Qwen-Image-Edit pipeline) encodes its condition image at ``area`` pixels
    instead of its hard-coded 1 MP: its module's ``calculate_dimensions`` maps that target to ``area``."""
    if area == PIPELINE_AREA:
        yield
        return
    module = sys.modules[type(pipe).__module__]
    original = module.calculate_dimensions

    def at_area(target_area, ratio):
        return original(area if target_area == PIPELINE_AREA else target_area, ratio)

    with _AREA_LOCK:
        module.calculate_dimensions = at_area
        try:
            yield
        finally:
            module.calculate_dimensions = original


def _load_pipeline(spec: InstructionModel, model: ResolvedModel, device: torch.device, dtype: torch.dtype,
                   offload: str, channels_last: bool, compile: bool):
    with quiet_loading():
        try:
            pipe = DiffusionPipeline.from_pretrained(model.location, dtype=dtype)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError) as exc:
            raise load_error(spec.what, model, exc) from None
    kind = type(pipe).__name__
    if kind not in spec.pipelines:
        raise StyleprefsError(f"{spec.what} model {model.name} is a {kind}, not a {' or '.join(spec.pipelines)}: "
                              f"give a {spec.what} model to --editor {spec.editor}")
    pipe.set_progress_bar_config(disable=True)
    if channels_last:
        if spec is not KONTEXT:
            raise StyleprefsError(f"--channels-last is for 2-D convolutions; {spec.what}'s VAE is 3-D: drop it")
        to_channels_last(pipe.vae)
    if compile:
        pipe.transformer = torch.compile(pipe.transformer)
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "group":
        pipe.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"), offload_type="leaf_level")
    else:
        pipe.to(device)
    return pipe


class InstructionEditor:
    """Output i depends only on (images[i], seeds[i]) and the style's instruction: its generator is seeded with
    seeds[i] (captions are not used: the instruction is the text)."""

    def __init__(self, spec: InstructionModel, style: StyleSpec, *, model: str | None = None,
                 device: str | None = None, dtype: str | None = None, steps: int | None = None,
                 max_area: int | None = None, offload: str = "none", channels_last: bool = False,
                 compile: bool = False):
        if steps is not None and steps < 1:
            raise StyleprefsError("steps must be at least 1")
        if max_area is not None and max_area < MIN_AREA:
            raise StyleprefsError(f"--max-area must be at least {MIN_AREA} pixels (32 x 32), got {max_area}")
        if offload not in OFFLOAD:
            raise StyleprefsError(f"unknown --offload {offload!r}: use one of {', '.join(OFFLOAD)}")
        resolved = resolve_model(model or spec.default_model, what=spec.what, tiny=spec.tiny,
                                 components=spec.components)
        self.spec, self.name, self.model_id = spec, spec.editor, resolved.name
        self.device = resolve_device(device)
        if offload != "none" and self.device.type != "cuda":
            raise StyleprefsError(f"--offload {offload} moves weights between CPU and GPU: it needs a CUDA device, "
                                  f"not {self.device}")
        self.dtype = resolve_dtype("bf16" if dtype in (None, "", "auto") and self.device.type == "cuda" else dtype,
                                   self.device)
        self._pipe = load_once(
            (spec.editor, resolved.location, str(self.device), self.dtype, offload, channels_last, compile),
            lambda: _load_pipeline(spec, resolved, self.device, self.dtype, offload, channels_last, compile))
        self.pipeline = type(self._pipe).__name__
        self.settings = dict(CARD_SETTINGS[self.pipeline])
        if steps is not None:
            self.settings["num_inference_steps"] = int(steps)
        self.steps = self.settings["num_inference_steps"]
        self.instruction = style.edit_instruction
        if max_area is None:  # Kontext: its preferred resolution as it is
            max_area = TINY_AREA if is_offline_name(resolved.name) else None if spec is KONTEXT else PIPELINE_AREA
        self.max_area = None if max_area is None else int(max_area)
        self.resolution = math.isqrt(self.max_area or PIPELINE_AREA)  # for --batch-size auto
        self._safety = SafetyFlagger()  # neither model ships a safety checker

    def params(self) -> dict:
        return {"instruction": self.instruction, **self.settings, "pipeline": self.pipeline,
                "resolution": self.spec.resolution_policy, "max_area": self.max_area,
                "scheduler": type(self._pipe.scheduler).__name__, "dtype": dtype_name(self.dtype)}

    def working_size(self, size: tuple[int, int]) -> tuple[int, int]:
        if self.spec is KONTEXT:
            return kontext_size(size, self.max_area)
        return qwen_size(size, self.max_area)

    def edit(self, images: Sequence[Image.Image], captions: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]:
        return self.edit_with_flags(images, captions, seeds).images

    def edit_with_flags(self, images: Sequence[Image.Image], captions: Sequence[str],
                        seeds: Sequence[int]) -> EditResult:
        """The edits; every safety flag is None (no bundled checker)."""

        def run(size: tuple[int, int], idx: list[int]) -> list[Image.Image]:
            inputs = [images[i].convert("RGB").resize(size, Image.LANCZOS) for i in idx]
            gens = generators([seeds[i] for i in idx])
            width, height = size
            with torch.inference_mode():
                if self.spec is KONTEXT:
                    return self._pipe(image=inputs, prompt=[self.instruction] * len(idx), width=width, height=height,
                                      max_area=width * height, _auto_resize=False, generator=gens,
                                      output_type="pil", **self.settings).images
                with condition_area(self._pipe, self.max_area):
                    return [self._pipe(image=image, prompt=self.instruction, width=width, height=height,
                                       generator=gen, output_type="pil", **self.settings).images[0]
                            for image, gen in zip(inputs, gens)]

        return edit_in_size_buckets(images, captions, seeds, 0, run, self._safety, self._pipe.vae,
                                    working_size=self.working_size)
