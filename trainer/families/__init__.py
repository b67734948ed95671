"""Model families the trainer serves, chosen from a pipeline's ``model_index.json`` (``_class_name``)."""

from __future__ import annotations

from styleprefs.trainer.families.base import Components, Family, PairDraws
from styleprefs.trainer.families.flow import Flux, StableDiffusion3
from styleprefs.trainer.families.unet import StableDiffusion, StableDiffusionXL

FAMILIES: dict[str, type[Family]] = {cls.name: cls for cls in (StableDiffusion, StableDiffusionXL, StableDiffusion3, Flux)}
# Pipeline classes whose folders a family trains (an InstructPix2Pix folder is an SD1.5 layout).
_BY_PIPELINE = {
    "StableDiffusionPipeline": "sd", "StableDiffusionInstructPix2PixPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl", "StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux",
}


def family_from_index(index: dict) -> Family | None:
    """The family of a pipeline whose ``model_index.json`` is ``index``, or None if no family trains it."""
    name = _BY_PIPELINE.get(index.get("_class_name", ""))
    if name is None and (index.get("unet") or [None])[0] is not None:  # other UNet pipelines: by their encoders
        name = "sdxl" if (index.get("text_encoder_2") or [None])[0] is not None else "sd"
    return FAMILIES[name]() if name else None


__all__ = ["Components", "FAMILIES", "Family", "PairDraws", "family_from_index"]
