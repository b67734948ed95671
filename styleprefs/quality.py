"""The CLIP quality gate: InstructPix2Pix's whole filter on each (original, edit) pair.

As in instruct-pix2pix (metrics/clip_similarity.py, dataset_creation/generate_img_dataset.py): OpenAI
CLIP ViT-L/14 (``openai/clip-vit-large-patch14``) in fp32, images resized to the model's input size
(224 px) with bicubic interpolation (no crop), normalised with CLIP's mean and std, features L2-normalised;

- directional similarity ``cos(img_edit - img_orig, txt_styled - txt_orig)`` (did the image move the
  way the text says?), kept at >= 0.2;
- image similarity ``cos(img_orig, img_edit)`` (is it still the same picture?), kept at >= 0.7;
- image-text similarities ``cos(img_edit, txt_styled)`` and ``cos(img_orig, txt_orig)`` (does each image
  match its caption?), each kept at >= 0.2.

An unchanged edit (image embedding moved by less than ``MIN_CHANGE``) gets direction 0 and is
rejected; so does an edit scored against a styled text equal to its caption. One
deliberate difference: the resize is antialiased (instruct-pix2pix downscaled 256-512 px images without
antialiasing; Pick-a-Pic images are up to 1024 px, where plain bicubic aliases).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from styleprefs.editors.loading import (
    load_error,
    load_once,
    quiet_loading,
    resolve_device,
    resolve_dtype,
)
from styleprefs.resolve import resolve_model
DEFAULT_CLIP = "openai/clip-vit-large-patch14"
MIN_DIRECTION = 0.2
MIN_IMAGE = 0.7
MIN_TEXT = 0.2
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
CHUNK = 32  # images per forward pass
# Unit-norm features that moved less than this are "unchanged": their difference is float noise from
# batching (an image's features vary ~1e-7 with batch composition), whose direction is arbitrary.
MIN_CHANGE = 1e-3


class GateScores(NamedTuple):
    """One edit's CLIP similarities (the dataset's ``clip_*`` columns)."""

    direction: float  # cos(img_edit - img_orig, txt_styled - txt_orig)
    image: float  # cos(img_orig, img_edit)
    text_edit: float  # cos(img_edit, txt_styled)
    text_original: float  # cos(img_orig, txt_orig)

    def describe(self) -> str:
        return (f"clip direction {self.direction:.3f}, clip image {self.image:.3f}, "
                f"clip text edit {self.text_edit:.3f}, clip text original {self.text_original:.3f}")


class Thresholds(NamedTuple):
    direction: float = MIN_DIRECTION
    image: float = MIN_IMAGE
    text: float = MIN_TEXT

    def describe(self) -> str:
        return f"min direction {self.direction}, image {self.image}, text {self.text}"


def passes(scores: GateScores, thresholds: Thresholds = Thresholds()) -> bool:
    """Keep an edit when every similarity reaches its threshold (NaN never passes)."""
    return bool(scores.direction >= thresholds.direction and scores.image >= thresholds.image
                and scores.text_edit >= thresholds.text and scores.text_original >= thresholds.text)


def _load_clip(location: str, model, device: torch.device, dtype: torch.dtype):
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    with quiet_loading():
        try:
            clip = CLIPModel.from_pretrained(location, dtype=dtype)
            tokenizer = CLIPTokenizer.from_pretrained(location)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise load_error("CLIP", model, exc) from None
        try:
            processor = CLIPImageProcessor.from_pretrained(location)
            mean, std = tuple(processor.image_mean), tuple(processor.image_std)
        except (OSError, ValueError):
            mean, std = OPENAI_MEAN, OPENAI_STD
    clip.eval().to(device)
    return clip, tokenizer, (mean, std)


class ClipGate:
    """Scores edits with a transformers ``CLIPModel`` (Hub id, local folder, or ``tiny``), in fp32 unless ``dtype``
    says otherwise (the reference's precision, whatever the editor's)."""

    def __init__(self, model_id_or_path: str = DEFAULT_CLIP, device: str | None = None, dtype: str | None = None,
                 thresholds: Thresholds = Thresholds()):
        self.thresholds = thresholds
        resolved = resolve_model(model_id_or_path or DEFAULT_CLIP, what="CLIP", tiny="tiny-clip",
                                 files=("config.json",))
        self.model_id = resolved.name
        self.device = resolve_device(device)
        self.dtype = resolve_dtype("fp32" if dtype in (None, "", "auto") else dtype, self.device)
        self.model, self.tokenizer, (mean, std) = load_once(
            ("clip", resolved.location, str(self.device), self.dtype),
            lambda: _load_clip(resolved.location, resolved, self.device, self.dtype))
        self.size = int(self.model.config.vision_config.image_size)
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def describe(self) -> dict:
        return {"model": self.model_id, "image_size": self.size, "resize": "bicubic, antialiased, no crop"}

    def score(self, originals: Sequence[Image.Image], edits: Sequence[Image.Image], captions: Sequence[str],
              styled: Sequence[str]) -> list[GateScores]:
        """The similarities of each edit; ``captions`` describe the originals, ``styled`` the edits."""
        n = len(originals)
        if not n == len(edits) == len(captions) == len(styled):
            raise ValueError(f"got {n} originals, {len(edits)} edits, {len(captions)} captions, {len(styled)} styled")
        if n == 0:
            return []
        img0, img1 = self.image_features(originals), self.image_features(edits)
        txt0, txt1 = self.text_features(captions), self.text_features(styled)
        img_delta, txt_delta = img1 - img0, txt1 - txt0
        direction = F.cosine_similarity(img_delta, txt_delta, dim=-1)
        moved = (img_delta.norm(dim=-1) >= MIN_CHANGE) & (txt_delta.norm(dim=-1) >= MIN_CHANGE)
        direction = torch.where(moved, direction, torch.zeros_like(direction))
        image = F.cosine_similarity(img0, img1, dim=-1)
        text_edit, text_original = F.cosine_similarity(img1, txt1, dim=-1), F.cosine_similarity(img0, txt0, dim=-1)
        return [GateScores(*map(float, values)) for values in
                zip(direction.tolist(), image.tolist(), text_edit.tolist(), text_original.tolist())]

    def passes(self, scores: GateScores) -> bool:
        return passes(scores, self.thresholds)

    def _pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        arrays = [torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
                  for img in images]
        resized = [F.interpolate(a[None], size=(self.size, self.size), mode="bicubic", align_corners=False,
                                 antialias=True) for a in arrays]
        return (torch.cat(resized) - self._mean) / self._std

    @torch.inference_mode()
    def image_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """L2-normalised projected image embeddings (float32, on CPU)."""
        feats = []
        for start in range(0, len(images), CHUNK):
            pixels = self._pixels(images[start:start + CHUNK]).to(self.device, self.dtype)
            pooled = self.model.vision_model(pixel_values=pixels).pooler_output
            feats.append(self.model.visual_projection(pooled).float().cpu())
        return F.normalize(torch.cat(feats), dim=-1)

    @torch.inference_mode()
    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised projected text embeddings (float32, on CPU); texts truncated to 77 tokens."""
        feats = []
        for start in range(0, len(texts), CHUNK):
            tokens = self.tokenizer(list(texts[start:start + CHUNK]), padding=True, truncation=True,
                                    max_length=self.tokenizer.model_max_length, return_tensors="pt").to(self.device)
            pooled = self.model.text_model(input_ids=tokens.input_ids,
                                           attention_mask=tokens.attention_mask).pooler_output
            feats.append(self.model.text_projection(pooled).float().cpu())
        return F.normalize(torch.cat(feats), dim=-1)


__all__ = ["ClipGate", "DEFAULT_CLIP", "GateScores", "MIN_DIRECTION", "MIN_IMAGE", "MIN_TEXT", "Thresholds", "passes"]
