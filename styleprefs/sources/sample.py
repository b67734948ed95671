"""The bundled offline source: procedurally drawn, captioned scenes, so everything runs with no download.

Scene ``index`` is a permuted mixed-radix number decoded into a :class:`Scene` (sky, ground,
mountains, house, trees, animal, extra object); its caption says what is drawn. The two images of a
pair draw the same scene with a different layout taken from ``numpy.random.default_rng([index,
variant])``, so the bytes are identical in every call and every process.
"""

from __future__ import annotations

import io
import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache, partial
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from styleprefs.errors import StyleprefsError
from styleprefs.sources.base import DeferredPair, SourcePair

RGB = tuple[int, int, int]
T = TypeVar("T")
Op = tuple[float, Callable[[], None]]  # (base y, draw): objects are drawn far to near

MODEL_NAME = "styleprefs/sample"
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/styleprefs/sample")
_LABEL_STREAM = 2  # rng stream for labels; streams 0 and 1 draw the two images
_EPOCH = datetime(2023, 5, 1)
WATER_DEPTH = 0.25  # on beaches and lakes water covers depths g in [0, WATER_DEPTH] (g: 0 horizon, 1 bottom)
ROAD = (0.56, 0.68)  # the road's band of g


# ---------------------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class Sky:
    name: str
    phrase: str
    stops: tuple[RGB, ...]  # gradient, top to horizon
    light: tuple[float, float, float]  # multiplies the colours of everything under this sky
    water: tuple[RGB, RGB]  # water at the horizon, water at the shore


@dataclass(frozen=True)
class Ground:
    name: str
    phrase: str
    empty: str  # caption when nothing stands on it
    far: RGB
    near: RGB
    texture: str  # "grass", "sand" or "dunes"
    water: bool
    road: bool
    extras: tuple[str, str, str]


SKIES = (
    Sky("day", "on a sunny day", ((50, 110, 200), (115, 170, 230), (190, 220, 245)), (1.0, 1.0, 1.0),
        ((120, 175, 225), (40, 100, 170))),
    Sky("sunset", "at sunset", ((45, 35, 100), (170, 70, 115), (245, 130, 70), (255, 205, 120)), (1.0, 0.8, 0.66),
        ((240, 160, 100), (90, 60, 105))),
    Sky("night", "at night under the moon and stars", ((4, 6, 28), (18, 28, 70), (45, 60, 115)), (0.42, 0.48, 0.7),
        ((45, 60, 105), (10, 16, 42))),
    Sky("overcast", "on an overcast day", ((112, 117, 128), (158, 162, 170), (200, 202, 206)), (0.8, 0.82, 0.86),
        ((150, 160, 168), (78, 93, 104))),
)
GROUNDS = (
    Ground("grass", "on a grass field", "an empty grass field", (135, 190, 85), (60, 140, 45), "grass", False, False,
           ("flowers", "fence", "rocks")),
    Ground("beach", "on a sandy beach", "an empty sandy beach", (240, 226, 182), (226, 200, 145), "sand", True, False,
           ("sailboat", "umbrella", "rocks")),
    Ground("desert", "in the desert", "an empty desert", (238, 200, 140), (214, 158, 88), "dunes", False, False,
           ("cacti", "rocks", "pyramid")),
    Ground("road", "beside a country road", "an empty country road", (140, 190, 90), (70, 145, 50), "grass", False,
           True, ("car", "fence", "flowers")),
    Ground("lake", "by a lake", "a quiet lake", (125, 180, 80), (65, 140, 50), "grass", True, False,
           ("sailboat", "dock", "flowers")),
)
HOUSE_COLORS: dict[str, RGB] = {
    "red": (190, 50, 45), "blue": (65, 105, 185), "yellow": (235, 200, 70), "white": (238, 236, 228),
    "pink": (232, 145, 172),
}
TREE_KINDS = ("pine", "leafy", "palm")
ANIMALS = ("cat", "dog", "bird", "cow", "horse", "sheep")
EXTRA_PHRASES = {
    "flowers": "flowers", "fence": "a wooden fence", "rocks": "some rocks", "sailboat": "a sailboat",
    "umbrella": "a beach umbrella", "cacti": "cacti", "pyramid": "a pyramid", "car": "a car", "dock": "a wooden dock",
}
_COUNT_WORDS = ("a", "two", "three")
_HOUSES = (None, *HOUSE_COLORS)
_TREES = (None, *((kind, n) for kind in TREE_KINDS for n in (1, 2, 3)))
_ANIMALS = (None, *ANIMALS)
_RADICES = (len(SKIES), len(GROUNDS), 2, len(_HOUSES), len(_TREES), len(_ANIMALS), 4)
SCENE_COUNT = math.prod(_RADICES)  # distinct scenes, hence distinct captions, before indices wrap around


@dataclass(frozen=True)
class Scene:
    """What one index draws; ``caption`` names everything in it."""

    sky: Sky
    ground: Ground
    mountains: bool
    house: str | None
    trees: tuple[str, int] | None  # (kind, count)
    animal: str | None
    extra: str | None

    @property
    def caption(self) -> str:
        """E.g. ``a red house with two pine trees and a dog on a grass field at sunset``."""
        items = [phrase for phrase in self._item_phrases() if phrase]
        if items:
            text = items[0] + (" with " + _join_and(items[1:]) if items[1:] else "") + " " + self.ground.phrase
        else:
            text = self.ground.empty
        if self.mountains:
            text += " with mountains in the background"
        return f"{text} {self.sky.phrase}"

    def _item_phrases(self) -> tuple[str | None, ...]:
        house = f"a {self.house} house" if self.house else None
        trees = None
        if self.trees:
            kind, count = self.trees
            trees = f"{_COUNT_WORDS[count - 1]} {kind} tree{'s' if count > 1 else ''}"
        animal = f"a {self.animal}" if self.animal else None
        return house, trees, animal, EXTRA_PHRASES[self.extra] if self.extra else None


def _join_and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def scene_for(index: int) -> Scene:
    """The scene drawn for ``index``; distinct for indices in ``range(SCENE_COUNT)``, periodic after."""
    digits = []
    rest = _permute(index % SCENE_COUNT)
    for radix in _RADICES:
        rest, digit = divmod(rest, radix)
        digits.append(digit)
    sky, ground, mountains, house, trees, animal, extra = digits
    ground_spec = GROUNDS[ground]
    return Scene(
        sky=SKIES[sky], ground=ground_spec, mountains=bool(mountains), house=_HOUSES[house], trees=_TREES[trees],
        animal=_ANIMALS[animal], extra=ground_spec.extras[extra - 1] if extra else None,
    )


_HALF_BITS = 9  # the Feistel network permutes 18-bit numbers, the smallest even width above SCENE_COUNT
_HALF_MASK = (1 << _HALF_BITS) - 1


def _permute(x: int) -> int:
    """A bijection of ``range(SCENE_COUNT)`` (cycle-walking Feistel), so neighbouring indices look unrelated."""
    x = _feistel(x)
    while x >= SCENE_COUNT:
        x = _feistel(x)
    return x


def _feistel(x: int) -> int:
    left, right = x >> _HALF_BITS, x & _HALF_MASK
    for key in (0x2C1B, 0x9E37, 0x5BD1, 0x7F4A):
        left, right = right, left ^ ((((right ^ key) * 0x9E3779B1) >> 11) & _HALF_MASK)
    return (left << _HALF_BITS) | right


# ------------------------------------------------------------------------------------- the source


# The held-out split: scenes whose (house colour, time of day) pairing is one of these. Every colour and
# every time of day occurs in the train split, never these pairings, so the test split measures composition.
HELD_OUT = frozenset({("red", "night"), ("blue", "sunset"), ("yellow", "overcast"), ("white", "day"),
                      ("pink", "night")})
SPLITS = ("train", "test")


def split_of(scene: Scene) -> str:
    return "test" if (scene.house, scene.sky.name) in HELD_OUT else "train"


class SampleSource:
    """``num_scenes`` pairs of ``size`` px images, drawn lazily while iterating; needs no network.

    ``split`` None takes scenes 0, 1, 2, ...; "train" or "test" only the scenes of that split (see HELD_OUT)."""

    name = "sample"

    def __init__(self, size: int = 512, num_scenes: int = 2000, split: str | None = None):
        if size < 32 or num_scenes < 0:
            raise ValueError(f"sample source needs size >= 32 and num_scenes >= 0, got {size}, {num_scenes}")
        if split not in (None, *SPLITS):
            raise StyleprefsError(f"--split {split} does not exist in the sample source; use {' or '.join(SPLITS)}")
        self.size = size
        self.num_scenes = num_scenes
        self.split = split

    def __iter__(self) -> Iterator[SourcePair]:
        return (row.load() for row in self.deferred())

    def deferred(self) -> Iterator[DeferredPair]:
        """The pairs with their images drawn on ``load()``: captions are cheap, drawing is most of the cost."""
        indices = (i for i in range(SCENE_COUNT) if self.split is None or split_of(scene_for(i)) == self.split)
        for _, index in zip(range(self.num_scenes), indices):
            yield DeferredPair(_key(index), scene_for(index).caption, partial(make_pair, index, self.size))

    def describe(self) -> dict:
        split = {"split": self.split} if self.split else {}
        return {"source": self.name, "size": self.size, "num_scenes": self.num_scenes, **split}

    def local_paths(self) -> list[Path]:
        return []  # drawn in memory


def make_pair(index: int, size: int = 512) -> SourcePair:
    """Scene ``index`` as a Pick-a-Pic pair: both images JPEG-encoded, labels drawn from the index."""
    label_0, label_1 = labels_for(index)
    return SourcePair(
        key=_key(index),
        caption=scene_for(index).caption,
        jpg_0=_jpeg(render_scene(index, 0, size)),
        jpg_1=_jpeg(render_scene(index, 1, size)),
        label_0=label_0,
        label_1=label_1,
        image_0_uid=image_uid(index, 0),
        image_1_uid=image_uid(index, 1),
        model_0=MODEL_NAME,
        model_1=MODEL_NAME,
        ranking_id=index,
        user_id=index % 97,
        created_at=_EPOCH + timedelta(minutes=index),
    )


def _key(index: int) -> str:
    return f"sample-{index:06d}"


def image_uid(index: int, variant: int) -> str:
    return str(uuid.uuid5(_UID_NAMESPACE, f"{index}/{variant}"))


def labels_for(index: int) -> tuple[float, float]:
    """About 45% prefer image 0, 45% image 1 and 10% are ties, as in Pick-a-Pic."""
    u = np.random.default_rng([index, _LABEL_STREAM]).random()
    if u < 0.45:
        return 1.0, 0.0
    if u < 0.9:
        return 0.0, 1.0
    return 0.5, 0.5


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------- drawing


@dataclass
class _Painter:
    """The canvas, the rng of this image, and where the ground is: ``g`` runs 0 (horizon) to 1 (bottom)."""

    draw: ImageDraw.ImageDraw
    rng: np.random.Generator
    size: int
    horizon: int
    light: tuple[float, float, float]
    night: bool

    def y(self, g: float) -> float:
        return self.horizon + g * (self.size - self.horizon)

    def unit(self, g: float) -> float:
        """Pixel scale of an object standing at depth ``g`` (nearer is bigger)."""
        return self.size * (0.45 + 0.75 * g)

    def color(self, rgb: Sequence[int], jitter: int = 10, lit: bool = True) -> RGB:
        return _shift(_lit(rgb, self.light) if lit else rgb, self.rng, jitter)

    def pick(self, options: Sequence[T]) -> T:
        return options[int(self.rng.random() * len(options))]

    def width(self, px: float) -> int:
        return max(1, round(px))


def render_scene(index: int, variant: int, size: int = 512) -> Image.Image:
    """Draw scene ``index`` as its ``variant``-th image: a ``size`` x ``size`` RGB illustration."""
    scene = scene_for(index)
    rng = np.random.default_rng([index, variant])
    horizon = int(size * rng.uniform(0.42, 0.54))
    sky_rows = _gradient([_shift(stop, rng, 8) for stop in scene.sky.stops], horizon)
    image = _background(scene, sky_rows, size, rng)
    p = _Painter(ImageDraw.Draw(image), rng, size, horizon, scene.sky.light, scene.sky.name == "night")
    _draw_sky(p, image, scene.sky.name, sky_rows)
    if scene.mountains:
        _draw_mountains(p)
    _draw_ground(p, scene.ground)
    for _, draw in sorted(_objects(p, scene), key=lambda op: op[0]):
        draw()
    return _finish(image, rng)


def _shift(rgb: Sequence[float], rng: np.random.Generator, jitter: int) -> RGB:
    """``rgb`` moved by up to ``jitter`` per channel (so the two variants differ in shade)."""
    if not jitter:
        return tuple(int(min(255, max(0, c))) for c in rgb)  # type: ignore[return-value]
    return tuple(int(min(255, max(0, c + jitter * (2 * d - 1)))) for c, d in zip(rgb, rng.random(3)))  # type: ignore[return-value]


def _gradient(stops: Sequence[Sequence[float]], rows: int) -> np.ndarray:
    """``rows`` x 3 colours running evenly through ``stops``."""
    t = np.linspace(0.0, 1.0, max(rows, 1))
    at = np.linspace(0.0, 1.0, len(stops))
    return np.stack([np.interp(t, at, [stop[c] for stop in stops]) for c in range(3)], axis=1)[:rows]


def _lit(rgb: Sequence[int], light: Sequence[float]) -> list[float]:
    return [c * f for c, f in zip(rgb, light)]


def _background(scene: Scene, sky_rows: np.ndarray, size: int, rng: np.random.Generator) -> Image.Image:
    """Sky, water and ground as vertical gradients."""
    horizon = len(sky_rows)
    shore = int(horizon + WATER_DEPTH * (size - horizon)) if scene.ground.water else horizon
    ground = scene.ground
    rows = np.concatenate([
        sky_rows,
        _gradient(scene.sky.water, shore - horizon),
        _gradient([_lit(_shift(ground.far, rng, 8), scene.sky.light), _lit(_shift(ground.near, rng, 8), scene.sky.light)],
                  size - shore),
    ])
    return Image.fromarray(rows.astype(np.uint8)[:, None, :]).resize((size, size), Image.Resampling.NEAREST)


_GRAIN = 7  # film grain amplitude, in levels


@lru_cache(maxsize=4)
def _grain(size: int) -> Image.Image:
    """A fixed luminance-noise tile, cropped at a random offset per image (cheaper than fresh noise)."""
    noise = np.random.default_rng(0).integers(0, 2 * _GRAIN + 1, (2 * size, 2 * size), dtype=np.uint8)
    return Image.fromarray(noise).convert("RGB")


def _finish(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Film grain for texture, then a light blur to soften the aliased edges of ImageDraw."""
    size = image.width
    ox, oy = (int(v) for v in rng.integers(0, size, 2))
    grain = _grain(size).crop((ox, oy, ox + size, oy + size))
    return ImageChops.add(image, grain, 1.0, -_GRAIN).filter(ImageFilter.BoxBlur(0.6))


# --------------------------------------------------------------------------------------- the sky


def _draw_sky(p: _Painter, image: Image.Image, sky: str, sky_rows: np.ndarray) -> None:
    if sky == "day":
        _sun(p, sky_rows, p.rng.uniform(0.12, 0.88) * p.size, p.rng.uniform(0.1, 0.22) * p.size, (255, 236, 120))
        _clouds(p, int(p.rng.integers(1, 4)), (252, 252, 252))
    elif sky == "sunset":
        _setting_sun(p, sky_rows)
        _clouds(p, int(p.rng.integers(1, 3)), (250, 180, 160))
    elif sky == "night":
        _stars(p)
        _moon(p, image)
    else:
        _clouds(p, int(p.rng.integers(6, 10)), (215, 217, 222), spread=True)


def _sky_at(sky_rows: np.ndarray, y: float) -> np.ndarray:
    return sky_rows[int(np.clip(y, 0, len(sky_rows) - 1))]


def _sun(p: _Painter, sky_rows: np.ndarray, x: float, y: float, rgb: RGB) -> None:
    r = 0.06 * p.size
    for scale, mix in ((2.2, 0.15), (1.6, 0.35)):  # glow rings, blended with the sky by hand
        halo = tuple(int(a * mix + b * (1 - mix)) for a, b in zip(rgb, _sky_at(sky_rows, y)))
        p.draw.ellipse([x - r * scale, y - r * scale, x + r * scale, y + r * scale], fill=halo)
    p.draw.ellipse([x - r, y - r, x + r, y + r], fill=rgb)


def _setting_sun(p: _Painter, sky_rows: np.ndarray) -> None:
    """Half a sun, its flat side on the last sky row."""
    x, y, r = p.rng.uniform(0.2, 0.8) * p.size, p.horizon - 1, 0.09 * p.size
    glow = tuple(int(a * 0.4 + b * 0.6) for a, b in zip((255, 150, 60), _sky_at(sky_rows, y)))
    p.draw.pieslice([x - 1.7 * r, y - 1.7 * r, x + 1.7 * r, y + 1.7 * r], 180, 360, fill=glow)
    p.draw.pieslice([x - r, y - r, x + r, y + r], 180, 360, fill=(255, 120, 50))


def _stars(p: _Painter) -> None:
    n = int(p.size * 0.18)
    xs = p.rng.uniform(0, p.size, n)
    ys = p.rng.uniform(0, p.horizon * 0.9, n)
    p.draw.point(list(zip(xs.tolist(), ys.tolist())), fill=(235, 235, 210))
    r = max(1.0, p.size / 300)
    for x, y in zip(xs[: n // 6], ys[: n // 6]):
        p.draw.ellipse([x - r, y - r, x + r, y + r], fill=(255, 250, 220))


def _moon(p: _Painter, image: Image.Image) -> None:
    """A crescent, pasted through a mask: a disc minus an offset disc."""
    x, y, r = p.rng.uniform(0.15, 0.85) * p.size, p.rng.uniform(0.1, 0.22) * p.size, 0.065 * p.size
    side = p.pick((-1.0, 1.0))
    box = int(2 * r) + 2
    mask = Image.new("L", (box, box), 0)
    draw = ImageDraw.Draw(mask)
    draw.ellipse([1, 1, 2 * r + 1, 2 * r + 1], fill=255)
    dx, dy = side * 0.45 * r, -0.2 * r
    draw.ellipse([1 + dx, 1 + dy, 2 * r + 1 + dx, 2 * r + 1 + dy], fill=0)
    image.paste((248, 242, 205), (int(x - r), int(y - r), int(x - r) + box, int(y - r) + box), mask)


def _clouds(p: _Painter, n: int, rgb: RGB, spread: bool = False) -> None:
    for _ in range(n):
        x = p.rng.uniform(0, p.size)
        y = p.rng.uniform(0.06, 0.75 if spread else 0.5) * p.horizon
        w = p.rng.uniform(0.12, 0.24 if spread else 0.18) * p.size
        fill = _scale(rgb, p.rng.uniform(0.92, 1.02))  # brightness only: tinted clouds look wrong
        for _ in range(6):
            dx, dy = p.rng.uniform(-0.5, 0.5) * w, p.rng.uniform(-0.25, 0.05) * w
            rx, ry = p.rng.uniform(0.2, 0.35) * w, p.rng.uniform(0.14, 0.22) * w
            p.draw.ellipse([x + dx - rx, y + dy - ry, x + dx + rx, y + dy + ry], fill=fill)
        p.draw.rounded_rectangle([x - 0.6 * w, y - 0.12 * w, x + 0.6 * w, y + 0.12 * w], radius=0.12 * w, fill=fill)


def _draw_mountains(p: _Painter) -> None:
    for _ in range(int(p.rng.integers(3, 6))):
        x = p.rng.uniform(-0.05, 1.05) * p.size
        h = p.rng.uniform(0.1, 0.24) * p.size
        hw = p.rng.uniform(0.18, 0.32) * p.size
        top, base = p.horizon - h, p.horizon + 1
        rock = p.color((105, 115, 145), 12)
        p.draw.polygon([(x - hw, base), (x, top), (x + hw, base)], fill=rock)
        p.draw.polygon([(x, top), (x + hw, base), (x + 0.25 * hw, base)], fill=_scale(rock, 0.82))  # shaded flank
        s = 0.3
        p.draw.polygon([(x - s * hw, top + s * h), (x, top), (x + s * hw, top + s * h), (x + 0.12 * hw, top + 0.22 * h),
                        (x - 0.1 * hw, top + 0.26 * h)], fill=p.color((240, 242, 248), 6))


def _scale(rgb: Sequence[int], f: float) -> RGB:
    return tuple(int(min(255, c * f)) for c in rgb)  # type: ignore[return-value]


# ------------------------------------------------------------------------------------ the ground


def _draw_ground(p: _Painter, ground: Ground) -> None:
    start = WATER_DEPTH if ground.water else 0.0
    if ground.water:
        _waves(p, ground.name == "beach")
    if ground.texture == "grass":
        _grass(p, start)
    else:
        if ground.texture == "dunes":
            _dunes(p, ground)
        _sand(p, start)
    if ground.road:
        _road(p)


def _waves(p: _Painter, foam: bool) -> None:
    shore = p.y(WATER_DEPTH)
    crest = p.color((255, 255, 255), 0, lit=True)
    for _ in range(int(p.size * 0.06)):
        g = p.rng.uniform(0.02, WATER_DEPTH - 0.02)
        x, y, w = p.rng.uniform(0, p.size), p.y(g), 0.04 * p.unit(g)
        p.draw.line([(x - w, y), (x + w, y)], fill=_scale(crest, 0.85), width=p.width(p.size / 400))
    if foam:
        xs = np.linspace(-10, p.size + 10, 24)
        ys = shore + 0.008 * p.size * np.sin(xs / p.size * 25 + p.rng.uniform(0, 6))
        p.draw.line(list(zip(xs.tolist(), ys.tolist())), fill=crest, width=p.width(p.size / 120), joint="curve")


def _grass(p: _Painter, start: float) -> None:
    n = int(p.size * 0.6)
    gs = p.rng.uniform(start, 1.0, n)
    xs = p.rng.uniform(0, p.size, n)
    lean = p.rng.uniform(-0.5, 0.5, n)
    shades = (p.color((40, 110, 30), 6), p.color((120, 180, 70), 6))
    width = p.width(p.size / 400)
    for i, (g, x) in enumerate(zip(gs, xs)):
        y, h = p.y(g), 0.018 * p.unit(g)
        p.draw.line([(x, y), (x + lean[i] * h, y - h)], fill=shades[i % 2], width=width)


def _dunes(p: _Painter, ground: Ground) -> None:
    """Layered dune ridges, each filled with the ground's colour at its depth, alternately lit and shaded."""
    xs = np.linspace(0, p.size, 33)
    for layer, g in enumerate(sorted(p.rng.uniform(0.12, 0.75, 3))):
        amp, freq = 0.04 * p.unit(g), p.rng.uniform(2, 5) / p.size
        ys = p.y(g) - amp * (1 + np.sin(2 * math.pi * freq * xs + p.rng.uniform(0, 2 * math.pi))) / 2
        base = [f + (n - f) * g for f, n in zip(ground.far, ground.near)]
        fill = p.color(_scale(base, 1.05 if layer % 2 else 0.95), 4)
        p.draw.polygon(list(zip(xs.tolist(), ys.tolist())) + [(p.size, p.size), (0, p.size)], fill=fill)


def _sand(p: _Painter, start: float) -> None:
    n = int(p.size * 0.8)
    points = list(zip(p.rng.uniform(0, p.size, n).tolist(), [p.y(g) for g in p.rng.uniform(start, 1.0, n)]))
    p.draw.point(points, fill=p.color((170, 130, 80), 8))


def _road(p: _Painter) -> None:
    top, bottom = p.y(ROAD[0]), p.y(ROAD[1])
    p.draw.rectangle([0, top, p.size, bottom], fill=p.color((105, 105, 110), 6))
    edge = p.width((bottom - top) * 0.06)
    for y in (top, bottom):
        p.draw.line([(0, y), (p.size, y)], fill=p.color((200, 200, 190), 4), width=edge)
    mid, dash = (top + bottom) / 2, 0.06 * p.size
    for x in np.arange(p.rng.uniform(-dash, 0), p.size, 2 * dash):
        p.draw.line([(x, mid), (x + dash, mid)], fill=p.color((245, 215, 80), 4), width=edge)


# --------------------------------------------------------------------------------- placing objects


def _objects(p: _Painter, scene: Scene) -> list[Op]:
    """Every object of the scene as an op; house, trees, animal and umbrella get their own columns."""
    far = 0.45 if scene.ground.road else 0.52  # trees on a road scene stay behind the road
    slots: list[_Slot] = []
    if scene.house:
        slots.append(_Slot((0.3, 0.4), 0.2, partial(_house, p, HOUSE_COLORS[scene.house])))
    if scene.trees:
        kind, count = scene.trees
        slots += [_Slot((0.27, far), 0.2, partial(TREE_DRAWERS[kind], p))] * count
    if scene.animal:
        slots.append(_Slot((0.76, 0.9), 0.28, partial(ANIMAL_DRAWERS[scene.animal], p)))
    if scene.extra == "umbrella":
        slots.append(_Slot((0.45, 0.62), 0.15, partial(_umbrella, p)))
    ops = _fill_columns(p, slots)
    if scene.extra in EXTRA_DRAWERS:
        ops += EXTRA_DRAWERS[scene.extra](p, scene.ground)
    return ops


@dataclass(frozen=True)
class _Slot:
    depth: tuple[float, float]  # range of g
    half_width: float  # in units of p.unit(g); keeps the object inside the frame
    draw: Callable[..., None]  # draw(x, y, unit)


def _fill_columns(p: _Painter, slots: list[_Slot]) -> list[Op]:
    ops: list[Op] = []
    columns = p.rng.permutation(len(slots))
    for column, slot in zip(columns, slots):
        g = p.rng.uniform(*slot.depth)
        y, u = p.y(g), p.unit(g)
        margin = min(slot.half_width * u, 0.45 * p.size)
        x = (column + 0.5 + p.rng.uniform(-0.2, 0.2)) / len(slots) * p.size
        ops.append((y, partial(slot.draw, float(np.clip(x, margin, p.size - margin)), y, u)))
    return ops


def _scattered(p: _Painter, n: int, g_range: tuple[float, float], draw: Callable[..., None]) -> list[Op]:
    ops: list[Op] = []
    for _ in range(n):
        g = p.rng.uniform(*g_range)
        ops.append((p.y(g), partial(draw, p, p.rng.uniform(0.04, 0.96) * p.size, p.y(g), p.unit(g))))
    return ops


def _flowers(p: _Painter, ground: Ground) -> list[Op]:
    low = ROAD[1] + 0.04 if ground.road else (WATER_DEPTH + 0.05 if ground.water else 0.5)
    return _scattered(p, int(p.rng.integers(22, 36)), (low, 1.0), _flower)


def _fence(p: _Painter, ground: Ground) -> list[Op]:
    g = p.rng.uniform(0.5, 0.53) if ground.road else p.rng.uniform(0.55, 0.62)
    return [(p.y(g), partial(_fence_at, p, p.y(g), p.unit(g)))]


def _rocks(p: _Painter, ground: Ground) -> list[Op]:
    return _scattered(p, int(p.rng.integers(3, 6)), (WATER_DEPTH + 0.1 if ground.water else 0.4, 0.98), _rock)


def _cacti(p: _Painter, ground: Ground) -> list[Op]:
    return _scattered(p, int(p.rng.integers(2, 4)), (0.3, 0.7), _cactus)


def _sailboat(p: _Painter, ground: Ground) -> list[Op]:
    g = p.rng.uniform(0.08, 0.2)
    return [(p.y(g), partial(_boat, p, p.rng.uniform(0.15, 0.85) * p.size, p.y(g), p.unit(g)))]


def _pyramid(p: _Painter, ground: Ground) -> list[Op]:
    return [(p.y(0.02), partial(_pyramid_at, p, p.rng.uniform(0.2, 0.8) * p.size, p.y(0.02)))]


def _car(p: _Painter, ground: Ground) -> list[Op]:
    g = ROAD[1] - 0.03
    return [(p.y(g), partial(_car_at, p, p.rng.uniform(0.15, 0.85) * p.size, p.y(g), p.unit(g)))]


def _dock(p: _Painter, ground: Ground) -> list[Op]:
    return [(p.y(WATER_DEPTH), partial(_dock_at, p, p.rng.uniform(0.2, 0.8) * p.size))]


# ----------------------------------------------------------------------------- house and trees


def _house(p: _Painter, rgb: RGB, x: float, y: float, u: float) -> None:
    w = 0.34 * u
    body_h, top = 0.62 * w, y - 0.62 * w
    wall = p.color(rgb, 8)
    line = p.width(u / 220)
    side = p.pick((-1.0, 1.0))
    if p.rng.random() < 0.6:
        cx = x + side * 0.22 * w
        p.draw.rectangle([cx - 0.05 * w, top - 0.4 * w, cx + 0.05 * w, top - 0.05 * w], fill=p.color((120, 70, 55)))
    p.draw.rectangle([x - w / 2, top, x + w / 2, y], fill=wall, outline=_scale(wall, 0.6), width=line)
    roofs = [(75, 75, 85)] if rgb == HOUSE_COLORS["red"] else [(150, 45, 35), (95, 60, 45), (75, 75, 85)]
    roof = p.color(p.pick(roofs), 8)
    p.draw.polygon([(x - 0.6 * w, top + 0.02 * w), (x, top - 0.45 * w), (x + 0.6 * w, top + 0.02 * w)],
                   fill=roof, outline=_scale(roof, 0.6))
    dx = x + side * 0.22 * w
    p.draw.rectangle([dx - 0.09 * w, y - 0.55 * body_h, dx + 0.09 * w, y], fill=p.color((110, 65, 35)))
    glass = (255, 214, 110) if p.night else p.color((175, 210, 235), 6)
    wx, wy, ws = x - side * 0.2 * w, top + 0.25 * body_h, 0.1 * w
    p.draw.rectangle([wx - ws, wy, wx + ws, wy + 2 * ws], fill=glass, outline=_scale(wall, 0.5), width=line)
    p.draw.line([(wx, wy), (wx, wy + 2 * ws)], fill=_scale(wall, 0.5), width=line)
    p.draw.line([(wx - ws, wy + ws), (wx + ws, wy + ws)], fill=_scale(wall, 0.5), width=line)


def _pine(p: _Painter, x: float, y: float, u: float) -> None:
    h = 0.5 * u * p.rng.uniform(0.85, 1.15)
    p.draw.rectangle([x - 0.04 * h, y - 0.16 * h, x + 0.04 * h, y], fill=p.color((100, 65, 35)))
    green = p.color((30, 100, 45), 10)
    for tier in range(3):
        base, half = y - 0.12 * h - tier * 0.24 * h, 0.27 * h * (1 - 0.22 * tier)
        p.draw.polygon([(x - half, base), (x + half, base), (x, base - 0.42 * h)], fill=green,
                       outline=_scale(green, 0.7))


def _leafy(p: _Painter, x: float, y: float, u: float) -> None:
    h = 0.45 * u * p.rng.uniform(0.85, 1.15)
    p.draw.rectangle([x - 0.05 * h, y - 0.5 * h, x + 0.05 * h, y], fill=p.color((105, 70, 40)))
    green = p.color((55, 135, 45), 12)
    for dx, dy, r in ((-0.17, -0.58, 0.19), (0.17, -0.58, 0.19), (0.0, -0.7, 0.24), (0.0, -0.88, 0.17)):
        shade = _scale(green, p.rng.uniform(0.85, 1.12))
        cx, cy = x + dx * h, y + dy * h
        p.draw.ellipse([cx - r * h, cy - r * h, cx + r * h, cy + r * h], fill=shade)


def _palm(p: _Painter, x: float, y: float, u: float) -> None:
    h = 0.55 * u * p.rng.uniform(0.85, 1.15)
    bend = p.rng.uniform(-0.25, 0.25) * h
    trunk = [(x + bend * t * t, y - h * t) for t in np.linspace(0, 1, 8)]
    p.draw.line(trunk, fill=p.color((140, 100, 60)), width=p.width(0.05 * h), joint="curve")
    tx, ty = trunk[-1]
    green = p.color((40, 130, 50), 10)
    for angle in (12, 45, 80, 100, 135, 168):
        a = math.radians(angle + p.rng.uniform(-8, 8))
        frond = [(tx + math.cos(a) * 0.38 * h * s, ty - math.sin(a) * 0.3 * h * s + 0.28 * h * s * s)
                 for s in np.linspace(0, 1, 6)]
        p.draw.line(frond, fill=green, width=p.width(0.045 * h), joint="curve")
    r = 0.03 * h
    for dx in (-1.2, 0.0, 1.2):
        p.draw.ellipse([tx + dx * r - r, ty + 0.5 * r, tx + dx * r + r, ty + 2.5 * r], fill=p.color((95, 60, 30)))


# ---------------------------------------------------------------------------------------- animals


def _facing(p: _Painter) -> float:
    return p.pick((-1.0, 1.0))


def _dot(p: _Painter, x: float, y: float, r: float, fill: RGB) -> None:
    _oval(p, x, y, r, r, fill)


def _oval(p: _Painter, x: float, y: float, rx: float, ry: float, fill: RGB) -> None:
    p.draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=fill)


def _legs(p: _Painter, x: float, y: float, a: float, f: float, offsets: Sequence[float], length: float, width: float,
          fill: RGB) -> None:
    """Legs standing on ``y``; offsets, length and width are in units of the animal's size ``a``."""
    for dx in offsets:
        p.draw.rectangle([x + (f * dx - width / 2) * a, y - length * a, x + (f * dx + width / 2) * a, y], fill=fill)


def _cat(p: _Painter, x: float, y: float, u: float) -> None:
    """Sitting, seen from the front: the most readable cat silhouette."""
    a, f = 0.22 * u, _facing(p)
    fur = p.color(p.pick([(230, 140, 60), (125, 125, 130), (45, 42, 45), (238, 232, 222)]), 8)
    tail = [(x + f * 0.2 * a, y - 0.06 * a), (x + f * 0.45 * a, y - 0.12 * a), (x + f * 0.55 * a, y - 0.35 * a),
            (x + f * 0.48 * a, y - 0.58 * a)]
    p.draw.line(tail, fill=fur, width=p.width(0.09 * a), joint="curve")
    p.draw.ellipse([x - 0.28 * a, y - 0.72 * a, x + 0.28 * a, y], fill=fur, outline=_scale(fur, 0.6))
    hy = y - 0.84 * a
    for s in (-1, 1):
        p.draw.polygon([(x + s * 0.21 * a, hy - 0.05 * a), (x + s * 0.18 * a, hy - 0.3 * a), (x + s * 0.03 * a, hy - 0.18 * a)],
                       fill=fur, outline=_scale(fur, 0.6))
    _dot(p, x, hy, 0.22 * a, fur)
    for s in (-1, 1):
        _dot(p, x + s * 0.09 * a, hy - 0.03 * a, 0.045 * a, p.color((150, 200, 60), 10))
        _dot(p, x + s * 0.09 * a, hy - 0.03 * a, 0.02 * a, (15, 15, 15))
        for dy in (0.0, 0.06):
            p.draw.line([(x + s * 0.06 * a, hy + 0.07 * a), (x + s * 0.34 * a, hy + 0.04 * a + dy * a)],
                        fill=_scale(fur, 0.45), width=p.width(a / 120))
        _dot(p, x + s * 0.1 * a, y - 0.04 * a, 0.07 * a, _scale(fur, 1.1))
    p.draw.polygon([(x - 0.035 * a, hy + 0.04 * a), (x + 0.035 * a, hy + 0.04 * a), (x, hy + 0.08 * a)],
                   fill=p.color((230, 130, 140), 0))


def _dog(p: _Painter, x: float, y: float, u: float) -> None:
    a, f = 0.27 * u, _facing(p)
    fur = p.color(p.pick([(150, 95, 50), (205, 160, 100), (50, 45, 45), (235, 228, 215)]), 8)
    ear = _scale(fur, 0.55) if fur[0] > 90 else _scale(fur, 1.8)
    p.draw.line([(x - f * 0.36 * a, y - 0.42 * a), (x - f * 0.5 * a, y - 0.68 * a)], fill=fur, width=p.width(0.06 * a))
    _legs(p, x, y, a, f, (-0.3, -0.18, 0.18, 0.3), 0.3, 0.08, _scale(fur, 0.9))
    p.draw.ellipse([x - 0.4 * a, y - 0.52 * a, x + 0.4 * a, y - 0.2 * a], fill=fur)
    hx, hy = x + f * 0.42 * a, y - 0.64 * a
    _dot(p, hx, hy, 0.16 * a, fur)
    sx, sy = hx + f * 0.17 * a, hy + 0.05 * a
    p.draw.ellipse([sx - 0.1 * a, sy - 0.06 * a, sx + 0.1 * a, sy + 0.06 * a], fill=_scale(fur, 1.08))
    _dot(p, sx + f * 0.09 * a, sy - 0.02 * a, 0.035 * a, (20, 18, 18))
    _dot(p, hx + f * 0.06 * a, hy - 0.05 * a, 0.025 * a, (20, 18, 18))
    ex = hx - f * 0.07 * a
    p.draw.ellipse([ex - 0.055 * a, hy - 0.1 * a, ex + 0.055 * a, hy + 0.12 * a], fill=ear)
    p.draw.line([(hx - f * 0.14 * a, hy + 0.1 * a), (hx + f * 0.02 * a, hy + 0.15 * a)], fill=p.color((200, 40, 40), 0),
                width=p.width(0.04 * a))


def _bird(p: _Painter, x: float, y: float, u: float) -> None:
    a, f = 0.2 * u, _facing(p)
    body = p.color(p.pick([(210, 50, 40), (50, 110, 205), (240, 200, 40)]), 8)
    orange = p.color((240, 150, 30), 4)
    for dx in (-0.06, 0.06):
        p.draw.line([(x + dx * a, y - 0.25 * a), (x + dx * a, y)], fill=orange, width=p.width(0.025 * a))
    p.draw.polygon([(x - f * 0.25 * a, y - 0.45 * a), (x - f * 0.62 * a, y - 0.62 * a), (x - f * 0.58 * a, y - 0.4 * a)],
                   fill=_scale(body, 0.7))
    p.draw.ellipse([x - 0.34 * a, y - 0.66 * a, x + 0.3 * a, y - 0.2 * a], fill=body)
    hx, hy = x + f * 0.27 * a, y - 0.74 * a
    _dot(p, hx, hy, 0.16 * a, body)
    p.draw.polygon([(hx + f * 0.12 * a, hy - 0.05 * a), (hx + f * 0.32 * a, hy + 0.02 * a), (hx + f * 0.12 * a, hy + 0.07 * a)],
                   fill=orange)
    _dot(p, hx + f * 0.05 * a, hy - 0.04 * a, 0.04 * a, (250, 250, 250))
    _dot(p, hx + f * 0.06 * a, hy - 0.04 * a, 0.022 * a, (10, 10, 10))
    p.draw.ellipse([x - 0.2 * a, y - 0.55 * a, x + 0.14 * a, y - 0.33 * a], fill=_scale(body, 0.72))


def _cow(p: _Painter, x: float, y: float, u: float) -> None:
    a, f = 0.3 * u, _facing(p)
    white, black, pink = p.color((242, 240, 232), 4), p.color((35, 32, 32), 4), p.color((240, 165, 170), 4)
    p.draw.line([(x - f * 0.44 * a, y - 0.58 * a), (x - f * 0.52 * a, y - 0.3 * a)], fill=white, width=p.width(0.02 * a))
    _dot(p, x - f * 0.52 * a, y - 0.3 * a, 0.035 * a, black)
    _legs(p, x, y, a, f, (-0.36, -0.24, 0.2, 0.32), 0.32, 0.075, white)
    _legs(p, x, y, a, f, (-0.36, -0.24, 0.2, 0.32), 0.05, 0.075, black)
    p.draw.ellipse([x - f * 0.2 * a - 0.08 * a, y - 0.33 * a, x - f * 0.2 * a + 0.08 * a, y - 0.21 * a], fill=pink)
    p.draw.rounded_rectangle([x - 0.46 * a, y - 0.64 * a, x + 0.42 * a, y - 0.26 * a], radius=0.12 * a, fill=white,
                             outline=_scale(white, 0.6))
    for _ in range(3):
        cx, cy = x + p.rng.uniform(-0.3, 0.25) * a, y + p.rng.uniform(-0.55, -0.36) * a
        rx, ry = p.rng.uniform(0.06, 0.11) * a, p.rng.uniform(0.05, 0.08) * a
        p.draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=black)
    hx, hy = x + f * 0.5 * a, y - 0.66 * a
    for s in (-1, 1):
        p.draw.line([(hx + s * 0.08 * a, hy - 0.12 * a), (hx + s * 0.14 * a, hy - 0.22 * a)], fill=p.color((225, 215, 190)),
                    width=p.width(0.03 * a))
        p.draw.ellipse([hx + s * 0.1 * a - 0.07 * a, hy - 0.1 * a, hx + s * 0.1 * a + 0.07 * a, hy - 0.04 * a], fill=black)
    p.draw.rounded_rectangle([hx - 0.11 * a, hy - 0.14 * a, hx + 0.11 * a, hy + 0.16 * a], radius=0.08 * a, fill=white,
                             outline=_scale(white, 0.6))
    p.draw.ellipse([hx - 0.12 * a, hy + 0.04 * a, hx + 0.12 * a, hy + 0.2 * a], fill=pink)
    for s in (-1, 1):
        _dot(p, hx + s * 0.05 * a, hy - 0.03 * a, 0.025 * a, black)
        _dot(p, hx + s * 0.045 * a, hy + 0.12 * a, 0.018 * a, _scale(pink, 0.6))


def _ellipse_points(cx: float, cy: float, rx: float, ry: float, angle: float) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + rx * math.cos(t) * c - ry * math.sin(t) * s, cy + rx * math.cos(t) * s + ry * math.sin(t) * c)
            for t in np.linspace(0, 2 * math.pi, 20, endpoint=False)]


def _horse(p: _Painter, x: float, y: float, u: float) -> None:
    a, f = 0.32 * u, _facing(p)
    coat = p.color(p.pick([(130, 75, 40), (165, 95, 50), (45, 38, 36), (175, 175, 180)]), 8)
    mane = _scale(coat, 0.45) if coat[0] > 80 else _scale(coat, 2.2)
    p.draw.line([(x - f * 0.42 * a, y - 0.7 * a), (x - f * 0.56 * a, y - 0.52 * a), (x - f * 0.52 * a, y - 0.3 * a)],
                fill=mane, width=p.width(0.07 * a), joint="curve")
    _legs(p, x, y, a, f, (-0.34, -0.24, 0.22, 0.32), 0.48, 0.065, coat)
    _legs(p, x, y, a, f, (-0.34, -0.24, 0.22, 0.32), 0.05, 0.07, (30, 28, 26))
    p.draw.ellipse([x - 0.45 * a, y - 0.78 * a, x + 0.42 * a, y - 0.42 * a], fill=coat)
    p.draw.polygon([(x + f * 0.18 * a, y - 0.74 * a), (x + f * 0.42 * a, y - 0.52 * a), (x + f * 0.56 * a, y - 1.0 * a),
                    (x + f * 0.4 * a, y - 1.08 * a)], fill=coat)
    head = _ellipse_points(x + f * 0.6 * a, y - 0.98 * a, 0.19 * a, 0.08 * a, f * math.radians(35))
    p.draw.polygon(head, fill=coat)
    p.draw.line([(x + f * 0.42 * a, y - 1.1 * a), (x + f * 0.2 * a, y - 0.76 * a)], fill=mane, width=p.width(0.07 * a))
    ex, ey = x + f * 0.47 * a, y - 1.1 * a
    p.draw.polygon([(ex, ey + 0.04 * a), (ex + f * 0.03 * a, ey - 0.1 * a), (ex + f * 0.08 * a, ey + 0.03 * a)], fill=coat)
    _dot(p, x + f * 0.55 * a, y - 1.03 * a, 0.025 * a, (15, 12, 12))


def _sheep(p: _Painter, x: float, y: float, u: float) -> None:
    a, f = 0.26 * u, _facing(p)
    wool, face = p.color((240, 238, 230), 4), p.color((40, 38, 38), 4)
    _legs(p, x, y, a, f, (-0.24, -0.12, 0.12, 0.24), 0.3, 0.06, face)
    p.draw.ellipse([x - 0.36 * a, y - 0.66 * a, x + 0.36 * a, y - 0.26 * a], fill=wool)
    for t in np.linspace(0, 2 * math.pi, 9, endpoint=False):
        _dot(p, x + 0.32 * a * math.cos(t), y - 0.46 * a + 0.17 * a * math.sin(t), 0.12 * a, _scale(wool, 0.96))
    hx, hy = x + f * 0.42 * a, y - 0.58 * a
    _oval(p, hx, hy - 0.01 * a, 0.09 * a, 0.11 * a, face)
    _oval(p, hx - f * 0.11 * a, hy - 0.07 * a, 0.08 * a, 0.03 * a, face)
    _dot(p, hx - f * 0.02 * a, hy - 0.15 * a, 0.08 * a, wool)
    _dot(p, hx + f * 0.04 * a, hy - 0.04 * a, 0.02 * a, (250, 250, 250))


# ----------------------------------------------------------------------------------------- extras


def _flower(p: _Painter, x: float, y: float, u: float) -> None:
    r = 0.011 * u
    p.draw.line([(x, y), (x, y - 2.5 * r)], fill=p.color((40, 120, 35), 6), width=p.width(r / 3))
    petals = p.color(p.pick([(220, 40, 50), (245, 205, 40), (235, 120, 180), (150, 80, 200), (250, 250, 250)]), 10)
    cy = y - 2.5 * r
    for t in np.linspace(0, 2 * math.pi, 5, endpoint=False):
        _dot(p, x + r * math.cos(t), cy + r * math.sin(t), 0.75 * r, petals)
    _dot(p, x, cy, 0.6 * r, p.color((250, 200, 40), 6))


def _fence_at(p: _Painter, y: float, u: float) -> None:
    wood = p.color((150, 105, 60), 8)
    h, post, step = 0.09 * u, 0.018 * u, 0.07 * p.size
    for rail in (0.35, 0.75):
        p.draw.rectangle([0, y - rail * h - post / 3, p.size, y - rail * h + post / 3], fill=_scale(wood, 0.85))
    for x in np.arange(p.rng.uniform(0, step), p.size, step):
        p.draw.polygon([(x - post, y), (x - post, y - h), (x, y - h - post), (x + post, y - h), (x + post, y)],
                       fill=wood, outline=_scale(wood, 0.6))


def _rock(p: _Painter, x: float, y: float, u: float) -> None:
    r = p.rng.uniform(0.025, 0.05) * u
    stone = p.color((125, 120, 115), 12)
    p.draw.ellipse([x - r, y - 1.2 * r, x + r, y + 0.2 * r], fill=stone)
    p.draw.ellipse([x - 0.6 * r, y - 1.05 * r, x + 0.2 * r, y - 0.6 * r], fill=_scale(stone, 1.25))


def _cactus(p: _Painter, x: float, y: float, u: float) -> None:
    h = 0.32 * u * p.rng.uniform(0.8, 1.2)
    green, w = p.color((60, 140, 70), 10), 0.07 * h
    p.draw.rounded_rectangle([x - w, y - h, x + w, y], radius=w, fill=green)
    for s, arm in ((-1, p.rng.uniform(0.45, 0.6)), (1, p.rng.uniform(0.3, 0.5))):
        ax = x + s * 0.2 * h
        p.draw.rectangle([min(x, ax), y - arm * h - w * 0.8, max(x, ax), y - arm * h + w * 0.8], fill=green)
        p.draw.rounded_rectangle([ax - w * 0.8, y - (arm + 0.25) * h, ax + w * 0.8, y - arm * h + w * 0.8], radius=w * 0.8,
                                 fill=green)
    p.draw.line([(x, y - h + w), (x, y - w)], fill=_scale(green, 0.7), width=p.width(w / 4))


def _boat(p: _Painter, x: float, y: float, u: float) -> None:
    w = 0.2 * u
    hull = p.color(p.pick([(150, 45, 40), (245, 245, 240), (50, 80, 150), (110, 70, 40)]), 8)
    sail = p.color((250, 250, 245), 4)
    p.draw.line([(x, y - 0.2 * w), (x, y - 1.15 * w)], fill=p.color((90, 60, 35)), width=p.width(0.025 * w))
    p.draw.polygon([(x + 0.03 * w, y - 1.1 * w), (x + 0.03 * w, y - 0.28 * w), (x + 0.45 * w, y - 0.28 * w)], fill=sail)
    p.draw.polygon([(x - 0.03 * w, y - 0.95 * w), (x - 0.03 * w, y - 0.3 * w), (x - 0.36 * w, y - 0.3 * w)],
                   fill=_scale(sail, 0.9))
    p.draw.polygon([(x - 0.55 * w, y - 0.22 * w), (x + 0.55 * w, y - 0.22 * w), (x + 0.38 * w, y), (x - 0.38 * w, y)],
                   fill=hull, outline=_scale(hull, 0.6))


def _umbrella(p: _Painter, x: float, y: float, u: float) -> None:
    w, top = 0.3 * u, y - 0.32 * u
    p.draw.line([(x, y), (x, top)], fill=p.color((235, 235, 230)), width=p.width(0.012 * u))
    colors = (p.color((220, 50, 50), 6), p.color((250, 250, 245), 4)) if p.rng.random() < 0.5 else \
        (p.color((40, 110, 200), 6), p.color((250, 250, 245), 4))
    for i in range(6):
        p.draw.pieslice([x - w / 2, top - 0.3 * w, x + w / 2, top + 0.3 * w], 180 + 30 * i, 210 + 30 * i, fill=colors[i % 2])
    towel = p.color((60, 170, 170), 10)
    tx = x + 0.1 * w
    p.draw.polygon([(tx, y + 0.02 * u), (tx + 0.22 * w, y + 0.02 * u), (tx + 0.3 * w, y + 0.07 * u), (tx + 0.08 * w, y + 0.07 * u)],
                   fill=towel)


def _pyramid_at(p: _Painter, x: float, y: float) -> None:
    w, stone = 0.42 * p.size, p.color((215, 175, 110), 8)
    apex, split = (x, y - 0.5 * w), x + 0.12 * w
    p.draw.polygon([(x - w / 2, y), (split, y), apex], fill=stone)
    p.draw.polygon([(split, y), (x + w / 2, y), apex], fill=_scale(stone, 0.75))
    for t in np.linspace(0.15, 0.85, 6):
        ly = y - t * 0.5 * w
        p.draw.line([(x - w / 2 * (1 - t), ly), (split + (x - split) * t, ly)], fill=_scale(stone, 0.85), width=1)


def _car_at(p: _Painter, x: float, y: float, u: float) -> None:
    w, f = 0.3 * u, _facing(p)
    paint = p.color(p.pick([(200, 40, 40), (40, 90, 190), (240, 200, 50), (60, 150, 80)]), 8)
    glass = p.color((170, 210, 235), 6)
    p.draw.polygon([(x - 0.28 * w, y - 0.3 * w), (x - 0.17 * w, y - 0.52 * w), (x + 0.15 * w, y - 0.52 * w),
                    (x + 0.3 * w, y - 0.3 * w)], fill=paint)
    for x0, x1 in ((-0.22, -0.03), (0.02, 0.22)):
        p.draw.polygon([(x + x0 * w, y - 0.32 * w), (x + (x0 + 0.06) * w, y - 0.48 * w), (x + (x1 - 0.02) * w, y - 0.48 * w),
                        (x + x1 * w, y - 0.32 * w)], fill=glass)
    p.draw.rounded_rectangle([x - 0.5 * w, y - 0.32 * w, x + 0.5 * w, y - 0.08 * w], radius=0.08 * w, fill=paint,
                             outline=_scale(paint, 0.6))
    _dot(p, x + f * 0.45 * w, y - 0.24 * w, 0.04 * w, (255, 230, 120))
    for dx in (-0.3, 0.3):
        _dot(p, x + dx * w, y - 0.08 * w, 0.1 * w, (25, 25, 25))
        _dot(p, x + dx * w, y - 0.08 * w, 0.045 * w, (170, 170, 175))


def _dock_at(p: _Painter, x: float) -> None:
    """A plank walkway from the shore out into the water, on posts."""
    near, far = p.y(WATER_DEPTH) + 0.01 * p.size, p.y(0.05)
    wn, wf = 0.035 * p.size, 0.02 * p.size
    wood = p.color((135, 95, 55), 8)
    for t in np.linspace(0.0, 1.0, 4):
        py, half = near + (far - near) * t, wn + (wf - wn) * t
        for s in (-1, 1):
            p.draw.rectangle([x + s * half - 0.003 * p.size, py - 0.004 * p.size, x + s * half + 0.003 * p.size,
                              py + 0.02 * p.size * (1 - 0.5 * t)], fill=_scale(wood, 0.55))
    p.draw.polygon([(x - wn, near), (x - wf, far), (x + wf, far), (x + wn, near)], fill=wood)
    for t in np.linspace(0.08, 0.92, 9):
        ly, half = near + (far - near) * t, wn + (wf - wn) * t
        p.draw.line([(x - half, ly), (x + half, ly)], fill=_scale(wood, 0.7), width=1)


TREE_DRAWERS: dict[str, Callable[..., None]] = {"pine": _pine, "leafy": _leafy, "palm": _palm}
ANIMAL_DRAWERS: dict[str, Callable[..., None]] = {
    "cat": _cat, "dog": _dog, "bird": _bird, "cow": _cow, "horse": _horse, "sheep": _sheep,
}
EXTRA_DRAWERS: dict[str, Callable[[_Painter, Ground], list[Op]]] = {
    "flowers": _flowers, "fence": _fence, "rocks": _rocks, "cacti": _cacti, "sailboat": _sailboat, "pyramid": _pyramid,
    "car": _car, "dock": _dock,
}
