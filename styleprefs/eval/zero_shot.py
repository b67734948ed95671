"""Zero-shot reading of images with a CLIP: which caption variant fits, and how likely the style is.

A classifier is never trained: each image is compared with texts that differ only in what is asked
(the house colour, the time of day, the caption as it is or in the style's CLIP text), and the
closest text wins. The style probability is CLIP's softmax over the two texts at its own logit scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from styleprefs.style import StyleSpec

if TYPE_CHECKING:  # the scorers (styleprefs.eval.rewards) call this module, not the other way round
    from styleprefs.eval.rewards import HFClip


def closest_text(clip: HFClip, images: Sequence[Image.Image], candidates: Sequence[Sequence[str]]) -> np.ndarray:
    """For each image, the index of its closest text among its own ``candidates``."""
    if len(images) != len(candidates):
        raise ValueError(f"{len(images)} images but {len(candidates)} candidate lists")
    image_emb = clip.image_embeddings(list(images))
    sizes = [len(c) for c in candidates]
    text_emb = clip.text_embeddings([t for c in candidates for t in c]).split(sizes)
    return np.array([int(torch.argmax(t @ i)) for i, t in zip(image_emb, text_emb)])


def style_probability(clip: HFClip, images: Sequence[Image.Image], captions: Sequence[str],
                      style: StyleSpec, batch_size: int = 16) -> np.ndarray:
    """P(image shows ``style.styled_caption(caption)`` rather than ``caption``), one float64 per image."""
    image_emb = clip.image_embeddings(list(images), batch_size)
    plain = clip.text_embeddings(list(captions), batch_size)
    styled = clip.text_embeddings([style.styled_caption(c) for c in captions], batch_size)
    logits = clip.logit_scale * torch.stack([(image_emb * plain).sum(-1), (image_emb * styled).sum(-1)], dim=-1)
    return logits.double().softmax(-1)[:, 1].numpy()
