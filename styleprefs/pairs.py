"""One source pair -> one style preference row: which image is edited, which slot it takes."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import numpy as np

from styleprefs.sources.base import SourcePair, key_to_int

_UID_NAMESPACE = uuid.UUID("6f1c3d52-5e0b-4a53-9b1e-7d2a1c6b8e40")


@dataclass(frozen=True)
class RowPlan:
    edited: int  # which source image (0 or 1) is edited; its original is the rejected image
    slot: int  # which output slot (jpg_0 or jpg_1) holds the edit
    edit_seed: int  # seed of the editor's generator for this row


def plan_row(pair: SourcePair, seed: int) -> RowPlan:
    """All of a row's randomness, from ``(seed, key)`` alone."""
    rng = np.random.default_rng([seed, key_to_int(pair.key)])
    edited, slot = (int(v) for v in rng.integers(0, 2, size=2))
    return RowPlan(edited=edited, slot=slot, edit_seed=int(rng.integers(0, 2**63 - 1)))


def make_row(
    pair: SourcePair,
    plan: RowPlan,
    *,
    source_name: str,
    original_jpeg: bytes,
    edited_jpeg: bytes,
    style: str,
    editor_name: str,
    editor_model: str,
    edit_params: dict,
    clip_direction: float | None = None,
    clip_image: float | None = None,
    clip_text: tuple[float, float] | None = None,
    editor_nsfw: bool | None = None,
) -> dict:
    """The output row in the dataset schema; the edit is preferred (label 1.0) in slot ``plan.slot``."""
    source_id = f"{source_name}:{pair.key}"
    params_json = json.dumps(edit_params, sort_keys=True)
    original_uid = (pair.image_0_uid, pair.image_1_uid)[plan.edited] or _uid(f"{source_id}:jpg_{plan.edited}")
    edited_uid = _uid(f"{source_id}:{style}:{editor_name}:{params_json}:{plan.edit_seed}")
    original_model = (pair.model_0, pair.model_1)[plan.edited]
    s, o = plan.slot, 1 - plan.slot
    return {
        "caption": pair.caption,
        f"jpg_{s}": edited_jpeg,
        f"jpg_{o}": original_jpeg,
        f"label_{s}": 1.0,
        f"label_{o}": 0.0,
        f"image_{s}_uid": edited_uid,
        f"image_{o}_uid": original_uid,
        f"image_{s}_url": None,
        f"image_{o}_url": (pair.image_0_url, pair.image_1_url)[plan.edited],
        "best_image_uid": edited_uid,
        f"model_{s}": editor_model,
        f"model_{o}": original_model,
        "ranking_id": pair.ranking_id,
        "user_id": pair.user_id,
        "num_example_per_prompt": pair.num_example_per_prompt,
        "has_label": True,
        "are_different": True,
        "created_at": pair.created_at,
        "style": style,
        "editor": editor_name,
        "edit_params": params_json,
        "seed": plan.edit_seed,
        "source": source_id,
        "source_preferred": pair.preferred,
        "source_edited": f"jpg_{plan.edited}",
        "clip_direction": clip_direction,
        "clip_image": clip_image,
        "clip_text_edit": clip_text[0] if clip_text else None,
        "clip_text_original": clip_text[1] if clip_text else None,
        "editor_nsfw": editor_nsfw,
    }


def _uid(name: str) -> str:
    return str(uuid.uuid5(_UID_NAMESPACE, name))
