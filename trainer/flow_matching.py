"""Rectified-flow training math (Stable Diffusion 3, FLUX.1), as diffusers' SD3/FLUX fine-tuning scripts do it.

A clean latent ``x0`` and noise ``n`` at noise level ``sigma`` in [0, 1] give ``x_t = (1 - sigma) * x0 + sigma * n``;
the model predicts the velocity ``n - x0``, the quantity ``FlowMatchEulerDiscreteScheduler.step`` integrates
(``x_prev = x_t + (sigma_next - sigma) * v``). Noise levels are drawn as a density ``u`` in [0, 1]
(``compute_density_for_timestep_sampling``: logit-normal by default), turned into an index into the scheduler's
training schedule, whose (shifted) sigmas and timesteps are then read off.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3
from torch import Tensor

WEIGHTING_SCHEMES = ("logit_normal", "mode", "uniform", "sigma_sqrt", "cosmap")


@dataclass(frozen=True)
class FlowSampling:
    """How noise levels are drawn and errors weighted (diffusers' ``--weighting_scheme`` and its parameters).

    ``scheme`` "logit_normal" (default), "mode" and "uniform" shape the density of the draws; "sigma_sqrt" and
    "cosmap" draw uniformly and weight each error instead, as diffusers does.
    """

    scheme: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29

    def draw_u(self, generator: torch.Generator) -> Tensor:
        """One density draw in [0, 1] (a 0-d tensor) from ``generator``."""
        return compute_density_for_timestep_sampling(self.scheme, 1, logit_mean=self.logit_mean,
                                                     logit_std=self.logit_std, mode_scale=self.mode_scale,
                                                     generator=generator)[0]

    def weights(self, sigmas: Tensor) -> Tensor:
        """Per-sample loss weights for noise levels ``sigmas`` (ones unless the scheme weights errors)."""
        return compute_loss_weighting_for_sd3(self.scheme, sigmas).to(sigmas.dtype)


def schedule_index(u: Tensor, scheduler: FlowMatchEulerDiscreteScheduler) -> Tensor:
    """Indices into the scheduler's training schedule for densities ``u`` (diffusers: ``(u * T).long()``)."""
    steps = scheduler.config.num_train_timesteps
    return (u * steps).long().clamp(0, steps - 1)


def training_schedule(scheduler: FlowMatchEulerDiscreteScheduler) -> tuple[Tensor, Tensor]:
    """The training schedule's timesteps (0-1000, high noise first) and their sigmas, both float32 [T].

    A fresh scheduler of the same config, so that sampling with the pipeline's scheduler cannot change it."""
    fresh = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)
    return fresh.timesteps.float(), fresh.sigmas[: len(fresh.timesteps)].float()


def noisy_latents(x0: Tensor, noise: Tensor, sigmas: Tensor) -> Tensor:
    """``(1 - sigma) * x0 + sigma * noise``, with ``sigmas`` [B] broadcast over the other dimensions."""
    sigma = sigmas.reshape(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - sigma) * x0 + sigma * noise


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """The flow-matching target ``noise - x0``."""
    return noise - x0
