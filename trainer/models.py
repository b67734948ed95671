"""Stable Diffusion 1.5 / SDXL components for training: loading, prompt encoding, VAE encoding, time ids."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline, UNet2DConditionModel
from torch import Tensor
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from styleprefs.errors import StyleprefsError
from styleprefs.resolve import is_offline_name, locate, missing_parts

REQUIRED_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SDXL_COMPONENTS = ("text_encoder_2", "tokenizer_2")
T = TypeVar("T")


@dataclass
class SDComponents:
    """Everything the trainer needs from one diffusers pipeline folder or Hub id.

    ``kind`` is "sd" (one text encoder) or "sdxl" (two text encoders, pooled embeddings, time ids).
    ``text_encoders`` and ``tokenizers`` are in pipeline order (``text_encoder``, then ``text_encoder_2``).
    The VAE and text encoders are frozen (``requires_grad`` off, eval mode); the UNet is left as loaded.
    """

    kind: str
    unet: UNet2DConditionModel | None
    vae: AutoencoderKL
    noise_scheduler: DDPMScheduler
    text_encoders: list
    tokenizers: list
    prediction_type: str


def resolve_model(model: str) -> str:
    """A loadable location for ``model`` (``styleprefs.resolve.locate``): offline names are built; Hub ids pass unchanged.

    A local pipeline folder must hold unet, vae, text_encoder, tokenizer and scheduler (plus
    text_encoder_2 and tokenizer_2 when its model_index.json names them); otherwise StyleprefsError
    names the missing ones.
    """
    resolved = locate(model)
    path = Path(resolved.location)
    if path.is_dir() and not is_offline_name(model):
        missing = [m.rstrip("/") for m in missing_parts(path, components=_expected_components(path))]
        if missing:
            raise StyleprefsError(
                f"model folder {model} is missing {', '.join(missing)}: give a complete diffusers pipeline folder")
    return resolved.location


def _expected_components(path: Path) -> list[str]:
    index = path / "model_index.json"
    names = json.loads(index.read_text()) if index.is_file() else {}
    extra = [n for n in SDXL_COMPONENTS if (names.get(n) or [None])[0] is not None or (path / n).is_dir()]
    return [*REQUIRED_COMPONENTS, *extra]


def _kind(path: str) -> str:
    local = Path(path)
    if local.is_dir():
        return "sdxl" if "text_encoder_2" in _expected_components(local) else "sd"
    config = _loading(path, "model_index.json", DiffusionPipeline.load_config, path)
    has_second_encoder = (config.get("text_encoder_2") or [None])[0] is not None
    return "sdxl" if has_second_encoder or "XL" in config.get("_class_name", "") else "sd"


def _loading(model: str, what: str, load: Callable[..., T], *args, **kwargs) -> T:
    """``load(*args, **kwargs)``, a missing file or unreachable Hub turned into a one-line StyleprefsError."""
    try:
        return load(*args, **kwargs)
    except (OSError, ValueError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StyleprefsError(f"cannot load {what} of {model}: {first_line}") from None


def load_components(model: str, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                    include_unet: bool = True, vae: str | None = None) -> SDComponents:
    """Load UNet, VAE, DDPM noise scheduler, text encoder(s) and tokenizer(s) of ``model`` (safetensors only).

    A VAE whose config sets ``force_upcast`` (SDXL's, which overflows to NaN in fp16) stays in
    float32 when ``dtype`` is float16. ``include_unet=False`` (for caching, which needs only the
    encoders) leaves ``unet`` None. ``vae`` (``styleprefs.gpu.load_vae``) replaces the model's own VAE.
    """
    path = resolve_model(model)
    kind = _kind(path)
    unet = (_loading(model, "unet", UNet2DConditionModel.from_pretrained, path, subfolder="unet", dtype=dtype,
                     use_safetensors=True).to(device) if include_unet else None)
    vae_model = _load_vae(model, path, vae, dtype)
    scheduler = _loading(model, "scheduler", DDPMScheduler.from_pretrained, path, subfolder="scheduler")
    folders = [("text_encoder", "tokenizer", CLIPTextModel)]
    if kind == "sdxl":
        folders.append(("text_encoder_2", "tokenizer_2", CLIPTextModelWithProjection))
    encoders = [_loading(model, enc, cls.from_pretrained, path, subfolder=enc, dtype=dtype, use_safetensors=True)
                for enc, _, cls in folders]
    tokenizers = [_loading(model, tok, CLIPTokenizer.from_pretrained, path, subfolder=tok) for _, tok, _ in folders]
    for frozen in (vae_model, *encoders):
        frozen.requires_grad_(False).eval()
    return SDComponents(kind=kind, unet=unet, vae=vae_model.to(device), noise_scheduler=scheduler,
                        text_encoders=[e.to(device) for e in encoders], tokenizers=tokenizers,
                        prediction_type=scheduler.config.prediction_type)


def _load_vae(model: str, path: str, vae: str | None, dtype: torch.dtype) -> AutoencoderKL:
    """``vae`` if given, else ``model``'s own VAE (at ``path``); float32 in place of float16 if its config sets
    ``force_upcast``."""
    if vae is not None:
        from styleprefs.gpu import load_vae

        loaded = load_vae(vae, dtype)
        return loaded.float() if dtype == torch.float16 and loaded.config.get("force_upcast", True) else loaded
    vae_config = _loading(model, "vae", AutoencoderKL.load_config, path, subfolder="vae")
    vae_dtype = torch.float32 if dtype == torch.float16 and vae_config.get("force_upcast", True) else dtype
    return _loading(model, "vae", AutoencoderKL.from_pretrained, path, subfolder="vae", dtype=vae_dtype,
                    use_safetensors=True)


@contextlib.contextmanager
def quiet_loading():
    """Hide diffusers' and transformers' per-load progress bars ("Loading pipeline components", "Loading
    weights", "Writing model shards") for the duration, keeping huggingface_hub's download bars; restores
    the previous settings on exit. Also a decorator."""
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as transformers_logging

    enabled = (diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled())
    downloads_shown = not hub_utils.are_progress_bars_disabled()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()  # also hides huggingface_hub's bars: downloads keep theirs
    if downloads_shown:
        hub_utils.enable_progress_bars()
    try:
        yield
    finally:
        if enabled[0]:
            diffusers_logging.enable_progress_bar()
        if enabled[1]:
            transformers_logging.enable_progress_bar()
        elif downloads_shown:
            hub_utils.enable_progress_bars()


def check_unet_source(value: str, flag: str) -> None:
    """Raise a one-line StyleprefsError unless ``value`` (of option ``flag``, e.g. --init) can be a UNet source
    for :func:`load_unet`: a pipeline folder with ``unet/``, a UNet folder, a tiny name or a Hub id.

    Checked before any slow work, so a wrong folder does not cost a cache build first.
    """
    if is_offline_name(value):
        return
    path = Path(value).expanduser()
    wanted = "a diffusers pipeline folder (model_index.json, unet/) or a UNet folder (config.json and safetensors)"
    if not path.exists():
        if path.is_absolute() or value.startswith((".", "~")) or value.count("/") != 1:  # cannot be a Hub id
            raise StyleprefsError(f"{flag} {value} does not exist: give {wanted}")
        return
    folder = path if (path / "config.json").is_file() else path / "unet"
    if not (folder / "config.json").is_file():
        raise StyleprefsError(f"{flag} {value} is not {wanted}")
    try:
        class_name = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        class_name = None
    if class_name != UNet2DConditionModel.__name__:
        raise StyleprefsError(f"{flag} {value}: {folder / 'config.json'} is the config of {class_name or 'no diffusers model'}, "
                              f"not a UNet2DConditionModel; give {wanted}")
    if not any(folder.glob("*.safetensors")):
        raise StyleprefsError(f"{flag} {value}: {folder} has no .safetensors weights; give {wanted}")


def load_unet(model_or_dir: str, dtype: torch.dtype = torch.float32) -> UNet2DConditionModel:
    """The UNet of a UNet folder (``config.json`` + weights), of a folder with ``unet/``, or of a tiny name / Hub id."""
    path = Path(model_or_dir).expanduser()
    if (path / "config.json").is_file():
        location, subfolder = str(path), None
    elif (path / "unet").is_dir():
        location, subfolder = str(path), "unet"
    else:
        location, subfolder = resolve_model(model_or_dir), "unet"
    return _loading(model_or_dir, "unet", UNet2DConditionModel.from_pretrained, location, subfolder=subfolder,
                    dtype=dtype, use_safetensors=True)


@torch.no_grad()
def encode_prompts(c: SDComponents, captions: list[str]) -> dict[str, Tensor]:
    """Text conditioning of ``captions``, on the text encoders' device.

    SD1.5: ``{"prompt_embeds": [B, 77, D]}``, the text encoder's last hidden state.
    SDXL (as diffusers' ``StableDiffusionXLPipeline.encode_prompt``): ``prompt_embeds`` [B, 77, D1 + D2]
    is the penultimate hidden states of both encoders concatenated; ``pooled_prompt_embeds`` [B, P]
    is text_encoder_2's projected ``text_embeds``.
    """
    if c.kind == "sd":
        encoder = c.text_encoders[0]
        return {"prompt_embeds": encoder(_token_ids(c.tokenizers[0], captions, encoder.device)).last_hidden_state}
    outs = [encoder(_token_ids(tokenizer, captions, encoder.device), output_hidden_states=True)
            for tokenizer, encoder in zip(c.tokenizers, c.text_encoders)]
    return {"prompt_embeds": torch.cat([out.hidden_states[-2] for out in outs], dim=-1),
            "pooled_prompt_embeds": outs[-1].text_embeds}


def _token_ids(tokenizer: CLIPTokenizer, captions: list[str], device: torch.device) -> Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids.to(device)


def sdxl_time_ids(original_size: tuple[int, int], crop_top_left: tuple[int, int], target_size: tuple[int, int]) -> Tensor:
    """SDXL micro-conditioning ``[orig_h, orig_w, crop_top, crop_left, target_h, target_w]``, float32 [6].

    Pass the image's real size before resizing and the crop actually taken, as SDXL was trained with.
    """
    return torch.tensor([*original_size, *crop_top_left, *target_size], dtype=torch.float32)


@torch.no_grad()
def encode_latent_dist(c: SDComponents, pixels: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and std of the VAE posterior of ``pixels`` ([B, 3, H, W] in [-1, 1]), unscaled, [B, 4, H/8, W/8].

    Sample as ``mean + std * noise`` and multiply by ``vae.config.scaling_factor`` before the UNet.
    """
    dist = c.vae.encode(pixels.to(c.vae.device, c.vae.dtype)).latent_dist
    return dist.mean, dist.std
