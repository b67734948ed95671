"""GPU settings shared by training, caching, generation and the neural editors (README, "GPU settings").

- ``set_tf32``: TF32 tensor-core matmuls and convolutions for float32 work on Ampere and newer GPUs.
- ``to_channels_last`` / ``compile_model``: the denoiser's (and VAE's) memory layout, and ``torch.compile`` of the denoiser.
- ``load_vae``: a VAE to use instead of the model's own (e.g. madebyollin/sdxl-vae-fp16-fix).
- ``set_vae_memory``: VAE slicing always, tiling for large images, in the editors.
- ``editor_batch_size``: ``--batch-size auto``, the editors' batch size from free GPU memory.

Every one is safe on CPU: the TF32 flags only affect CUDA kernels, channels_last is a memory layout,
compiling is opt-in, and ``auto`` on CPU is the fixed ``AUTO_BATCH_CPU``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKL

from styleprefs.errors import StyleprefsError, one_line
from styleprefs.resolve import resolve_model

AUTO_BATCH_CPU = 8  # --batch-size auto without CUDA: the build's default batch
AUTO_BATCH_MAX = 64
# Peak memory per image of an fp16 SD1.5 edit at 512 px (three guidance branches in the UNet, VAE decode
# sliced): a conservative estimate, scaled by pixel count; 80% of the free memory is used.
GIB_PER_IMAGE_512 = 0.75
FREE_MEMORY_SHARE = 0.8
TILING_MIN_SIDE = 1024  # working sizes with a longer side decode (and encode) the VAE in tiles


def set_tf32(enabled: bool) -> None:
    """Allow (or forbid) TF32 in CUDA matmuls and cuDNN convolutions, process-wide."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def to_channels_last(*modules: torch.nn.Module) -> None:
    """Store the 4-D weights of ``modules`` in channels_last (NHWC) layout, in place."""
    for module in modules:
        module.to(memory_format=torch.channels_last)


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile(model)``: compiled on its first call, for the input shapes it then sees."""
    return torch.compile(model)


def prepare_pipeline(pipe, *, channels_last: bool = False, compile: bool = False):
    """``pipe`` with its UNet and VAE in channels_last and its UNet compiled, as asked; returns it."""
    if channels_last:
        to_channels_last(pipe.unet, pipe.vae)
    if compile:
        pipe.unet = compile_model(pipe.unet)
    return pipe


def load_vae(source: str, dtype: torch.dtype = torch.float32) -> AutoencoderKL:
    """The VAE of ``source``: a VAE folder or Hub id (config.json at its root), a pipeline folder's ``vae/``, or a
    tiny name (its pipeline's VAE)."""
    resolved = resolve_model(source, what="VAE", tiny="tiny", files=())
    path = Path(resolved.location)
    subfolder = "vae" if resolved.local and not (path / "config.json").is_file() else None
    if resolved.local and not (path / (subfolder or "") / "config.json").is_file():
        raise StyleprefsError(f"--vae {source} holds no config.json nor vae/config.json: give a VAE folder, a "
                              f"pipeline folder or a Hub id")
    try:
        return AutoencoderKL.from_pretrained(resolved.location, subfolder=subfolder, dtype=dtype, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise StyleprefsError(f"cannot load the VAE {source}: {one_line(exc)}") from None


def set_vae_memory(vae: AutoencoderKL, size: tuple[int, int]) -> None:
    """Decode a batch one image at a time (slicing, same images); tile images with a side over TILING_MIN_SIDE."""
    vae.enable_slicing()
    if max(size) > TILING_MIN_SIDE:
        vae.enable_tiling()
    else:
        vae.disable_tiling()


def parse_batch_size(value: str) -> int | Literal["auto"]:
    """``--batch-size``: a positive integer or ``auto``."""
    if value == "auto":
        return "auto"
    if not value.isdigit() or int(value) < 1:
        raise StyleprefsError(f"--batch-size must be a positive integer or auto, got {value!r}")
    return int(value)


def auto_batch_size(device: torch.device, resolution: int) -> int:
    """Images per editor call that fit the free memory of ``device`` at ``resolution`` px; AUTO_BATCH_CPU off CUDA."""
    if device.type != "cuda":
        return AUTO_BATCH_CPU
    free, _ = torch.cuda.mem_get_info(device)
    per_image = GIB_PER_IMAGE_512 * 2**30 * (resolution / 512) ** 2
    return max(1, min(AUTO_BATCH_MAX, int(free * FREE_MEMORY_SHARE / per_image)))


def editor_batch_size(batch_size: int | str, editor) -> int:
    """``batch_size``, or for ``auto`` :func:`auto_batch_size` on the editor's device and working size (a
    ``classic`` editor has neither: CPU)."""
    if batch_size != "auto":
        return int(batch_size)
    return auto_batch_size(getattr(editor, "device", torch.device("cpu")), getattr(editor, "resolution", 512))
