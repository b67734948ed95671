"""Training inputs computed once per dataset: VAE latent distributions, text and CLIP embeddings.

``DATASET/.cache/<key hash>/`` holds ``pairs-<start>-<end>.safetensors`` shards of up to
``SHARD_PAIRS`` pairs, ``empty.safetensors`` (the empty caption's embeddings, for caption dropout)
and ``cache.json`` (key, count, shard list), written last. CLIP embeddings sit beside them in
``clip-<CLIP model hash>/`` (the same shard names, then ``clip.json``), one folder per CLIP model, so one
cache serves every stage: SFT and DPO read the latents and text embeddings, RPO adds a CLIP model's
embeddings, and adding them to a finished cache computes only them. Each shard is written to a temporary
file and renamed, so an interrupted build keeps its finished shards and later computes only the missing ones.

Tensors per shard (``_w`` winner, ``_l`` loser; N pairs; axis "flip": 0 as is, 1 mirrored):
  latent_mean_*, latent_std_*   [N, 2, C, h, w]  VAE posterior of the centre crop and of its mirror (unscaled)
  original_size_*               [N, 2]           (h, w) before resizing
  crop_top_left_*               [N, 2, 2]        centre crop (top, left), then the same crop in the mirrored frame
  text_row                      [N]              the pair's row among the shard's distinct captions
  prompt_embeds                 [U, L, D]        per distinct caption (U <= N; + pooled_prompt_embeds [U, P] for
                                                 SDXL, SD3, FLUX): the family's ``encode_prompts``, named in cache.json
  clip_image_w, clip_image_l, clip_text [N, E]   unnormalised CLIP embeddings (in ``clip-<hash>/``)
  index                         [N]              Pair.index, the pair's row in the dataset
Storage is float16 (half the disk of float32), except latent std in bfloat16: the VAE clamps log-variance
to [-30, 20], so std can sit far below float16's smallest normal value (6e-5). :class:`PairBatches`
returns float32.
"""

from __future__ import annotations

import glob
import hashlib
import json
from bisect import bisect_right
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor
from transformers import CLIPModel, CLIPProcessor

from styleprefs.errors import StyleprefsError
from styleprefs.images import decode
from styleprefs.inspect import read_verified_manifest
from styleprefs.io import atomic_path, read_json, write_json
from styleprefs.lock import folder_lock
from styleprefs.parallel import thread_map
from styleprefs.progress import RateColumn
from styleprefs.resolve import locate
from styleprefs.trainer.data import (Pair, dataset_files, flipped_crop, pair_augmentation, preprocess, read_pairs,
                                     resized_size)
from styleprefs.trainer.families import FAMILIES, Components
from styleprefs.trainer.models import encode_latent_dist, load_components, quiet_loading, resolve_model

CACHE_VERSION = 3  # 2: CLIP embeddings in clip-<hash>/ beside the latents, not in the key; 3: text per caption
SHARD_PAIRS = 256
OPEN_SHARDS = 32  # memory-mapped shard files kept open for random access
_console = Console(stderr=True, soft_wrap=True)
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
ENCODER_FOLDERS = ("vae", "text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3")
FLIP_FIELDS = ("latent_mean_w", "latent_mean_l", "latent_std_w", "latent_std_l", "crop_top_left_w", "crop_top_left_l")
CLIP_FIELDS = ("clip_image_w", "clip_image_l", "clip_text")
STORAGE = {"latent_mean": "float16", "latent_std": "bfloat16", "embeddings": "float16"}
_FULL_HASH_BYTES = 1 << 20
_SAMPLE_BLOCKS, _BLOCK_BYTES = 16, 1 << 16


# --- key -------------------------------------------------------------------------------------------

def cache_key(dataset: Path | str, model: str, resolution: int, *, ties: str = "drop", seed: int = 0,
              vae: str | None = None) -> dict:
    """What the latents and text embeddings depend on: dataset content, VAE and text encoders, resolution, ties
    policy; a swapped-in ``vae`` (``--vae``) adds its identity. CLIP embeddings are keyed by their model within."""
    return {
        "version": CACHE_VERSION,
        "dataset": _dataset_identity(dataset),
        "model": _model_identity(model),
        "resolution": resolution,
        "ties": ties if ties == "drop" else f"{ties} (seed {seed})",
    } | ({"vae": _vae_identity(vae)} if vae else {})


def cache_dir(dataset: Path | str, model: str, resolution: int, *, ties: str = "drop", seed: int = 0,
              vae: str | None = None) -> Path:
    """``DATASET/.cache/<16 hex digits of the key's sha256>`` (beside the files for a Parquet file or glob)."""
    return _dir_for(dataset, cache_key(dataset, model, resolution, ties=ties, seed=seed, vae=vae))


def clip_dir(cache: Path, clip_model: str) -> Path:
    """Where ``cache`` keeps ``clip_model``'s embeddings: ``clip-<16 hex digits of its identity's sha256>``."""
    return cache / f"clip-{_digest(_clip_identity(clip_model))}"


def _dir_for(dataset: Path | str, key: dict) -> Path:
    return _cache_root(dataset) / ".cache" / _digest(key)


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _cache_root(dataset: Path | str) -> Path:
    path = Path(str(dataset)).expanduser()
    while glob.has_magic(str(path)):
        path = path.parent
    return path if path.is_dir() else path.parent


def _dataset_identity(dataset: Path | str) -> list:
    path = Path(str(dataset)).expanduser()
    if (path / "manifest.json").is_file():
        return [shard["sha256"] for shard in read_verified_manifest(path)["shards"]]
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in dataset_files(dataset)]


def _model_identity(model: str) -> str:
    """Only the VAE and text encoders shape the cache, so a fine-tuned UNet's checkpoint shares its base model's."""
    path = Path(resolve_model(model))
    if not path.is_dir():
        return model  # a Hub id
    return _fingerprint(path, [name for name in ENCODER_FOLDERS if (path / name).is_dir()])


def _vae_identity(vae: str) -> str:
    location = locate(vae, tiny="tiny").location
    return _fingerprint(Path(location), ["."]) if Path(location).is_dir() else vae


def _clip_identity(clip_model: str) -> str:
    path = Path(_clip_location(clip_model))
    return _fingerprint(path, ["."]) if path.is_dir() else clip_model


def _fingerprint(root: Path, folders: list[str]) -> str:
    """sha256 of the folders' file names, sizes and contents; files over 1 MiB by 16 evenly spaced 64 KiB blocks.

    Reading a few MB instead of gigabytes of weights still tells fine-tuned weights apart, since
    fine-tuning changes them everywhere.
    """
    digest = hashlib.sha256()
    files = sorted(f for folder in folders for f in (root / folder).rglob("*") if f.is_file())
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.relative_to(root).as_posix()}:{size}\n".encode())
        with open(file, "rb") as f:
            if size <= _FULL_HASH_BYTES:
                digest.update(f.read())
                continue
            for block in range(_SAMPLE_BLOCKS):
                f.seek((size - _BLOCK_BYTES) * block // (_SAMPLE_BLOCKS - 1))
                digest.update(f.read(_BLOCK_BYTES))
    return digest.hexdigest()


def _find_cache(dataset: Path | str, key: dict, clip_model: str | None) -> tuple[Path, Path | None] | None:
    """The complete cache for ``key`` and, given a CLIP model, its complete embeddings folder; None if either is not."""
    path = _dir_for(dataset, key)
    clip = clip_dir(path, clip_model) if clip_model else None
    if not _is_complete(path, key) or (clip is not None and not _clip_is_complete(clip, path)):
        return None
    return path, clip


def find_clip_cache(dataset: Path | str, model: str, resolution: int, *, ties: str = "drop", seed: int = 0,
                    vae: str | None = None) -> Path:
    """The complete CLIP embeddings folder of the complete cache of ``dataset`` for ``model`` at ``resolution``,
    whichever CLIP model made them (for RPO with ``--clip-model none``); a one-line StyleprefsError if there is
    none, or several."""
    key = cache_key(dataset, model, resolution, ties=ties, seed=seed, vae=vae)
    path = _dir_for(dataset, key)
    found = [info.parent for info in sorted(path.glob("clip-*/clip.json")) if _clip_is_complete(info.parent, path)] \
        if _is_complete(path, key) else []
    if len(found) > 1:
        names = ", ".join(read_json(clip / "clip.json")["clip_model"] for clip in found)
        raise StyleprefsError(f"the cache of {dataset} for {model} at {resolution} px holds the embeddings of "
                              f"{len(found)} CLIP models ({names}): give --clip-model to choose one")
    if not found:
        raise StyleprefsError(f"RPO weights need CLIP embeddings and {dataset} has no cache with them for {model} at "
                              f"{resolution} px: give --clip-model (e.g. {DEFAULT_CLIP_MODEL}) or run `styleprefs "
                              f"cache {dataset} --model {model} --resolution {resolution} --clip-model ...` first")
    return found[0]


def _is_complete(path: Path, key: dict) -> bool:
    info_path = path / "cache.json"
    if not info_path.is_file():
        return False
    info = read_json(info_path)
    return info["key"] == key and all((path / s["path"]).is_file() for s in info["shards"])


def _clip_is_complete(clip: Path, cache: Path) -> bool:
    """``clip`` holds embeddings for every shard of the (complete) ``cache``."""
    info_path = clip / "clip.json"
    if not info_path.is_file():
        return False
    info = read_json(info_path)
    return info["shards"] == read_json(cache / "cache.json")["shards"] and all(
        (clip / s["path"]).is_file() for s in info["shards"])


def _check_resolution(resolution: int) -> None:
    if resolution < 8 or resolution % 8:
        raise StyleprefsError(f"resolution must be a positive multiple of 8 (the VAE's downsampling), got {resolution}")


# --- encoding ----------------------------------------------------------------------------------------

@dataclass
class ClipEncoder:
    """Unnormalised CLIP image and text embeddings (transformers ``CLIPModel`` + ``CLIPProcessor``)."""

    model: CLIPModel
    processor: CLIPProcessor

    @classmethod
    def load(cls, clip_model: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> ClipEncoder:
        """From a Hub id or local folder (safetensors only); "tiny" is the offline tiny CLIP."""
        location = _clip_location(clip_model)
        try:
            model = CLIPModel.from_pretrained(location, dtype=dtype, use_safetensors=True)
            processor = CLIPProcessor.from_pretrained(location)
        except (OSError, ValueError) as exc:
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise StyleprefsError(f"cannot load CLIP model {clip_model}: {first_line}") from None
        return cls(model.requires_grad_(False).eval().to(device), processor)

    @torch.no_grad()
    def images(self, images: list[Image.Image]) -> Tensor:
        pixels = self.processor(images=images, return_tensors="pt").pixel_values
        return self.model.get_image_features(pixel_values=pixels.to(self.model.device, self.model.dtype)).pooler_output

    @torch.no_grad()
    def texts(self, captions: list[str]) -> Tensor:
        tokens = self.processor(text=captions, padding=True, truncation=True, return_tensors="pt").to(self.model.device)
        return self.model.get_text_features(**tokens).pooler_output


def _clip_location(clip_model: str) -> str:
    return locate(clip_model, tiny="tiny-clip").location


def _decode_pair(pair: Pair) -> tuple[Image.Image, Image.Image]:
    try:
        return decode(pair.winner), decode(pair.loser)
    except ValueError as exc:
        raise StyleprefsError(f"pair {pair.index} ({pair.caption[:40]!r}) has an undecodable image: {exc}") from None


def _encode_pixels(c: Components, pixels: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """VAE posterior mean and std of ``pixels``, ``batch_size`` images per forward pass, float32 on the CPU."""
    means, stds = zip(*(encode_latent_dist(c, chunk) for chunk in pixels.split(batch_size)))
    return torch.cat(means).float().cpu(), torch.cat(stds).float().cpu()


def _encode_text(c: Components, captions: list[str]) -> dict[str, Tensor]:
    return {name: t.float().cpu() for name, t in c.family.encode_prompts(c, captions).items()}


def _encode_captions(c: Components, captions: list[str], batch_size: int) -> dict[str, Tensor]:
    """Text embeddings of each distinct caption of ``captions`` once (first appearance order), and ``text_row``
    [N]: each caption's row among them. T5 embeddings are megabytes a caption: a prompt's pairs share its row."""
    distinct = list(dict.fromkeys(captions))
    row = {caption: i for i, caption in enumerate(distinct)}
    parts = [_encode_text(c, distinct[i : i + batch_size]) for i in range(0, len(distinct), batch_size)]
    return {name: torch.cat([p[name] for p in parts]) for name in parts[0]} | {
        "text_row": torch.tensor([row[caption] for caption in captions])}


def _encode_clip(clip: ClipEncoder, images_w: list[Image.Image], images_l: list[Image.Image],
                 captions: list[str]) -> dict[str, Tensor]:
    image_emb = clip.images(images_w + images_l).float().cpu()
    n = len(images_w)
    return {"clip_image_w": image_emb[:n], "clip_image_l": image_emb[n:], "clip_text": clip.texts(captions).float().cpu()}


def _encode_for_cache(c: Components | None, clip: ClipEncoder | None, pairs: list[Pair], resolution: int,
                      batch_size: int) -> dict[str, Tensor]:
    """The cache tensors (see the module docstring) of ``pairs``, float32: latents and text embeddings with ``c``,
    CLIP embeddings with ``clip``."""
    decoded = thread_map(_decode_pair, pairs)
    images = [w for w, _ in decoded] + [l for _, l in decoded]
    n = len(pairs)
    tensors = {} if c is None else _encode_latents(c, images, pairs, resolution, batch_size)
    if clip is not None:
        tensors |= _encode_clip(clip, images[:n], images[n:], [p.caption for p in pairs])
    return tensors


def _encode_latents(c: Components, images: list[Image.Image], pairs: list[Pair], resolution: int,
                    batch_size: int) -> dict[str, Tensor]:
    """Latent distributions, sizes and crops of ``pairs`` (``images``: winners, then losers)."""
    prepared = thread_map(lambda image: preprocess(image, resolution, None, False), images)
    pixels = torch.stack([p for p, _, _ in prepared])
    mean, std = _encode_pixels(c, torch.cat([pixels, pixels.flip(-1)]), batch_size)
    n = len(pairs)
    sizes = torch.tensor([size for _, size, _ in prepared])
    crops = torch.tensor([[crop, flipped_crop(crop, resized_size(size, resolution), resolution)]
                          for _, size, crop in prepared])
    # mean/std rows: [winners, losers] as is, then [winners, losers] mirrored -> [side, N, flip, ...]
    mean, std = (t.unflatten(0, (2, 2, n)).permute(1, 2, 0, 3, 4, 5) for t in (mean, std))
    return {"index": torch.tensor([p.index for p in pairs]),
            "latent_mean_w": mean[0], "latent_mean_l": mean[1], "latent_std_w": std[0], "latent_std_l": std[1],
            "original_size_w": sizes[:n], "original_size_l": sizes[n:],
            "crop_top_left_w": crops[:n], "crop_top_left_l": crops[n:]}


def _storage(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    def convert(name: str, t: Tensor) -> Tensor:
        if not t.is_floating_point():
            return t.contiguous()
        return t.to(torch.bfloat16 if name.startswith("latent_std") else torch.float16).contiguous()

    return {name: convert(name, t) for name, t in tensors.items()}


# --- build -------------------------------------------------------------------------------------------

@quiet_loading()
def build_cache(dataset: Path | str, model: str, resolution: int, *, clip_model: str | None = None,
                batch_size: int = 8, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                show_progress: bool = True, ties: str = "drop", seed: int = 0, shard_pairs: int = SHARD_PAIRS,
                vae: str | None = None) -> Path:
    """Compute (or resume, or confirm) the cache of ``dataset`` for ``model`` at ``resolution``, with ``clip_model``'s
    embeddings if given, and return its folder.

    Pairs come from :func:`~styleprefs.trainer.data.read_pairs` with ``ties`` and ``seed`` (both in
    the key). Images are resized and centre-cropped; the latents of the mirrored crops are stored
    too, so training can flip from the cache (random crops need on-the-fly encoding). Only what is missing is
    computed: CLIP embeddings added to a finished cache need neither the VAE nor the text encoders. ``batch_size``
    is images per VAE forward pass and pairs per text/CLIP forward pass; ``dtype`` is the compute dtype. ``vae``
    (``--vae``) encodes the images instead of the model's VAE.
    """
    _check_resolution(resolution)
    key = cache_key(dataset, model, resolution, ties=ties, seed=seed, vae=vae)
    out = _dir_for(dataset, key)
    if _find_cache(dataset, key, clip_model):
        return out
    with folder_lock(out):  # a second builder of the same cache gets a one-line error
        pairs, stats = read_pairs(dataset, ties=ties, seed=seed)
        if not pairs:
            raise StyleprefsError(
                f"dataset {dataset} has no pairs to cache ({stats['read']} read, {stats['ties_dropped']} ties dropped)")
        complete = _is_complete(out, key)
        shards = read_json(out / "cache.json")["shards"] if complete else _layout(len(pairs), shard_pairs)
        clip_out = clip_dir(out, clip_model) if clip_model else None
        if clip_out is not None:
            clip_out.mkdir(exist_ok=True)
        todo = [(s, not (out / s["path"]).is_file(), clip_out is not None and not (clip_out / s["path"]).is_file())
                for s in shards]
        c = None if complete else load_components(model, dtype=dtype, device=device, include_denoiser=False, vae=vae)
        clip = ClipEncoder.load(clip_model, device, dtype) if any(t[2] for t in todo) else None
        text_fields = read_json(out / "cache.json")["text_fields"] if complete else []
        if c is not None:
            empty = {k: v[0] for k, v in _encode_text(c, [""]).items()}
            text_fields = sorted(empty)
            _save(_storage(empty), out / "empty.safetensors")
            if show_progress:
                _console.print(disk_estimate(pairs, [s for s, latents, _ in todo if latents], c, empty, resolution))
        _encode_shards(pairs, [t for t in todo if t[1] or t[2]], c, clip, out, clip_out, resolution, batch_size,
                       show_progress)
        if not complete:
            _remove_strays(out, {s["path"] for s in shards})
            write_json({"key": key, "kind": c.kind, "count": len(pairs), "shards": shards, "empty": "empty.safetensors",
                        "text_fields": text_fields, "stats": stats, "storage": STORAGE}, out / "cache.json")
        if clip_out is not None:
            _remove_strays(clip_out, {s["path"] for s in shards})
            write_json({"clip_model": clip_model, "identity": _clip_identity(clip_model), "shards": shards},
                       clip_out / "clip.json")
        return out


def disk_estimate(pairs: list[Pair], shards: list[dict], c: Components, empty: dict[str, Tensor],
                  resolution: int) -> str:
    """One line: what the latents and text embeddings of ``shards`` will take on disk (2 bytes a value)."""
    side = resolution // c.vae_scale_factor
    latent_bytes = 2 * 2 * 2 * 2 * c.vae.config.latent_channels * side * side  # sides x flips x (mean, std) x 2 bytes
    caption_bytes = 2 * sum(t.numel() for t in empty.values())
    n_pairs = sum(s["count"] for s in shards)
    n_captions = sum(len({p.caption for p in pairs[s["start"] : s["start"] + s["count"]]}) for s in shards)
    latents, text = n_pairs * latent_bytes / 1e6, n_captions * caption_bytes / 1e6
    return (f"caching {n_pairs} pairs ({n_captions} distinct captions per shard): about {latents + text:,.1f} MB on "
            f"disk, {latents:,.1f} MB latents and {text:,.1f} MB text embeddings "
            f"({caption_bytes / 1e6:.3g} MB a caption)")


def _layout(count: int, shard_pairs: int) -> list[dict]:
    return [{"path": f"pairs-{start:07d}-{min(start + shard_pairs, count):07d}.safetensors", "start": start,
             "count": min(shard_pairs, count - start)} for start in range(0, count, shard_pairs)]


def _encode_shards(pairs: list[Pair], todo: list[tuple[dict, bool, bool]], c: Components | None,
                   clip: ClipEncoder | None, out: Path, clip_out: Path | None, resolution: int, batch_size: int,
                   show_progress: bool) -> None:
    """Encode and save each (shard, its latents missing, its CLIP embeddings missing) of ``todo``."""
    with _progress(len(pairs), len(pairs) - sum(s["count"] for s, _, _ in todo), show_progress) as advance:
        for shard, latents, embeddings in todo:
            chunk, parts = pairs[shard["start"] : shard["start"] + shard["count"]], []
            for i in range(0, len(chunk), batch_size):
                parts.append(_encode_for_cache(c if latents else None, clip if embeddings else None,
                                               chunk[i : i + batch_size], resolution, batch_size))
                advance(len(chunk[i : i + batch_size]))
            tensors = {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
            if latents:
                tensors |= _encode_captions(c, [p.caption for p in chunk], batch_size)
            tensors = _storage(tensors)
            if embeddings:
                _save({name: tensors.pop(name) for name in CLIP_FIELDS}, clip_out / shard["path"])
            if latents:
                _save(tensors, out / shard["path"])


def _save(tensors: dict[str, Tensor], path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file(tensors, tmp)


def _remove_strays(out: Path, keep: set[str]) -> None:
    """Delete shards of an earlier layout (another ``shard_pairs``).

    Temporary files are left alone: they may belong to another process building the same cache.
    """
    for path in out.glob("pairs-*.safetensors"):
        if path.name not in keep:
            path.unlink(missing_ok=True)


@contextmanager
def _progress(total: int, done: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    with Progress(TextColumn("[bold]caching"), BarColumn(), MofNCompleteColumn(), RateColumn("pairs"),
                  TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled) as progress:
        task = progress.add_task("cache", total=total, completed=done)
        yield lambda n: progress.update(task, advance=n)


# --- batches ------------------------------------------------------------------------------------------

class _CachedPairs:
    """Rows of a finished cache (and of its ``clip`` embeddings folder, if given), read by memory-mapped slices."""

    def __init__(self, path: Path, clip: Path | None, seed: int, resolution: int, random_flip: bool):
        info = read_json(path / "cache.json")
        self.path, self.clip, self.seed, self.resolution, self.random_flip = path, clip, seed, resolution, random_flip
        self.kind, self.count, self.stats, self.shards = info["kind"], info["count"], info["stats"], info["shards"]
        self.text_fields = set(info["text_fields"])
        self.starts = [s["start"] for s in self.shards]
        self.empty = {name: t.float() for name, t in load_file(path / info["empty"]).items()}
        self._open: OrderedDict[Path, object] = OrderedDict()

    def _handle(self, path: Path):
        if path in self._open:
            self._open.move_to_end(path)
        else:
            self._open[path] = safe_open(path, framework="pt")
            if len(self._open) > OPEN_SHARDS:
                self._open.popitem(last=False)
        return self._open[path]

    def rows(self, positions: list[int], epoch: int) -> dict[str, Tensor]:
        rows = []
        for position in positions:
            shard = bisect_right(self.starts, position) - 1
            name, offset = self.shards[shard]["path"], position - self.starts[shard]
            f = self._handle(self.path / name)
            sizes = tuple(tuple(f.get_slice(f"original_size_{side}")[offset].tolist()) for side in "wl")
            index = int(f.get_slice("index")[offset])
            flip = int(pair_augmentation(self.seed, index, epoch, sizes, self.resolution, False, self.random_flip)[2])
            text_row = int(f.get_slice("text_row")[offset])
            row = {k: f.get_slice(k)[text_row] if k in self.text_fields else
                   f.get_slice(k)[offset, flip] if k in FLIP_FIELDS else f.get_slice(k)[offset]
                   for k in f.keys() if k != "text_row"}
            if self.clip is not None:
                embeddings = self._handle(self.clip / name)
                row |= {k: embeddings.get_slice(k)[offset] for k in CLIP_FIELDS}
            rows.append(row)
        return {name: torch.stack([row[name] for row in rows]) for name in rows[0]}


class _LivePairs:
    """Rows encoded on the fly from the dataset's images (allows random crops)."""

    def __init__(self, dataset: Path | str, c: Components, clip: ClipEncoder | None, *, ties: str, seed: int,
                 resolution: int, random_flip: bool, random_crop: bool):
        self.pairs, self.stats = read_pairs(dataset, ties=ties, seed=seed)
        self.c, self.clip, self.kind, self.count = c, clip, c.kind, len(self.pairs)
        self.seed, self.resolution, self.random_flip, self.random_crop = seed, resolution, random_flip, random_crop
        self.empty = {name: t[0] for name, t in _encode_text(c, [""]).items()}

    def rows(self, positions: list[int], epoch: int) -> dict[str, Tensor]:
        pairs = [self.pairs[p] for p in positions]
        decoded = thread_map(_decode_pair, pairs)
        prepared_w, prepared_l = [], []
        for pair, (w, l) in zip(pairs, decoded):
            sizes = ((w.height, w.width), (l.height, l.width))
            crop_w, crop_l, flip = pair_augmentation(self.seed, pair.index, epoch, sizes, self.resolution,
                                                     self.random_crop, self.random_flip)
            prepared_w.append(preprocess(w, self.resolution, crop_w, flip))
            prepared_l.append(preprocess(l, self.resolution, crop_l, flip))
        n = len(pairs)
        mean, std = _encode_pixels(self.c, torch.stack([p for p, _, _ in prepared_w + prepared_l]), 2 * n)
        rows = {"index": torch.tensor([p.index for p in pairs]),
                "latent_mean_w": mean[:n], "latent_mean_l": mean[n:], "latent_std_w": std[:n], "latent_std_l": std[n:]}
        for side, prepared in (("w", prepared_w), ("l", prepared_l)):
            rows[f"original_size_{side}"] = torch.tensor([size for _, size, _ in prepared])
            rows[f"crop_top_left_{side}"] = torch.tensor([crop for _, _, crop in prepared])
        rows |= _encode_text(self.c, [p.caption for p in pairs])
        if self.clip is not None:
            rows |= _encode_clip(self.clip, [w for w, _ in decoded], [l for _, l in decoded], [p.caption for p in pairs])
        return rows


class PairBatches:
    """Random access to training batches of preference pairs, from the cache when one matches, else encoded on the fly.

    A complete cache for (dataset, model's VAE and text encoders, resolution, ties policy), with the
    embeddings of ``clip_model`` if one is given, is used unless ``use_cache`` is False or ``random_crop`` is
    set (the cache holds centre crops only). ``cached_clip`` (with ``clip_model=None``) takes the CLIP
    embeddings the cache holds, whichever CLIP model made them (:func:`find_clip_cache`), and raises
    StyleprefsError when there are none. Otherwise
    ``components`` (VAE, text encoders) must be given and images are encoded per batch; the CLIP
    model, if any, is loaded here. Flips (and random crops) come from
    :func:`~styleprefs.trainer.data.pair_augmentation` per (seed, pair index, epoch), one for both
    images of a pair, so a batch is the same whether it comes from the cache or not.

    Attributes: ``cache`` (the cache folder, or None when encoding on the fly), ``kind`` (the model family's
    name: "sd", "sdxl", "sd3", "flux") and ``stats`` (``read_pairs``' counts).
    """

    def __init__(self, dataset: Path | str, model: str, resolution: int, *, clip_model: str | None = None,
                 components: Components | None = None, ties: str = "drop", seed: int = 0, random_flip: bool = True,
                 random_crop: bool = False, use_cache: bool = True, cached_clip: bool = False, vae: str | None = None):
        _check_resolution(resolution)
        if cached_clip and (clip_model is not None or not use_cache or random_crop):
            raise ValueError("cached_clip needs clip_model=None, use_cache and no random_crop")
        self.resolution, self.has_clip = resolution, clip_model is not None or cached_clip
        found: tuple[Path, Path | None] | None = None
        if cached_clip:
            clip = find_clip_cache(dataset, model, resolution, ties=ties, seed=seed, vae=vae)
            found = clip.parent, clip
        elif use_cache and not random_crop:
            found = _find_cache(dataset, cache_key(dataset, model, resolution, ties=ties, seed=seed, vae=vae),
                                clip_model)
        self.cache: Path | None = found[0] if found else None
        if found is not None:
            self._rows: _CachedPairs | _LivePairs = _CachedPairs(*found, seed, resolution, random_flip)
        elif components is None:
            raise StyleprefsError(
                f"no cache of {dataset} for {model} at {resolution} px: run `styleprefs cache` first or pass components")
        else:
            clip = ClipEncoder.load(clip_model, components.vae.device) if clip_model else None
            self._rows = _LivePairs(dataset, components, clip, ties=ties, seed=seed, resolution=resolution,
                                    random_flip=random_flip, random_crop=random_crop)
        self.kind, self.stats = self._rows.kind, self._rows.stats
        self._family = FAMILIES[self.kind]()  # its batch extras (SDXL's time ids)

    def __len__(self) -> int:
        return self._rows.count

    def batch(self, indices: list[int], epoch: int) -> dict[str, Tensor]:
        """The batch of pairs at positions ``indices`` (0 <= i < len) for ``epoch``, float32 on the CPU.

        ``latent_mean``, ``latent_std`` [2B, 4, h, w]: winners first, then losers; unscaled (sample
        ``mean + std * noise``, then scale with the family's ``scale_latents``). The family's text inputs,
        e.g. ``prompt_embeds`` [B, 77, D], each with its ``empty_*`` value for caption dropout (SDXL, SD3 and FLUX
        add ``pooled_prompt_embeds`` [B, P]); the family's extras (SDXL: ``add_time_ids`` [2B, 6], each image's
        real original size and crop). With a CLIP model: ``clip_image_w``, ``clip_image_l``,
        ``clip_text`` [B, E], unnormalised. ``index`` [B]: each pair's row in the dataset (``Pair.index``).
        """
        bad = [i for i in indices if not 0 <= i < len(self)]
        if bad:
            raise IndexError(f"pair positions {bad} are outside 0..{len(self) - 1}")
        rows = self._rows.rows(list(indices), epoch)
        batch = {
            "latent_mean": torch.cat([rows["latent_mean_w"], rows["latent_mean_l"]]).float(),
            "latent_std": torch.cat([rows["latent_std_w"], rows["latent_std_l"]]).float(),
            "index": rows["index"].long(),
        }
        for name, empty in self._rows.empty.items():
            batch |= {name: rows[name].float(), f"empty_{name}": empty}
        batch |= self._family.batch_extras(rows, self.resolution)
        if self.has_clip:
            batch |= {name: rows[name].float() for name in ("clip_image_w", "clip_image_l", "clip_text")}
        return batch
