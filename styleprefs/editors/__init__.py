"""Editors turn an image into its styled version: ``load_editor(name, style, **options)``.

Every editor has ``edit(images, captions, seeds) -> list[Image]``. Use ``edit_with_flags(editor, ...)``
to also get each edit's safety-checker flag (``EditResult.nsfw``: True/False from a model's bundled
checker, None where the editor has none, e.g. ``classic``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from PIL import Image

from styleprefs.editors.base import Editor
from styleprefs.errors import StyleprefsError
from styleprefs.style import StyleSpec

INSTRUCTION_EDITORS = ("kontext", "qwen-image-edit")  # styleprefs.editors.instruction
EDITORS = ("classic", "instruct-pix2pix", "prompt-diffusion", "improve", *INSTRUCTION_EDITORS)
GPU_OPTIONS = ("channels_last", "compile")  # neural editors: styleprefs.gpu.prepare_pipeline; not in params()
# The licence the editor's outputs come under, for the dataset card (editors not listed: see the card's general note).
OUTPUT_LICENCES = {
    "kontext": "The edits were made with FLUX.1 Kontext [dev], released under the **FLUX.1 [dev] Non-Commercial "
               "License** (https://huggingface.co/black-forest-labs/FLUX.1-Kontext-dev/blob/main/LICENSE.md). Its "
               "terms cover the model's outputs as well as the model: read them before you use or republish these "
               "images, and before you train a model on them.",
    "qwen-image-edit": "The edits were made with Qwen-Image-Edit, released under the **Apache License 2.0** "
                       "(https://huggingface.co/Qwen/Qwen-Image-Edit-2509), which sets no conditions on the "
                       "images the model makes.",
}


@dataclass(frozen=True)
class EditResult:
    images: list[Image.Image]
    nsfw: list[bool | None]  # the safety checker's flag per image; None = not checked


def load_editor(name: str, style: StyleSpec, *, model: str | None = None, device: str | None = None,
                dtype: str | None = None, **options) -> Editor:
    """The editor ``name`` for ``style``.

    ``model`` (Hub id, local folder or ``tiny``), ``device`` and ``dtype`` (``auto``/None = CUDA and fp16
    if available, else CPU and fp32) configure the neural editors, which also take ``steps`` (overrides
    the style's step count), ``resolution`` (working size of the long side, default 512; tiny models 64) and, for
    ``prompt-diffusion``, ``recipe`` (``pair`` or ``map``) and ``negative_prompt``; ``improve`` (an improvement
    model from ``styleprefs train --stage improve``, ``model`` required) takes ``text_guidance`` and
    ``image_guidance`` and ignores the style; ``kontext`` and ``qwen-image-edit`` (instruction editors, the
    style's ``edit_instruction``, the model cards' sampling) take ``max_area`` (working area in pixels) and
    ``offload`` (``none``, ``model`` or ``group`` CPU offload, CUDA only) in place of ``resolution``; see
    ``styleprefs.editors.instruction``. All neural editors take ``channels_last`` and ``compile`` (GPU settings,
    which do not enter ``params()``, nor does ``offload``). ``classic`` ignores them all. A neural editor's
    pipeline loads once per process.
    """
    if name == "classic":
        from styleprefs.editors.classic import ClassicEditor

        try:
            return ClassicEditor(style.classic.filter, style.classic.params)
        except ValueError as exc:
            raise StyleprefsError(f"style {style.name!r}, classic editor: {exc}") from None
    if name == "instruct-pix2pix":
        from styleprefs.editors.instruct_pix2pix import InstructPix2PixEditor

        _check_options(name, options, {"steps", "resolution", *GPU_OPTIONS})
        return InstructPix2PixEditor(style.instruct_pix2pix, model=model, device=device, dtype=dtype, **options)
    if name == "prompt-diffusion":
        from styleprefs.editors.prompt_diffusion import PromptDiffusionEditor

        _check_options(name, options, {"steps", "resolution", "recipe", "negative_prompt", *GPU_OPTIONS})
        return PromptDiffusionEditor(style, model=model, device=device, dtype=dtype, **options)
    if name == "improve":
        from styleprefs.editors.improve import ImproveEditor

        _check_options(name, options, {"steps", "resolution", "text_guidance", "image_guidance", *GPU_OPTIONS})
        return ImproveEditor(model=model, device=device, dtype=dtype, **options)
    if name in INSTRUCTION_EDITORS:
        from styleprefs.editors.instruction import MODELS, InstructionEditor

        _check_options(name, options, {"steps", "max_area", "offload", *GPU_OPTIONS})
        return InstructionEditor(MODELS[name], style, model=model, device=device, dtype=dtype, **options)
    raise StyleprefsError(f"unknown editor {name!r}: use one of {', '.join(EDITORS)}")


def improver_editor(improver: str) -> tuple[str, str | None]:
    """The editor and model behind ``--improver``: ``kontext[:MODEL]`` and ``qwen-image-edit[:MODEL]`` name an
    instruction editor (MODEL None: its default), anything else is an improvement model for ``improve``."""
    name, _, model = improver.partition(":")
    if name in INSTRUCTION_EDITORS:
        return name, model or None
    return "improve", improver


def edit_with_flags(editor: Editor, images: Sequence[Image.Image], captions: Sequence[str],
                    seeds: Sequence[int]) -> EditResult:
    """``editor``'s edits and their safety flags, for any editor (flags None where it has no checker)."""
    method = getattr(editor, "edit_with_flags", None)
    if method is not None:
        return method(images, captions, seeds)
    edits = editor.edit(images, captions, seeds)
    return EditResult(list(edits), [None] * len(edits))


def _check_options(name: str, options: dict, valid: set[str]) -> None:
    unknown = sorted(set(options) - valid)
    if unknown:
        raise StyleprefsError(
            f"editor {name!r} has no option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")


__all__ = ["EDITORS", "INSTRUCTION_EDITORS", "OUTPUT_LICENCES", "EditResult", "Editor", "edit_with_flags",
           "improver_editor", "load_editor"]
