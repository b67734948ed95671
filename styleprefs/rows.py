"""One source row of a build: validate it and decode the image to edit, then make its output row from the edit.

Every result depends only on the row and the build's arguments, so a row gives the same bytes in the main
process or in a build's worker process (``styleprefs.parallel.WorkerPool``), in any batch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from PIL import Image

from styleprefs.editors import Editor
from styleprefs.images import as_jpeg, decode, encode_jpeg
from styleprefs.pairs import RowPlan, make_row, plan_row
from styleprefs.sources.base import DeferredPair, SourcePair, materialize

Prepared = tuple[SourcePair, RowPlan, Image.Image, bytes]  # the pair, its plan, the image to edit and its bytes


def prepare(item: SourcePair | DeferredPair, seed: int) -> Prepared | ValueError:
    """Load a pair, validate it and decode the image to edit, or a ValueError naming why the row cannot be used."""
    pair = materialize(item)
    if not pair.caption.strip():
        return ValueError("empty caption")
    if not (0 <= pair.label_0 <= 1 and 0 <= pair.label_1 <= 1):  # NaN (no value) too
        return ValueError(f"labels are not numbers from 0 to 1 (label_0 {pair.label_0:g}, label_1 {pair.label_1:g})")
    plan = plan_row(pair, seed)
    data = (pair.jpg_0, pair.jpg_1)[plan.edited]
    if not data:
        return ValueError(f"jpg_{plan.edited} is empty")
    try:
        image = decode(data)
    except ValueError as exc:
        return ValueError(f"jpg_{plan.edited} cannot be decoded ({exc})")
    return pair, plan, image, data


@dataclass(frozen=True)
class RowMaker:
    """The dataset row of an edit, with the build's names filled in."""

    source_name: str
    style: str
    editor_name: str
    editor_model: str
    edit_params: dict

    def row(self, prepared: Prepared, edit: Image.Image, seed: int, nsfw: bool | None = None, scores=None) -> dict:
        """``scores``: the gate's ``ClipScores`` or None."""
        pair, plan, image, data = prepared
        return make_row(pair, replace(plan, edit_seed=seed), source_name=self.source_name,
                        original_jpeg=as_jpeg(data, image), edited_jpeg=encode_jpeg(edit), style=self.style,
                        editor_name=self.editor_name, editor_model=self.editor_model, edit_params=self.edit_params,
                        clip_direction=scores and scores.direction, clip_image=scores and scores.image,
                        clip_text=scores and (scores.text_edit, scores.text_original), editor_nsfw=nsfw)


@dataclass(frozen=True)
class RowEditor:
    """A whole row in one call, for a CPU editor without the gate: its dataset row, or why it cannot be used."""

    editor: Editor
    maker: RowMaker
    seed: int

    def __call__(self, item: SourcePair | DeferredPair) -> dict | ValueError:
        prepared = prepare(item, self.seed)
        if isinstance(prepared, ValueError):
            return prepared
        pair, plan, image, _ = prepared
        return self.maker.row(prepared, self.editor.edit([image], [pair.caption], [plan.edit_seed])[0], plan.edit_seed)
