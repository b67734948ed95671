"""Shared loading for the neural editors and the CLIP gate: model ids and paths, device, dtype, caches.

- Model ids and paths resolve through ``styleprefs.resolve`` (shared with every other loader).
- ``resolve_device`` / ``resolve_dtype``: ``auto`` means CUDA if available, fp16 on CUDA and fp32 on CPU.
- ``load_once``: a process-wide cache, so a pipeline is loaded once per process however many editors use it.
- ``SafetyFlagger``: runs a pipeline's bundled safety checker for its *flag* only (diffusers blackens
  flagged images; styleprefs records the flag as a column instead).
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np
import torch
from PIL import Image

from styleprefs.errors import StyleprefsError
from styleprefs.resolve import ResolvedModel

T = TypeVar("T")

DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

# Folders of a diffusers Stable Diffusion pipeline that every neural editor needs (plus model_index.json).
SD_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def resolve_device(device: str | None) -> torch.device:
    """``None``/``auto``: CUDA if available, else CPU. A requested device must exist.

    Under a launcher (``LOCAL_RANK`` set), ``auto`` and a bare ``cuda`` mean this process's GPU,
    ``cuda:LOCAL_RANK``, so the processes of a multi-GPU build do not all share GPU 0.
    """
    if device in (None, "", "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        device = f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise StyleprefsError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise StyleprefsError(f"device {device!r} requested but CUDA is not available; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise StyleprefsError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise StyleprefsError(f"device {device!r} requested but MPS is not available; use --device cpu")
    return dev


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """``None``/``auto``: fp16 on CUDA, fp32 elsewhere. Half precision is refused on CPU (slow or unsupported)."""
    if dtype in (None, "", "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise StyleprefsError(f"unknown dtype {dtype!r}: use auto, fp32, fp16 or bf16")
    resolved = DTYPES[dtype]
    if device.type == "cpu" and resolved != torch.float32:
        raise StyleprefsError(f"dtype {dtype} is for GPUs; on CPU use --dtype fp32 (or auto)")
    return resolved


def dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image. diffusers draws CPU-generated noise and moves it to the device,
    so a row's initial noise is the same on every device and batch size."""
    return [torch.Generator("cpu").manual_seed(int(seed) % 2**64) for seed in seeds]


# ---------------------------------------------------------------------------------------------
# process-wide cache

_CACHE: dict[tuple, object] = {}
_CACHE_LOCK = threading.Lock()


def load_once(key: tuple, load: Callable[[], T]) -> T:
    """``load()`` the first time ``key`` is seen in this process, the cached object afterwards."""
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = load()
        return _CACHE[key]  # type: ignore[return-value]


def load_prepared(key: tuple, load: Callable[[], tuple], *, channels_last: bool = False, compile: bool = False
                  ) -> tuple:
    """``load_once`` of an editor's ``(pipe, flagger)`` with ``styleprefs.gpu.prepare_pipeline`` applied to pipe."""
    from styleprefs.gpu import prepare_pipeline

    def load_and_prepare() -> tuple:
        pipe, flagger = load()
        return prepare_pipeline(pipe, channels_last=channels_last, compile=compile), flagger

    return load_once((*key, channels_last, compile), load_and_prepare)


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No download/weight-loading progress bars from diffusers or transformers while loading."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    restore = [mod for mod in (dlog, tlog) if mod.is_progress_bar_enabled()]
    for mod in restore:
        mod.disable_progress_bar()
    try:
        yield
    finally:
        for mod in restore:
            mod.enable_progress_bar()


@contextlib.contextmanager
def quiet_truncation() -> Iterator[None]:
    """Silence diffusers' per-prompt "input was truncated" warning (CLIP reads 77 tokens; Pick-a-Pic
    captions are often longer, and the quality gate truncates the same way)."""
    import diffusers.utils.logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity_error()
    try:
        yield
    finally:
        dlog.set_verbosity(level)


def load_error(what: str, model: ResolvedModel, exc: BaseException) -> StyleprefsError:
    where = "folder" if model.local else "Hub repository"
    hint = "" if model.local else " (no network? download it and pass the local folder)"
    return StyleprefsError(f"cannot load the {what} model from {where} {model.location}: {first_line(exc)}{hint}")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# safety checker: the flag, not the black image


class SafetyFlagger:
    """Wraps a pipeline's ``StableDiffusionSafetyChecker`` (or nothing) to report a per-image flag.

    With no checker every flag is ``None`` (unknown). Never alters the images it is given.
    """

    def __init__(self, checker=None, feature_extractor=None):
        self.checker = checker if feature_extractor is not None else None
        self.feature_extractor = feature_extractor

    @classmethod
    def detach_from(cls, pipe) -> "SafetyFlagger":
        """Take the checker out of ``pipe`` (so the pipeline returns unaltered images) and wrap it."""
        flagger = cls(getattr(pipe, "safety_checker", None), getattr(pipe, "feature_extractor", None))
        if getattr(pipe, "safety_checker", None) is not None:
            pipe.safety_checker = None
        return flagger

    @property
    def active(self) -> bool:
        return self.checker is not None

    def flags(self, images: Sequence[Image.Image]) -> list[bool | None]:
        if self.checker is None or not images:
            return [None] * len(images)
        param = next(self.checker.parameters())
        clip_input = self.feature_extractor(list(images), return_tensors="pt").pixel_values
        placeholders = np.zeros((len(images), 1, 1, 3), np.float32)  # the checker blackens these, not ours
        with torch.inference_mode():
            _, nsfw = self.checker(images=placeholders, clip_input=clip_input.to(param.device, param.dtype))
        return [bool(flag) for flag in nsfw]


DEFAULT_RESOLUTION = 512  # InstructPix2Pix's edit_cli.py and Prompt Diffusion's notebook


def working_resolution(pipe, resolution: int | None) -> int:
    """``resolution`` if given, else 512, except for models whose native size (UNet sample size x VAE
    factor) is under 256 px, i.e. the tiny test models, which work at their native size."""
    if resolution is None:
        native = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
        resolution = DEFAULT_RESOLUTION if native >= 256 else native
    if resolution < 64 or resolution % 64:
        raise StyleprefsError(f"resolution must be a positive multiple of 64, got {resolution}")
    return int(resolution)


def resize_for_model(size: tuple[int, int], resolution: int, multiple: int = 64) -> tuple[int, int]:
    """Working size: long side about ``resolution``, both sides multiples of ``multiple``.

    The rule of InstructPix2Pix's edit_cli.py (scale so the short side rounds up to a multiple,
    then floor both sides to multiples), without its centre crop: images are resized, never
    cropped, so the edit maps back onto the original pixel for pixel.
    """
    width, height = size
    factor = resolution / max(width, height)
    factor = -(-min(width, height) * factor // multiple) * multiple / min(width, height)
    return (max(multiple, int(width * factor // multiple) * multiple),
            max(multiple, int(height * factor // multiple) * multiple))


def group_by_size(sizes: Sequence[tuple[int, int]]) -> dict[tuple[int, int], list[int]]:
    """Indices of images sharing a working size (one pipeline call takes one size), in order."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, size in enumerate(sizes):
        groups.setdefault(size, []).append(i)
    return groups


def edit_in_size_buckets(images: Sequence[Image.Image], captions: Sequence[str], seeds: Sequence[int],
                         resolution: int, run: Callable[[tuple[int, int], list[int]], list[Image.Image]],
                         safety: SafetyFlagger, vae,
                         working_size: Callable[[tuple[int, int]], tuple[int, int]] | None = None):
    """A neural editor's ``edit_with_flags``: one ``run(size, indices)`` pipeline call per working size (``vae``
    sliced, and tiled for large sizes: ``styleprefs.gpu.set_vae_memory``), each edit flagged by ``safety`` and
    resized back to its original's size. The working size is ``working_size(image size)`` if given, else
    ``resize_for_model`` at ``resolution``."""
    from styleprefs.editors import EditResult
    from styleprefs.gpu import set_vae_memory

    if not len(images) == len(captions) == len(seeds):
        raise ValueError(f"got {len(images)} images, {len(captions)} captions and {len(seeds)} seeds")
    out: list[Image.Image | None] = [None] * len(images)
    flags: list[bool | None] = [None] * len(images)
    sizes = [working_size(img.size) if working_size else resize_for_model(img.size, resolution) for img in images]
    for size, idx in group_by_size(sizes).items():
        set_vae_memory(vae, size)
        edits = run(size, idx)
        for i, edit, flag in zip(idx, edits, safety.flags(edits)):
            out[i] = edit.resize(images[i].size, Image.LANCZOS)
            flags[i] = flag
    return EditResult(out, flags)  # type: ignore[arg-type]
