"""The CLIP quality gate: InstructPix2Pix's directional, image and image-text similarities, on tiny CLIP models."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from transformers import CLIPModel

from styleprefs import tiny
from styleprefs.editors.classic import ClassicEditor
from styleprefs.editors.loading import clear_cache
from styleprefs.errors import StyleprefsError
from styleprefs.quality import ClipGate, GateScores, Thresholds, passes

CAPTION = "a red house in a green field"
STYLED = "a red house in a green field, in winter, covered in snow"


@pytest.fixture(scope="module", autouse=True)
def fresh_pipelines():
    """Editors load once per process; drop them when this module is done."""
    yield
    clear_cache()


@pytest.fixture(scope="module")
def clip_path(cache: Path) -> Path:
    return tiny.ensure_tiny("tiny-clip", cache)


def scene(size: int = 96) -> Image.Image:
    img = Image.new("RGB", (size, size), (110, 170, 235))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, size * 0.6, size, size], fill=(60, 150, 60))
    draw.rectangle([size * 0.3, size * 0.4, size * 0.65, size * 0.8], fill=(200, 80, 60))
    draw.polygon([(size * 0.25, size * 0.4), (size * 0.47, size * 0.2), (size * 0.7, size * 0.4)], fill=(120, 50, 40))
    return img


@pytest.fixture(scope="module")
def original() -> Image.Image:
    return scene()


@pytest.fixture(scope="module")
def winter(original: Image.Image) -> Image.Image:
    return ClassicEditor("winter").edit([original], [CAPTION], [0])[0]


@pytest.fixture(scope="module")
def aligned_clip(clip_path: Path, tmp_path_factory: pytest.TempPathFactory, original, winter) -> Path:
    """The tiny CLIP with its text projection fitted so that the caption -> styled text direction matches
    the original -> winter image direction: a CLIP that "understands" this one edit. Image features are
    untouched (random tiny CLIP), so image similarity is the random model's."""
    out = tmp_path_factory.mktemp("aligned-clip")
    for item in clip_path.iterdir():
        (shutil.copytree if item.is_dir() else shutil.copy)(item, out / item.name)
    gate = ClipGate(str(clip_path), device="cpu")
    img_delta = gate.image_features([winter]) - gate.image_features([original])
    model = CLIPModel.from_pretrained(clip_path)
    tokens = gate.tokenizer([CAPTION, STYLED], padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = model.text_model(**tokens).pooler_output
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.text_projection.parameters(), lr=0.05)
    for _ in range(60):
        feats = F.normalize(model.text_projection(pooled), dim=-1)
        loss = -F.cosine_similarity(img_delta, (feats[1] - feats[0])[None]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(out, safe_serialization=True)
    return out


def test_unchanged_edit_is_rejected_and_real_edit_kept(aligned_clip: Path, original, winter) -> None:
    gate = ClipGate(str(aligned_clip), device="cpu", dtype="fp32", thresholds=Thresholds(text=-1.0))
    same, real = gate.score([original, original], [original.copy(), winter], [CAPTION, CAPTION], [STYLED, STYLED])
    assert same.direction == 0.0 and same.image == pytest.approx(1.0, abs=1e-5)
    assert not gate.passes(same)
    assert real.direction >= 0.2 and 0.7 <= real.image < 1.0
    assert gate.passes(real)


def test_edit_in_the_wrong_direction_is_rejected(aligned_clip: Path, original, winter) -> None:
    """Swapping the texts reverses the text direction: the same edit now goes against it."""
    gate = ClipGate(str(aligned_clip), device="cpu")
    [forward] = gate.score([original], [winter], [CAPTION], [STYLED])
    [backward] = gate.score([original], [winter], [STYLED], [CAPTION])
    assert backward.direction == pytest.approx(-forward.direction, abs=1e-5)
    assert backward.image == pytest.approx(forward.image, abs=1e-6)
    assert not passes(backward, Thresholds(text=-1.0))


def test_styled_text_equal_to_caption_gives_no_direction(clip_path: Path, original, winter) -> None:
    gate = ClipGate(str(clip_path), device="cpu")
    [scores] = gate.score([original], [winter], [CAPTION], [CAPTION])
    assert scores.direction == 0.0


def test_scores_match_a_direct_computation(clip_path: Path, original, winter) -> None:
    """The formulas on features computed here by hand: 224-style bicubic resize (no crop), CLIP
    mean/std, projected and L2-normalised features."""
    gate = ClipGate(str(clip_path), device="cpu")
    model = CLIPModel.from_pretrained(clip_path).eval()
    size = model.config.vision_config.image_size
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)

    def image_features(img: Image.Image) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(img, np.float32) / 255.0).permute(2, 0, 1)[None]
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        with torch.no_grad():
            return F.normalize(model.get_image_features(pixel_values=(x - mean) / std).pooler_output, dim=-1)[0]

    def text_features(text: str) -> torch.Tensor:
        tokens = gate.tokenizer([text], return_tensors="pt")
        with torch.no_grad():
            return F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)[0]

    i0, i1, t0, t1 = image_features(original), image_features(winter), text_features(CAPTION), text_features(STYLED)
    expected_direction = float(F.cosine_similarity(i1 - i0, t1 - t0, dim=0))
    expected_image = float(i0 @ i1)
    [scores] = gate.score([original], [winter], [CAPTION], [STYLED])
    assert scores.direction == pytest.approx(expected_direction, abs=1e-5)
    assert scores.image == pytest.approx(expected_image, abs=1e-5)
    assert scores.text_edit == pytest.approx(float(i1 @ t1), abs=1e-5)
    assert scores.text_original == pytest.approx(float(i0 @ t0), abs=1e-5)


def test_gate_scores_equal_a_float64_recomputation(clip_path: Path, original, winter) -> None:
    """The gate computes in fp32 by default; every score agrees with the same formulas in float64."""
    gate = ClipGate(str(clip_path), device="cpu")
    assert gate.dtype == torch.float32
    model = CLIPModel.from_pretrained(clip_path).double().eval()
    size = model.config.vision_config.image_size
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711], dtype=torch.float64).view(1, 3, 1, 1)

    def image_features(img: Image.Image) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(img, np.float64) / 255.0).permute(2, 0, 1)[None]
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        with torch.no_grad():
            pooled = model.vision_model(pixel_values=(x - mean) / std).pooler_output
            return F.normalize(model.visual_projection(pooled), dim=-1)[0]

    def text_features(text: str) -> torch.Tensor:
        tokens = gate.tokenizer([text], return_tensors="pt")
        with torch.no_grad():
            return F.normalize(model.text_projection(model.text_model(**tokens).pooler_output), dim=-1)[0]

    sketch = ClassicEditor("sketch").edit([original], [CAPTION], [1])[0]
    for edit, styled in ((winter, STYLED), (sketch, "a pencil sketch of a red house")):
        i0, i1, t0, t1 = image_features(original), image_features(edit), text_features(CAPTION), text_features(styled)
        expected = GateScores(float(F.cosine_similarity(i1 - i0, t1 - t0, dim=0)), float(i0 @ i1),
                              float(i1 @ t1), float(i0 @ t0))
        [scores] = gate.score([original], [edit], [CAPTION], [styled])
        assert np.allclose(scores, expected, rtol=0, atol=1e-5), (scores, expected)


def test_batch_scores_equal_single_scores(clip_path: Path, original, winter) -> None:
    gate = ClipGate(str(clip_path), device="cpu")
    sketch = ClassicEditor("sketch").edit([original], [CAPTION], [1])[0]
    wide = scene(128).resize((128, 80))
    originals, edits = [original, original, wide], [winter, sketch, wide.rotate(5)]
    captions, styled = [CAPTION, "x", "a wide house"], [STYLED, "a pencil sketch of x", "a wide house in snow"]
    batch = gate.score(originals, edits, captions, styled)
    singles = [gate.score([o], [e], [c], [s])[0] for o, e, c, s in zip(originals, edits, captions, styled)]
    assert np.allclose(batch, singles, atol=1e-5)
    assert gate.score([], [], [], []) == []
    with pytest.raises(ValueError, match="2 edits"):
        gate.score([original], [winter, winter], [CAPTION], [STYLED])


def test_passes_thresholds() -> None:
    assert passes(GateScores(0.2, 0.7, 0.2, 0.2)) and passes(GateScores(0.5, 0.95, 0.3, 0.25))
    assert not passes(GateScores(0.19, 0.9, 0.3, 0.3)) and not passes(GateScores(0.3, 0.69, 0.3, 0.3))
    assert not passes(GateScores(0.3, 0.9, 0.19, 0.3)) and not passes(GateScores(0.3, 0.9, 0.3, 0.19))
    assert passes(GateScores(0.1, 0.5, 0.1, 0.1), Thresholds(0.0, 0.0, 0.0))
    assert not passes(GateScores(math.nan, 0.9, 0.3, 0.3)) and not passes(GateScores(0.3, 0.9, 0.3, math.nan))


def test_tiny_name_builds_the_tiny_clip(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiny, "default_cache_dir", lambda: cache)
    gate = ClipGate("tiny", device="cpu")
    assert gate.model_id == "tiny-clip" and gate.size == 32
    assert ClipGate("tiny", device="cpu").model is gate.model  # loaded once per process


def test_bad_clip_model_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(StyleprefsError, match=r"is not a model folder: it holds none of config\.json") as exc:
        ClipGate(str(tmp_path / "empty"), device="cpu")
    assert "\n" not in str(exc.value)
    with pytest.raises(StyleprefsError, match="neither an existing folder nor a Hub id"):
        ClipGate(str(tmp_path / "missing" / "clip"), device="cpu")
    with pytest.raises(StyleprefsError, match="on CPU use --dtype fp32"):
        ClipGate("tiny", device="cpu", dtype="fp16")
