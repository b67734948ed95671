"""The improvement model alone ("Iterative DPO with an improvement model", Table 3): a generation folder's
images, each edited by the improver with its own prompt and seed, written as a new generation folder that
every ``styleprefs eval`` scorer reads. Resumable like ``eval generate``."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from styleprefs.eval.generate import ImageRecord, read_index, read_settings, write_images
from styleprefs.lock import folder_lock


def improve_folder(generated: Path | str, improver: str, out: Path | str, *, steps: int | None = None,
                   text_guidance: float | None = None, image_guidance: float | None = None, batch_size: int = 8,
                   device: str | None = None, show_progress: bool = True) -> int:
    """Edit every image of the generation folder ``generated`` with ``improver`` into ``out``; returns how many
    images were made now."""
    from styleprefs.editors.improve import IMAGE_GUIDANCE, TEXT_GUIDANCE, ImproveEditor

    generated, out = Path(generated), Path(out)
    source = read_settings(generated)
    records = read_index(generated)
    editor = ImproveEditor(model=improver, device=device, steps=steps, resolution=source["height"],
                           text_guidance=TEXT_GUIDANCE if text_guidance is None else text_guidance,
                           image_guidance=IMAGE_GUIDANCE if image_guidance is None else image_guidance)
    settings = source | {"model": f"{improver} improving {source['model']}", "pipeline": "improve editor",
                         "improved_from": str(generated),
                         "improver": improver, "improver_params": editor.params()}

    def render(batch: list[ImageRecord]) -> list[Image.Image]:
        images = []
        for record in batch:
            with Image.open(generated / record.path) as image:
                images.append(image.convert("RGB"))
        return editor.edit(images, [r.prompt for r in batch], [r.seed for r in batch])

    with folder_lock(out):
        return write_images(out, settings, records, render, batch_size=batch_size, show_progress=show_progress)
