"""The ``classic`` editor: deterministic CPU image filters, one per style, no model weights.

Every filter maps an RGB image of any size to an RGB image of the same size. Lengths in the
parameters are in pixels at a 512-pixel short side and scale with the image, so a filter looks the
same at any resolution. Randomness (textures, swirls, snowflakes) comes only from the generator
passed in, so output depends only on (image, seed, params).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from styleprefs.parallel import thread_map

Filter = Callable[[Image.Image, np.random.Generator, dict], Image.Image]

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# shared helpers
#
# Float images are channel-first (3, h, w) in [0, 1]: numpy broadcasts a per-pixel (h, w) factor
# over a leading channel axis several times faster than over a trailing one.


def _to_float(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).transpose(2, 0, 1).astype(np.float32, order="C") / 255.0


def _to_uint8(a: np.ndarray) -> np.ndarray:
    return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _to_image(rgb: np.ndarray) -> Image.Image:
    return Image.merge("RGB", [Image.fromarray(channel, "L") for channel in _to_uint8(rgb)])


def _luma(rgb: np.ndarray) -> np.ndarray:
    return np.tensordot(_LUMA, rgb, 1)


def _unit(h: int, w: int) -> float:
    """Pixels per parameter pixel: parameters are given for a 512-pixel short side."""
    return min(h, w) / 512.0


def _resize(a: np.ndarray, h: int, w: int, resample: int = Image.BILINEAR) -> np.ndarray:
    return np.asarray(Image.fromarray(a.astype(np.float32)).resize((w, h), resample))


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Value noise in [0, 1] with features about ``cell`` pixels wide."""
    gh, gw = max(2, round(h / cell) + 1), max(2, round(w / cell) + 1)
    return np.clip(_resize(rng.random((gh, gw)), h, w, Image.BICUBIC), 0.0, 1.0)


def _blur_gray(gray: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian blur of a [0, 1] array through PIL's 8-bit blur (float images cannot be blurred)."""
    img = Image.fromarray(_to_uint8(gray), "L")
    return np.asarray(img.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32) / 255.0


def _box3(a: np.ndarray) -> np.ndarray:
    p = np.pad(a, 1, mode="edge")
    h, w = a.shape
    return sum(p[i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0


def _saturate(rgb: np.ndarray, factor: float | np.ndarray) -> np.ndarray:
    lum = _luma(rgb)
    return lum + (rgb - lum) * factor


# ---------------------------------------------------------------------------------------------
# van_gogh

# Gradient maps from shadow to highlight, one per hue family, in Van Gogh's pigments.
_VG_STOPS = np.array([0.0, 0.3, 0.6, 0.82, 1.0], dtype=np.float32)
_VG_RAMPS = {
    "cool": [(0.03, 0.05, 0.25), (0.07, 0.20, 0.60), (0.28, 0.52, 0.86), (0.68, 0.84, 0.93), (0.96, 0.97, 0.88)],
    "warm": [(0.18, 0.08, 0.04), (0.58, 0.27, 0.06), (0.90, 0.58, 0.10), (0.98, 0.82, 0.18), (1.0, 0.97, 0.68)],
    "green": [(0.03, 0.14, 0.10), (0.10, 0.36, 0.20), (0.36, 0.60, 0.20), (0.72, 0.80, 0.28), (0.96, 0.96, 0.66)],
}


def _ramp(name: str, lum: np.ndarray) -> np.ndarray:
    colors = np.array(_VG_RAMPS[name], dtype=np.float32)
    return np.stack([np.interp(lum, _VG_STOPS, colors[:, c]) for c in range(3)])


@functools.lru_cache(maxsize=8)
def _van_gogh_lut(saturation: float, palette: float, levels: int) -> np.ndarray:
    """Colour map on a 32x32x32 RGB grid (packed RGBA uint32): saturate, pull toward the hue
    family's pigment ramp, posterise. A lookup table keeps the per-pixel cost to one gather."""
    grid = (np.arange(32, dtype=np.float32) * 8.0 + 4.0) / 255.0
    rgb = np.stack(np.meshgrid(grid, grid, grid, indexing="ij")).reshape(3, -1)
    r, g, b = rgb
    lum = _luma(rgb)
    warm = np.clip(0.5 + 3.0 * (r - b), 0.0, 1.0)
    green = np.clip(4.0 * (g - np.maximum(r, b)), 0.0, 1.0)
    ramp = (1.0 - warm) * _ramp("cool", lum) + warm * _ramp("warm", lum)
    ramp = (1.0 - green) * ramp + green * _ramp("green", lum)
    mapped = np.clip((1.0 - palette) * _saturate(rgb, saturation) + palette * ramp, 0.0, 1.0)
    mapped = np.round(mapped * (levels - 1)) / (levels - 1)
    rgba = np.concatenate([_to_uint8(mapped), np.zeros((1, mapped.shape[1]), np.uint8)])
    return np.ascontiguousarray(rgba.T).reshape(-1).view(np.uint32)


def _paint_colors(rgb8: np.ndarray, texture: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Packed palette colour (h x w uint32) of each pixel brightened or darkened by ``texture``."""
    index = np.zeros(rgb8.shape[:2], np.int32)
    for c in range(3):
        index = (index << 5) | (np.clip(rgb8[..., c] + texture, 0, 255) >> 3)
    return lut[index]


def _swirl_potential(rng: np.random.Generator, h: int, w: int, count: int) -> np.ndarray:
    """Stream function whose curl is a divergence-free field of ``count`` vortices on soft noise."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    psi = (_smooth_noise(rng, h, w, min(h, w) / 2.5) - 0.5) * min(h, w) * 0.5
    for cy, cx, r, sign in zip(
        rng.random(count) * h,
        rng.random(count) * w,
        (0.10 + 0.15 * rng.random(count)) * min(h, w),
        rng.choice([-1.0, 1.0], count),
    ):
        psi += sign * r * np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2.0 * r * r))
    return psi


def _flow_field(
    lum: np.ndarray, rng: np.random.Generator, swirl: float, swirl_count: int, h: int, w: int
) -> tuple[np.ndarray, np.ndarray]:
    """Unit stroke directions (dy, dx) at h x w: along image edges where they are strong, swirling
    elsewhere. ``lum`` is a small copy of the image; the flow is smooth, so it is computed there."""
    sh, sw = lum.shape
    psi = _swirl_potential(rng, sh, sw, swirl_count)
    py, px = np.gradient(psi)
    cy, cx = -px, py
    cnorm = np.hypot(cy, cx) + 1e-6
    cy, cx = cy / cnorm, cx / cnorm

    gy, gx = np.gradient(lum)
    jxx, jxy, jyy = (_box3(_box3(v)) for v in (gx * gx, gx * gy, gy * gy))
    theta = 0.5 * np.arctan2(2.0 * jxy, jxx - jyy) + np.pi / 2.0  # edge tangent orientation
    coherence = np.sqrt((jxx - jyy) ** 2 + 4.0 * jxy**2)
    coherence = np.clip(coherence / (np.percentile(coherence, 90) + 1e-6), 0.0, 1.0)
    ty, tx = np.sin(theta), np.cos(theta)
    flip = np.where(ty * cy + tx * cx < 0.0, -1.0, 1.0)  # tangents have no sign: align with the swirl

    edge = 4.0 * (1.0 - swirl) * coherence * flip
    vy, vx = swirl * cy + edge * ty, swirl * cx + edge * tx
    norm = np.hypot(vy, vx) + 1e-6
    # Interpolating unit vectors shortens them only slightly where the direction turns fast.
    return _resize(vy / norm, h, w), _resize(vx / norm, h, w)


def _smear(packed: np.ndarray, dy: np.ndarray, dx: np.ndarray, length: float) -> np.ndarray:
    """Average of packed RGBA pixels (h x w uint32) along the line through each pixel in direction
    (dy, dx), ``length`` pixels long: line integral convolution with straight streamlines.
    Returns a float image. One gather per sample serves all channels."""
    h, w = packed.shape
    steps = max(1, round(length / 3.0))
    step = length / (2.0 * steps)
    margin = int(np.ceil(steps * step)) + 1
    padded = np.pad(packed, margin, mode="edge").reshape(-1)
    row = w + 2 * margin
    rows, cols = np.arange(margin, h + margin, dtype=np.int32), np.arange(margin, w + margin, dtype=np.int32)
    center = (rows[:, None] * row + cols).reshape(-1)
    acc = padded[center].view(np.uint8).reshape(-1, 4).astype(np.uint16)
    for k in range(1, steps + 1):
        # rint is odd-symmetric, so the sample at -k is the mirror offset of the sample at +k.
        offset = (np.rint(k * step * dy) * row + np.rint(k * step * dx)).astype(np.int32).reshape(-1)
        acc += np.take(padded, center + offset).view(np.uint8).reshape(-1, 4)
        acc += np.take(padded, center - offset).view(np.uint8).reshape(-1, 4)
    return np.ascontiguousarray(acc[:, :3].T).reshape(3, h, w) / np.float32(255.0 * (2 * steps + 1))


def _stroke_texture(rng: np.random.Generator, h: int, w: int, width: float, amount: float) -> np.ndarray:
    """Brightness offsets (int16, uint8 scale): soft blobs about one brush width across for separate
    strokes of slightly different paint, plus per-pixel grain for bristle marks; the smear along the
    flow draws both out into strokes."""
    gh, gw = max(2, round(h / width)), max(2, round(w / width))
    blobs = _resize(rng.random((gh, gw)), h, w, Image.BILINEAR)
    grain = rng.random((h, w), dtype=np.float32)
    return ((0.7 * blobs + 0.6 * grain - 0.65) * (2.0 * amount * 127.0)).astype(np.int16)


def _impasto(rgb: np.ndarray, strength: float) -> np.ndarray:
    """Light from the upper left on the paint relief (brightness taken as height)."""
    lum = _luma(rgb)
    relief = np.zeros_like(lum)
    relief[1:, 1:] = lum[1:, 1:] - lum[:-1, :-1]
    return rgb + strength * relief


def van_gogh(image: Image.Image, rng: np.random.Generator, params: dict) -> Image.Image:
    """Post-impressionist paint: saturated blue/yellow palette, swirling directional brush strokes."""
    params = effective_params("van_gogh", params)
    rgb8 = np.asarray(image.convert("RGB"))
    h, w, _ = rgb8.shape
    unit = _unit(h, w)
    scale = min(1.0, 96.0 / min(h, w))
    small = image.convert("L").resize((max(8, round(w * scale)), max(8, round(h * scale))), Image.BOX)
    small_lum = np.asarray(small, np.float32) / 255.0
    dy, dx = _flow_field(small_lum, rng, params["swirl"], params["swirl_count"], h, w)
    texture = _stroke_texture(rng, h, w, max(1.0, params["stroke_width"] * unit), params["texture"])
    packed = _paint_colors(rgb8, texture, _van_gogh_lut(params["saturation"], params["palette"], params["levels"]))
    painted = _smear(packed, dy, dx, max(2.0, params["stroke_length"] * unit))
    return _to_image(_impasto(painted, params["impasto"]))


# ---------------------------------------------------------------------------------------------
# sketch


def _hatching(rng: np.random.Generator, h: int, w: int, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Two families of short diagonal pencil strokes in [0, 1] (1 = full graphite), for / and \\."""
    ys, xs = np.arange(h, dtype=np.int32)[:, None], np.arange(w, dtype=np.int32)
    families = []
    for diagonal in (xs + ys, xs - ys + h):
        pressure = rng.random(h + w + 1, dtype=np.float32)
        lines = np.where(pressure < 1.0 / spacing, 0.4 + 0.6 * pressure * spacing, 0.0).astype(np.float32)
        dashes = _smooth_noise(rng, h, w, 5.0 * spacing) > 0.4
        families.append(lines[diagonal] * dashes)
    return families[0], families[1]


def sketch(image: Image.Image, rng: np.random.Generator, params: dict) -> Image.Image:
    """Graphite pencil sketch: dodge-blended lines, tonal hatching, paper grain, on near-white paper."""
    params = effective_params("sketch", params)
    rgb = _to_float(image)
    _, h, w = rgb.shape
    unit = _unit(h, w)
    gray = _luma(rgb)
    # Colour dodge of gray by its blurred inverse: flat areas go white, edges keep dark lines.
    blurred_inv = _blur_gray(1.0 - gray, max(0.8, params["line_radius"] * unit))
    lines = np.clip(gray / np.maximum(1.0 - blurred_inv, 1e-3), 0.0, 1.0) ** params["darkness"]

    tone = _blur_gray(gray, max(1.0, 4.0 * unit))
    hatch_a, hatch_b = _hatching(rng, h, w, max(2.0, 4.0 * unit))
    shade = params["hatching"] * (
        hatch_a * np.clip((0.65 - tone) / 0.65, 0.0, 1.0) + hatch_b * np.clip((0.35 - tone) / 0.35, 0.0, 1.0)
    )
    fibres = rng.random((h, w), dtype=np.float32)
    blotches = _smooth_noise(rng, h, w, 40.0 * unit + 1.0)
    paper = 1.0 - params["paper"] * (0.6 * fibres + 0.4 * blotches)
    out = lines * (1.0 - 0.6 * shade) * paper
    return Image.fromarray(_to_uint8(out), "L").convert("RGB")


# ---------------------------------------------------------------------------------------------
# winter

# Per-channel constants shaped (3, 1, 1) to broadcast over channel-first images.
_HAZE = np.array([0.86, 0.91, 0.98], dtype=np.float32)[:, None, None]
_SNOW = np.array([0.91, 0.95, 1.0], dtype=np.float32)[:, None, None]  # snow under a cold sky is faintly blue
_COLD_GAIN = np.array([0.90, 0.98, 1.10], dtype=np.float32)[:, None, None]
_COLD_LIFT = np.array([0.0, 0.02, 0.06], dtype=np.float32)[:, None, None]


def _cold_grade(rgb: np.ndarray, cold: float, brightness: float) -> np.ndarray:
    warmth = np.clip(rgb[0] - rgb[2], 0.0, 1.0)
    graded = _saturate(rgb, 1.0 - cold * (0.35 + 0.6 * warmth))
    graded = graded * (1.0 + cold * (_COLD_GAIN - 1.0)) + cold * _COLD_LIFT
    return 1.0 - (1.0 - np.clip(graded, 0.0, 1.0)) * (1.0 - brightness)


def _snow_cover(rgb: np.ndarray, rng: np.random.Generator, unit: float) -> np.ndarray:
    """Where snow settles, in [0, 1]: a ragged band under mostly horizontal edges (the tops of roofs,
    ridges, branches), and a grainy blanket on vegetation."""
    _, h, w = rgb.shape
    smooth = _blur_gray(_luma(rgb), max(0.7, 1.5 * unit))
    gy = np.zeros_like(smooth)
    gy[1:] = np.abs(smooth[1:] - smooth[:-1])
    gx = np.zeros_like(smooth)
    gx[:, 1:] = np.abs(smooth[:, 1:] - smooth[:, :-1])
    top_edge = np.clip((gy - 0.5 * gx) * 15.0, 0.0, 1.0)

    thickness = max(1, round(10.0 * unit))
    band = top_edge.copy()
    for shift in range(1, thickness + 1):
        band[shift:] = np.maximum(band[shift:], top_edge[:-shift] * (1.0 - 0.7 * shift / thickness))
    ragged = _smooth_noise(rng, h, w, 6.0 * unit + 1.0)
    band = np.clip(band * (0.5 + ragged), 0.0, 1.0)

    greenness = np.clip((rgb[1] - np.maximum(rgb[0], rgb[2])) * 5.0, 0.0, 1.0)
    lit = np.clip(2.0 * smooth, 0.0, 1.0)  # dark foliage shows through more
    grain = _smooth_noise(rng, h, w, 5.0 * unit + 1.0)
    blanket = np.clip(greenness * lit, 0.0, 0.92) * (0.7 + 0.3 * grain)
    return np.maximum(band, blanket)


def _snowflakes(rng: np.random.Generator, h: int, w: int, density: float, unit: float) -> np.ndarray:
    """Opacity in [0, 1] of falling flakes: many small sharp ones, a few large soft (near) ones."""
    layer = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(layer)
    count = round(density * 900.0 * h * w / (512.0 * 512.0))
    radii = np.maximum(0.7, unit * (0.9 + 3.4 * rng.random(count) ** 4))
    opacity = rng.integers(150, 256, count)
    for y, x, r, a in zip(rng.random(count) * h, rng.random(count) * w, radii, opacity):
        draw.ellipse((x - r, y - r, x + r, y + r), fill=int(a))
    soft = layer.filter(ImageFilter.GaussianBlur(max(0.5, 0.8 * unit)))
    return np.clip(np.asarray(soft, dtype=np.float32) / 255.0 * 1.6, 0.0, 1.0)


def winter(image: Image.Image, rng: np.random.Generator, params: dict) -> Image.Image:
    """Snowy winter scene: cold desaturated grade, snow on top edges and foliage, falling snow, haze."""
    params = effective_params("winter", params)
    rgb = _to_float(image)
    _, h, w = rgb.shape
    unit = _unit(h, w)
    out = _cold_grade(rgb, params["cold"], params["brightness"])
    snow = params["snow_cover"] * _snow_cover(rgb, rng, unit)
    out = out + (_SNOW - out) * snow
    haze = params["haze"] * (1.0 - 0.5 * np.linspace(0.0, 1.0, h, dtype=np.float32))[:, None]
    out = out + (_HAZE - out) * haze
    flakes = _snowflakes(rng, h, w, params["snowflakes"], unit)
    return _to_image(out + (1.0 - out) * flakes)


# ---------------------------------------------------------------------------------------------
# registry and editor

FILTERS: dict[str, Filter] = {"van_gogh": van_gogh, "sketch": sketch, "winter": winter}

DEFAULT_PARAMS: dict[str, dict] = {
    "van_gogh": {
        "saturation": 1.6,  # chroma gain before the palette map
        "palette": 0.45,  # blend weight of the pigment ramps (blues, yellows, greens)
        "levels": 6,  # posterisation levels per channel
        "swirl": 0.6,  # 0 = strokes follow image edges only, 1 = pure swirls
        "swirl_count": 5,
        "stroke_length": 22.0,
        "stroke_width": 5.0,
        "texture": 0.9,  # brightness variation between neighbouring strokes
        "impasto": 0.8,  # relief lighting of the paint
    },
    "sketch": {
        "line_radius": 4.0,  # blur radius of the dodge blend: larger = thicker, softer lines
        "darkness": 2.6,  # gamma on the lines
        "hatching": 1.0,
        "paper": 0.08,  # paper grain strength
    },
    "winter": {
        "cold": 0.6,  # desaturation of warm hues and blue tint
        "brightness": 0.15,
        "snow_cover": 0.85,
        "snowflakes": 1.0,  # flake density
        "haze": 0.15,
    },
}


# (min, max) of each parameter: beyond them a filter is meaningless or allocates without bound.
PARAM_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "van_gogh": {"saturation": (0, 5), "palette": (0, 1), "levels": (2, 64), "swirl": (0, 1), "swirl_count": (0, 100),
                 "stroke_length": (0, 200), "stroke_width": (0, 100), "texture": (0, 5), "impasto": (0, 5)},
    "sketch": {"line_radius": (0, 100), "darkness": (0.05, 10), "hatching": (0, 5), "paper": (0, 1)},
    "winter": {"cold": (0, 2), "brightness": (-1, 1), "snow_cover": (0, 2), "snowflakes": (0, 20), "haze": (0, 1)},
}


def effective_params(filter_name: str, params: dict | None = None) -> dict:
    """``params`` over the filter's defaults, each checked against its default's type and its range.

    Raises ValueError naming the valid filters or parameters on an unknown name, or the bad value."""
    if filter_name not in FILTERS:
        raise ValueError(f"unknown classic filter {filter_name!r}; valid filters: {sorted(FILTERS)}")
    defaults = DEFAULT_PARAMS[filter_name]
    unknown = sorted(set(params or {}) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown params {unknown} for classic filter {filter_name!r}; valid params: {sorted(defaults)}"
        )
    return {k: _checked(filter_name, k, (params or {}).get(k, v), type(v)) for k, v in defaults.items()}


def _checked(filter_name: str, key: str, value: object, kind: type) -> int | float:
    where = f"classic filter {filter_name!r} param {key!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} must be a number, got {value!r}")
    low, high = PARAM_RANGES[filter_name][key]
    if not low <= value <= high:  # also refuses NaN
        raise ValueError(f"{where} must be between {low} and {high}, got {value!r}")
    if kind is int and value != int(value):
        raise ValueError(f"{where} must be a whole number, got {value!r}")
    return kind(value)


class ClassicEditor:
    """Edits with one of ``FILTERS``; image i gets ``numpy.random.default_rng(seeds[i])``."""

    name = "classic"
    model_id = "styleprefs/classic"

    def __init__(self, filter_name: str, filter_params: dict | None = None):
        self._params = effective_params(filter_name, filter_params)
        self.filter_name = filter_name

    def params(self) -> dict:
        return {"filter": self.filter_name, **self._params}

    def edit(
        self, images: Sequence[Image.Image], captions: Sequence[str], seeds: Sequence[int]
    ) -> list[Image.Image]:
        if not len(images) == len(captions) == len(seeds):
            raise ValueError(f"got {len(images)} images, {len(captions)} captions and {len(seeds)} seeds")
        apply = FILTERS[self.filter_name]
        return thread_map(lambda job: apply(job[0], np.random.default_rng(job[1]), self._params), zip(images, seeds))
