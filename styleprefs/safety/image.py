"""Optional image safety backend: the Stable Diffusion safety checker, used standalone.

``CompVis/stable-diffusion-safety-checker`` (about 1.2 GB) embeds an image with CLIP ViT-L/14 and compares it
with 17 concept embeddings and 3 "special care" embeddings, each with its own threshold stored in the weights.
It covers sexual content only: violence, gore and other harm pass. False positives are common.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker, cosine_distance
from PIL import Image
from transformers import CLIPImageProcessor

from styleprefs.errors import StyleprefsError
from styleprefs.safety.classifier import model_load_error, model_location

DEFAULT_IMAGE_MODEL = "CompVis/stable-diffusion-safety-checker"
PREPROCESSOR_FILE = "preprocessor_config.json"
# What the checker adds to every concept score once a special-care concept fires.
SPECIAL_CARE_ADJUSTMENT = 0.01
_LOAD_ERRORS = (OSError, ValueError, RuntimeError)


class ImageSafetyChecker:
    """Scores images with the SD safety checker. Sexual content only: violence and gore pass.

    The score of an image is the checker's own decision quantity: the largest over the 17 concepts of
    ``cos(image, concept) - concept threshold + adjustment``, where the adjustment is 0.01 when any special-care
    score ``cos(image, special) - special threshold`` is above 0. Like diffusers' ``forward``, each concept and
    special-care score is rounded to 3 decimals, so ``score > 0`` is exactly the checker's NSFW verdict.
    ``model`` is a Hub id or a folder holding the checker and its preprocessor_config.json; ``name`` keeps it.
    """

    BACKEND = "image safety checker"
    DEFAULT_THRESHOLD = 0.0  # the checker's own rule

    def __init__(self, model: str = DEFAULT_IMAGE_MODEL, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 batch_size: int = 16) -> None:
        location = model_location(self.BACKEND, model, DEFAULT_IMAGE_MODEL)
        _check_local_folder(model, location)
        try:
            self.processor = CLIPImageProcessor.from_pretrained(location)
            self.checker = StableDiffusionSafetyChecker.from_pretrained(location, dtype=dtype)
        except _LOAD_ERRORS as exc:
            raise model_load_error(self.BACKEND, model, exc, DEFAULT_IMAGE_MODEL) from None
        self.checker.to(device).eval()
        self.name, self.device, self.dtype, self.batch_size = model, device, dtype, batch_size

    def scores(self, images: Sequence[Image.Image]) -> list[float]:
        """The checker's score of each image, in input order; above 0 means the checker flags it."""
        images = list(images)
        return [score for start in range(0, len(images), self.batch_size)
                for score in self._batch_scores(images[start : start + self.batch_size])]

    def flags(self, images: Sequence[Image.Image], threshold: float = 0.0) -> list[bool]:
        """Whether each image's score is above ``threshold`` (0.0 is the checker's own rule)."""
        return [score > threshold for score in self.scores(images)]

    @torch.inference_mode()
    def _batch_scores(self, images: list[Image.Image]) -> list[float]:
        rgb = [image.convert("RGB") for image in images]
        pixels = self.processor(images=rgb, return_tensors="pt").pixel_values.to(self.device, self.dtype)
        checker = self.checker
        image_embeds = checker.visual_projection(checker.vision_model(pixels)[1])
        return [round(score, 3) for score in checker_scores(checker, image_embeds).tolist()]


def checker_scores(checker: StableDiffusionSafetyChecker, image_embeds: torch.Tensor) -> torch.Tensor:
    """Scores of projected image embeddings, computed as ``StableDiffusionSafetyChecker.forward`` does:
    cosines in the model's dtype, then float32 scores rounded to 3 decimals."""
    special_cos = cosine_distance(image_embeds, checker.special_care_embeds).float()
    concept_cos = cosine_distance(image_embeds, checker.concept_embeds).float()
    special = torch.round(special_cos - checker.special_care_embeds_weights.float(), decimals=3)
    adjustment = (special > 0).any(dim=1, keepdim=True) * SPECIAL_CARE_ADJUSTMENT
    concepts = torch.round(concept_cos - checker.concept_embeds_weights.float() + adjustment, decimals=3)
    return concepts.amax(dim=1).cpu()


def _check_local_folder(model: str, location: str) -> None:
    folder = Path(location)
    if folder.is_dir() and not (folder / PREPROCESSOR_FILE).is_file():
        raise StyleprefsError(f"{ImageSafetyChecker.BACKEND} {model!r}: the folder has no {PREPROCESSOR_FILE} "
                              f"(the CLIP image preprocessing); download the full repository with "
                              f"`hf download {DEFAULT_IMAGE_MODEL} --local-dir DIR` and pass DIR")
