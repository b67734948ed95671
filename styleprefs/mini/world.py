"""The miniature world: the bundled sample scenes at 64 px, their styled twins, and a held-out split.

Held out is the sample source's test split (``HELD_OUT``: pairings of house colour and time of day that
training never sees, though it sees each colour and each time of day), so evaluating on it tests
composition rather than recall. Images are drawn at a source size, edited there (as a build does) and
resized to 64 px as the trainer's cache does.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from styleprefs.sources.sample import (HELD_OUT, HOUSE_COLORS, SCENE_COUNT, SKIES, Scene, render_scene, scene_for,
                                       split_of)
STYLES = ("winter", "van_gogh", "sketch")
STYLE_WEIGHTS = (0.5, 0.25, 0.25)
SOURCE_SIZES = (128, 256, 512)
SOURCE_SIZE_WEIGHTS = (0.5, 0.3, 0.2)
COLORS = tuple(HOUSE_COLORS)
TIMES = tuple(sky.name for sky in SKIES)


def split_indices(held_out: bool, count: int, seed: int) -> list[int]:
    """``count`` distinct scene indices of one side of the split, drawn with ``seed``."""
    order = np.random.default_rng([seed, 7]).permutation(SCENE_COUNT)
    chosen = [int(i) for i in order if (split_of(scene_for(int(i))) == "test") == held_out]
    return chosen[:count]


def to_resolution(image: Image.Image, resolution: int = 64) -> Image.Image:
    """Bicubic resize to ``resolution`` (the scenes are square), as the trainer's cache does."""
    return image.convert("RGB").resize((resolution, resolution), Image.Resampling.BICUBIC)


@dataclass(frozen=True)
class Item:
    """One scene drawn at ``size`` px as ``variant``, and its edit in ``style``."""

    index: int
    variant: int
    size: int
    style: str


def draw_items(indices: Sequence[int], seed: int) -> list[Item]:
    items = []
    for index in indices:
        rng = np.random.default_rng([seed, index])
        items.append(Item(index, int(rng.integers(0, 16)), int(rng.choice(SOURCE_SIZES, p=SOURCE_SIZE_WEIGHTS)),
                          str(rng.choice(STYLES, p=STYLE_WEIGHTS))))
    return items


def render_item(item: Item) -> tuple[np.ndarray, np.ndarray]:
    """(original, edit) as uint8 arrays [64, 64, 3]; the edit's randomness comes from the item alone."""
    from styleprefs.editors.classic import FILTERS, effective_params

    image = render_scene(item.index, item.variant, item.size)
    edit = FILTERS[item.style](image, np.random.default_rng([item.index, item.variant, 1]),
                               effective_params(item.style, None))
    return np.asarray(to_resolution(image)), np.asarray(to_resolution(edit))


def render_original(item: Item) -> np.ndarray:
    """The original of :func:`render_item` alone, uint8 [64, 64, 3]."""
    return np.asarray(to_resolution(render_scene(item.index, item.variant, item.size)))


def render_items(items: Sequence[Item], workers: int = 2, edits: bool = True
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """Originals and (with ``edits``) edits of ``items`` as uint8 arrays [N, 64, 64, 3], in item order."""
    with ProcessPoolExecutor(workers) as pool:
        if not edits:
            return np.stack(list(pool.map(render_original, items, chunksize=64))), None
        pairs = list(pool.map(render_item, items, chunksize=64))
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def swap_attribute(caption: str, scene: Scene, attribute: str, value: str) -> str:
    """``caption`` with the scene's house colour or time-of-day phrase replaced by ``value``'s."""
    if attribute == "color":
        return caption.replace(f"a {scene.house} house", f"a {value} house", 1)
    phrase = {sky.name: sky.phrase for sky in SKIES}
    return caption.replace(scene.sky.phrase, phrase[value], 1)
