"""Prompt Diffusion (Wang et al., NeurIPS 2023) on current diffusers: model, pipeline and the editor.

The model (``PromptDiffusionControlNetModel``) is diffusers' ``ControlNetModel`` with a second
conditioning embedding: the example pair (source, target), concatenated to 6 channels, goes through
``controlnet_cond_embedding``; the query image (3 channels) through ``controlnet_query_cond_embedding``;
the two embeddings are summed into the ControlNet's input (cldm/cldm.py: ``input_hint_block`` +
``input_cond_block``). Module names are those of diffusers' research-project port, whose conversion
script wrote the published diffusers-format checkpoint (``zhendongw/prompt-diffusion-diffusers``,
ControlNet in ``controlnet/``), so its weights load by name (not loaded here: no Hub access offline).
The pipeline (``PromptDiffusionPipeline``) is diffusers' ``StableDiffusionControlNetPipeline`` with a
``__call__`` that passes both conditions. Generation starts from noise (txt2img + control): structure
reaches the output only through the query.

Conditions are scaled to [-1, 1], as the model was trained (edit_dataset.py) and sampled
(run_prompt_diffusion.ipynb) in the original repository. diffusers' research-project port feeds
[0, 1] (ControlNet's convention), which does not match those weights; styleprefs follows the original.

Recipe for Sketch and Winter (the paper gives none; this is styleprefs' choice, check it with the CLIP
gate's keep rate on a GPU before a large build):

- ``recipe="pair"`` (default): example pair = (image, classic edit of the image) with the style's
  ``classic`` filter and the row's seed, or the style's ``prompt_diffusion.example_pair`` (user
  images, the same for every row); query = the image; text = ``prompt_diffusion.prompt`` with the
  caption. The pair shows the task (photo -> pencil sketch, photo -> snowy scene) on the very image
  to edit, the text names the result. An untrained task type (the paper claims generalisation to
  unseen tasks); the classic filters make it a demonstration available offline for every image.
- ``recipe="map"``: the trained inverse task of the original README's two-step edit (map the
  image, then regenerate the map with a new caption). Query = soft edge map of the image (white
  edges on black, HED-like); example pair = (edge map of the target, target), target as above; text
  as above. Step one is a cheap deterministic edge filter instead of an HED network (no annotator
  weights), so the edit costs one diffusion pass. Structure comes from the edges, style from the
  caption and the pair's target.

Sampling follows the original inference where the style spec is silent: DDIM, eta 0, the original
negative prompt; steps and guidance come from the style spec (``num_inference_steps`` 50,
``guidance_scale`` 7.5 in the built-in styles; the original used 100 and 9.0).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from diffusers import ControlNetModel, DDIMScheduler, StableDiffusionControlNetPipeline, StableDiffusionPipeline
from diffusers.configuration_utils import register_to_config
from diffusers.image_processor import PipelineImageInput, VaeImageProcessor
from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding, ControlNetOutput
from diffusers.pipelines.stable_diffusion.pipeline_output import StableDiffusionPipelineOutput
from PIL import Image, ImageFilter

from styleprefs.editors.loading import (
    SD_COMPONENTS,
    SafetyFlagger,
    dtype_name,
    edit_in_size_buckets,
    generators,
    load_error,
    load_prepared,
    quiet_loading,
    quiet_truncation,
    resolve_device,
    resolve_dtype,
    working_resolution,
)
from styleprefs.resolve import ResolvedModel, resolve_model
from styleprefs.errors import StyleprefsError
from styleprefs.style import StyleSpec

if TYPE_CHECKING:
    from styleprefs.editors import EditResult

DEFAULT_MODEL = "zhendongw/prompt-diffusion-diffusers"
# run_prompt_diffusion.ipynb's n_prompt (ControlNet's demo default).
DEFAULT_NEGATIVE_PROMPT = ("longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, "
                           "fewer digits, cropped, worst quality, low quality")
RECIPES = ("pair", "map")
QUERY_WEIGHTS = "controlnet_query_cond_embedding."


# =============================================================================================
# model


class PromptDiffusionControlNetModel(ControlNetModel):
    """``ControlNetModel`` plus ``controlnet_query_cond_embedding`` for the query image.

    ``controlnet_cond`` is the example pair (``conditioning_channels`` = 6: source then target),
    ``controlnet_query_cond`` the query (3 channels), both at the output resolution.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        conditioning_channels: int = 6,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        mid_block_type: str | None = "UNetMidBlock2DCrossAttn",
        only_cross_attention: bool | tuple[bool] = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1280,
        transformer_layers_per_block: int | tuple[int, ...] = 1,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        attention_head_dim: int | tuple[int, ...] = 8,
        num_attention_heads: int | tuple[int, ...] | None = None,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        projection_class_embeddings_input_dim: int | None = None,
        controlnet_conditioning_channel_order: str = "rgb",
        conditioning_embedding_out_channels: tuple[int, ...] | None = (16, 32, 96, 256),
        global_pool_conditions: bool = False,
        addition_embed_type_num_heads: int = 64,
    ):
        super().__init__(
            in_channels=in_channels,
            conditioning_channels=conditioning_channels,
            flip_sin_to_cos=flip_sin_to_cos,
            freq_shift=freq_shift,
            down_block_types=down_block_types,
            mid_block_type=mid_block_type,
            only_cross_attention=only_cross_attention,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            downsample_padding=downsample_padding,
            mid_block_scale_factor=mid_block_scale_factor,
            act_fn=act_fn,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            cross_attention_dim=cross_attention_dim,
            transformer_layers_per_block=transformer_layers_per_block,
            encoder_hid_dim=encoder_hid_dim,
            encoder_hid_dim_type=encoder_hid_dim_type,
            attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads,
            use_linear_projection=use_linear_projection,
            class_embed_type=class_embed_type,
            addition_embed_type=addition_embed_type,
            addition_time_embed_dim=addition_time_embed_dim,
            num_class_embeds=num_class_embeds,
            upcast_attention=upcast_attention,
            resnet_time_scale_shift=resnet_time_scale_shift,
            projection_class_embeddings_input_dim=projection_class_embeddings_input_dim,
            controlnet_conditioning_channel_order=controlnet_conditioning_channel_order,
            conditioning_embedding_out_channels=conditioning_embedding_out_channels,
            global_pool_conditions=global_pool_conditions,
            addition_embed_type_num_heads=addition_embed_type_num_heads,
        )
        self.controlnet_query_cond_embedding = ControlNetConditioningEmbedding(
            conditioning_embedding_channels=block_out_channels[0],
            block_out_channels=conditioning_embedding_out_channels,
            conditioning_channels=3,
        )

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        controlnet_query_cond: torch.Tensor,
        conditioning_scale: float = 1.0,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guess_mode: bool = False,
        return_dict: bool = True,
    ) -> ControlNetOutput | tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """``ControlNetModel.forward`` with the query embedding added to the pair embedding.

        SD1.5-shaped ControlNets only: ``addition_embed_type`` (SDXL's extra embeddings) is not supported.
        """
        if self.config.addition_embed_type is not None:
            raise NotImplementedError("PromptDiffusionControlNetModel supports SD1.5-shaped ControlNets only")
        if self.config.controlnet_conditioning_channel_order == "bgr":
            # Flip each image of the pair separately, and the query.
            controlnet_cond = torch.cat([torch.flip(c, dims=[1]) for c in controlnet_cond.chunk(2, dim=1)], dim=1)
            controlnet_query_cond = torch.flip(controlnet_query_cond, dims=[1])

        if attention_mask is not None:
            attention_mask = (1 - attention_mask.to(sample.dtype)) * -10000.0
            attention_mask = attention_mask.unsqueeze(1)

        # 1. time
        timesteps = timestep
        if not torch.is_tensor(timesteps):
            dtype = torch.float64 if isinstance(timestep, float) else torch.int64
            if sample.device.type in ("mps", "npu"):
                dtype = torch.float32 if isinstance(timestep, float) else torch.int32
            timesteps = torch.tensor([timesteps], dtype=dtype, device=sample.device)
        elif len(timesteps.shape) == 0:
            timesteps = timesteps[None].to(sample.device)
        timesteps = timesteps.expand(sample.shape[0])
        t_emb = self.time_proj(timesteps).to(dtype=sample.dtype)
        emb = self.time_embedding(t_emb, timestep_cond)
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("class_labels should be provided when num_class_embeds > 0")
            if self.config.class_embed_type == "timestep":
                class_labels = self.time_proj(class_labels)
            emb = emb + self.class_embedding(class_labels).to(dtype=self.dtype)

        # 2. pre-process: the pair's and the query's embeddings, summed, join the latent
        sample = self.conv_in(sample)
        sample = sample + self.controlnet_cond_embedding(controlnet_cond) + self.controlnet_query_cond_embedding(
            controlnet_query_cond)

        # 3. down
        down_block_res_samples: tuple[torch.Tensor, ...] = (sample,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, res = block(hidden_states=sample, temb=emb, encoder_hidden_states=encoder_hidden_states,
                                    attention_mask=attention_mask, cross_attention_kwargs=cross_attention_kwargs)
            else:
                sample, res = block(hidden_states=sample, temb=emb)
            down_block_res_samples += res

        # 4. mid
        if self.mid_block is not None:
            if getattr(self.mid_block, "has_cross_attention", False):
                sample = self.mid_block(sample, emb, encoder_hidden_states=encoder_hidden_states,
                                        attention_mask=attention_mask, cross_attention_kwargs=cross_attention_kwargs)
            else:
                sample = self.mid_block(sample, emb)

        # 5. zero convs
        down = [conv(res) for res, conv in zip(down_block_res_samples, self.controlnet_down_blocks)]
        mid = self.controlnet_mid_block(sample)

        # 6. scaling
        if guess_mode and not self.config.global_pool_conditions:
            scales = torch.logspace(-1, 0, len(down) + 1, device=sample.device) * conditioning_scale
            down = [d * s for d, s in zip(down, scales)]
            mid = mid * scales[-1]
        else:
            down = [d * conditioning_scale for d in down]
            mid = mid * conditioning_scale
        if self.config.global_pool_conditions:
            down = [torch.mean(d, dim=(2, 3), keepdim=True) for d in down]
            mid = torch.mean(mid, dim=(2, 3), keepdim=True)

        if not return_dict:
            return (down, mid)
        return ControlNetOutput(down_block_res_samples=down, mid_block_res_sample=mid)


# =============================================================================================
# pipeline


class PromptDiffusionPipeline(StableDiffusionControlNetPipeline):
    """Text-to-image with a Prompt Diffusion ControlNet: ``pipe(prompt, image=query, image_pair=[source, target])``.

    Inherits loading, saving, prompt encoding and latents from ``StableDiffusionControlNetPipeline``;
    one ControlNet only (no MultiControlNet, IP-Adapter or step callbacks). Conditions are scaled to
    [-1, 1] (see the module docstring). The output size follows the query (or ``height``/``width``).
    """

    def __init__(self, vae, text_encoder, tokenizer, unet, controlnet: PromptDiffusionControlNetModel, scheduler,
                 safety_checker=None, feature_extractor=None, image_encoder=None,
                 requires_safety_checker: bool = True):
        super().__init__(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, controlnet=controlnet,
                         scheduler=scheduler, safety_checker=safety_checker, feature_extractor=feature_extractor,
                         image_encoder=image_encoder, requires_safety_checker=requires_safety_checker)
        self.control_image_processor = VaeImageProcessor(
            vae_scale_factor=self.vae_scale_factor, do_convert_rgb=True, do_normalize=True)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        image: PipelineImageInput,
        image_pair: Sequence[PipelineImageInput],
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        controlnet_conditioning_scale: float = 1.0,
        guess_mode: bool = False,
        control_guidance_start: float = 0.0,
        control_guidance_end: float = 1.0,
    ) -> StableDiffusionPipelineOutput | tuple:
        """Generate one image per prompt. ``image`` (the query) and each of ``image_pair`` (source,
        target) are one image for the whole batch or one per prompt."""
        controlnet = self.controlnet
        if not isinstance(controlnet, PromptDiffusionControlNetModel):
            raise TypeError(f"controlnet must be a PromptDiffusionControlNetModel, got {type(controlnet).__name__}")
        if len(image_pair) != 2:
            raise ValueError(f"image_pair must be [source, target], got {len(image_pair)} item(s)")
        if not 0.0 <= control_guidance_start < control_guidance_end <= 1.0:
            raise ValueError("need 0 <= control_guidance_start < control_guidance_end <= 1")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        batch_size = len(prompts)
        for cond in (image, *image_pair):
            self.check_image(cond, prompts, None)

        self._guidance_scale = guidance_scale
        self._clip_skip = None
        self._cross_attention_kwargs = None
        self._interrupt = False
        device = self._execution_device
        guess_mode = guess_mode or controlnet.config.global_pool_conditions
        cfg = self.do_classifier_free_guidance

        negatives = [negative_prompt] * batch_size if isinstance(negative_prompt, str) else negative_prompt
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(prompts, device, 1, cfg, negatives)
        if cfg:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])

        def condition(img: PipelineImageInput) -> torch.Tensor:
            return self.prepare_image(img, width, height, batch_size, 1, device, controlnet.dtype, cfg, guess_mode)

        query = condition(image)
        height, width = query.shape[-2:]
        pair = torch.cat([condition(img) for img in image_pair], dim=1)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        latents = self.prepare_latents(batch_size, self.unet.config.in_channels, height, width,
                                       prompt_embeds.dtype, device, generator, latents)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                latent_model_input = torch.cat([latents] * 2) if cfg else latents
                latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)
                if guess_mode and cfg:  # ControlNet on the conditional half only
                    control_input = self.scheduler.scale_model_input(latents, t)
                    control_embeds = prompt_embeds.chunk(2)[1]
                else:
                    control_input, control_embeds = latent_model_input, prompt_embeds
                keep = not (i / len(timesteps) < control_guidance_start
                            or (i + 1) / len(timesteps) > control_guidance_end)
                down, mid = controlnet(
                    control_input, t, encoder_hidden_states=control_embeds, controlnet_cond=pair,
                    controlnet_query_cond=query, conditioning_scale=controlnet_conditioning_scale * float(keep),
                    guess_mode=guess_mode, return_dict=False)
                if guess_mode and cfg:
                    down = [torch.cat([torch.zeros_like(d), d]) for d in down]
                    mid = torch.cat([torch.zeros_like(mid), mid])
                noise_pred = self.unet(latent_model_input, t, encoder_hidden_states=prompt_embeds,
                                       down_block_additional_residuals=down, mid_block_additional_residual=mid,
                                       return_dict=False)[0]
                if cfg:
                    uncond, text = noise_pred.chunk(2)
                    noise_pred = uncond + guidance_scale * (text - uncond)
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]
                progress_bar.update()

        if output_type == "latent":
            images, has_nsfw = latents, None
        else:
            decoded = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False,
                                      generator=generator)[0]
            decoded, has_nsfw = self.run_safety_checker(decoded, device, prompt_embeds.dtype)
            denormalize = [True] * decoded.shape[0] if has_nsfw is None else [not flag for flag in has_nsfw]
            images = self.image_processor.postprocess(decoded, output_type=output_type, do_denormalize=denormalize)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images, has_nsfw)
        return StableDiffusionPipelineOutput(images=images, nsfw_content_detected=has_nsfw)


# =============================================================================================
# editor


def edge_map(image: Image.Image) -> Image.Image:
    """Soft edges, white on black (HED-like): blurred gradient magnitude, robustly normalised."""
    gray = image.convert("L")
    radius = max(0.6, min(image.size) / 512.0 * 1.5)
    smooth = np.asarray(gray.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32) / 255.0
    gy, gx = np.gradient(smooth)
    magnitude = np.hypot(gx, gy)
    scale = float(np.percentile(magnitude, 99)) + 1e-6
    edges = np.clip(magnitude / scale, 0.0, 1.0) ** 0.7
    out = Image.fromarray((edges * 255.0 + 0.5).astype(np.uint8), "L").filter(ImageFilter.GaussianBlur(radius / 2))
    return out.convert("RGB")


def load_example_pair(paths: Sequence[str]) -> tuple[Image.Image, Image.Image]:
    images = []
    for path in paths:
        try:
            with Image.open(path) as img:
                images.append(img.convert("RGB"))
        except (OSError, ValueError) as exc:
            raise StyleprefsError(f"example pair image {path} cannot be read: {exc}") from None
    return images[0], images[1]


def _file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _check_controlnet_weights(folder: Path, model: str) -> None:
    """A local controlnet/ must hold the query embedding: a plain ControlNet would load with it random."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return  # .bin weights: diffusers reports missing keys itself
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            if any(key.startswith(QUERY_WEIGHTS) for key in f.keys()):
                return
    raise StyleprefsError(f"Prompt Diffusion model {model}: controlnet/ has no {QUERY_WEIGHTS}* weights "
                          "(a plain ControlNet, not Prompt Diffusion)")


def _load_pipeline(model: ResolvedModel, device: torch.device, dtype: torch.dtype):
    """A base ``StableDiffusionPipeline`` plus the ControlNet in ``controlnet/``: model_index.json's entry for
    the ControlNet (a diffusers class, or the port's own module) is never imported, so every layout loads."""
    location = model.location
    with quiet_loading():
        try:
            controlnet = PromptDiffusionControlNetModel.from_pretrained(
                location, subfolder="controlnet", dtype=dtype)
            base = StableDiffusionPipeline.from_pretrained(location, dtype=dtype)
            pipe = PromptDiffusionPipeline(**base.components, controlnet=controlnet,
                                           requires_safety_checker=base.config.requires_safety_checker)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise load_error("Prompt Diffusion", model, exc) from None
    if controlnet.config.conditioning_channels != 6:
        raise StyleprefsError(f"Prompt Diffusion model {model.name}: controlnet/ takes "
                              f"{controlnet.config.conditioning_channels} condition channels, not 6 (source + target)")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    flagger = SafetyFlagger.detach_from(pipe)
    pipe.to(device)
    if flagger.active:
        flagger.checker.to(device)
    return pipe, flagger


class PromptDiffusionEditor:
    """Edits with Prompt Diffusion; see the module docstring for the recipes. Output i depends only on
    (images[i], captions[i], seeds[i]): the classic example pair uses seeds[i], the noise a generator
    seeded with seeds[i]."""

    name = "prompt-diffusion"

    def __init__(self, style: StyleSpec, *, model: str | None = None, device: str | None = None,
                 dtype: str | None = None, steps: int | None = None, resolution: int | None = None,
                 recipe: str = "pair", negative_prompt: str | None = DEFAULT_NEGATIVE_PROMPT,
                 channels_last: bool = False, compile: bool = False):
        from styleprefs.editors.classic import ClassicEditor

        if recipe not in RECIPES:
            raise StyleprefsError(f"unknown Prompt Diffusion recipe {recipe!r}: use one of {', '.join(RECIPES)}")
        if steps is not None and steps < 1:
            raise StyleprefsError("steps must be at least 1")
        settings = style.prompt_diffusion
        resolved = resolve_model(model or DEFAULT_MODEL, what="Prompt Diffusion", tiny="tiny-prompt-diffusion",
                                 components=("controlnet", *SD_COMPONENTS))
        if resolved.local:
            _check_controlnet_weights(Path(resolved.location) / "controlnet", resolved.name)
        self.model_id = resolved.name
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self._pipe, self._safety = load_prepared(
            ("prompt-diffusion", resolved.location, str(self.device), self.dtype),
            lambda: _load_pipeline(resolved, self.device, self.dtype), channels_last=channels_last, compile=compile)
        self.resolution = working_resolution(self._pipe, resolution)
        self.steps = int(steps or settings.num_inference_steps)
        self.guidance_scale = float(settings.guidance_scale)
        self.prompt = settings.prompt
        self.recipe = recipe
        self.negative_prompt = negative_prompt or None
        self._classic = ClassicEditor(style.classic.filter, style.classic.params)
        pair_paths = getattr(settings, "example_pair", None)
        self._pair_paths = tuple(pair_paths) if pair_paths else None
        self._pair = load_example_pair(self._pair_paths) if self._pair_paths else None
        self._pair_digests = [_file_digest(p) for p in self._pair_paths] if self._pair_paths else None

    def params(self) -> dict:
        if self._pair_paths:
            example = {"images": [Path(p).name for p in self._pair_paths],
                       "sha256": self._pair_digests}
        else:
            example = {"classic": self._classic.params()}
        return {"recipe": self.recipe, "prompt": self.prompt, "negative_prompt": self.negative_prompt,
                "num_inference_steps": self.steps, "guidance_scale": self.guidance_scale,
                "resolution": self.resolution, "scheduler": type(self._pipe.scheduler).__name__,
                "eta": 0.0, "condition_range": "[-1, 1]", "example_pair": example, "dtype": dtype_name(self.dtype)}

    def edit(self, images: Sequence[Image.Image], captions: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]:
        return self.edit_with_flags(images, captions, seeds).images

    def conditions(self, image: Image.Image, seed: int,
                   size: tuple[int, int]) -> tuple[Image.Image, Image.Image, Image.Image]:
        """(source, target, query) at the working ``size`` for one image, per the recipe."""
        work = image.convert("RGB").resize(size, Image.LANCZOS)
        if self._pair is not None:
            source, target = (img.resize(size, Image.LANCZOS) for img in self._pair)
        else:
            source, target = work, self._classic.edit([work], [""], [seed])[0]
        if self.recipe == "map":
            return edge_map(target), target, edge_map(work)
        return source, target, work

    def edit_with_flags(self, images: Sequence[Image.Image], captions: Sequence[str],
                        seeds: Sequence[int]) -> EditResult:
        """The edits and, per edit, the model's safety-checker flag (None if it has no checker)."""

        def run(size: tuple[int, int], idx: list[int]) -> list[Image.Image]:
            conds = [self.conditions(images[i], seeds[i], size) for i in idx]
            with torch.inference_mode(), quiet_truncation():
                return self._pipe(
                    prompt=[self.prompt.format(caption=captions[i]) for i in idx],
                    image=[c[2] for c in conds],
                    image_pair=[[c[0] for c in conds], [c[1] for c in conds]],
                    height=size[1], width=size[0],
                    num_inference_steps=self.steps, guidance_scale=self.guidance_scale,
                    negative_prompt=None if self.negative_prompt is None else [self.negative_prompt] * len(idx),
                    generator=generators([seeds[i] for i in idx]), output_type="pil").images

        return edit_in_size_buckets(images, captions, seeds, self.resolution, run, self._safety, self._pipe.vae)
