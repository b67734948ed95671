"""``styleprefs eval vendi``: diversity of each prompt's images, averaged over prompts.

Vendi score (Friedman & Dieng 2023; vertaix/Vendi-Score ``score_X``): with unit-norm embeddings x_i
and the cosine kernel K_ij = x_i . x_j (so K_ii = 1), VS = exp(-sum_i l_i log l_i) where l_i are the
eigenvalues of K / n (0 log 0 = 0). n identical images give 1, n mutually orthogonal embeddings give
n; VS <= min(n, d). The eigenvalues come from the smaller of the n x n Gram matrix and the d x d
covariance X^T X / n, which share their nonzero eigenvalues.

Embeddings (``embedding``):

- ``inception`` (default; the Vendi-Score repository's choice): torchvision ``inception_v3`` with its
  ImageNet weights (``inception_v3_google-0cc3c7bd.pth``, not the FID weights), Resize(299) +
  CenterCrop(299), pixels in [0, 1] without normalisation, ``transform_input=True``, 2048-d pool features.
  The weights come from ``weights`` or torchvision's download location (``$TORCH_HOME/hub/checkpoints``).
- ``clip``: a transformers CLIP's projected image embedding (``clip_model``, default
  ``openai/clip-vit-large-patch14``; ``tiny-clip`` offline), with the model's own image processor.
- ``random``: the FID Inception with seeded random weights (``fid.random_fid_inception``), for smoke
  tests; labelled not comparable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from styleprefs.errors import StyleprefsError

EMBEDDINGS = ("inception", "clip", "random")
IMAGENET_INCEPTION = "inception_v3_google-0cc3c7bd.pth"
RESULT_FILE = "vendi.json"


def vendi_score(embeddings: np.ndarray, *, normalize: bool = True) -> float:
    """Vendi score of ``embeddings`` (n, d) with the cosine kernel (rows L2-normalised when ``normalize``)."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"need a non-empty (n, d) embedding matrix, got shape {x.shape}")
    if normalize:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if np.any(norms == 0):
            raise ValueError("an embedding has norm 0: the cosine kernel is undefined")
        x = x / norms
    n, d = x.shape
    gram = (x @ x.T) / n if n <= d else (x.T @ x) / n
    values = np.clip(np.linalg.eigvalsh((gram + gram.T) / 2), 0, None)
    values = values[values > 1e-12]
    return float(np.exp(-(values * np.log(values)).sum()))


class Embedder:
    """Image embeddings (n, d) float64 for one of ``EMBEDDINGS``."""

    def __init__(self, embedding: str = "inception", *, weights: str | None = None, clip_model: str | None = None,
                 seed: int = 0, device: str | None = None, batch_size: int = 16):
        from styleprefs.editors.loading import resolve_device

        if embedding not in EMBEDDINGS:
            raise StyleprefsError(f"--embedding must be one of {', '.join(EMBEDDINGS)}, got {embedding!r}")
        self.embedding, self.batch_size = embedding, batch_size
        self.device = resolve_device(device)
        if embedding == "inception":
            self.model, path = _imagenet_inception(weights)
            self.describe = {"embedding": "torchvision inception_v3 ImageNet weights, pool 2048", "weights": str(path),
                             "comparable": True}
        elif embedding == "random":
            from styleprefs.eval.fid import random_fid_inception

            self.model = random_fid_inception(seed)
            self.describe = {"embedding": "random Inception (smoke test; NOT comparable)", "seed": seed,
                             "comparable": False}
        else:
            from styleprefs.eval.rewards import load_clip

            self.clip = load_clip(clip_model or "openai/clip-vit-large-patch14", "Vendi CLIP embedding", self.device)
            self.describe = {"embedding": "CLIP image embedding", "model": self.clip.name, "comparable": True}
        if embedding != "clip":
            self.model = self.model.to(self.device)

    @torch.inference_mode()
    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        if self.embedding == "clip":
            return self.clip.image_embeddings(images, self.batch_size).double().numpy()
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            if self.embedding == "inception":
                pixels = torch.stack([_vendi_pixels(img) for img in chunk])
            else:
                from styleprefs.eval.fid import resize_for_inception

                pixels = torch.stack([resize_for_inception(img) for img in chunk])
            out.append(self.model(pixels.to(self.device)).double().cpu().numpy())
        return np.concatenate(out)


def _imagenet_inception(weights: str | None):
    import torchvision

    path = Path(weights).expanduser() if weights else Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_INCEPTION
    if not path.is_file():
        raise StyleprefsError(
            f"no torchvision Inception weights at {path}: download "
            f"https://download.pytorch.org/models/{IMAGENET_INCEPTION} and pass --weights PATH, or use "
            "--embedding clip with a local CLIP (offline: --embedding clip --clip-model mini-clip) or --embedding random (smoke test)")
    net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=True)
    try:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:
        raise StyleprefsError(f"{path} is not torchvision's inception_v3 state dict: {str(exc).splitlines()[0]}") from None
    net.fc = torch.nn.Identity()
    return net.eval().requires_grad_(False), path


def _vendi_pixels(image: Image.Image) -> torch.Tensor:
    from torchvision.transforms import functional as TF

    image = TF.center_crop(TF.resize(image.convert("RGB"), 299), 299)
    return TF.to_tensor(image)


def vendi_folder(folder: str | Path, *, embedding: str = "inception", weights: str | None = None,
                 clip_model: str | None = None, seed: int = 0, device: str | None = None, batch_size: int = 16,
                 out: str | Path | None = None) -> dict:
    """Vendi score per prompt of a generation folder and its mean over prompts; writes ``FOLDER/vendi.json``."""
    from styleprefs.eval.generate import read_index
    from styleprefs.io import write_json

    folder = Path(folder)
    records = read_index(folder)
    if not records:
        raise StyleprefsError(f"{folder} holds no generated images")
    embed = Embedder(embedding, weights=weights, clip_model=clip_model, seed=seed, device=device,
                     batch_size=batch_size)
    by_prompt: dict[str, list] = {}
    for record in records:
        by_prompt.setdefault(record.prompt, []).append(record)
    per_prompt = {}
    for prompt, group in by_prompt.items():
        images = []
        for record in group:
            with Image.open(folder / record.path) as img:
                images.append(img.convert("RGB"))
        per_prompt[prompt] = vendi_score(embed(images))
    sizes = sorted({len(g) for g in by_prompt.values()})
    warnings = [] if len(sizes) == 1 else [f"prompts have different image counts {sizes}: Vendi is bounded by n"]
    if max(sizes) < 2:
        warnings.append("one image per prompt: every Vendi score is 1")
    if not embed.describe["comparable"]:
        warnings.insert(0, "random embedding: NOT comparable (smoke test only)")
    values = np.array(list(per_prompt.values()))
    result = {"vendi": float(values.mean()), "vendi_std": float(values.std()), "n_prompts": len(per_prompt),
              "images_per_prompt": sizes[0] if len(sizes) == 1 else sizes, **embed.describe,
              "kernel": "cosine", "per_prompt": per_prompt, "warnings": warnings, "folder": str(folder)}
    write_json(result, Path(out) if out else folder / RESULT_FILE)
    return result
