"""Model safety backends on tiny offline models: the SD safety checker's own verdicts, text classifier labels,
and one-line errors for models that cannot be loaded."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from PIL import Image

from styleprefs import tiny
from styleprefs.errors import StyleprefsError
from styleprefs.safety.classifier import TextSafetyClassifier, unsafe_label_ids
from styleprefs.safety.image import ImageSafetyChecker

TEXTS = ["a photo of a cat", "nsfw nude portrait", "", "the city in the forest with a dog! " * 60]




@pytest.fixture(scope="module")
def checker_path(cache: Path) -> Path:
    return tiny.ensure_tiny("tiny-safety-checker", cache)


@pytest.fixture(scope="module")
def classifier_path(cache: Path) -> Path:
    return tiny.ensure_tiny("tiny-text-classifier", cache)


def noise_images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(64, 64), (48, 80), (100, 60), (32, 32)]
    return [Image.fromarray(rng.integers(0, 256, (*sizes[i % 4], 3), dtype=np.uint8)) for i in range(n)]


def solid(value: int, size: int = 64) -> Image.Image:
    return Image.new("RGB", (size, size), (value,) * 3)


def blocks(seed: int = 0) -> Image.Image:
    """4x4 blocks of random colours, 64 px."""
    cells = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(np.kron(cells, np.ones((16, 16, 1), np.uint8)))


def jpeg(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return Image.open(io.BytesIO(buffer.getvalue()))


def forward_flags(checker: ImageSafetyChecker, images: list[Image.Image]) -> list[bool]:
    """The verdicts of diffusers' own StableDiffusionSafetyChecker.forward."""
    pixels = checker.processor(images=[im.convert("RGB") for im in images], return_tensors="pt").pixel_values
    _, has_nsfw = checker.checker(pixels, torch.zeros(len(images), 1))
    return [bool(flag) for flag in has_nsfw]


def embed(checker: ImageSafetyChecker, image: Image.Image) -> torch.Tensor:
    pixels = checker.processor(images=[image], return_tensors="pt").pixel_values
    with torch.no_grad():
        return checker.checker.visual_projection(checker.checker.vision_model(pixels)[1])[0]


def copy_without(src: Path, dst: Path, name: str) -> Path:
    shutil.copytree(src, dst)
    (dst / name).unlink()
    return dst


def edit_config(src: Path, dst: Path, **changes: object) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**config, **changes}))
    return dst


def test_image_scores_reproduce_the_checkers_own_verdicts(checker_path: Path) -> None:
    checker = ImageSafetyChecker(str(checker_path))
    images = noise_images(4) + [solid(255), solid(0), solid(128), blocks()]
    model = checker.checker
    with torch.no_grad():
        model.concept_embeds_weights[0] = 1.0  # the tiny checker's brightness concept: off
        # Concept 1 fires on the black image only thanks to the special-care adjustment (-0.005 + 0.01).
        model.special_care_embeds[0] = model.concept_embeds[1] = embed(checker, images[5])
        model.special_care_embeds_weights[0], model.concept_embeds_weights[1] = 0.995, 1.005
        # Concept 2 fires on image 3; concept 3 scores image 7 at +0.0003, which rounds to 0: not flagged.
        model.concept_embeds[2], model.concept_embeds_weights[2] = embed(checker, images[3]), 0.99
        model.concept_embeds[3], model.concept_embeds_weights[3] = embed(checker, images[7]), 0.9997
    scores = checker.scores(images)
    assert [score > 0 for score in scores] == checker.flags(images) == forward_flags(checker, images)
    assert checker.flags(images) == [False, False, False, True, False, True, False, False]
    assert scores[5] == pytest.approx(0.005, abs=1e-6) and scores[3] == pytest.approx(0.01, abs=1e-6)
    assert scores[7] == 0.0


def test_tiny_checker_flags_white_and_passes_black(checker_path: Path) -> None:
    checker = ImageSafetyChecker(str(checker_path))
    images = [solid(255), jpeg(solid(255, 512)), solid(0), jpeg(solid(0, 200)),
              solid(255).convert("RGBA"), solid(0).convert("L"), solid(255).convert("P")]
    assert checker.flags(images) == [True, True, False, False, True, False, True] == forward_flags(checker, images)
    assert checker.flags(images[:1], threshold=1.0) == [False] and checker.flags(images[2:3], threshold=-1.0) == [True]


def test_image_scores_do_not_depend_on_batch_size(checker_path: Path) -> None:
    images = noise_images(7, seed=1) + [solid(255), solid(0)]
    one = ImageSafetyChecker(str(checker_path), batch_size=1).scores(images)
    many = ImageSafetyChecker(str(checker_path), batch_size=4).scores(images)
    assert many == pytest.approx(one, abs=1e-3) and len(one) == len(images)
    assert ImageSafetyChecker(str(checker_path)).scores([]) == []


def test_checker_folder_without_preprocessor_is_an_error(checker_path: Path, tmp_path: Path) -> None:
    folder = copy_without(checker_path, tmp_path / "checker", "preprocessor_config.json")
    with pytest.raises(StyleprefsError, match="no preprocessor_config.json.*hf download CompVis/"):
        ImageSafetyChecker(str(folder))


@pytest.mark.parametrize("backend", [ImageSafetyChecker, TextSafetyClassifier])
def test_missing_model_is_a_one_line_error(backend: type, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    missing = str(tmp_path / "no-such-model")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "preprocessor_config.json").write_text("{}")
    cases = {missing: r"no such folder \(nor a Hub id\); .*`hf download ", "styleprefs-tests/no-such-model":
             "not available locally .*`hf download styleprefs-tests/no-such-model --local-dir DIR`",
             str(broken): "cannot load this folder"}
    for model, message in cases.items():
        with pytest.raises(StyleprefsError, match=message) as error:
            backend(model)
        assert "\n" not in str(error.value) and f"{backend.BACKEND} {model!r}" in str(error.value)


def test_text_classifier_scores_the_nsfw_probability(classifier_path: Path) -> None:
    classifier = TextSafetyClassifier(str(classifier_path), batch_size=3)
    assert classifier.unsafe_labels == ("nsfw",) and classifier.max_length == 64
    scores = classifier.scores(TEXTS)
    inputs = classifier.tokenizer(TEXTS, truncation=True, max_length=64, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = classifier.model(**inputs).logits.softmax(-1)[:, 1].tolist()
    assert scores == pytest.approx(expected, abs=1e-5) and all(0.0 <= s <= 1.0 for s in scores)
    assert TextSafetyClassifier(str(classifier_path), batch_size=64).scores(TEXTS) == pytest.approx(scores, abs=1e-5)
    assert classifier.flags(TEXTS) == [False, True, False, False]  # the tiny model knows "nsfw" and "nude"
    assert scores[1] > 0.9 and max(scores[0], scores[2], scores[3]) < 0.1
    assert classifier.scores([]) == []


def test_text_classifier_with_explicit_unsafe_labels(classifier_path: Path) -> None:
    default = TextSafetyClassifier(str(classifier_path)).scores(TEXTS)
    inverted = TextSafetyClassifier(str(classifier_path), unsafe_labels=["SAFE"])
    assert inverted.unsafe_labels == ("safe",)
    assert inverted.scores(TEXTS) == pytest.approx([1.0 - s for s in default], abs=1e-5)


def test_multi_label_classifier_uses_sigmoids(classifier_path: Path, tmp_path: Path) -> None:
    folder = edit_config(classifier_path, tmp_path / "multi", problem_type="multi_label_classification")
    classifier = TextSafetyClassifier(str(folder))
    inputs = classifier.tokenizer(TEXTS, truncation=True, max_length=64, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = classifier.model(**inputs).logits.sigmoid()[:, 1].tolist()
    assert classifier.scores(TEXTS) == pytest.approx(expected, abs=1e-5)


def test_classifier_without_an_unsafe_label_is_an_error(classifier_path: Path, tmp_path: Path) -> None:
    folder = edit_config(classifier_path, tmp_path / "generic", id2label={"0": "LABEL_0", "1": "LABEL_1"},
                         label2id={"LABEL_0": 0, "LABEL_1": 1})
    with pytest.raises(StyleprefsError, match=r"no unsafe-looking label \(its labels: 'LABEL_0', 'LABEL_1'\).*"
                                              r"--text-model-label"):
        TextSafetyClassifier(str(folder))
    assert TextSafetyClassifier(str(folder), unsafe_labels=["label_1"]).unsafe_labels == ("LABEL_1",)
    with pytest.raises(StyleprefsError, match="has no label 'nsfw'.*--text-model-label"):
        TextSafetyClassifier(str(folder), unsafe_labels=["nsfw"])


@pytest.mark.parametrize(("id2label", "unsafe"), [
    ({0: "safe", 1: "nsfw"}, [1]),                                          # eliasalbouzidi/distilbert-nsfw-...
    ({0: "NSFW", 1: "SFW"}, [0]),                                           # michellejieli/NSFW_text_classifier
    ({0: "non-toxic", 1: "toxic"}, [1]),
    ({0: "not_nsfw", 1: "Sexual", 2: "neutral", 3: "identity_hate"}, [1, 3]),
])
def test_default_unsafe_labels(id2label: dict[int, str], unsafe: list[int]) -> None:
    assert unsafe_label_ids(id2label, None, "m") == unsafe


def test_every_label_unsafe_is_an_error_for_single_label_models() -> None:
    with pytest.raises(StyleprefsError, match="every label counts as unsafe"):
        unsafe_label_ids({0: "toxic", 1: "hate"}, None, "m")
    assert unsafe_label_ids({0: "toxic", 1: "hate"}, None, "m", single_label=False) == [0, 1]
