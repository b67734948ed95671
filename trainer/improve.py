"""The improvement model of "Iterative DPO with an improvement model" (sec. 3.1) and its multi-task batches.

The model is the base UNet with 4 more input channels for the conditioning image's latent, their
weights zero (InstructPix2Pix's initialisation), so at step 0 it predicts exactly what the base does,
whatever the conditioning image. The conditioning latent is the VAE posterior mean, unscaled, as
diffusers' ``StableDiffusionInstructPix2PixPipeline`` encodes its input image; "no image" is a zero latent
and "no prompt" the empty prompt, as that pipeline's guidance passes them.

Each pair of a micro-batch trains one task, drawn from ``(seed, micro step, position in the global batch)``:

- improve: the winner, given the loser's latent and the prompt;
- reconstruct: x given x's own latent and no prompt, x the winner or the loser (a coin);
- unconditional: x with no image and no prompt, x the winner or the loser.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from torch import Tensor

from styleprefs.errors import StyleprefsError
from styleprefs.trainer.families import Components
from styleprefs.trainer.families.unet import StableDiffusion

TASKS = ("improve", "reconstruct", "unconditional")
IMPROVE, RECONSTRUCT, UNCONDITIONAL = range(3)
_TASK_STREAM = 1  # keeps the task draws apart from the pair draws of the same (seed, step, slot)


def add_image_channels(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """``unet`` with as many extra, zero-initialised input channels as it has latent channels (in place);
    an ``unet`` that already has them (an improver) is returned as it is."""
    latent = unet.config.out_channels
    if unet.config.in_channels == 2 * latent:
        return unet
    if unet.config.in_channels != latent:
        raise StyleprefsError(f"cannot make an improvement model from a UNet with {unet.config.in_channels} input "
                              f"channels: it needs a text-to-image UNet ({latent} input channels)")
    old = unet.conv_in
    new = torch.nn.Conv2d(2 * latent, old.out_channels, old.kernel_size, old.stride, old.padding,
                          device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :latent] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=2 * latent)
    return unet


def check_improver_base(kind: str) -> None:
    if kind != "sd":
        raise StyleprefsError("--stage improve needs an SD1.5-layout model (InstructPix2Pix format has no SDXL "
                              "pipeline in diffusers)")


def draw_tasks(seed: int, micro_step: int, slots: list[int], reconstruct: float, unconditional: float
               ) -> tuple[Tensor, Tensor]:
    """Per pair at global-batch positions ``slots``: its task (IMPROVE, RECONSTRUCT, UNCONDITIONAL) and whether
    x is the loser (used by the last two), from ``default_rng([seed, micro_step, slot, 1])``."""
    tasks, losers = [], []
    for slot in slots:
        u, coin = np.random.default_rng([seed, micro_step, slot, _TASK_STREAM]).random(2)
        tasks.append(RECONSTRUCT if u < reconstruct else UNCONDITIONAL if u < reconstruct + unconditional
                     else IMPROVE)
        losers.append(bool(coin < 0.5))
    return torch.tensor(tasks), torch.tensor(losers)


def improve_inputs(batch: dict[str, Tensor], timesteps: Tensor, noise: Tensor, posterior: tuple[Tensor, Tensor],
                   tasks: Tensor, use_loser: Tensor, components: Components) -> tuple[dict[str, Tensor], Tensor]:
    """UNet inputs (noisy latent and conditioning latent as 8 channels) and target of one multi-task micro-batch.

    ``batch`` is a :class:`~styleprefs.trainer.cache.PairBatches` batch (winners then losers); ``posterior``
    the winners' and losers' VAE posterior noise; all per-pair tensors are [B, ...].
    """
    scheduler = components.noise_scheduler
    mean_w, mean_l = batch["latent_mean"].chunk(2)
    std_w, std_l = batch["latent_std"].chunk(2)
    scale = components.vae.config.scaling_factor
    on_loser = _rows(use_loser & (tasks != IMPROVE))
    x = torch.where(on_loser, mean_l + std_l * posterior[1], mean_w + std_w * posterior[0]) * scale
    image = torch.where(_rows(use_loser | (tasks == IMPROVE)), mean_l, mean_w)
    image = torch.where(_rows(tasks == UNCONDITIONAL), torch.zeros_like(image), image)
    noisy = scheduler.add_noise(x, noise, timesteps)
    target = noise if StableDiffusion.prediction_type(components) == "epsilon" else scheduler.get_velocity(x, noise, timesteps)
    prompt = torch.where((tasks == IMPROVE)[:, None, None], batch["prompt_embeds"], batch["empty_prompt_embeds"][None])
    return {"sample": torch.cat([noisy, image], dim=1), "timestep": timesteps, "encoder_hidden_states": prompt}, target


def task_metrics(errors: Tensor, tasks: Tensor) -> dict[str, float]:
    """Mean error per task (NaN for a task no pair drew) and each task's share of the pairs."""
    metrics = {}
    for code, name in enumerate(TASKS):
        chosen = tasks == code
        metrics[f"mse_{name}"] = errors[chosen].mean().item() if chosen.any() else float("nan")
        metrics[f"share_{name}"] = chosen.float().mean().item()
    return metrics


def _rows(mask: Tensor) -> Tensor:
    return mask[:, None, None, None]
