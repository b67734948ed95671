"""Preference pairs for training: read (winner, loser) from a dataset, and the per-pair image preprocessing.

Randomness (tie coin flips, crops, flips) comes from ``numpy.random.default_rng([seed, index, ...])``
with ``index`` the row's position in the dataset, so it does not depend on batch size, process
count or restarts.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch import Tensor

from styleprefs.errors import StyleprefsError
from styleprefs.inspect import read_verified_manifest, shard_paths
from styleprefs.schema import REQUIRED_SOURCE_COLUMNS, missing_columns

TIE_POLICIES = ("drop", "random")


@dataclass(frozen=True)
class Pair:
    """One preference pair; ``index`` is the row's position in the dataset (counting dropped ties), images are encoded."""

    index: int
    caption: str
    winner: bytes
    loser: bytes


def dataset_files(dataset: Path | str) -> list[Path]:
    """The Parquet files of a styleprefs dataset folder (its manifest's shards) or a Pick-a-Pic file, folder or glob."""
    location = str(dataset)
    path = Path(location).expanduser()
    if glob.has_magic(location):
        files = sorted(Path(f) for f in glob.glob(location, recursive=True))
    elif path.is_file():
        files = [path]
    elif (path / "manifest.json").is_file() or (path / ".build").is_dir():
        return shard_paths(path, read_verified_manifest(path))  # an unfinished or damaged dataset fails here
    elif path.is_dir():
        files = sorted(path.rglob("*.parquet"))
    else:
        raise StyleprefsError(f"dataset {location} does not exist: give a styleprefs dataset folder "
                              "or a Pick-a-Pic Parquet file, folder or glob")
    if not files:
        raise StyleprefsError(f"dataset {location} holds no .parquet files")
    return files


def read_pairs(dataset: Path | str, *, ties: str = "drop", seed: int = 0) -> tuple[list[Pair], dict]:
    """All pairs of ``dataset`` (see :func:`dataset_files`), winner first, in file and row order.

    The winner is ``jpg_0`` when ``label_0 > label_1``, else ``jpg_1``. Ties (equal labels, 0.5/0.5 in
    Pick-a-Pic) are dropped (``ties="drop"``) or given a winner from ``default_rng([seed, index])``
    (``ties="random"``). Only the five needed columns are read. Returns the pairs and
    ``{"read", "ties_dropped", "kept"}``.
    """
    if ties not in TIE_POLICIES:
        raise StyleprefsError(f"unknown ties policy {ties!r}; choose {' or '.join(TIE_POLICIES)}")
    pairs: list[Pair] = []
    read = dropped = 0
    for file in dataset_files(dataset):
        table = _read_columns(file)
        first_slot = _winner_is_jpg_0(table, file, read)
        captions = table.column("caption").to_pylist()
        images = [_bytes_column(table, "jpg_0"), _bytes_column(table, "jpg_1")]
        for row, caption in enumerate(captions):
            index = read + row
            zero_wins = first_slot[row]
            if zero_wins is None and ties == "drop":
                dropped += 1
                continue
            if zero_wins is None:
                zero_wins = bool(np.random.default_rng([seed, index]).random() < 0.5)
            winner, loser = (0, 1) if zero_wins else (1, 0)
            pairs.append(Pair(index, caption or "", images[winner][row], images[loser][row]))
        read += len(captions)
    return pairs, {"read": read, "ties_dropped": dropped, "kept": len(pairs)}


def _read_columns(file: Path) -> pa.Table:
    try:
        names = pq.read_schema(file).names
        missing = missing_columns(names)
        if missing:
            raise StyleprefsError(f"{file} is not in Pick-a-Pic's schema: missing column(s) {', '.join(missing)}")
        return pq.read_table(file, columns=list(REQUIRED_SOURCE_COLUMNS))
    except (OSError, pa.ArrowException) as exc:
        raise StyleprefsError(f"cannot read Parquet file {file}: {str(exc).strip().splitlines()[0]}") from None


def _winner_is_jpg_0(table: pa.Table, file: Path, offset: int) -> list[bool | None]:
    """Per row: True (jpg_0 preferred), False (jpg_1) or None (tie)."""
    label_0 = table.column("label_0").to_numpy(zero_copy_only=False).astype(np.float64)
    label_1 = table.column("label_1").to_numpy(zero_copy_only=False).astype(np.float64)
    usable = (label_0 >= 0) & (label_0 <= 1) & (label_1 >= 0) & (label_1 <= 1)  # False for NaN (no value) too
    unusable = np.flatnonzero(~usable)
    if unusable.size:
        row = int(unusable[0])
        raise StyleprefsError(f"{file} row {row} (dataset row {offset + row}) has label_0 {label_0[row]:g} and "
                              f"label_1 {label_1[row]:g}: labels are numbers from 0 to 1 (nan: no value)")
    return [None if a == b else bool(a > b) for a, b in zip(label_0, label_1)]


def _bytes_column(table: pa.Table, name: str) -> list[bytes | None]:
    column = table.column(name)
    if pa.types.is_struct(column.type):  # written by `datasets` with an Image feature: {bytes, path}
        column = pc.struct_field(column, "bytes")
    return column.to_pylist()


def resized_size(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """(h, w) after resizing (h, w) so that its shortest side is ``resolution``."""
    h, w = size
    scale = resolution / min(h, w)
    return max(resolution, round(h * scale)), max(resolution, round(w * scale))


def center_crop(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """(top, left) of the centred ``resolution`` square in an already resized (h, w) image (torchvision's rounding)."""
    h, w = size
    return int(round((h - resolution) / 2.0)), int(round((w - resolution) / 2.0))


def preprocess(image: Image.Image, resolution: int, crop: tuple[int, int] | None, flip: bool
               ) -> tuple[Tensor, tuple[int, int], tuple[int, int]]:
    """Resize (bicubic) the shortest side to ``resolution``, crop a square at ``crop`` = (top, left), optionally flip.

    ``crop`` None is the centre crop. Returns pixels [3, resolution, resolution] in [-1, 1], the
    original (h, w), and the crop's (top, left) as SDXL's time ids expect it: in the frame of the
    image the model sees, so for a flipped image ``left`` is measured from the other side, as if
    flipped first and then cropped (the diffusers SDXL training scripts' order).
    """
    original_size = (image.height, image.width)
    h, w = resized_size(original_size, resolution)
    image = image.convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
    top, left = crop if crop is not None else center_crop((h, w), resolution)
    if not (0 <= top <= h - resolution and 0 <= left <= w - resolution):
        raise ValueError(f"crop {(top, left)} does not fit a {resolution} square in a {h}x{w} image")
    pixels = torch.from_numpy(np.asarray(image.crop((left, top, left + resolution, top + resolution))).copy())
    pixels = pixels.permute(2, 0, 1).float().div(127.5).sub(1.0)
    if flip:
        return pixels.flip(-1), original_size, flipped_crop((top, left), (h, w), resolution)
    return pixels, original_size, (top, left)


def flipped_crop(crop: tuple[int, int], size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """(top, left) of a crop taken from a resized (h, w) image, measured in the horizontally flipped image."""
    top, left = crop
    return top, size[1] - resolution - left


def pair_augmentation(seed: int, index: int, epoch: int, sizes: tuple[tuple[int, int], tuple[int, int]],
                      resolution: int, random_crop: bool, random_flip: bool
                      ) -> tuple[tuple[int, int] | None, tuple[int, int] | None, bool]:
    """Crop (top, left) for the winner and the loser, and one flip for both, from ``default_rng([seed, index, epoch])``.

    ``sizes`` are the two images' original (h, w). Both crops sit at the same relative position of
    their resized images; crops are None (centre crop) unless ``random_crop``. The draws are the same
    whatever the options, so turning one option on does not change the other's choices.
    """
    flip_draw, y, x = np.random.default_rng([seed, index, epoch]).random(3)
    flip = bool(random_flip and flip_draw < 0.5)
    if not random_crop:
        return None, None, flip
    crops = []
    for size in sizes:
        h, w = resized_size(size, resolution)
        crops.append((int(round(y * (h - resolution))), int(round(x * (w - resolution)))))
    return crops[0], crops[1], flip
