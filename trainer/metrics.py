"""Preference metrics logged beside the loss (no gradient)."""

from __future__ import annotations

import torch
from torch import Tensor

from styleprefs.trainer.losses import dpo_logits, implicit_reward


@torch.no_grad()
def preference_metrics(
    err_w: Tensor, err_l: Tensor, ref_err_w: Tensor, ref_err_l: Tensor, beta: float
) -> dict[str, float]:
    """Diffusion-DPO diagnostics of one batch of pairs, as Python floats.

    With ``d = err - ref_err``, reward ``r(x) = -(beta/2) * d(x)`` and the DPO logit
    ``logit_i = r(w_i) - r(l_i)`` (:func:`~styleprefs.trainer.losses.dpo_logits`, as in ``dpo_loss``):

    - ``implicit_acc``: ``mean_i [logit_i > 0]``; a logit of exactly 0 (policy = reference) counts as
      wrong, so an untrained policy scores 0.0, not 0.5.
    - ``reward_w``, ``reward_l``: ``mean_i r(w_i)``, ``mean_i r(l_i)``.
    - ``reward_margin``: ``mean_i (r(w_i) - r(l_i))``, equal to ``logit_mean``.
    - ``logit_mean``, ``logit_std``: mean and population standard deviation (0.0 for one pair).
    - ``mse_w``, ``mse_l``, ``ref_mse_w``, ``ref_mse_l``: mean policy and reference errors per side.

    Computed in float64 whatever the input dtype.
    """
    err_w, err_l, ref_err_w, ref_err_l = (t.detach().double() for t in (err_w, err_l, ref_err_w, ref_err_l))
    logits = dpo_logits(err_w, err_l, ref_err_w, ref_err_l, beta)
    reward_w = implicit_reward(err_w, ref_err_w, beta)
    reward_l = implicit_reward(err_l, ref_err_l, beta)
    return {
        "implicit_acc": (logits > 0).double().mean().item(),
        "reward_w": reward_w.mean().item(),
        "reward_l": reward_l.mean().item(),
        "reward_margin": logits.mean().item(),
        "logit_mean": logits.mean().item(),
        "logit_std": logits.std(correction=0).item(),
        "mse_w": err_w.mean().item(),
        "mse_l": err_l.mean().item(),
        "ref_mse_w": ref_err_w.mean().item(),
        "ref_mse_l": ref_err_l.mean().item(),
    }
