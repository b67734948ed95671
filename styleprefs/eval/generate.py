"""``styleprefs eval generate``: images from a model on a prompt list, on seeds fixed per (prompt, index).

Output folder::

    generate.json   settings (model, prompt source, steps, guidance, size, base seed, images per prompt)
    index.jsonl     one line per finished image: prompt_id, prompt, category, index, seed, path, width, height
    images/         00000-00.png, 00000-01.png, ...  (prompt_id-index)

Image ``index`` of a prompt gets noise from ``image_seed(seed, prompt, index)``, a hash of the base seed,
the prompt's text and the index: every model given the same ``--seed`` starts each (prompt, index)
from the same initial latent, whatever its place in the prompt list, the batch size or the device
(noise is drawn on the CPU, one generator per image). Same settings and batch size give bit-identical
images; another batch size changes them only by float round-off (at most one 8-bit level here). Sampling follows Diffusion-DPO's: safety checker off, CFG 7.5 for SD1.5
and 5.0 for SDXL, 50 steps by default; SD3 samples at its pipeline's 7.0, FLUX.1 at 3.5 (its guidance input).

Resumable: each image is written to a temporary file and renamed, then its line appended to
``index.jsonl``; a rerun with the same settings skips the images already listed. Other settings in an
existing folder are refused (use another ``--out`` or ``--overwrite``).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import torch
from PIL import Image

from styleprefs.errors import StyleprefsError
from styleprefs.eval.prompts import PromptItem, describe, load_prompts
from styleprefs.io import atomic_path, read_json, write_json
from styleprefs.lock import LOCK_NAME, folder_lock

INDEX = "index.jsonl"
SETTINGS = "generate.json"
IMAGES = "images"
# Settings that change the pixels: a folder generated with other values is not resumed.
IMAGE_SETTINGS = ("model", "prompts", "prompt_list_sha256", "images_per_prompt", "seed", "steps", "guidance",
                  "height", "width", "negative_prompt", "dtype")


@dataclass(frozen=True)
class ImageRecord:
    """One generated image; ``path`` is relative to the output folder."""

    prompt_id: int
    prompt: str
    category: str
    index: int
    seed: int
    path: str
    width: int
    height: int


def image_seed(seed: int, prompt: str, index: int) -> int:
    """The noise seed of image ``index`` of ``prompt``: 63 bits of sha256(seed, prompt, index)."""
    digest = hashlib.sha256(f"{int(seed)}\x00{prompt}\x00{int(index)}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def read_index(folder: Path | str) -> list[ImageRecord]:
    """The finished images of a generation folder, ordered by (prompt_id, index).

    A last line cut short by a crash is ignored; a line whose image file is missing is dropped.
    """
    folder = Path(folder)
    path = folder / INDEX
    if not path.is_file():
        raise StyleprefsError(f"{folder} has no {INDEX}: it is not a folder written by `styleprefs eval generate`")
    records: dict[tuple[int, int], ImageRecord] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = ImageRecord(**json.loads(line))
        except (json.JSONDecodeError, TypeError):
            continue
        if (folder / record.path).is_file():
            records[(record.prompt_id, record.index)] = record
    return [records[key] for key in sorted(records)]


def read_settings(folder: Path | str) -> dict:
    return read_json(Path(folder) / SETTINGS)


def load_pipeline(model: str, device: torch.device, dtype: torch.dtype, *, vae: str | None = None,
                  channels_last: bool = False, compile: bool = False):
    """A diffusers text-to-image pipeline (SD1.5, SDXL, SD3 or FLUX.1 folder, Hub id, or tiny name), safety checker
    off; ``vae``
    in place of its own, the GPU settings of ``styleprefs.gpu.prepare_pipeline`` applied."""
    from diffusers import DiffusionPipeline

    from styleprefs.editors.loading import load_once, quiet_loading
    from styleprefs.gpu import load_vae, prepare_pipeline
    from styleprefs.trainer.models import resolve_model

    location = resolve_model(model)

    def load():
        try:
            with quiet_loading():
                config = DiffusionPipeline.load_config(location)
                extra = ({"safety_checker": None, "requires_safety_checker": False}
                         if "safety_checker" in config else {}) | ({"vae": load_vae(vae, dtype)} if vae else {})
                # Components saved as absent (SD3 without T5: text_encoder_3 [null, null]) load as None.
                extra |= {name: None for name, value in config.items() if value == [None, None]}
                pipe = DiffusionPipeline.from_pretrained(location, dtype=dtype, **extra)
        except (OSError, ValueError) as exc:
            hint = "" if Path(location).exists() else " (no network? download it and pass the local folder)"
            raise StyleprefsError(f"cannot load the pipeline {model}: {_first_line(exc)}{hint}") from None
        if pipeline_family(pipe) is None or type(pipe).__name__ == "StableDiffusionInstructPix2PixPipeline":
            raise StyleprefsError(f"{model} is a {type(pipe).__name__}, not a text-to-image pipeline of SD1.5, SDXL, "
                                  f"SD3 or FLUX.1")
        pipe.set_progress_bar_config(disable=True)
        return prepare_pipeline(pipe.to(device), channels_last=channels_last, compile=compile)

    # Loaded once per process (a pipeline folder does not change while we read it).
    return load_once(("eval-pipeline", str(Path(location).resolve()) if Path(location).exists() else location,
                      str(device), dtype, vae, channels_last, compile), load)


def pipeline_family(pipe):
    """The trainer's model family of a loaded pipeline (None for a pipeline no family serves)."""
    from styleprefs.trainer.families import family_from_index

    return None if hasattr(pipe, "controlnet") else family_from_index(dict(pipe.config, _class_name=type(pipe).__name__))


def generate(model: str, prompts: str, out: Path | str, *, images_per_prompt: int = 5, seed: int = 0,
             steps: int = 50, guidance: float | None = None, resolution: int | None = None, limit: int | None = None,
             negative_prompt: str = "", batch_size: int = 4, device: str | None = None, dtype: str | None = None,
             overwrite: bool = False, show_progress: bool = True, vae: str | None = None, allow_tf32: bool = True,
             channels_last: bool = False, compile: bool = False) -> dict:
    """Generate ``images_per_prompt`` images per prompt of ``prompts`` into ``out`` (see the module docstring).

    ``vae`` decodes instead of the model's VAE (recorded in the settings); ``allow_tf32``, ``channels_last`` and
    ``compile`` are the GPU settings of ``styleprefs.gpu``.

    Returns the settings with ``"done"`` (images generated now), ``"skipped"`` (already there) and ``"total"``.
    """
    from styleprefs.editors.loading import dtype_name, resolve_device, resolve_dtype
    from styleprefs.gpu import set_tf32

    if images_per_prompt < 1 or steps < 1 or batch_size < 1:
        raise StyleprefsError("--images-per-prompt, --steps and --batch-size must be at least 1")
    if guidance is not None and not 0 <= guidance < math.inf:  # also refuses NaN
        raise StyleprefsError(f"--guidance must be a finite number of at least 0, got {guidance}")
    items = load_prompts(prompts, limit=limit)
    out = Path(out)
    with folder_lock(out):  # a second writer of the same folder gets a one-line error
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        set_tf32(allow_tf32)
        pipe = load_pipeline(model, dev, torch_dtype, vae=vae, channels_last=channels_last, compile=compile)
        family = pipeline_family(pipe)
        kind = family.name
        default_size = (getattr(pipe, "default_sample_size", None)
                        or getattr(pipe, family.denoiser_folder).config.sample_size) * pipe.vae_scale_factor
        size = resolution or default_size
        settings = {
            "model": model, "pipeline": type(pipe).__name__, "kind": kind, "scheduler": type(pipe.scheduler).__name__,
            "prompts": describe(prompts), "prompt_list_sha256": _prompt_list_hash(items), "n_prompts": len(items),
            "images_per_prompt": images_per_prompt, "seed": seed, "steps": steps,
            "guidance": float(guidance if guidance is not None else family.validation_guidance),
            "height": size, "width": size, "negative_prompt": negative_prompt, "dtype": dtype_name(torch_dtype),
            **({"vae": vae} if vae else {}), "safety_checker": "off", "seeding": "image_seed(seed, prompt, index) = sha256, 63 bits; noise drawn on CPU",
        }
        todo = [ImageRecord(pid, item.prompt, item.category, i, image_seed(seed, item.prompt, i), "", 0, 0)
                for pid, item in enumerate(items) for i in range(images_per_prompt)]
        done = write_images(out, settings, todo, lambda batch: _sample(pipe, [r.prompt for r in batch],
                                                                       [r.seed for r in batch], settings),
                            batch_size=batch_size, overwrite=overwrite, show_progress=show_progress)
        return {**settings, "done": done, "skipped": len(todo) - done, "total": len(todo)}


def write_images(out: Path, settings: dict, records: list[ImageRecord],
                 render: Callable[[list[ImageRecord]], list[Image.Image]], *, batch_size: int, overwrite: bool = False,
                 show_progress: bool = True) -> int:
    """Fill the generation folder ``out`` (``settings`` recorded; other image settings refused unless
    ``overwrite``) with the images of ``records`` not there yet, ``render`` making each batch's images;
    returns how many were made. Call with ``out`` locked."""
    _prepare(out, settings, overwrite)
    done_keys = {(r.prompt_id, r.index) for r in read_index(out)} if (out / INDEX).is_file() else set()
    todo = [r for r in records if (r.prompt_id, r.index) not in done_keys]
    _end_with_newline(out / INDEX)  # a line cut short by a crash must not swallow the next one
    with _progress(len(todo), len(records) - len(todo), show_progress) as advance, \
            open(out / INDEX, "a", encoding="utf-8") as index:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            for record, image in zip(batch, render(batch)):
                index.write(json.dumps(asdict(save_image(out, record, image)), ensure_ascii=False) + "\n")
                index.flush()
            advance(len(batch))
    return len(todo)


def _sample(pipe, prompts: list[str], seeds: list[int], settings: dict) -> list[Image.Image]:
    from styleprefs.editors.loading import generators, quiet_truncation

    kwargs = pipeline_family(pipe).sampling_kwargs(pipe)
    if settings["negative_prompt"]:
        kwargs["negative_prompt"] = [settings["negative_prompt"]] * len(prompts)
    with torch.inference_mode(), quiet_truncation():
        result = pipe(prompt=prompts, num_inference_steps=settings["steps"], guidance_scale=settings["guidance"],
                      height=settings["height"], width=settings["width"], generator=generators(seeds),
                      output_type="pil", **kwargs)
    return list(result.images)


def save_image(out: Path, record: ImageRecord, image: Image.Image) -> ImageRecord:
    """Write ``image`` as ``record``'s (prompt_id, index) PNG of ``out``, atomically; ``record`` with its path and
    size filled in."""
    rel = f"{IMAGES}/{record.prompt_id:05d}-{record.index:02d}.png"
    with atomic_path(out / rel) as tmp:
        image.save(tmp, format="PNG")
    return replace(record, path=rel, width=image.width, height=image.height)


def _prepare(out: Path, settings: dict, overwrite: bool) -> None:
    existing = read_settings(out) if out.is_dir() else {}
    if existing and overwrite:
        for name in (INDEX, SETTINGS):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / IMAGES, ignore_errors=True)
        existing = {}
    if existing:
        changed = [k for k in IMAGE_SETTINGS if existing.get(k) != settings.get(k)]
        if changed:
            diffs = ", ".join(f"{k} {existing.get(k)!r} -> {settings.get(k)!r}" for k in changed[:3])
            raise StyleprefsError(f"{out} holds images generated with other settings ({diffs}); "
                                  "use another --out or pass --overwrite")
    elif any(p.name != LOCK_NAME for p in out.iterdir()) and not (out / INDEX).exists():  # out exists: it is locked
        raise StyleprefsError(f"{out} exists and is not a generation folder; choose an empty or new --out")
    try:
        (out / IMAGES).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StyleprefsError(f"output folder {out} is not writable: {exc}") from None
    write_json(settings, out / SETTINGS)


def _end_with_newline(path: Path) -> None:
    if path.is_file() and path.stat().st_size:
        with open(path, "rb+") as f:
            f.seek(-1, 2)
            if f.read(1) != b"\n":
                f.write(b"\n")


def _prompt_list_hash(items: list[PromptItem]) -> str:
    digest = hashlib.sha256()
    for item in items:
        digest.update(item.prompt.encode("utf-8") + b"\x00")
    return digest.hexdigest()


class _progress:
    """``with _progress(total, done, enabled) as advance``: a rich bar counting images."""

    def __init__(self, total: int, done: int, enabled: bool):
        self.total, self.done, self.enabled = total, done, enabled

    def __enter__(self) -> Callable[[int], None]:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from styleprefs.progress import RateColumn

        self.progress = Progress(TextColumn("[bold]images"), BarColumn(), MofNCompleteColumn(), RateColumn("img"),
                                 TimeRemainingColumn(), disable=not self.enabled)
        self.progress.__enter__()
        task = self.progress.add_task("images", total=self.total + self.done, completed=self.done)
        return lambda n: self.progress.update(task, advance=n)

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)


def iter_images(folder: Path | str) -> Iterator[tuple[ImageRecord, Image.Image]]:
    """(record, RGB image) of every finished image of a generation folder."""
    folder = Path(folder)
    for record in read_index(folder):
        with Image.open(folder / record.path) as img:
            yield record, img.convert("RGB")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = ["ImageRecord", "generate", "image_seed", "iter_images", "load_pipeline", "read_index", "read_settings"]
