"""Training losses as pure functions of per-sample denoising errors.

Convention (DESIGN.md, "Losses"): for model M and pair side x (latent z, noise eps, timestep t, prompt c),
``e_M(x) = mean over C,H,W of (M(z_t, t, c) - target)^2`` with target = eps (or v for v-prediction).
The winner w_i and loser l_i of one pair share eps and t. ``d(x) = e_theta(x) - e_ref(x)`` and the
implicit reward is ``r(x) = -(beta/2) * d(x)`` (Diffusion-DPO's official scale; beta default 5000 is
set by the trainer config, not here). Every loss returns a scalar tensor; every error argument is a
1-D tensor with one entry per sample. Log-sigmoids use ``F.logsigmoid``, finite for any finite logit
(``log(sigmoid(x))`` is ``-inf`` for x below about -100 in float32, reached by beta * |d| > 200).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

EmbeddingMode = Literal["image", "text", "mean", "concat"]


def per_sample_error(pred: Tensor, target: Tensor) -> Tensor:
    """``e[i] = mean over all non-batch dims of (pred[i] - target[i])^2``, shape (B,).

    Inputs are upcast to at least float32 before the subtraction (half and bfloat16 lose the small
    differences the preference losses depend on); float64 stays float64.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    dtype = torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)
    diff = pred.to(dtype) - target.to(dtype)
    return diff.square().reshape(diff.shape[0], -1).mean(dim=1)


def implicit_reward(err: Tensor, ref_err: Tensor, beta: float) -> Tensor:
    """``r = -(beta/2) * (err - ref_err)``: positive when the policy denoises better than the reference."""
    _check_same_1d(err=err, ref_err=ref_err)
    return -(beta / 2) * (err - ref_err)


def sft_loss(err_w: Tensor, weights: Tensor | None = None) -> Tensor:
    """``loss = mean_i weight_i * e_theta(w_i)``, every weight 1 unless ``weights`` are given (see min_snr_weights)."""
    weights = torch.ones_like(err_w) if weights is None else weights
    _check_same_1d(err_w=err_w, weights=weights)
    return (weights.to(err_w.dtype) * err_w).mean()


def min_snr_weights(snr: Tensor, gamma: float, prediction_type: str) -> Tensor:
    """Min-SNR-gamma weights (Hang et al. 2023) of per-sample losses at ``snr``: ``min(snr, gamma) / snr`` for
    epsilon prediction, ``min(snr, gamma) / (snr + 1)`` for v-prediction. They cap the weight that the plain loss
    gives low-noise timesteps (fine detail), leaving more to the high-noise ones that set colour and layout."""
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr


def dpo_logits(err_w: Tensor, err_l: Tensor, ref_err_w: Tensor, ref_err_l: Tensor, beta: float) -> Tensor:
    """``logit_i = -(beta/2) * (d(w_i) - d(l_i)) = r(w_i) - r(l_i)`` with ``d = e_theta - e_ref``, shape (B,).

    Positive when the policy improved the winner more than the loser; its sign is the implicit accuracy.
    """
    _check_same_1d(err_w=err_w, err_l=err_l, ref_err_w=ref_err_w, ref_err_l=ref_err_l)
    return implicit_reward(err_w, ref_err_w, beta) - implicit_reward(err_l, ref_err_l, beta)


def dpo_loss(err_w: Tensor, err_l: Tensor, ref_err_w: Tensor, ref_err_l: Tensor, beta: float) -> Tensor:
    """Diffusion-DPO: ``loss = mean_i -log sigmoid(logit_i)``, ``logit_i`` from :func:`dpo_logits`."""
    return -F.logsigmoid(dpo_logits(err_w, err_l, ref_err_w, ref_err_l, beta)).mean()


def combine_embeddings(image_emb: Tensor, text_emb: Tensor, mode: EmbeddingMode = "mean") -> Tensor:
    """The RPO similarity embedding ``u(x)`` of (image, prompt) rows, L2-normalised, shape (B, D').

    With ``n(v) = v / |v|``: "image" ``n(img)``; "text" ``n(txt)``; "mean" (default)
    ``n(n(img) + n(txt))``; "concat" ``n([n(img), n(txt)])``, whose cosine is the mean of the image
    and text cosines.
    """
    if mode == "image":
        return F.normalize(image_emb, dim=-1)
    if mode == "text":
        return F.normalize(text_emb, dim=-1)
    if mode == "mean":
        return F.normalize(F.normalize(image_emb, dim=-1) + F.normalize(text_emb, dim=-1), dim=-1)
    if mode == "concat":
        joined = torch.cat([F.normalize(image_emb, dim=-1), F.normalize(text_emb, dim=-1)], dim=-1)
        return F.normalize(joined, dim=-1)
    raise ValueError(f"unknown embedding mode {mode!r}; choose image, text, mean or concat")


def rpo_weights(emb_w: Tensor, emb_l: Tensor, tau: float) -> Tensor:
    """Diffusion-RPO pair weights, shape (B_w, B_l), each row summing to 1.

    ``D_ij = 1 - cos(emb_w_i, emb_l_j)``, ``W_ij = softmax over j of (-D_ij / tau)``. Small tau puts
    each row's weight on the most similar loser; large tau spreads it uniformly. Embeddings are
    normalised here and the result is computed in at least float32.
    """
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    if emb_w.ndim != 2 or emb_l.ndim != 2 or emb_w.shape[1] != emb_l.shape[1]:
        shapes = f"{tuple(emb_w.shape)} and {tuple(emb_l.shape)}"
        raise ValueError(f"expected (B_w, D) and (B_l, D) embeddings, got {shapes}")
    dtype = torch.promote_types(torch.promote_types(emb_w.dtype, emb_l.dtype), torch.float32)
    cos = F.normalize(emb_w.to(dtype), dim=1) @ F.normalize(emb_l.to(dtype), dim=1).T
    return torch.softmax(-(1 - cos) / tau, dim=1)


def rpo_loss(
    err_w: Tensor, err_l: Tensor, ref_err_w: Tensor, ref_err_l: Tensor, weights: Tensor, beta: float
) -> Tensor:
    """Diffusion-RPO: every winner against every loser, ``loss = mean_i sum_j W_ij * (-log sigmoid(logit_ij))``.

    ``logit_ij = -(beta/2) * (d(w_i) - d(l_j)) = r(w_i) - r(l_j)``. The weight multiplies the
    log-sigmoid (Gu et al.'s change from LLM RPO, which puts it inside). With ``W = I`` this is
    :func:`dpo_loss` exactly.

    ``weights`` (B_w, B_l) is detached: it comes from frozen CLIP embeddings (:func:`rpo_weights`),
    so it is a constant of the batch, and detaching also keeps a caller's graph from flowing into it.

    Non-square batches: for the cross-device variant pass the local winners (B_w) and the losers
    gathered from all devices (B_l = world_size * B_w, ``ref_err_l`` gathered in the same order) with
    weights computed from local winner and gathered loser embeddings. Gather ``err_l`` with an
    autograd-aware all-gather (``torch.distributed.nn.functional.all_gather``) so the terms a loser
    appears in on other devices send their gradient back to its own device; a plain
    ``all_gather`` returns constants and those gradient terms are lost.
    """
    _check_same_1d(err_w=err_w, ref_err_w=ref_err_w)
    _check_same_1d(err_l=err_l, ref_err_l=ref_err_l)
    _check_weights(weights, err_w, err_l)
    logits = implicit_reward(err_w, ref_err_w, beta)[:, None] - implicit_reward(err_l, ref_err_l, beta)[None, :]
    return (weights.detach() * -F.logsigmoid(logits)).sum(dim=1).mean()


def orpo_loss(err_w: Tensor, err_l: Tensor, beta: float, lam: float) -> Tensor:
    """Reference-free ORPO: ``loss = mean_i e(w_i) + lam * mean_i -log sigmoid(beta * (e(l_i) - e(w_i)))``.

    ``e`` is the policy error. The preference term falls when the winner is denoised better than the
    loser (e(w) < e(l)); the diffusers ``diffusion_orpo`` example has this sign inverted.
    """
    _check_same_1d(err_w=err_w, err_l=err_l)
    return err_w.mean() + lam * -F.logsigmoid(beta * (err_l - err_w)).mean()


def orrpo_loss(err_w: Tensor, err_l: Tensor, weights: Tensor, beta: float, lam: float) -> Tensor:
    """ORPO over the RPO matrix: ``mean_i e(w_i) + lam * mean_i sum_j W_ij * -log sigmoid(beta * (e(l_j) - e(w_i)))``.

    ``weights`` is detached and may be non-square, as in :func:`rpo_loss`. With ``W = I`` this is
    :func:`orpo_loss`.
    """
    _check_same_1d(err_w=err_w)
    _check_same_1d(err_l=err_l)
    _check_weights(weights, err_w, err_l)
    nll = -F.logsigmoid(beta * (err_l[None, :] - err_w[:, None]))
    return err_w.mean() + lam * (weights.detach() * nll).sum(dim=1).mean()


def _check_same_1d(**tensors: Tensor) -> None:
    """Raise unless every tensor is 1-D with the same length (a stray (B, 1) would broadcast to B x B)."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if any(len(s) != 1 for s in shapes.values()) or len(set(shapes.values())) != 1:
        raise ValueError(f"expected 1-D per-sample errors of equal length, got {shapes}")


def _check_weights(weights: Tensor, err_w: Tensor, err_l: Tensor) -> None:
    if tuple(weights.shape) != (err_w.shape[0], err_l.shape[0]):
        raise ValueError(
            f"weights {tuple(weights.shape)} must be (len(err_w), len(err_l)) = ({err_w.shape[0]}, {err_l.shape[0]})"
        )
