"""The mini models as shipped in the package, and their unpacking into real model folders.

Shipped (``styleprefs/mini/weights/``): configs and float16 safetensors only, with ``SHA256SUMS``.
``mini``'s text encoder is not shipped twice: it is ``mini-clip``'s text tower. The tokenizer files
are written from open_clip's BPE merges. :func:`assemble` rebuilds the full float32 folders that
``StableDiffusionPipeline.from_pretrained`` and ``CLIPModel.from_pretrained`` load.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from styleprefs.errors import StyleprefsError
from styleprefs.io import sha256_file

WEIGHTS = Path(__file__).parent / "weights"
CLIP_FILES = ("config.json", "model.safetensors", "processor_config.json")
PIPELINE_FILES = ("model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
                  "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
                  "vae/diffusion_pytorch_model.safetensors")
SHIPPED = {"mini-clip": CLIP_FILES, "mini": PIPELINE_FILES}
SUMS = "SHA256SUMS"


def pack(trained: Path, weights: Path = WEIGHTS) -> list[str]:
    """Copy the shipped files of ``trained/mini`` and ``trained/mini-clip`` into ``weights`` (float16).

    Checks every source file first, so a wrong or unfinished folder leaves the shipped weights as they were."""
    missing = [f"{name}/{file}" for name, files in SHIPPED.items() for file in files
               if not (trained / name / file).is_file()]
    if missing:
        raise StyleprefsError(f"{trained} is not a finished training folder (no {missing[0]}): run "
                              f"`python -m styleprefs.mini train --out {trained}` to finish it, then pack again")
    lines = []
    for name, files in SHIPPED.items():
        for file in files:
            src, dst = trained / name / file, weights / name / file
            dst.parent.mkdir(parents=True, exist_ok=True)
            if file.endswith(".safetensors"):
                save_file({k: v.half().contiguous() if v.is_floating_point() else v
                           for k, v in load_file(src).items()}, dst)
            else:
                shutil.copyfile(src, dst)
            lines.append(f"{sha256_file(dst)}  {name}/{file}")
    for extra in ("training.json", "README.md"):
        if (trained / extra).is_file():
            shutil.copyfile(trained / extra, weights / extra)
    (weights / SUMS).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return lines


def version(weights: Path = WEIGHTS) -> str:
    """A short id of the shipped weights (their checksum file's hash), for cache folder names."""
    return hashlib.sha256((weights / SUMS).read_bytes()).hexdigest()[:12]


def verify(weights: Path = WEIGHTS) -> None:
    """Raise ValueError naming the first shipped file whose sha256 differs from SHA256SUMS."""
    for line in (weights / SUMS).read_text(encoding="utf-8").splitlines():
        digest, file = line.split("  ", 1)
        if sha256_file(weights / file) != digest:
            raise ValueError(f"mini weights file {file} does not match its sha256 in {weights / SUMS}; "
                             "reinstall styleprefs or retrain with python -m styleprefs.mini train")


def assemble(name: str, out: Path, weights: Path = WEIGHTS) -> Path:
    """Write the full float32 folder of ``name`` (``mini`` or ``mini-clip``) to ``out``."""
    from styleprefs.tiny import clip_tokenizer

    verify(weights)
    for file in SHIPPED[name]:
        src, dst = weights / name / file, out / file
        dst.parent.mkdir(parents=True, exist_ok=True)
        if file.endswith(".safetensors"):
            save_file({k: v.float() if v.is_floating_point() else v for k, v in load_file(src).items()}, dst,
                      metadata={"format": "pt"})
        else:
            shutil.copyfile(src, dst)
    if name == "mini-clip":
        clip_tokenizer(out)
    else:
        clip_tokenizer(out / "tokenizer")
        _text_encoder(weights / "mini-clip", out / "text_encoder")
    return out


def _text_encoder(clip: Path, out: Path) -> None:
    """``mini-clip``'s text tower as a CLIPTextModel folder."""
    from transformers import CLIPConfig, CLIPTextModel

    config = CLIPConfig.from_pretrained(clip)
    prefix = "text_model."
    tensors = {k[len(prefix):]: v.float() for k, v in load_file(clip / "model.safetensors").items()
               if k.startswith(prefix)}
    encoder = CLIPTextModel(config.text_config)
    encoder.load_state_dict(tensors)
    encoder.save_pretrained(out, safe_serialization=True)


def available(weights: Path = WEIGHTS) -> bool:
    return (weights / SUMS).is_file()

