"""Loading a diffusers pipeline's parts for training, whatever its family (:mod:`styleprefs.trainer.families`)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Callable, TypeVar

import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from torch import Tensor

from styleprefs.errors import StyleprefsError
from styleprefs.resolve import is_offline_name, locate, missing_parts
from styleprefs.trainer.families import Components, Family, family_from_index

T = TypeVar("T")
DENOISER_FOLDERS = ("unet", "transformer")


def resolve_model(model: str) -> str:
    """A loadable location for ``model`` (``styleprefs.resolve.locate``): offline names are built; Hub ids pass unchanged.

    A local pipeline folder must hold its family's denoiser, vae, scheduler, text encoders and tokenizers (those
    its model_index.json names); otherwise StyleprefsError names the missing ones.
    """
    resolved = locate(model)
    path = Path(resolved.location)
    if path.is_dir() and not is_offline_name(model):
        missing = [m.rstrip("/") for m in missing_parts(path, components=_expected_components(model, path))]
        if missing:
            raise StyleprefsError(
                f"model folder {model} is missing {', '.join(missing)}: give a complete diffusers pipeline folder")
    return resolved.location


def _index(path: Path) -> dict:
    index = path / "model_index.json"
    return json.loads(index.read_text(encoding="utf-8")) if index.is_file() else {}


def _expected_components(model: str, path: Path) -> list[str]:
    index = _index(path)
    family = family_from_index(index) if index else None
    if family is None:
        return ["model_index.json"] if not index else [f"model_index.json of a pipeline styleprefs trains ({model})"]
    listed = [part for encoder, _, tokenizer, _ in family.text_parts for part in (encoder, tokenizer)
              if encoder not in family.optional_text_parts or _names(index, encoder)]
    return [family.denoiser_folder, "vae", "scheduler", *listed]


def _names(index: dict, component: str) -> bool:
    return (index.get(component) or [None])[0] is not None


def family_of(model: str) -> Family:
    """The model family of pipeline ``model`` (its model_index.json's ``_class_name``); a one-line StyleprefsError
    for a pipeline no family trains."""
    path = resolve_model(model)
    index = _index(Path(path)) if Path(path).is_dir() else _loading(model, "model_index.json",
                                                                    DiffusionPipeline.load_config, path)
    family = family_from_index(index)
    if family is None:
        raise StyleprefsError(f"{model} is a {index.get('_class_name') or 'pipeline without _class_name'}: styleprefs "
                              f"trains StableDiffusion(XL)Pipeline, StableDiffusion3Pipeline and FluxPipeline folders")
    return family


def _loading(model: str, what: str, load: Callable[..., T], *args, **kwargs) -> T:
    """``load(*args, **kwargs)``, a missing file or unreachable Hub turned into a one-line StyleprefsError."""
    try:
        return load(*args, **kwargs)
    except (OSError, ValueError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StyleprefsError(f"cannot load {what} of {model}: {first_line}") from None


def load_components(model: str, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                    include_denoiser: bool = True, include_text: bool = True, vae: str | None = None) -> Components:
    """Load ``model``'s denoiser (UNet or transformer), VAE, noise scheduler, text encoders and tokenizers
    (safetensors only) as its family (:func:`family_of`) names them.

    A VAE whose config sets ``force_upcast`` (SDXL's, which overflows to NaN in fp16) stays in
    float32 when ``dtype`` is float16. ``include_denoiser=False`` (for caching, which needs only the
    encoders) leaves ``denoiser`` None; ``include_text=False`` loads no text encoder. ``vae``
    (``styleprefs.gpu.load_vae``) replaces the model's own VAE.
    """
    path = resolve_model(model)
    family = family_of(model)
    denoiser = (_loading(model, family.denoiser_folder, family.denoiser_class.from_pretrained, path,
                         subfolder=family.denoiser_folder, dtype=dtype, use_safetensors=True).to(device)
                if include_denoiser else None)
    vae_model = _load_vae(model, path, vae, dtype)
    scheduler = _loading(model, "scheduler", family.scheduler_class.from_pretrained, path, subfolder="scheduler")
    text = _load_text(model, path, family, dtype) if include_text else {}
    for frozen in (vae_model, *(m for m in text.values() if isinstance(m, torch.nn.Module))):
        frozen.requires_grad_(False).eval()
    text = {name: m.to(device) if isinstance(m, torch.nn.Module) else m for name, m in text.items()}
    denoiser_config = dict(_loading(model, family.denoiser_folder, family.denoiser_class.load_config, path,
                                    subfolder=family.denoiser_folder))
    return Components(family=family, denoiser=denoiser, vae=vae_model.to(device), noise_scheduler=scheduler,
                      text=text, denoiser_config=denoiser_config)


def _load_text(model: str, path: str, family: Family, dtype: torch.dtype) -> dict:
    """The family's text encoders and tokenizers by pipeline name; optional ones the pipeline leaves out are None."""
    index = _index(Path(path)) if Path(path).is_dir() else DiffusionPipeline.load_config(path)
    text = {}
    for encoder, encoder_class, tokenizer, tokenizer_class in family.text_parts:
        if encoder in family.optional_text_parts and not _names(index, encoder):
            text |= {encoder: None, tokenizer: None}
            continue
        text[encoder] = _loading(model, encoder, encoder_class.from_pretrained, path, subfolder=encoder, dtype=dtype,
                                 use_safetensors=True)
        text[tokenizer] = _loading(model, tokenizer, tokenizer_class.from_pretrained, path, subfolder=tokenizer)
    return text


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


def _denoiser_classes() -> dict[str, Family]:
    from styleprefs.trainer.families import FAMILIES

    return {cls.denoiser_class.__name__: cls() for cls in FAMILIES.values()}


def check_denoiser_source(value: str, flag: str) -> None:
    """Raise a one-line StyleprefsError unless ``value`` (of option ``flag``, e.g. --init) can be a denoiser source
    for :func:`load_denoiser`: a pipeline folder with ``unet/`` or ``transformer/``, a bare UNet or transformer
    folder, a tiny name or a Hub id.

    Checked before any slow work, so a wrong folder does not cost a cache build first.
    """
    if is_offline_name(value):
        return
    path = Path(value).expanduser()
    wanted = ("a diffusers pipeline folder (model_index.json, unet/ or transformer/) or a UNet or transformer "
              "folder (config.json and safetensors)")
    if not path.exists():
        if path.is_absolute() or value.startswith((".", "~")) or value.count("/") != 1:  # cannot be a Hub id
            raise StyleprefsError(f"{flag} {value} does not exist: give {wanted}")
        return
    folder = _denoiser_folder(path)
    if folder is None:
        raise StyleprefsError(f"{flag} {value} is not {wanted}")
    try:
        class_name = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        class_name = None
    if class_name not in _denoiser_classes():
        raise StyleprefsError(f"{flag} {value}: {folder / 'config.json'} is the config of "
                              f"{class_name or 'no diffusers model'}, not a UNet or transformer styleprefs trains; "
                              f"give {wanted}")
    if not any(folder.glob("*.safetensors")):
        raise StyleprefsError(f"{flag} {value}: {folder} has no .safetensors weights; give {wanted}")


def _denoiser_folder(path: Path) -> Path | None:
    """``path`` if it is a bare denoiser folder, else its ``unet/`` or ``transformer/`` holding a config; or None."""
    for folder in (path, *(path / name for name in DENOISER_FOLDERS)):
        if (folder / "config.json").is_file():
            return folder
    return None


def load_denoiser(model_or_dir: str, family: Family, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The ``family`` denoiser of a bare denoiser folder (``config.json`` + weights), of a pipeline folder, or of a
    tiny name / Hub id."""
    path = Path(model_or_dir).expanduser()
    folder = _denoiser_folder(path) if path.is_dir() else None
    if folder is None:
        location, subfolder = resolve_model(model_or_dir), family.denoiser_folder
    else:
        location, subfolder = str(folder), None
        class_name = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("_class_name")
        if class_name != family.denoiser_class.__name__:
            raise StyleprefsError(f"{model_or_dir} holds a {class_name}, but the base model is a {family.name} "
                                  f"pipeline, whose denoiser is a {family.denoiser_class.__name__}")
    return _loading(model_or_dir, family.denoiser_folder, family.denoiser_class.from_pretrained, location,
                    subfolder=subfolder, dtype=dtype, use_safetensors=True)


@torch.no_grad()
def encode_latent_dist(c: Components, pixels: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and std of the VAE posterior of ``pixels`` ([B, 3, H, W] in [-1, 1]), unscaled, [B, C, H/f, W/f].

    Sample as ``mean + std * noise`` and scale with the family's ``scale_latents`` before the denoiser.
    """
    dist = c.vae.encode(pixels.to(c.vae.device, c.vae.dtype)).latent_dist
    return dist.mean, dist.std
