"""Style FID and KID between a dataset's preferred images and generated images.

Feature extractor: the TF 2015-12-05 Inception used by every published FID, in pytorch-fid's port:
torchvision's ``inception_v3`` architecture (1008 classes, no aux head) with pytorch-fid's patched blocks
(average pools that ignore padding; max pool in the last block), loading pytorch-fid's weights file
``pt_inception-2015-12-05-6726825d.pth`` (a plain state dict with torchvision's key names). It is read
from ``--inception PATH`` or from the standard download location, ``$TORCH_HOME/hub/checkpoints/``
(where pytorch-fid's ``load_state_dict_from_url`` puts it). The torchmetrics/torch-fidelity file
``weights-inception-2015-12-05-6726825d.pth`` is accepted when its keys load into the same network.
Features are the 2048-d pool3 activations.

Resize to 299x299 (``resize``):

- ``clean`` (default; clean-fid's "clean" mode): PIL bicubic (antialiased) on each channel in float32,
  clipped to [0, 255], no re-quantisation;
- ``pytorch-fid``: pytorch-fid's own ``F.interpolate(bilinear, align_corners=False)``, not antialiased.

Pixels then go to [-1, 1] as ``x / 127.5 - 1``. Numbers from different modes or implementations are
not comparable; every result states its mode. Both image sets are compared in the same encoding:
with ``match_encoding`` (default) an image that is not JPEG (e.g. generated PNGs) is re-encoded as JPEG
quality 95 (the dataset's own encoding, ``styleprefs.images``) before its features are taken.

``features="random"``: the same network with seeded random weights and batch-norm statistics set from
seeded noise, for offline smoke tests. Its numbers are labelled "not comparable to published FID".
``features="mini"``: the L2-normalised image embeddings of the trained ``mini-clip`` (64-d), for the
miniature world (``styleprefs.mini``): "mini FID", comparable only within it.

FID = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) in float64; the trace of the square root is
computed as the sum of square roots of the eigenvalues of the symmetric PSD matrix
S1^(1/2) S2 S1^(1/2) (same eigenvalues as S1 S2; negative round-off clipped to 0), so no complex
parts arise and scipy is not needed. KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic kernel
k(x, y) = (x.y / d + 1)^3, mean and std over ``kid_subsets`` random subsets of ``kid_subset_size``
(clean-fid's defaults, 100 subsets of up to 1000).

Sample counts: FID is biased upward at small N, and below N = 2048 (the feature dimension) the
covariances are rank-deficient. Both sets use the same N: with unequal counts a seeded random subset
of the larger set is used (``unequal="subsample"``) or the run stops (``unequal="error"``); either way
the counts are in the result and in its ``warnings``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from PIL import Image

from styleprefs.errors import StyleprefsError

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FIDELITY_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_NAME
INPUT_SIZE = 299
FEATURE_DIM = 2048
RESIZE_MODES = ("clean", "pytorch-fid")
MIN_RELIABLE_N = FEATURE_DIM
NOT_COMPARABLE = "random Inception features: NOT comparable to published FID/KID (smoke test only)"
MINI_NOTE = "mini FID: mini-clip features, comparable only within styleprefs' miniature world, never with published FID"
FEATURES = ("fid", "random", "mini")
RESULT_FILE = "style_fid.json"


# ---------------------------------------------------------------------------------------------
# statistics


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (float64) of ``features`` (N, D), N >= 2."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need at least 2 feature rows (N, D), got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1 S2)^(1/2)) for symmetric PSD S1, S2, via the eigenvalues of S1^(1/2) S2 S1^(1/2)."""
    root = _sqrt_psd(np.asarray(sigma1, np.float64))
    middle = root @ np.asarray(sigma2, np.float64) @ root
    values = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(np.clip(values, 0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, S1) and N(mu2, S2), float64; clipped at 0 (round-off)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"mismatched statistics: {mu1.shape} vs {mu2.shape}, {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2)
    return max(float(value), 0.0)


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID of two feature sets (N1, D) and (N2, D), N >= 2.

    With fewer samples than dimensions the D x D products are avoided: for centred features A, B,
    tr((S1 S2)^(1/2)) = ||A B^T||_* / sqrt((N1 - 1)(N2 - 1)) (the nuclear norm, as the nonzero eigenvalues
    of A^T A B^T B are the squared singular values of A B^T); the result is the same as from
    :func:`frechet_distance` on the statistics, at the cost of an N1 x N2 SVD.
    """
    x, y = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(x.shape[0], y.shape[0]) < 2:
        raise ValueError(f"need two (N >= 2, D) feature arrays of equal D, got {x.shape} and {y.shape}")
    n1, n2, d = x.shape[0], y.shape[0], x.shape[1]
    if max(n1, n2) > d:
        return frechet_distance(*feature_stats(x), *feature_stats(y))
    diff = x.mean(axis=0) - y.mean(axis=0)
    a, b = x - x.mean(axis=0), y - y.mean(axis=0)
    cross = np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    value = diff @ diff + (a * a).sum() / (n1 - 1) + (b * b).sum() / (n2 - 1) - 2 * cross
    return max(float(value), 0.0)


def kid_from_features(features1: np.ndarray, features2: np.ndarray, *, num_subsets: int = 100,
                      subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID: mean and std over subsets of the unbiased MMD^2 with kernel (x.y/d + 1)^3.

    ``subset_size`` is capped at the smaller set's size; subsets are drawn without replacement from
    ``default_rng(seed)``.
    """
    x, y = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    m = min(x.shape[0], y.shape[0], subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {x.shape[0]} and {y.shape[0]}")
    d = x.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets)
    for s in range(num_subsets):
        a = x[rng.choice(x.shape[0], m, replace=False)]
        b = y[rng.choice(y.shape[0], m, replace=False)]
        k_aa, k_bb, k_ab = ((a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3)
        off = (k_aa.sum() - np.trace(k_aa) + k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
        values[s] = off - 2 * k_ab.sum() / (m * m)
    return float(values.mean()), float(values.std())


# ---------------------------------------------------------------------------------------------
# the FID Inception (pytorch-fid's patched blocks on torchvision's architecture)

_inception = torchvision.models.inception


class FIDInceptionA(_inception.InceptionA):
    def forward(self, x):
        branch_pool = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, branch_pool], 1)


class FIDInceptionC(_inception.InceptionC):
    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            bd = layer(bd)
        branch_pool = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
        return torch.cat([self.branch1x1(x), b7, bd, branch_pool], 1)


class _FIDInceptionE(_inception.InceptionE):
    max_pool = False

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        if self.max_pool:  # the FID network's last block max-pools (a quirk of the TF graph)
            pooled = F.max_pool2d(x, 3, stride=1, padding=1)
        else:
            pooled = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionE_1(_FIDInceptionE):
    max_pool = False


class FIDInceptionE_2(_FIDInceptionE):
    max_pool = True


class FidInception(nn.Module):
    """pytorch-fid's FID Inception: input [B, 3, 299, 299] in [-1, 1], output pool3 features [B, 2048]."""

    def __init__(self) -> None:
        super().__init__()
        net = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
        net.Mixed_5b = FIDInceptionA(192, pool_features=32)
        net.Mixed_5c = FIDInceptionA(256, pool_features=64)
        net.Mixed_5d = FIDInceptionA(288, pool_features=64)
        net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        net.Mixed_7b = FIDInceptionE_1(1280)
        net.Mixed_7c = FIDInceptionE_2(2048)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        for layer in (n.Conv2d_1a_3x3, n.Conv2d_2a_3x3, n.Conv2d_2b_3x3, n.maxpool1, n.Conv2d_3b_1x1,
                      n.Conv2d_4a_3x3, n.maxpool2, n.Mixed_5b, n.Mixed_5c, n.Mixed_5d, n.Mixed_6a, n.Mixed_6b,
                      n.Mixed_6c, n.Mixed_6d, n.Mixed_6e, n.Mixed_7a, n.Mixed_7b, n.Mixed_7c):
            x = layer(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def default_weights_path() -> Path:
    """Where pytorch-fid downloads its weights: ``$TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_NAME


def find_weights(inception: str | Path | None) -> Path:
    """``inception`` if given (must exist), else the first existing standard file, else a StyleprefsError."""
    if inception is not None:
        path = Path(inception).expanduser()
        if not path.is_file():
            raise StyleprefsError(f"Inception weights file {inception} does not exist")
        return path
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    for name in (FID_WEIGHTS_NAME, FIDELITY_WEIGHTS_NAME):
        if (checkpoints / name).is_file():
            return checkpoints / name
    raise StyleprefsError(
        f"no FID Inception weights: {checkpoints / FID_WEIGHTS_NAME} does not exist and there is no network to fetch "
        f"it; download {FID_WEIGHTS_URL} and pass --inception PATH (or put it there), or use --features random "
        "for a smoke test whose numbers are not comparable to published FID")


def load_fid_inception(weights: Path) -> FidInception:
    model = FidInception()
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise StyleprefsError(f"cannot read Inception weights {weights}: {_first_line(exc)}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        model.net.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise StyleprefsError(f"{weights} is not an FID Inception state dict in pytorch-fid's layout "
                              f"({FID_WEIGHTS_NAME}): {_first_line(exc)}") from None
    return model.eval().requires_grad_(False)


@lru_cache(maxsize=2)
def random_fid_inception(seed: int = 0) -> FidInception:
    """The FID network with seeded random weights; batch-norm statistics are set from seeded noise so
    activations keep a usable scale through the 90+ layers (plain random init makes them vanish).
    Cached per seed (it is never modified)."""
    torch.manual_seed(seed)
    model = FidInception()
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batch
    noise = torch.rand(4, 3, INPUT_SIZE, INPUT_SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    model.train()
    with torch.no_grad():
        model(noise)
    return model.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# images -> features


def resize_for_inception(image: Image.Image, mode: str = "clean") -> torch.Tensor:
    """[3, 299, 299] float32 in [-1, 1] (see the module docstring for the two modes)."""
    rgb = np.asarray(image.convert("RGB"))
    if mode == "clean":
        channels = [np.asarray(Image.fromarray(rgb[..., c].astype(np.float32), mode="F")
                               .resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BICUBIC)).clip(0, 255)
                    for c in range(3)]
        x = torch.from_numpy(np.stack(channels)).float()
    elif mode == "pytorch-fid":
        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float()[None]
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)[0]
    else:
        raise StyleprefsError(f"unknown resize mode {mode!r}; choose {' or '.join(RESIZE_MODES)}")
    return x / 127.5 - 1


@torch.inference_mode()
def inception_features(images: Iterable[Image.Image], model: nn.Module, *, resize: str = "clean",
                       batch_size: int = 16, device: torch.device | str = "cpu",
                       advance: Callable[[int], None] | None = None) -> np.ndarray:
    """Pool3 features (N, 2048) float64 of ``images``."""
    model = model.to(device)
    feats, batch = [], []

    def flush() -> None:
        feats.append(model(torch.stack(batch).to(device)).double().cpu().numpy())
        if advance:
            advance(len(batch))
        batch.clear()

    for image in images:
        batch.append(resize_for_inception(image, resize))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return np.concatenate(feats) if feats else np.zeros((0, FEATURE_DIM))


def as_dataset_encoding(image: Image.Image, encoded: bytes | None = None) -> Image.Image:
    """The image as it looks after JPEG quality-95 encoding (unchanged when ``encoded`` already is JPEG)."""
    from styleprefs.images import encode_jpeg

    if encoded is not None and encoded[:3] == b"\xff\xd8\xff":
        return image
    with Image.open(io.BytesIO(encode_jpeg(image))) as img:
        return img.convert("RGB")


# ---------------------------------------------------------------------------------------------
# the two image sets


@dataclass
class ImageSet:
    """A set of images known by count first, loaded lazily (``load(positions)`` yields them in order)."""

    name: str
    count: int
    load: Callable[[Sequence[int]], Iterator[tuple[Image.Image, bytes | None]]]
    note: str = ""


def preferred_images(data: str | Path) -> ImageSet:
    """The preferred image of every labelled row of a styleprefs dataset or Pick-a-Pic-schema Parquet.

    The winner is ``jpg_0`` when ``label_0 > label_1``, else ``jpg_1``; ties (equal labels) have no
    preferred image and are skipped (counted in ``note``). Images are read file by file, not all at once.
    """
    import pyarrow.parquet as pq

    from styleprefs.trainer.data import dataset_files

    files = dataset_files(data)
    slots: list[tuple[int, int, int]] = []  # (file, row, slot)
    ties = 0
    for f, file in enumerate(files):
        try:
            table = pq.read_table(file, columns=["label_0", "label_1"])
        except Exception as exc:
            raise StyleprefsError(f"cannot read labels from {file}: {_first_line(exc)}") from None
        l0 = table.column("label_0").to_numpy(zero_copy_only=False).astype(np.float64)
        l1 = table.column("label_1").to_numpy(zero_copy_only=False).astype(np.float64)
        for row, (a, b) in enumerate(zip(l0, l1)):
            if a == b or np.isnan(a) or np.isnan(b):
                ties += 1
            else:
                slots.append((f, row, 0 if a > b else 1))

    def load(positions: Sequence[int]) -> Iterator[tuple[Image.Image, bytes | None]]:
        from styleprefs.images import decode

        wanted = sorted(slots[p] for p in positions)
        by_file: dict[int, list[tuple[int, int]]] = {}
        for f, row, slot in wanted:
            by_file.setdefault(f, []).append((row, slot))
        for f, rows in by_file.items():
            table = pq.read_table(files[f], columns=["jpg_0", "jpg_1"])
            columns = [_bytes_column(table, "jpg_0"), _bytes_column(table, "jpg_1")]
            for row, slot in rows:
                data_bytes = columns[slot][row]
                try:
                    yield decode(data_bytes), data_bytes
                except (ValueError, TypeError) as exc:
                    raise StyleprefsError(f"{files[f]} row {row}: preferred image jpg_{slot} cannot be decoded "
                                          f"({exc})") from None

    note = f"{ties} tie/unlabelled row(s) without a preferred image skipped" if ties else ""
    return ImageSet(f"preferred images of {data}", len(slots), load, note)


def _bytes_column(table, name: str) -> list:
    import pyarrow as pa
    import pyarrow.compute as pc

    column = table.column(name)
    if pa.types.is_struct(column.type):
        column = pc.struct_field(column, "bytes")
    return column.to_pylist()


def generated_images(folder: str | Path) -> ImageSet:
    """The images of a ``styleprefs eval generate`` folder (its index), or every image file in a plain folder."""
    from styleprefs.eval.generate import INDEX, read_index

    folder = Path(folder)
    if not folder.is_dir():
        raise StyleprefsError(f"generated-images folder {folder} does not exist")
    if (folder / INDEX).is_file():
        paths = [folder / r.path for r in read_index(folder)]
    else:
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))

    def load(positions: Sequence[int]) -> Iterator[tuple[Image.Image, bytes | None]]:
        from styleprefs.images import read_image

        for p in sorted(positions):
            yield read_image(paths[p])

    return ImageSet(f"generated images in {folder}", len(paths), load)


# ---------------------------------------------------------------------------------------------
# the command


def style_fid(data: str | Path, generated: str | Path, *, inception: str | Path | None = None,
              features: str = "fid", resize: str = "clean", match_encoding: bool = True, unequal: str = "subsample",
              seed: int = 0, kid_subsets: int = 100, kid_subset_size: int = 1000, batch_size: int = 16,
              device: str | None = None, out: str | Path | None = None, show_progress: bool = True) -> dict:
    """FID and KID between ``data``'s preferred images and the images in ``generated``; writes the result
    JSON to ``out`` (default ``GENERATED/style_fid.json``) and returns it."""
    from styleprefs.editors.loading import resolve_device
    from styleprefs.io import write_json

    if features not in FEATURES:
        raise StyleprefsError(f"--features must be one of {', '.join(FEATURES)}, got {features!r}")
    if resize not in RESIZE_MODES:
        raise StyleprefsError(f"--resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    if unequal not in ("subsample", "error"):
        raise StyleprefsError(f"--unequal must be subsample or error, got {unequal!r}")
    reference, candidate = preferred_images(data), generated_images(generated)
    counts = {"n_reference_available": reference.count, "n_generated_available": candidate.count}
    warnings = [w for w in (reference.note,) if w]
    n = min(reference.count, candidate.count)
    if n < 2:
        raise StyleprefsError(f"FID needs at least 2 images per set: {reference.count} preferred image(s) in {data}, "
                              f"{candidate.count} generated image(s) in {generated}")
    if reference.count != candidate.count:
        message = (f"unequal counts: {reference.count} preferred images vs {candidate.count} generated images; "
                   "FID is only comparable at equal N")
        if unequal == "error":
            raise StyleprefsError(f"{message}; generate one image per caption, or pass --unequal subsample")
        warnings.append(f"{message}: used a random subset (seed {seed}) of {n} from each set")
    if n < MIN_RELIABLE_N:
        warnings.append(f"N = {n} < {MIN_RELIABLE_N}: covariances are rank-deficient and FID is biased upward at "
                        "small N; compare FIDs only at equal N and prefer KID at this size")
    dev = resolve_device(device)
    embed, extractor = _extractor(features, inception, resize, seed, batch_size, dev)
    if not extractor["comparable"]:
        warnings.insert(0, NOT_COMPARABLE if features == "random" else MINI_NOTE)
    feats = []
    with _progress(2 * n, show_progress) as advance:
        for image_set in (reference, candidate):
            positions = _subset(image_set.count, n, seed)
            images = (as_dataset_encoding(img, raw) if match_encoding else img for img, raw in image_set.load(positions))
            feats.append(embed(images, advance))
    fid = fid_from_features(*feats)
    kid_mean, kid_std = kid_from_features(*feats, num_subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    result = {
        "fid": fid, "kid": kid_mean, "kid_std": kid_std, "n": n, **counts,
        "kid_subsets": kid_subsets, "kid_subset_size": min(kid_subset_size, n),
        "features": extractor, "comparable_to_published": extractor["comparable"],
        "resize": {"clean": "clean-fid 'clean': PIL bicubic to 299 in float32, no re-quantisation",
                   "pytorch-fid": "pytorch-fid: bilinear F.interpolate to 299, align_corners=False, no antialias"}[resize],
        "resize_mode": resize,
        "encoding": "non-JPEG images re-encoded as JPEG q95 (dataset encoding)" if match_encoding else "as stored",
        "data": str(data), "generated": str(generated), "seed": seed, "warnings": warnings,
    }
    write_json(result, Path(out) if out else Path(generated) / RESULT_FILE)
    return result


def _extractor(features: str, inception: str | Path | None, resize: str, seed: int, batch_size: int,
               device: torch.device) -> tuple[Callable[[Iterable[Image.Image], Callable[[int], None]], np.ndarray], dict]:
    """(images, advance) -> float64 features, and how they are made."""
    if features == "mini":
        from styleprefs.eval.rewards import load_clip

        clip = load_clip("mini-clip", "mini FID", device)

        def embed_mini(images: Iterable[Image.Image], advance: Callable[[int], None]) -> np.ndarray:
            images = list(images)
            advance(len(images))
            return clip.image_embeddings(images, batch_size).double().numpy()

        return embed_mini, {"name": "mini-clip image embeddings (mini FID)", "comparable": False}
    if features == "random":
        model, extractor = random_fid_inception(seed), {"name": "random", "seed": seed, "comparable": False}
    else:
        weights = find_weights(inception)
        model = load_fid_inception(weights)
        extractor = {"name": "FID Inception (TF 2015-12-05), pytorch-fid port", "weights": str(weights),
                     "comparable": True}

    def embed_inception(images: Iterable[Image.Image], advance: Callable[[int], None]) -> np.ndarray:
        return inception_features(images, model, resize=resize, batch_size=batch_size, device=device, advance=advance)

    return embed_inception, extractor


def _subset(count: int, n: int, seed: int) -> list[int]:
    if count == n:
        return list(range(count))
    return sorted(np.random.default_rng([seed, count]).choice(count, n, replace=False).tolist())


class _progress:
    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled

    def __enter__(self) -> Callable[[int], None]:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("[bold]inception features"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), disable=not self.enabled)
        self.progress.__enter__()
        task = self.progress.add_task("features", total=self.total)
        return lambda k: self.progress.update(task, advance=k)

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
