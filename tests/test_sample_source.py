"""The bundled sample source: deterministic, distinct captions, images that match them."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from collections import Counter
from datetime import datetime
from itertools import islice

import numpy as np
import pytest
from PIL import Image

from styleprefs.sources.base import SourcePair
from styleprefs.sources.sample import (
    MODEL_NAME,
    SCENE_COUNT,
    SampleSource,
    labels_for,
    make_pair,
    render_scene,
    scene_for,
)


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.fixture(scope="module")
def first_pairs() -> list[SourcePair]:
    return list(SampleSource(size=64, num_scenes=6))


def test_bytes_are_identical_on_every_call():
    assert make_pair(7, 96) == make_pair(7, 96)
    assert render_scene(11, 1, 96).tobytes() == render_scene(11, 1, 96).tobytes()


def test_the_two_variants_differ(first_pairs):
    for pair in first_pairs:
        a = np.asarray(decode(pair.jpg_0), dtype=np.int16)
        b = np.asarray(decode(pair.jpg_1), dtype=np.int16)
        assert np.abs(a - b).mean() > 5


def test_captions_are_distinct_over_the_whole_scene_space():
    captions = [scene_for(i).caption for i in range(SCENE_COUNT)]
    assert len(set(captions)) == SCENE_COUNT > 2000
    assert scene_for(SCENE_COUNT + 3) == scene_for(3)


def test_neighbouring_indices_give_unrelated_scenes():
    scenes = [scene_for(i) for i in range(200)]
    assert sum(a.sky == b.sky for a, b in zip(scenes, scenes[1:])) < 100
    assert len({s.animal for s in scenes}) == 7 and len({s.ground.name for s in scenes}) == 5


def test_jpegs_decode_to_rgb_of_the_requested_size(first_pairs):
    image = decode(make_pair(0).jpg_0)
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (512, 512))
    assert {decode(pair.jpg_1).size for pair in first_pairs} == {(64, 64)}
    assert render_scene(3, 0, 200).size == (200, 200)


def test_labels_follow_pick_a_pic_proportions():
    labels = Counter(labels_for(i) for i in range(2000))
    assert set(labels) == {(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)}
    assert 0.4 < labels[(1.0, 0.0)] / 2000 < 0.5
    assert 0.4 < labels[(0.0, 1.0)] / 2000 < 0.5
    assert 0.06 < labels[(0.5, 0.5)] / 2000 < 0.14
    assert (make_pair(9, 32).label_0, make_pair(9, 32).label_1) == labels_for(9)


def test_pair_metadata(first_pairs):
    pair = first_pairs[5]
    assert pair.key == "sample-000005"
    assert pair.caption == scene_for(5).caption
    assert (pair.model_0, pair.model_1) == (MODEL_NAME, MODEL_NAME)
    assert (pair.ranking_id, pair.user_id) == (5, 5)
    assert pair.created_at == datetime(2023, 5, 1, 0, 5)
    assert len({p.image_0_uid for p in first_pairs} | {p.image_1_uid for p in first_pairs}) == 12
    assert make_pair(100, 32).user_id == 100 % 97


def test_caption_names_what_the_scene_draws():
    for index in range(40):
        scene, caption = scene_for(index), scene_for(index).caption
        if scene.animal:
            assert f"a {scene.animal}" in caption
        if scene.house:
            assert f"{scene.house} house" in caption
        if scene.trees:
            assert f"{scene.trees[0]} tree" in caption
        assert scene.ground.phrase in caption or scene.ground.empty in caption
        assert caption.endswith(scene.sky.phrase)
        assert ("mountains" in caption) == scene.mountains


def test_night_is_dark_and_day_is_bright():
    night = next(i for i in range(200) if scene_for(i).sky.name == "night")
    day = next(i for i in range(200) if scene_for(i).sky.name == "day")
    top = slice(0, 20)
    assert np.asarray(render_scene(night, 0, 128))[top].mean() < 60
    assert np.asarray(render_scene(day, 0, 128))[top].mean() > 100


def test_source_is_lazy_and_describes_itself():
    source = SampleSource(size=48, num_scenes=1_000_000)
    assert [pair.key for pair in islice(source, 2)] == ["sample-000000", "sample-000001"]
    assert source.describe() == {"source": "sample", "size": 48, "num_scenes": 1_000_000}
    with pytest.raises(ValueError):
        SampleSource(size=8)


def test_bytes_are_identical_in_another_process():
    code = "import hashlib; from styleprefs.sources.sample import make_pair; print(hashlib.sha256(make_pair(3, 64).jpg_0).hexdigest())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == hashlib.sha256(make_pair(3, 64).jpg_0).hexdigest()
