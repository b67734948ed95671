"""The mini models as shipped in the package, and their unpacking into real model folders.

Shipped (``styleprefs/mini/weights/``): configs and float16 safetensors only, with ``SHA256SUMS``.
Nothing is shipped twice: ``mini``'s text encoder, and both of ``mini-flow``'s, are ``mini-clip``'s text tower
(``mini-flow``'s with its projection); ``mini-flow``'s VAE is ``mini``'s weights under its own config (a shift
factor). The tokenizer files are written from open_clip's BPE merges. :func:`assemble` rebuilds the full float32
folders that ``StableDiffusionPipeline``, ``StableDiffusion3Pipeline`` (with ``text_encoder_3=None,
tokenizer_3=None``: no T5) and ``CLIPModel.from_pretrained`` load.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from styleprefs.errors import StyleprefsError
from styleprefs.io import sha256_file
from styleprefs.tiny import clip_tokenizer

WEIGHTS = Path(__file__).parent / "weights"
CLIP_FILES = ("config.json", "model.safetensors", "processor_config.json")
PIPELINE_FILES = ("model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
                  "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
                  "vae/diffusion_pytorch_model.safetensors")
FLOW_FILES = ("model_index.json", "scheduler/scheduler_config.json", "transformer/config.json",
              "transformer/diffusion_pytorch_model.safetensors", "vae/config.json",
              "tokenizer/tokenizer_config.json", "tokenizer_2/tokenizer_config.json")
SHIPPED = {"mini-clip": CLIP_FILES, "mini": PIPELINE_FILES, "mini-flow": FLOW_FILES}
NAMES = tuple(SHIPPED)  # the offline model names the shipped weights assemble into
SUMS = "SHA256SUMS"


def pack(trained: Path, weights: Path = WEIGHTS) -> list[str]:
    """Copy the shipped files of ``trained/mini``, ``trained/mini-clip`` and ``trained/mini-flow`` into ``weights``
    (float16).

    Checks every source file first, so a wrong or unfinished folder leaves the shipped weights as they were."""
    missing = [f"{name}/{file}" for name, files in SHIPPED.items() for file in files
               if not (trained / name / file).is_file()]
    if missing:
        raise StyleprefsError(f"{trained} is not a finished training folder (no {missing[0]}): run "
                              f"`python -m styleprefs.mini train --out {trained}` to finish it, then pack again")
    _check_shared(trained)
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


def _check_shared(trained: Path) -> None:
    """mini-flow's VAE and text encoders are shipped as mini's VAE and mini-clip's text tower: refuse a folder
    where they differ (they would be lost)."""
    clip = load_file(trained / "mini-clip" / "model.safetensors")
    shared = [("vae/diffusion_pytorch_model.safetensors", load_file(trained / "mini" / "vae" /
                                                                     "diffusion_pytorch_model.safetensors"))]
    shared += [(f"{encoder}/model.safetensors", {k: v for k, v in clip.items()
                                                 if k.startswith(("text_model.", "text_projection."))})
               for encoder in ("text_encoder", "text_encoder_2")]
    for file, expected in shared:
        got = load_file(trained / "mini-flow" / file)
        if got.keys() != expected.keys() or any(not got[k].equal(expected[k]) for k in got):
            raise StyleprefsError(f"{trained / 'mini-flow' / file} differs from the mini/mini-clip weights it is "
                                  "shipped as: retrain mini-flow in this folder (delete mini-flow/ and run train)")


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
    """Write the full float32 folder of ``name`` (one of ``NAMES``) to ``out``."""
    verify(weights)
    if name == "mini-clip":
        clip_tokenizer(out)
    else:  # tokenizers first: mini-flow's shipped tokenizer configs then set its padding length
        for tokenizer in ("tokenizer", "tokenizer_2") if name == "mini-flow" else ("tokenizer",):
            clip_tokenizer(out / tokenizer)
    for file in SHIPPED[name]:
        _unpack(weights / name / file, out / file)
    if name == "mini":
        _text_encoder(weights / "mini-clip", out / "text_encoder", projection=False)
    elif name == "mini-flow":
        _unpack(weights / "mini" / "vae" / "diffusion_pytorch_model.safetensors",
                out / "vae" / "diffusion_pytorch_model.safetensors")
        for encoder in ("text_encoder", "text_encoder_2"):
            _text_encoder(weights / "mini-clip", out / encoder, projection=True)
    return out


def _unpack(src: Path, dst: Path) -> None:
    """Copy one shipped file, safetensors back in float32."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.name.endswith(".safetensors"):
        save_file({k: v.float() if v.is_floating_point() else v for k, v in load_file(src).items()}, dst,
                  metadata={"format": "pt"})
    else:
        shutil.copyfile(src, dst)


def _text_encoder(clip: Path, out: Path, projection: bool) -> None:
    """``mini-clip``'s text tower as a CLIPTextModel folder, or with ``projection`` its text tower and text
    projection as a CLIPTextModelWithProjection folder (SD3's kind)."""
    from transformers import CLIPConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPConfig.from_pretrained(clip)
    tensors = {k: v.float() for k, v in load_file(clip / "model.safetensors").items()}
    if projection:
        config.text_config.projection_dim = config.projection_dim
        encoder = CLIPTextModelWithProjection(config.text_config)
        encoder.load_state_dict({k: v for k, v in tensors.items() if k.startswith(("text_model.", "text_projection."))})
    else:
        encoder = CLIPTextModel(config.text_config)
        prefix = "text_model."
        encoder.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    encoder.save_pretrained(out, safe_serialization=True)


def available(weights: Path = WEIGHTS) -> bool:
    return (weights / SUMS).is_file()

