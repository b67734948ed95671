"""``styleprefs eval rewards``: reward-model scores of generated images, per image and averaged.

Each scorer loads from a Hub id (default below) or a local path, with its published preprocessing and
score scale; ``--scorer NAME=PATH`` points one at a local copy (offline, that is the only way):

========== ======================================= =============================================================
scorer     default source                          model, preprocessing, score
========== ======================================= =============================================================
pickscore  ``yuvalkirstain/PickScore_v1``          transformers ``CLIPModel`` (ViT-H/14) + the processor of
           processor                               ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (shortest side 224
           ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``  bicubic, centre crop, OpenAI mean/std; text <= 77 tokens).
                                                   score = ``logit_scale.exp()`` read from the checkpoint x
                                                   cos(text, image) (about 20-23; never a hard-coded 100).
hpsv2      ``xswu/HPSv2`` ``HPS_v2.1_compressed.pt``  open_clip ViT-H-14 built without pretrained weights, the
           (``--hpsv2-version v2.0``:              checkpoint's ``state_dict`` loaded on it. Longest side -> 224
           ``HPS_v2_compressed.pt``)               bicubic, zero-padded to a centred square, OpenAI mean/std;
                                                   open_clip tokenizer. score = cos (about 0.27-0.29; the
                                                   HPSv2 benchmark prints x100). Compare within one version.
aesthetic  ``sac+logos+ava1-l14-linearMSE.pth``    LAION improved-aesthetic-predictor MLP (768-1024-128-64-16-1,
           (christophschuhmann/improved-           no activations) on the L2-normalised image embedding of
           aesthetic-predictor, GitHub), CLIP      CLIP ViT-L/14 (shortest side 224 bicubic, centre crop).
           ``openai/clip-vit-large-patch14``       score about 1-10.
clip       ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``  CLIP score as Diffusion-DPO's ``utils/clip_utils.py``:
                                                   ViT-H/14 with the HPSv2 preprocessing (longest side, pad),
                                                   raw cos(text, image) (about 0.35). torchmetrics' CLIPScore is
                                                   100 x max(cos, 0) on ViT-L/14; Hessel et al.'s 2.5 x max(cos,0)
                                                   on ViT-B/32: not the same numbers.
imagereward ``THUDM/ImageReward``                  needs the optional ``image-reward`` package (BLIP + BERT;
                                                   ``bert-base-uncased`` from the Hub; pins timm 0.6.13 and
                                                   fairscale 0.4.13, breaks on transformers 5). Not available
                                                   offline; the loader says so. score = (r - 0.16717) / 1.03334.
winter,    ``openai/clip-vit-large-patch14``       style score: zero-shot P(image shows the prompt in the style) =
van_gogh,                                          softmax at the checkpoint's logit scale over cos(image, prompt)
sketch                                             and cos(image, the style's CLIP text of the prompt); in [0, 1].
                                                   ``--scorer winter=mini-clip`` offline.
========== ======================================= =============================================================

Local formats: pickscore and clip take a transformers CLIP folder (config.json + weights, with the
processor files, or ``--pickscore-processor``); hpsv2 takes the ``.pt`` file, or a folder holding one
``.pt`` plus an optional ``open_clip_config.json`` (``{"model_cfg": ...}``, as open_clip Hub repos ship)
for other architectures; aesthetic takes the ``.pth`` file or a folder holding one, and its CLIP from
``--aesthetic-clip``. Tiny offline stand-ins: ``tiny-clip`` (pickscore, clip), ``tiny-hpsv2``,
``tiny-aesthetic`` (whose CLIP defaults to ``tiny-clip``).

Scores are computed image by image in float32 (text padded to 77 tokens), so they do not depend on the
batch size. Results: ``DIR/scores.parquet`` (one row per image, one column per scorer; columns of other
scorers already there are kept) and ``DIR/rewards.json`` (mean, std, median per scorer and how it was made).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from styleprefs.errors import StyleprefsError
from styleprefs.images import read_image
from styleprefs.resolve import locate

STYLE_SCORERS = ("winter", "van_gogh", "sketch")  # zero-shot style probability, one per built-in style
SCORERS = ("pickscore", "hpsv2", "aesthetic", "clip", "imagereward", *STYLE_SCORERS)
DEFAULT_SOURCES = {
    "pickscore": "yuvalkirstain/PickScore_v1",
    "hpsv2": "xswu/HPSv2",
    "aesthetic": "sac+logos+ava1-l14-linearMSE.pth",
    "clip": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    "imagereward": "THUDM/ImageReward",
    **{style: "openai/clip-vit-large-patch14" for style in STYLE_SCORERS},
}
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
AESTHETIC_CLIP = "openai/clip-vit-large-patch14"
AESTHETIC_FILE = "sac+logos+ava1-l14-linearMSE.pth"
AESTHETIC_URL = ("https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
                 "sac%2Blogos%2Bava1-l14-linearMSE.pth")
HPSV2_FILES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
SCORES_FILE = "scores.parquet"
RESULT_FILE = "rewards.json"
HOW_TO_PROVIDE = {
    "pickscore": "download yuvalkirstain/PickScore_v1 (and laion/CLIP-ViT-H-14-laion2B-s32B-b79K for the processor) "
                 "with `hf download REPO --local-dir DIR` and pass --scorer pickscore=DIR "
                 "(--pickscore-processor DIR2)",
    "hpsv2": "download HPS_v2.1_compressed.pt (or HPS_v2_compressed.pt) from the Hub repo xswu/HPSv2 and pass "
             "--scorer hpsv2=PATH.pt",
    "aesthetic": f"download {AESTHETIC_FILE} from github.com/christophschuhmann/improved-aesthetic-predictor and "
                 "pass --scorer aesthetic=PATH.pth, and openai/clip-vit-large-patch14 as --aesthetic-clip DIR",
    "clip": "download laion/CLIP-ViT-H-14-laion2B-s32B-b79K (transformers format) and pass --scorer clip=DIR",
    **{style: "download openai/clip-vit-large-patch14 (transformers format) and pass --scorer "
              f"{style}=DIR, or --scorer {style}=mini-clip offline" for style in STYLE_SCORERS},
    "imagereward": "install the optional package (pip install image-reward) on a machine with network, download "
                   "THUDM/ImageReward (ImageReward.pt, med_config.json) and bert-base-uncased, and pass "
                   "--scorer imagereward=PATH/ImageReward.pt",
}


class ScorerUnavailable(StyleprefsError):
    """A scorer's model cannot be loaded; the message names the scorer and how to provide it locally."""


def _unavailable(scorer: str, source: str, reason: str) -> ScorerUnavailable:
    return ScorerUnavailable(f"scorer {scorer}: cannot load {source}: {reason}. Offline: {HOW_TO_PROVIDE[scorer]}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# preprocessing


def pad_to_square(image: Image.Image, size: int, mean: Sequence[float] = OPENAI_MEAN,
                  std: Sequence[float] = OPENAI_STD) -> torch.Tensor:
    """HPSv2's eval transform: longest side -> ``size`` (PIL bicubic), zero (black) padding to a centred
    square, then normalisation. [3, size, size] float32."""
    from torchvision.transforms import functional as TF

    image = image.convert("RGB")
    w, h = image.size
    scale = size / max(w, h)
    if scale != 1.0:
        new_h, new_w = round(h * scale), round(w * scale)
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        pad_h, pad_w = size - new_h, size - new_w
        image = TF.pad(image, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    return TF.normalize(TF.to_tensor(image), mean, std)


# ---------------------------------------------------------------------------------------------
# transformers CLIP (PickScore, CLIP score, the aesthetic predictor's backbone, Vendi's CLIP embedding)


@dataclass
class HFClip:
    """A transformers ``CLIPModel`` with its tokenizer and image preprocessing ("crop": the processor's
    shortest-side resize + centre crop; "pad": HPSv2's longest-side resize + zero padding)."""

    name: str
    model: object
    tokenizer: object
    image_processor: object
    preprocess: str = "crop"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def size(self) -> int:
        return int(self.model.config.vision_config.image_size)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        if self.preprocess == "pad":
            mean = tuple(getattr(self.image_processor, "image_mean", OPENAI_MEAN))
            std = tuple(getattr(self.image_processor, "image_std", OPENAI_STD))
            return torch.stack([pad_to_square(img, self.size, mean, std) for img in images])
        return torch.cat([self.image_processor(images=[img.convert("RGB")], return_tensors="pt").pixel_values
                          for img in images])

    @torch.inference_mode()
    def image_embeddings(self, images: Sequence[Image.Image], batch_size: int = 16) -> torch.Tensor:
        """L2-normalised projected image embeddings, float32 on CPU."""
        out = []
        for start in range(0, len(images), batch_size):
            pixels = self.pixels(images[start:start + batch_size]).to(self.device, self.model.dtype)
            pooled = self.model.vision_model(pixel_values=pixels).pooler_output
            out.append(self.model.visual_projection(pooled).float().cpu())
        return F.normalize(torch.cat(out), dim=-1)

    @torch.inference_mode()
    def text_embeddings(self, texts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
        """L2-normalised projected text embeddings, float32 on CPU; every text padded/truncated to 77 tokens."""
        length = min(int(self.tokenizer.model_max_length), int(self.model.config.text_config.max_position_embeddings))
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start:start + batch_size]), padding="max_length", truncation=True,
                                    max_length=length, return_tensors="pt").to(self.device)
            pooled = self.model.text_model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).pooler_output
            out.append(self.model.text_projection(pooled).float().cpu())
        return F.normalize(torch.cat(out), dim=-1)


def _location(source: str) -> tuple[str, bool]:
    """(where to load from, is local) for an offline name, a path or a Hub id (``styleprefs.resolve.locate``)."""
    resolved = locate(source)
    return resolved.location, resolved.local


def load_clip(source: str, what: str, device: torch.device | str = "cpu", *, processor: str | None = None,
              preprocess: str = "crop", scorer: str | None = None) -> HFClip:
    """A transformers CLIP from a tiny name, folder or Hub id; ``processor`` (same kinds) supplies the
    tokenizer and image processor when the model folder lacks them."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    from styleprefs.editors.loading import load_once, quiet_loading

    location, local = _location(source)
    proc_location = _location(processor)[0] if processor else location

    def fail(exc: BaseException, where: str) -> StyleprefsError:
        reason = f"{_first_line(exc)}" + ("" if local else " (a Hub id; no network?)")
        if scorer:
            return _unavailable(scorer, where, reason)
        return StyleprefsError(f"cannot load the {what} model {where}: {reason}; download it and pass its folder")

    def load() -> HFClip:
        with quiet_loading():
            try:
                model = CLIPModel.from_pretrained(location, dtype=torch.float32)
            except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
                raise fail(exc, source) from None
            try:
                tokenizer = CLIPTokenizer.from_pretrained(proc_location)
                image_processor = CLIPImageProcessor.from_pretrained(proc_location)
            except (OSError, ValueError, TypeError) as exc:
                raise fail(exc, processor or source) from None
        model.requires_grad_(False).eval().to(device)
        return HFClip(source, model, tokenizer, image_processor, preprocess, torch.device(device))

    return load_once(("eval-clip", location, proc_location, preprocess, str(device)), load)


# ---------------------------------------------------------------------------------------------
# scorers


class Scorer:
    name: str = ""

    def describe(self) -> dict:
        raise NotImplementedError

    def score(self, prompts: Sequence[str], images: Sequence[Image.Image], batch_size: int = 8) -> np.ndarray:
        """One float64 score per (prompt, image)."""
        raise NotImplementedError


class ClipScore(Scorer):
    name = "clip"

    def __init__(self, source: str | None = None, device: torch.device | str = "cpu"):
        self.source = source or DEFAULT_SOURCES["clip"]
        self.clip = load_clip(self.source, "CLIP score", device, preprocess="pad", scorer="clip")

    def describe(self) -> dict:
        return {"model": self.source, "preprocessing": f"HPSv2-style: longest side {self.clip.size} bicubic, zero pad, "
                "OpenAI mean/std (Diffusion-DPO utils/clip_utils.py)", "scale": "raw cosine (not x100, not clipped)"}

    def score(self, prompts, images, batch_size=8):
        img = self.clip.image_embeddings(images, batch_size)
        txt = self.clip.text_embeddings(prompts, batch_size)
        return (img * txt).sum(-1).double().numpy()


class StyleScore(Scorer):
    """Zero-shot probability that an image shows its prompt in a style rather than as it is: CLIP's softmax
    over (prompt, the style's CLIP text of the prompt) at the checkpoint's logit scale. In [0, 1]."""

    def __init__(self, style: str, source: str | None = None, device: torch.device | str = "cpu"):
        from styleprefs.style import load_style

        self.name, self.style = style, load_style(style)
        self.source = source or DEFAULT_SOURCES[style]
        self.clip = load_clip(self.source, f"{style} score", device, scorer=style)

    def describe(self) -> dict:
        return {"model": self.source, "preprocessing": f"processor's shortest side {self.clip.size}, centre crop",
                "scale": f"P({self.style.clip_text!r} | image) against the plain prompt, in [0, 1]"}

    def score(self, prompts, images, batch_size=8):
        from styleprefs.eval.zero_shot import style_probability

        return style_probability(self.clip, images, prompts, self.style, batch_size)


class PickScore(Scorer):
    name = "pickscore"

    def __init__(self, source: str | None = None, processor: str | None = None, device: torch.device | str = "cpu"):
        self.source = source or DEFAULT_SOURCES["pickscore"]
        if processor is None:
            location, local = _location(self.source)
            has_own = local and any((Path(location) / f).is_file()
                                    for f in ("preprocessor_config.json", "processor_config.json"))
            processor = None if has_own else PICKSCORE_PROCESSOR
        self.processor = processor
        self.clip = load_clip(self.source, "PickScore", device, processor=processor, scorer="pickscore")

    def describe(self) -> dict:
        return {"model": self.source, "processor": self.processor or self.source,
                "preprocessing": "CLIPImageProcessor: shortest side bicubic + centre crop, OpenAI mean/std; text 77 tokens",
                "scale": f"logit_scale.exp() x cosine, logit_scale.exp() = {self.clip.logit_scale:.4f} (from the checkpoint)"}

    def score(self, prompts, images, batch_size=8):
        img = self.clip.image_embeddings(images, batch_size)
        txt = self.clip.text_embeddings(prompts, batch_size)
        return (self.clip.logit_scale * (img * txt).sum(-1)).double().numpy()


class AestheticScore(Scorer):
    """LAION improved-aesthetic-predictor: MLP on the L2-normalised CLIP ViT-L/14 image embedding."""

    name = "aesthetic"

    def __init__(self, source: str | None = None, clip: str | None = None, device: torch.device | str = "cpu"):
        self.source = source or DEFAULT_SOURCES["aesthetic"]
        path = self._mlp_path(self.source)
        self.mlp = load_aesthetic_mlp(path).to(device)
        default_clip = "tiny-clip" if self.source == "tiny-aesthetic" else AESTHETIC_CLIP
        self.clip_source = clip or default_clip
        self.clip = load_clip(self.clip_source, "aesthetic CLIP", device, scorer="aesthetic")
        dim = int(self.clip.model.config.projection_dim)
        if self.mlp[0].in_features != dim:
            raise StyleprefsError(f"scorer aesthetic: the MLP {path} expects {self.mlp[0].in_features}-d embeddings but "
                                  f"the CLIP {self.clip_source} gives {dim}-d (the predictor needs CLIP ViT-L/14, 768-d)")
        self.path = path

    @staticmethod
    def _mlp_path(source: str) -> Path:
        location, local = _location(source)
        path = Path(location)
        if local and path.is_dir():
            files = sorted(path.glob("*.pth"))
            if len(files) != 1:
                raise _unavailable("aesthetic", source, f"expected one .pth file in the folder, found {len(files)}")
            return files[0]
        if local:
            return path
        cached = Path(torch.hub.get_dir()) / "checkpoints" / AESTHETIC_FILE
        if cached.is_file():
            return cached
        try:  # the predictor lives on GitHub, not the Hub
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(AESTHETIC_URL, str(cached), progress=False)
            return cached
        except Exception as exc:
            raise _unavailable("aesthetic", source, f"{_first_line(exc)} (not in {cached.parent}; no network?)") from None

    def describe(self) -> dict:
        return {"model": str(self.path), "clip": self.clip_source,
                "preprocessing": "CLIPImageProcessor (shortest side bicubic + centre crop), L2-normalised image embedding",
                "scale": "MLP output, about 1-10"}

    @torch.inference_mode()
    def score(self, prompts, images, batch_size=8):
        emb = self.clip.image_embeddings(images, batch_size)
        return self.mlp(emb.to(self.mlp[0].weight.device)).squeeze(-1).double().cpu().numpy()


def load_aesthetic_mlp(path: Path) -> nn.Sequential:
    """The predictor's ``nn.Sequential`` rebuilt from its state dict: Linear layers at the saved indices
    (``layers.0``, ``layers.2``, ... ``layers.7`` in the original), dropout (identity in eval) between."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise _unavailable("aesthetic", str(path), _first_line(exc)) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    linear = {}
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "layers" and parts[1].isdigit():
            linear.setdefault(int(parts[1]), {})[parts[2]] = value
    if not linear or any(set(v) != {"weight", "bias"} for v in linear.values()):
        raise _unavailable("aesthetic", str(path), "not the improved-aesthetic-predictor MLP state dict (layers.N.weight/bias)")
    modules: list[nn.Module] = [nn.Identity() for _ in range(max(linear) + 1)]
    for i, tensors in linear.items():
        out_f, in_f = tensors["weight"].shape
        layer = nn.Linear(in_f, out_f)
        layer.load_state_dict(tensors)
        modules[i] = layer
    mlp = nn.Sequential(*modules).eval().requires_grad_(False)
    if not isinstance(mlp[0], nn.Linear) or mlp[-1].out_features != 1:
        raise _unavailable("aesthetic", str(path), "the MLP must start with a Linear layer and end in one output")
    return mlp


class HPSv2Score(Scorer):
    """HPSv2: open_clip ViT-H-14 without pretrained weights + the HPSv2 checkpoint's ``state_dict``."""

    name = "hpsv2"

    def __init__(self, source: str | None = None, version: str = "v2.1", arch: str | None = None,
                 device: torch.device | str = "cpu"):
        if version not in HPSV2_FILES:
            raise StyleprefsError(f"--hpsv2-version must be one of {', '.join(HPSV2_FILES)}, got {version!r}")
        self.source, self.version, self.device = source or DEFAULT_SOURCES["hpsv2"], version, torch.device(device)
        checkpoint, config = self._files(self.source, version)
        self.checkpoint = checkpoint
        self.model, self.tokenizer, self.arch, self.size, self.mean, self.std = self._build(checkpoint, config, arch)

    @staticmethod
    def _files(source: str, version: str) -> tuple[Path, dict | None]:
        location, local = _location(source)
        path = Path(location)
        if not local:
            try:
                from huggingface_hub import hf_hub_download

                path = Path(hf_hub_download(source, HPSV2_FILES[version]))
            except Exception as exc:
                raise _unavailable("hpsv2", f"{source}/{HPSV2_FILES[version]}", f"{_first_line(exc)} (no network?)") from None
        config = None
        if path.is_dir():
            if (path / "open_clip_config.json").is_file():
                config = json.loads((path / "open_clip_config.json").read_text())
            files = sorted([*path.glob("*.pt"), *path.glob("*.bin")])
            preferred = [f for f in files if f.name == HPSV2_FILES[version]]
            files = preferred or files
            if len(files) != 1:
                raise _unavailable("hpsv2", source, f"expected one .pt checkpoint in the folder, found {len(files)}")
            path = files[0]
        return path, config

    def _build(self, checkpoint: Path, config: dict | None, arch: str | None):
        import open_clip
        from open_clip.model import CLIP

        from styleprefs.editors.loading import load_once

        def load():
            if config is not None:
                model_cfg = config.get("model_cfg", config)
                model = CLIP(**model_cfg)
                name = config.get("name", "custom open_clip config")
                tokenizer = open_clip.tokenizer.SimpleTokenizer(
                    context_length=model_cfg.get("text_cfg", {}).get("context_length", 77))
                pre = config.get("preprocess_cfg", {})
                mean, std = tuple(pre.get("mean", OPENAI_MEAN)), tuple(pre.get("std", OPENAI_STD))
            else:
                name = arch or "ViT-H-14"
                if name not in open_clip.list_models():
                    raise _unavailable("hpsv2", str(checkpoint), f"open_clip has no architecture {name!r} "
                                       "(--hpsv2-arch; HPSv2 is ViT-H-14)")
                try:
                    model = open_clip.create_model(name, pretrained=None)
                    tokenizer = open_clip.get_tokenizer(name)
                except Exception as exc:
                    raise _unavailable("hpsv2", name, f"open_clip cannot build it: {_first_line(exc)}") from None
                mean, std = OPENAI_MEAN, OPENAI_STD
            try:
                state = torch.load(checkpoint, map_location="cpu", weights_only=True)
                state = state.get("state_dict", state) if isinstance(state, dict) else state
                state = {k.removeprefix("module."): v for k, v in state.items()}
                model.load_state_dict(state, strict=True)
            except Exception as exc:
                raise _unavailable("hpsv2", str(checkpoint), f"not an HPSv2 checkpoint for {name}: {_first_line(exc)}") from None
            size = model.visual.image_size
            size = int(size[0] if isinstance(size, (tuple, list)) else size)
            return model.eval().requires_grad_(False).to(self.device), tokenizer, name, size, mean, std

        return load_once(("eval-hpsv2", str(checkpoint), json.dumps(config, sort_keys=True), arch, str(self.device)), load)

    def describe(self) -> dict:
        from_hub = not _location(self.source)[1]
        return {"model": str(self.checkpoint), "version": self.version if from_hub else "as given (local file)",
                "architecture": self.arch,
                "preprocessing": f"longest side {self.size} bicubic, zero pad to square, mean/std {self.mean}/{self.std}",
                "scale": "cosine (the HPSv2 benchmark prints x100); compare within one version and prompt"}

    @torch.inference_mode()
    def score(self, prompts, images, batch_size=8):
        out = []
        for start in range(0, len(images), batch_size):
            pixels = torch.stack([pad_to_square(img, self.size, self.mean, self.std)
                                  for img in images[start:start + batch_size]]).to(self.device)
            tokens = self.tokenizer(list(prompts[start:start + batch_size])).to(self.device)
            img = self.model.encode_image(pixels, normalize=True).float()
            txt = self.model.encode_text(tokens, normalize=True).float()
            out.append((img * txt).sum(-1).double().cpu())
        return torch.cat(out).numpy()


class ImageRewardScore(Scorer):
    """ImageReward through its optional package (``ImageReward``); unavailable unless installed."""

    name = "imagereward"

    def __init__(self, source: str | None = None, device: torch.device | str = "cpu"):
        self.source = source or DEFAULT_SOURCES["imagereward"]
        try:
            import ImageReward as reward_package  # noqa: N813
        except Exception as exc:
            raise _unavailable("imagereward", self.source,
                               f"the optional package image-reward is not importable ({_first_line(exc)})") from None
        name = "ImageReward-v1.0" if self.source == DEFAULT_SOURCES["imagereward"] else self.source
        try:
            self.model = reward_package.load(name, device=str(device))
        except Exception as exc:
            raise _unavailable("imagereward", self.source, _first_line(exc)) from None

    def describe(self) -> dict:
        return {"model": self.source, "preprocessing": "ImageReward's own (BLIP 224, bicubic, centre crop; prompt 35 tokens)",
                "scale": "(r - 0.16717) / 1.03334, as the package returns"}

    def score(self, prompts, images, batch_size=8):
        return np.array([float(self.model.score(p, [img])) for p, img in zip(prompts, images)], dtype=np.float64)


def load_scorer(name: str, source: str | None = None, *, device: str | None = None,
                pickscore_processor: str | None = None, aesthetic_clip: str | None = None,
                hpsv2_version: str = "v2.1", hpsv2_arch: str | None = None) -> Scorer:
    from styleprefs.editors.loading import resolve_device

    dev = resolve_device(device)
    if name == "clip":
        return ClipScore(source, dev)
    if name == "pickscore":
        return PickScore(source, pickscore_processor, dev)
    if name == "aesthetic":
        return AestheticScore(source, aesthetic_clip, dev)
    if name == "hpsv2":
        return HPSv2Score(source, hpsv2_version, hpsv2_arch, dev)
    if name == "imagereward":
        return ImageRewardScore(source, dev)
    if name in STYLE_SCORERS:
        return StyleScore(name, source, dev)
    raise StyleprefsError(f"unknown scorer {name!r}; choose from {', '.join(SCORERS)}")


def parse_scorer(spec: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME=SOURCE`` -> (name, source or None)."""
    name, _, source = spec.partition("=")
    name, source = name.strip().lower(), source.strip()
    if name not in SCORERS:
        raise StyleprefsError(f"unknown scorer {name!r}; choose from {', '.join(SCORERS)} (optionally NAME=PATH)")
    if source.startswith(("/", ".", "~")) and not Path(source).expanduser().exists():
        raise StyleprefsError(f"--scorer {spec}: no such path {source}")
    return name, source or None


# ---------------------------------------------------------------------------------------------
# scoring a generation folder


def score_images(scorer: Scorer, prompts: Sequence[str], images: Sequence[Image.Image], batch_size: int = 8) -> np.ndarray:
    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts for {len(images)} images")
    return scorer.score(list(prompts), list(images), batch_size) if images else np.zeros(0)


def score_folder(folder: str | Path, scorers: Sequence[str], *, batch_size: int = 8, device: str | None = None,
                 pickscore_processor: str | None = None, aesthetic_clip: str | None = None,
                 hpsv2_version: str = "v2.1", hpsv2_arch: str | None = None, show_progress: bool = True) -> dict:
    """Score every image of a generation folder with each scorer (``NAME`` or ``NAME=SOURCE``).

    Writes ``scores.parquet`` and ``rewards.json`` in the folder and returns the summary
    ``{scorer: {mean, std, median, n, ...description}}``.
    """
    from styleprefs.eval.generate import read_index
    from styleprefs.io import write_json, write_parquet

    folder = Path(folder)
    records = read_index(folder)
    if not records:
        raise StyleprefsError(f"{folder} holds no generated images")
    specs = [parse_scorer(s) for s in scorers]
    if not specs:
        raise StyleprefsError("give at least one --scorer")
    # Load every scorer before scoring, so a missing one fails fast.
    loaded = [(name, load_scorer(name, source, device=device, pickscore_processor=pickscore_processor,
                                 aesthetic_clip=aesthetic_clip, hpsv2_version=hpsv2_version, hpsv2_arch=hpsv2_arch))
              for name, source in specs]
    columns = {name: np.empty(len(records)) for name, _ in loaded}
    chunk = max(batch_size, 64)
    with _progress(len(records) * len(loaded), show_progress) as advance:
        for start in range(0, len(records), chunk):
            part = records[start:start + chunk]
            images = [read_image(folder / record.path)[0] for record in part]
            prompts = [r.prompt for r in part]
            for name, scorer in loaded:
                columns[name][start:start + len(part)] = score_images(scorer, prompts, images, batch_size)
                advance(len(part))
    table = _merge_scores(folder, records, columns)
    write_parquet(table, folder / SCORES_FILE)
    summary = _read_json(folder / RESULT_FILE)
    for name, scorer in loaded:
        values = columns[name]
        summary[name] = {"mean": float(values.mean()), "std": float(values.std()), "median": float(np.median(values)),
                         "n": int(values.size), **scorer.describe()}
    write_json(summary, folder / RESULT_FILE)
    return {name: summary[name] for name, _ in loaded}


def _merge_scores(folder: Path, records, columns: dict[str, np.ndarray]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = {"path": [r.path for r in records], "prompt_id": [r.prompt_id for r in records],
            "prompt": [r.prompt for r in records], "category": [r.category for r in records],
            "index": [r.index for r in records], "seed": [r.seed for r in records]}
    data = dict(base)
    existing = folder / SCORES_FILE
    if existing.is_file():
        old = pq.read_table(existing).to_pydict()
        by_path = {p: i for i, p in enumerate(old.get("path", []))}
        for name, values in old.items():
            if name in base or name in columns:
                continue
            data[name] = [values[by_path[p]] if p in by_path else None for p in base["path"]]
    for name, values in columns.items():
        data[name] = values.tolist()
    return pa.table({k: (pa.array(v, type=pa.float64()) if k not in base else v) for k, v in data.items()})


def read_scores(folder: str | Path):
    """``scores.parquet`` of a folder as a dict of columns (StyleprefsError if missing)."""
    import pyarrow.parquet as pq

    path = Path(folder) / SCORES_FILE
    if not path.is_file():
        raise StyleprefsError(f"{folder} has no {SCORES_FILE}: run `styleprefs eval rewards {folder} --scorer ...` first")
    return pq.read_table(path).to_pydict()


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


class _progress:
    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("[bold]scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                 disable=not self.enabled)
        self.progress.__enter__()
        task = self.progress.add_task("scores", total=self.total)
        return lambda k: self.progress.update(task, advance=k)

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)
