"""The classic editor: deterministic per-style CPU filters."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from styleprefs.editors.classic import DEFAULT_PARAMS, FILTERS, ClassicEditor

STYLES = sorted(FILTERS)


def scene(width: int = 160, height: int = 128) -> Image.Image:
    """Sky gradient, green ground, a red house with a roof, door and window, and a sun."""
    img = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(img)
    horizon = int(height * 0.6)
    for y in range(horizon):
        t = y / horizon
        draw.line([(0, y), (width, y)], fill=(int(90 + 80 * t), int(150 + 60 * t), 235))
    draw.rectangle([0, horizon, width, height], fill=(60, 150, 60))
    left, right, top, bottom = int(width * 0.3), int(width * 0.65), int(height * 0.45), int(height * 0.78)
    draw.rectangle([left, top, right, bottom], fill=(200, 80, 60))
    draw.polygon([(left - 8, top), ((left + right) // 2, int(height * 0.25)), (right + 8, top)], fill=(120, 50, 40))
    draw.rectangle([left + 6, top + 6, left + 16, top + 16], fill=(240, 230, 150))
    draw.rectangle([(left + right) // 2, bottom - 20, (left + right) // 2 + 10, bottom], fill=(90, 60, 30))
    draw.ellipse([int(width * 0.78), 8, int(width * 0.78) + 20, 28], fill=(255, 220, 60))
    return img


def run(style: str, image: Image.Image, seed: int = 0) -> Image.Image:
    return ClassicEditor(style).edit([image], ["a house"], [seed])[0]


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


def hsv_saturation(image: Image.Image) -> float:
    return float(np.asarray(image.convert("HSV"))[..., 1].mean())


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return scene()


@pytest.fixture(scope="module")
def edited(image: Image.Image) -> dict[str, Image.Image]:
    return {style: run(style, image) for style in STYLES}


@pytest.mark.parametrize("style", STYLES)
def test_same_seed_same_output(style: str, image: Image.Image, edited: dict[str, Image.Image]) -> None:
    assert np.array_equal(arr(run(style, image)), arr(edited[style]))


@pytest.mark.parametrize("style", STYLES)
def test_other_seed_other_output(style: str, image: Image.Image, edited: dict[str, Image.Image]) -> None:
    assert not np.array_equal(arr(run(style, image, seed=1)), arr(edited[style]))


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("size", [(160, 128), (97, 61), (61, 97), (8, 5)])
def test_size_and_mode_kept(style: str, size: tuple[int, int]) -> None:
    out = run(style, scene(*size))
    assert out.size == size and out.mode == "RGB"


@pytest.mark.parametrize("style", STYLES)
def test_other_input_modes_accepted(style: str, image: Image.Image, edited: dict[str, Image.Image]) -> None:
    assert np.array_equal(arr(run(style, image.convert("RGBA"))), arr(edited[style]))


@pytest.mark.parametrize("style", STYLES)
def test_output_differs_substantially(style: str, image: Image.Image, edited: dict[str, Image.Image]) -> None:
    assert np.abs(arr(edited[style]) - arr(image)).mean() > 15.0


def test_sketch_is_graphite_on_white_paper(edited: dict[str, Image.Image]) -> None:
    out = arr(edited["sketch"])
    assert (out.max(axis=2) - out.min(axis=2)).max() <= 2.0
    assert out.mean() > 180.0
    assert np.mean(out[..., 0] > 200.0) > 0.6
    assert out.min() < 80.0  # there are dark lines


def test_winter_is_bluer_and_brighter(image: Image.Image, edited: dict[str, Image.Image]) -> None:
    before, after = arr(image), arr(edited["winter"])
    assert (after[..., 2] - after[..., 0]).mean() > (before[..., 2] - before[..., 0]).mean() + 5.0
    assert after.mean() > before.mean() + 10.0


def test_winter_has_snowflakes_on_a_flat_image() -> None:
    flat = Image.new("RGB", (128, 128), (60, 60, 60))
    out = arr(run("winter", flat))
    assert np.mean(out.min(axis=2) > 200.0) > 0.005


def test_van_gogh_more_saturated(image: Image.Image, edited: dict[str, Image.Image]) -> None:
    assert hsv_saturation(edited["van_gogh"]) > hsv_saturation(image) + 10.0


def test_van_gogh_strokes_texture_flat_areas() -> None:
    flat = Image.new("RGB", (128, 128), (70, 110, 200))
    assert arr(run("van_gogh", flat)).std(axis=(0, 1)).max() > 8.0


def test_unknown_filter_names_valid_filters() -> None:
    with pytest.raises(ValueError, match="van_gogh") as info:
        ClassicEditor("cubism")
    assert all(style in str(info.value) for style in STYLES)


def test_unknown_param_names_valid_params() -> None:
    with pytest.raises(ValueError, match="snow_depth") as info:
        ClassicEditor("winter", {"snow_depth": 3})
    assert all(name in str(info.value) for name in DEFAULT_PARAMS["winter"])


@pytest.mark.parametrize("style", STYLES)
def test_params_fill_defaults(style: str) -> None:
    assert ClassicEditor(style).params() == {"filter": style, **DEFAULT_PARAMS[style]}


def test_params_override_and_coerce() -> None:
    params = ClassicEditor("van_gogh", {"swirl": 1, "levels": 4.0}).params()
    assert params["swirl"] == 1.0 and isinstance(params["swirl"], float)
    assert params["levels"] == 4 and isinstance(params["levels"], int)


@pytest.mark.parametrize("bad, message", [
    ({"levels": "4"}, "must be a number"), ({"swirl": True}, "must be a number"),
    ({"swirl": float("nan")}, "between 0 and 1"), ({"swirl_count": 10**12}, "between 0 and 100"),
    ({"levels": 1}, "between 2 and 64"), ({"levels": 4.5}, "whole number")])
def test_params_checked(bad: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClassicEditor("van_gogh", bad)


def test_params_change_output(image: Image.Image, edited: dict[str, Image.Image]) -> None:
    out = ClassicEditor("winter", {"snowflakes": 0.0}).edit([image], [""], [0])[0]
    assert not np.array_equal(arr(out), arr(edited["winter"]))


@pytest.mark.parametrize("style", STYLES)
def test_batch_equals_single_calls(style: str) -> None:
    images = [scene(), scene(97, 61), scene(64, 64).rotate(90)]
    seeds = [3, 7, 3]
    editor = ClassicEditor(style)
    batch = editor.edit(images, ["a", "b", "c"], seeds)
    singles = [editor.edit([im], ["x"], [seed])[0] for im, seed in zip(images, seeds)]
    assert all(np.array_equal(arr(b), arr(s)) for b, s in zip(batch, singles))


def test_mismatched_lengths_rejected(image: Image.Image) -> None:
    with pytest.raises(ValueError):
        ClassicEditor("sketch").edit([image, image], ["a"], [0, 1])


def test_filters_usable_directly_with_partial_params(image: Image.Image) -> None:
    out = FILTERS["winter"](image, np.random.default_rng(0), {"haze": 0.0})
    assert out.size == image.size


def test_editor_identity() -> None:
    editor = ClassicEditor("sketch")
    assert (editor.name, editor.model_id) == ("classic", "styleprefs/classic")
