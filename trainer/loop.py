"""The training loop shared by every stage (DESIGN.md, "Trainer").

Per optimizer step and process: ``gradient_accumulation_steps`` micro-batches of ``batch_size``
pairs, each inside ``accelerator.accumulate``. A micro-batch stacks winners and losers into 2B
latents; both members of a pair share the noise and the timestep. One policy forward (with grad)
and, for dpo/rpo, one reference forward (no grad) on the 2B latents give per-sample errors, from
which the stage's loss is computed. SFT runs the policy on the B winners only.

One process, DDP, or FSDP2 with ``--fsdp`` (:mod:`styleprefs.trainer.sharding`); DeepSpeed and FSDP1 are refused
(:func:`check_distributed`).

Reproducibility: micro-batch ``m`` takes the pairs at positions ``[m * G, (m + 1) * G)`` (modulo
the epoch) of a permutation drawn from ``(seed, epoch)``, G = batch_size x processes, process r
taking its slice; every random draw of a pair (timestep, noise, VAE posterior sample, caption
dropout) comes from ``(seed, m, position in the global batch)``. So a resumed run needs no replay
and reaches the same weights, and the result does not depend on how the global batch is split
across processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import cast_training_params
from peft import LoraConfig
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import Tensor

from styleprefs.errors import StyleprefsError
from styleprefs.gpu import compile_model, set_tf32, to_channels_last
from styleprefs.io import check_separate, write_text
from styleprefs.lock import folder_lock
from styleprefs.trainer.cache import PairBatches, build_cache, find_clip_cache
from styleprefs.trainer.checkpoint import (base_pipeline, checkpoint_dir, list_checkpoints, load_checkpoint,
                                           save_checkpoint, save_pipeline)
from styleprefs.trainer.config import CONFIG_FILE, ITERATIVE_STAGES, REFERENCE_STAGES, RPO_STAGES, TrainConfig
from styleprefs.trainer.improve import add_image_channels, check_improver_base, draw_tasks, improve_inputs, task_metrics
from styleprefs.trainer.families import Components, Family, PairDraws
from styleprefs.trainer.losses import (combine_embeddings, dpo_loss, orpo_loss, orrpo_loss, per_sample_error, rpo_loss,
                                       rpo_weights, sft_loss)
from styleprefs.trainer.metrics import preference_metrics
from styleprefs.trainer.models import (check_denoiser_source, family_of, load_components, load_denoiser, quiet_loading,
                                       resolve_model)
from styleprefs.trainer.plots import plot_curves, save_grid
from styleprefs.trainer.sharding import fsdp_plugin, full_state_dict, is_sharded, shard_frozen, shard_on_cpu

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
VALIDATION_INFERENCE_STEPS = 25
# Below this AdamW / Adafactor (fixed step) move a weight by at most ~lr per step: a run changes next to nothing.
MIN_MOVING_LR = 1e-7
# A preference loss this close to 0 for this many steps in a row has no gradient left: warn once.
SATURATED_LOSS = 1e-6
SATURATION_STEPS = 20
METRICS = "metrics.jsonl"

console = Console(stderr=True, soft_wrap=True)


@dataclass
class _Run:
    """What the steps of one training run share."""

    accelerator: Accelerator
    pairs: PairBatches
    components: Components
    policy: torch.nn.Module  # as prepared by accelerate (DDP-wrapped with several processes)
    policy_module: torch.nn.Module  # unwrapped (the UNet or transformer)
    reference: torch.nn.Module | None  # policy_module itself for LoRA without --ref (adapters disabled)
    trainable: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler


@quiet_loading()
def train(cfg: TrainConfig, *, show_progress: bool = True) -> Path:
    """Train ``cfg.stage`` and write the run folder ``cfg.out`` (see TrainConfig.out); returns it.

    With several DDP processes, the run ends by checking that every process holds the same weights
    (:func:`weight_divergence`), and stops with a StyleprefsError if not. The iterative and spin stages
    run this loop once per iteration (:mod:`styleprefs.trainer.iterative`).
    """
    if cfg.stage in ITERATIVE_STAGES:
        from styleprefs.trainer.iterative import train_iterations  # it calls this function

        return train_iterations(cfg, show_progress=show_progress)
    cfg = training_config(cfg)
    out = Path(cfg.out)
    _check_separate(cfg, out)
    # The launcher's RANK, not PartialState(): creating the state here, before _accelerator() sets up the
    # process group, would leave every process believing it is alone.
    with folder_lock(out) if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext():
        return _train(cfg, out, show_progress)


def training_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg.resolved()`` with the model family's beta when none is given (what train_config.yaml records)."""
    cfg = cfg.resolved()
    if cfg.beta is None:
        cfg = dataclasses.replace(cfg, beta=family_of(cfg.model).default_beta)
    return cfg


def _check_separate(cfg: TrainConfig, out: Path) -> None:
    """Refuse an --out that is, holds or sits inside a local --data, --init or --ref."""
    for flag, source in (("--data", cfg.data), ("--init", cfg.init), ("--ref", cfg.ref)):
        if source and Path(source).expanduser().exists():
            check_separate(out, flag, [Path(source).expanduser()])


def _train(cfg: TrainConfig, out: Path, show_progress: bool) -> Path:
    """The run of :func:`train`, under the run folder's lock (taken by the main process only)."""
    # A process may train several times (quickstart: sft, then rpo) with other precisions; accelerate
    # keeps its settings in a process-wide singleton, so forget them (the process group stays).
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = _accelerator(cfg, out)
    check_distributed(accelerator, cfg)
    main = accelerator.is_main_process
    resume_from = _resume_point(cfg, out)
    set_seed(cfg.seed)
    run = _setup(cfg, accelerator, show_progress)
    step, nan_steps = 0, 0
    if resume_from is not None:
        state = load_checkpoint(accelerator, cfg, resume_from)
        step, nan_steps = state["step"], state["nan_steps"]
    if main:
        _start_files(cfg, out, step)
        _print_start(cfg, accelerator, len(run.pairs), resume_from, run.components.family)
    accelerator.init_trackers("styleprefs", config=_tracker_config(cfg))

    saturated = 0  # preference-loss steps in a row with a loss of about 0
    with _progress(cfg.max_steps, step, show_progress and main) as advance:
        while step < cfg.max_steps:
            record = _train_step(cfg, run, step)
            step += 1
            saturated = saturated + 1 if cfg.stage in REFERENCE_STAGES and record["loss"] < SATURATED_LOSS else 0
            if main:
                _log(accelerator, out, record)
                advance(record)
                if saturated == SATURATION_STEPS:
                    _warn_saturated(cfg, step, record)
            if record["skipped"]:
                nan_steps += 1
                _on_skipped(cfg, main, step - 1, nan_steps)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                save_checkpoint(accelerator, cfg, step, nan_steps, run.policy_module, run.components.family)
            if cfg.validation_prompts and cfg.validation_every and step % cfg.validation_every == 0 \
                    and step < cfg.max_steps:
                _validate(cfg, accelerator, run.components, run.policy_module, step)

    if cfg.checkpoint_every and not checkpoint_dir(out, step).is_dir():
        save_checkpoint(accelerator, cfg, step, nan_steps, run.policy_module, run.components.family)
    if cfg.validation_prompts:
        _validate(cfg, accelerator, run.components, run.policy_module, step)
    _check_in_sync(accelerator, run)
    state = full_state_dict(accelerator, run.policy_module)
    accelerator.wait_for_everyone()
    if main:
        _finish(cfg, out, run.policy_module, run.components.family, state)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out


def _accelerator(cfg: TrainConfig, out: Path) -> Accelerator:
    plugin = fsdp_plugin(family_of(cfg.model)) if cfg.fsdp else None
    accelerator = Accelerator(cpu=_cpu_processes(), mixed_precision=cfg.mixed_precision, fsdp_plugin=plugin,
                              gradient_accumulation_steps=cfg.gradient_accumulation_steps, log_with=_tracker(cfg),
                              project_dir=str(out / "logs"))
    if plugin is not None and not is_sharded(accelerator):
        shard_on_cpu(accelerator, plugin)
    return accelerator


def check_distributed(accelerator: Accelerator, cfg: TrainConfig) -> None:
    """Refuse DeepSpeed, FSDP1 and LoRA or validation grids under FSDP: the loop's clipping, non-finite-step
    skipping and saving are shown correct for one process, DDP and FSDP2 of a full fine-tuning (tests)."""
    distributed_type = accelerator.distributed_type
    if distributed_type == DistributedType.DEEPSPEED or (distributed_type == DistributedType.FSDP
                                                         and not accelerator.is_fsdp2):
        raise StyleprefsError(f"{distributed_type.value}{'' if distributed_type == DistributedType.DEEPSPEED else ' 1'} "
                              f"is not supported: train on one process, with DDP, or sharded with --fsdp (FSDP2); "
                              f"to save memory use --lora-rank, --gradient-checkpointing or bf16")
    if distributed_type == DistributedType.FSDP and (cfg.lora_rank or cfg.validation_prompts):
        raise StyleprefsError("FSDP shards full fine-tuning: train LoRA adapters unsharded and draw no validation "
                              "grids under FSDP (drop --lora-rank or --validation-prompts)")


def _setup(cfg: TrainConfig, accelerator: Accelerator, show_progress: bool) -> _Run:
    """Cache (built once, by the main process first), data, models, optimizer and LR schedule."""
    weight_dtype = WEIGHT_DTYPES[cfg.mixed_precision]
    device = accelerator.device
    set_tf32(cfg.allow_tf32)
    for flag, source in (("--init", cfg.init), ("--ref", cfg.ref)):
        if source is not None:
            check_denoiser_source(source, flag)
    clip_model = cfg.clip_model if cfg.stage in RPO_STAGES else None
    cached_clip = cfg.stage in RPO_STAGES and clip_model is None  # --clip-model none: embeddings from the cache
    if cached_clip:
        find_clip_cache(cfg.data, cfg.model, cfg.resolution, ties=cfg.ties, seed=cfg.seed, vae=cfg.vae)  # fail early
    with accelerator.main_process_first():
        if cfg.use_cache and not cached_clip:
            build_cache(cfg.data, cfg.model, cfg.resolution, clip_model=clip_model, device=device, dtype=weight_dtype,
                        show_progress=show_progress and accelerator.is_main_process, ties=cfg.ties, seed=cfg.seed,
                        vae=cfg.vae)
        # From a complete cache, text encoders (T5-XXL: 9 GB in bf16) are needed only to draw validation grids.
        components = load_components(cfg.model, dtype=weight_dtype, device=device,
                                     include_denoiser=_reference_source(cfg) == cfg.model,
                                     include_text=not cfg.use_cache or bool(cfg.validation_prompts), vae=cfg.vae)
        components.family = components.family.for_training(cfg.weighting_scheme)
        if cfg.stage == "improve":
            check_improver_base(components.kind)
        pairs = PairBatches(cfg.data, cfg.model, cfg.resolution, clip_model=clip_model, components=components,
                            ties=cfg.ties, seed=cfg.seed, random_flip=cfg.random_flip, use_cache=cfg.use_cache,
                            cached_clip=cached_clip, vae=cfg.vae)
    if len(pairs) < cfg.batch_size * accelerator.num_processes:
        raise StyleprefsError(f"{cfg.data} has {len(pairs)} usable pairs, fewer than one global batch "
                              f"({cfg.batch_size} pairs x {accelerator.num_processes} processes)")

    policy, reference = load_models(cfg, components, weight_dtype)
    if cfg.channels_last:
        to_channels_last(policy, components.vae, *([reference] if reference is not None else []))
    optimizer = _optimizer(cfg, [p for p in policy.parameters() if p.requires_grad],
                           cfg.optimizer_learning_rate(accelerator.num_processes))
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps,
                                 num_training_steps=cfg.max_steps)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    # Not prepared: accelerate would step it once per process per step. Stepped once per optimizer step.
    accelerator.register_for_checkpointing(lr_scheduler)
    policy_module = accelerator.unwrap_model(policy)
    trainable = [p for p in policy_module.parameters() if p.requires_grad]  # FSDP2 replaced them with shards
    if cfg.compile:  # after prepare: DDP wraps the module, the compiled wrapper runs it
        policy = compile_model(policy)
    if reference is not None:
        reference = shard_frozen(reference, components.family) if is_sharded(accelerator) else reference.to(device)
        reference = compile_model(reference) if cfg.compile else reference
    elif cfg.stage in REFERENCE_STAGES:
        reference = policy_module  # LoRA without --ref: the reference pass disables the adapters
    return _Run(accelerator, pairs, components, policy, policy_module, reference, trainable, optimizer, lr_scheduler)


def _train_step(cfg: TrainConfig, run: _Run, step: int) -> dict:
    """One optimizer step: the micro-batches' forward and backward passes, clipping, the update; returns its metrics.

    Every micro-batch is back-propagated even when its loss is not finite (all processes must run the
    same collectives); the update is then skipped on every process alike, since the decision rests
    on gathered losses and the all-reduced gradient norm. With a GradScaler (fp16), non-finite
    gradients are the scaler's business: it skips the update and lowers its scale (``overflow``).
    The LR schedule advances only on updates that happened.
    """
    accelerator = run.accelerator
    records = []
    for k in range(cfg.gradient_accumulation_steps):
        with accelerator.accumulate(run.policy):  # no gradient sync until the last micro-batch
            loss, errors = _micro_step(cfg, run, step * cfg.gradient_accumulation_steps + k)
            accelerator.backward(loss)
        records.append((loss.detach(), errors))
    lr = run.lr_scheduler.get_last_lr()[0]
    grad_norm = float(accelerator.clip_grad_norm_(run.trainable, cfg.max_grad_norm or math.inf))
    record = _step_metrics(cfg, accelerator, records)
    skipped = not math.isfinite(record["loss"]) or (not math.isfinite(grad_norm) and accelerator.scaler is None)
    overflow = False
    if skipped and accelerator.scaler is not None:
        accelerator.scaler.update()  # clip_grad_norm_ unscaled the gradients: close the scaler's step
    elif not skipped:
        run.optimizer.step()
        overflow = accelerator.optimizer_step_was_skipped
        if not overflow:
            run.lr_scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return record | {"step": step, "lr": lr, "grad_norm": grad_norm, "skipped": skipped, "overflow": overflow}


def _warn_saturated(cfg: TrainConfig, step: int, record: dict) -> None:
    console.print(f"[yellow]warning:[/yellow] step {step}: the {cfg.stage} loss has been below {SATURATED_LOSS:g} for "
                  f"{SATURATION_STEPS} steps (reward margin {record.get('reward_margin', math.nan):.3g}), so its "
                  f"gradient has vanished and further steps change almost nothing: every pair is already ranked "
                  f"far apart. Lower --beta (now {cfg.beta:g}), or train on harder pairs (e.g. --stage iterative)")


def _on_skipped(cfg: TrainConfig, main: bool, step: int, nan_steps: int) -> None:
    if main:
        console.print(f"step {step}: non-finite loss or gradient, optimizer step skipped "
                      f"({nan_steps}/{cfg.max_nan_steps})")
    if nan_steps >= cfg.max_nan_steps:
        raise StyleprefsError(f"stopped at step {step}: {nan_steps} steps had a non-finite loss or gradient "
                              f"(--max-nan-steps {cfg.max_nan_steps}); lower --learning-rate or --beta, or try bf16")


def weight_divergence(module: torch.nn.Module) -> float:
    """Largest ``|p - p on process 0|`` over ``module``'s floating-point parameters and buffers and over all
    processes of the default process group: 0.0 when every process holds the same weights (NaN where process 0
    has NaN counts as equal, against a number as inf). Call on every process."""
    tensors = [t.detach() for t in module.state_dict().values() if torch.is_floating_point(t)]
    worst = torch.zeros((), dtype=torch.float64, device=tensors[0].device if tensors else "cpu")
    for tensor in tensors:
        first = tensor.clone()
        dist.broadcast(first, src=0)
        same = (tensor == first) | (tensor.isnan() & first.isnan())
        difference = torch.where(same, 0.0, (tensor - first).abs().double().nan_to_num(nan=math.inf))
        worst = torch.maximum(worst, difference.max() if difference.numel() else worst)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return worst.item()


def _check_in_sync(accelerator: Accelerator, run: _Run) -> None:
    """DDP keeps one copy of the weights per process, updated alike; confirm the copies agree before saving one."""
    if not isinstance(run.policy, torch.nn.parallel.DistributedDataParallel):
        return  # one process, or sharded training (FSDP, DeepSpeed) whose processes hold different shards
    divergence = weight_divergence(run.policy_module)
    if divergence:
        raise StyleprefsError(f"the {accelerator.num_processes} processes ended with different weights (largest "
                              f"difference {divergence:g}); the run's output was not written")
    if accelerator.is_main_process:
        console.print(f"weights identical on all {accelerator.num_processes} processes")


def _cpu_processes() -> bool:
    """True under torchrun without CUDA: accelerate then needs ``cpu=True`` to join the gloo process group
    (otherwise every process silently trains alone)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def load_models(cfg: TrainConfig, components: Components, weight_dtype: torch.dtype
                ) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """The trainable policy (float32; with ``lora_rank``, float32 LoRA adapters on a frozen base in ``weight_dtype``)
    and the frozen reference.

    Reference = ``ref``, else ``init``, else the base model (``components.denoiser``, loaded in
    ``weight_dtype``). It is None for reference-free stages (sft, orpo, orrpo) and for LoRA runs
    without ``ref``, whose reference is the policy with its adapters disabled (the denoiser it started from).
    """
    family = components.family
    # LoRA: the frozen base in the weight dtype, only the adapters in float32 (diffusers' cast_training_params).
    policy = load_denoiser(cfg.init or cfg.model, family, dtype=weight_dtype if cfg.lora_rank else torch.float32)
    if cfg.stage == "improve":
        policy = add_image_channels(policy)
    policy.train()
    if cfg.gradient_checkpointing:
        policy.enable_gradient_checkpointing()
    if cfg.lora_rank:
        policy.requires_grad_(False)
        policy.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_rank, init_lora_weights="gaussian",
                                      target_modules=list(family.lora_targets)))
        cast_training_params(policy, dtype=torch.float32)
    source = _reference_source(cfg)
    if source is None:
        return policy, None
    reference = components.denoiser if source == cfg.model else load_denoiser(source, family, dtype=weight_dtype)
    return policy, reference.requires_grad_(False).eval()


def _reference_source(cfg: TrainConfig) -> str | None:
    """Where the frozen reference UNet comes from, or None when there is no separate one."""
    if cfg.stage not in REFERENCE_STAGES or (cfg.lora_rank and cfg.ref is None):
        return None
    return cfg.ref or cfg.init or cfg.model


def batch_positions(n_pairs: int, seed: int, micro_step: int, batch_size: int, num_processes: int, rank: int
                    ) -> tuple[list[int], list[int], int]:
    """Dataset positions of this process's pairs in micro-batch ``micro_step``, their positions in the global batch, and the epoch.

    Each epoch is a permutation from ``(seed, epoch)`` cut into global batches of
    ``batch_size * num_processes`` (the remainder is not used); process ``rank`` takes its slice.
    """
    global_batch = batch_size * num_processes
    epoch, k = divmod(micro_step, n_pairs // global_batch)
    order = _epoch_order(n_pairs, seed, epoch)
    first = rank * batch_size
    slots = list(range(first, first + batch_size))
    return [int(order[k * global_batch + s]) for s in slots], slots, epoch


@lru_cache(maxsize=2)
def _epoch_order(n_pairs: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n_pairs)


def draw_pairs(seed: int, micro_step: int, slots: list[int], latent_shape: tuple[int, ...],
               draw_time: Callable[[torch.Generator], Tensor], caption_dropout: float) -> PairDraws:
    """The draws of the pairs at global-batch positions ``slots``, each from ``(seed, micro_step, slot)``.

    Per pair, in this order: time (``draw_time``, the family's: a DDPM timestep or a flow noise level's index),
    shared noise, winner and loser posterior noise, dropout draw.
    """
    rows = []
    for slot in slots:
        state = np.random.SeedSequence([seed, micro_step, slot]).generate_state(2, dtype=np.uint32)
        gen = torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))
        rows.append((draw_time(gen),
                     torch.randn(latent_shape, generator=gen),
                     torch.randn(latent_shape, generator=gen),
                     torch.randn(latent_shape, generator=gen),
                     torch.rand((), generator=gen) < caption_dropout))
    return PairDraws(*(torch.stack(column) for column in zip(*rows)))


def _micro_step(cfg: TrainConfig, run: _Run, micro: int) -> tuple[Tensor, dict[str, Tensor]]:
    """Loss of one micro-batch on this process, and its per-pair errors (detached) for the metrics."""
    accelerator, components = run.accelerator, run.components
    positions, slots, epoch = batch_positions(len(run.pairs), cfg.seed, micro, cfg.batch_size,
                                              accelerator.num_processes, accelerator.process_index)
    batch = {k: v.to(accelerator.device) for k, v in run.pairs.batch(positions, epoch).items()}
    draws = draw_pairs(cfg.seed, micro, slots, tuple(batch["latent_mean"].shape[1:]),
                       lambda gen: components.family.draw_time(gen, components), cfg.caption_dropout)
    draws = PairDraws(*(t.to(accelerator.device) for t in dataclasses.astuple(draws)))
    if cfg.stage == "improve":
        return _improve_step(cfg, run, batch, draws, micro, slots)
    family = components.family
    inputs, target = family.model_inputs(batch, draws, components)
    if cfg.stage == "sft":  # its loss uses the winners only
        err_w = _errors(family, run.policy, _winners(inputs), _winners(target), accelerator)
        weights = family.sft_weights(draws.timesteps, components, cfg.snr_gamma)
        return sft_loss(err_w, weights), {"err_w": err_w.detach()}
    err_w, err_l = _errors(family, run.policy, inputs, target, accelerator).chunk(2)
    ref_w = ref_l = None
    if run.reference is not None:
        with torch.no_grad():
            ref_w, ref_l = _reference_errors(family, run.reference, inputs, target, accelerator).chunk(2)
    loss = _stage_loss(cfg, accelerator, batch, err_w, err_l, ref_w, ref_l)
    errors = {"err_w": err_w, "err_l": err_l}
    if ref_w is not None:
        errors |= {"ref_err_w": ref_w, "ref_err_l": ref_l}
    return loss, {k: v.detach() for k, v in errors.items()}


def _improve_step(cfg: TrainConfig, run: _Run, batch: dict[str, Tensor], draws: PairDraws, micro: int,
                  slots: list[int]) -> tuple[Tensor, dict[str, Tensor]]:
    """The improvement model's multi-task loss (plain denoising error) on one micro-batch."""
    tasks, use_loser = (t.to(run.accelerator.device) for t in
                        draw_tasks(cfg.seed, micro, slots, cfg.reconstruct_prob, cfg.unconditional_prob))
    inputs, target = improve_inputs(batch, draws.timesteps, draws.noise, (draws.posterior_w, draws.posterior_l),
                                    tasks, use_loser, run.components)
    errors = _errors(run.components.family, run.policy, inputs, target, run.accelerator)
    return sft_loss(errors), {"err_w": errors.detach(), "task": tasks}


def _winners(stacked: dict | Tensor) -> dict | Tensor:
    """The winners' half of stacked UNet inputs (every tensor's first half along the batch)."""
    if isinstance(stacked, dict):
        return {k: _winners(v) for k, v in stacked.items()}
    return stacked[: stacked.shape[0] // 2]


def _errors(family: Family, model: torch.nn.Module, inputs: dict, target: Tensor, accelerator: Accelerator
            ) -> Tensor:
    """Per-sample denoising errors of ``model`` (inputs cast to its dtype), shape [2B]."""
    with accelerator.autocast():
        pred = family.predict(model, inputs)
    return per_sample_error(pred, target)


def _reference_errors(family: Family, reference: torch.nn.Module, inputs: dict, target: Tensor,
                      accelerator: Accelerator) -> Tensor:
    """The reference's errors; a LoRA policy serving as reference runs with its adapters disabled."""
    if not getattr(reference, "_hf_peft_config_loaded", False):
        return _errors(family, reference, inputs, target, accelerator)
    reference.disable_adapters()
    try:
        return _errors(family, reference, inputs, target, accelerator)
    finally:
        reference.enable_adapters()


def _stage_loss(cfg: TrainConfig, accelerator: Accelerator, batch: dict[str, Tensor], err_w: Tensor, err_l: Tensor,
                ref_w: Tensor | None, ref_l: Tensor | None) -> Tensor:
    if cfg.stage == "dpo":
        return dpo_loss(err_w, err_l, ref_w, ref_l, cfg.beta)
    if cfg.stage == "orpo":
        return orpo_loss(err_w, err_l, cfg.orpo_beta, cfg.lam)
    emb_w = combine_embeddings(batch["clip_image_w"], batch["clip_text"], cfg.embedding)
    emb_l = combine_embeddings(batch["clip_image_l"], batch["clip_text"], cfg.embedding)
    if cfg.gather_rpo and accelerator.num_processes > 1:
        err_l, emb_l = _GatherWithGrad.apply(err_l), accelerator.gather(emb_l)
        ref_l = accelerator.gather(ref_l) if ref_l is not None else None
    weights = rpo_weights(emb_w, emb_l, cfg.tau)
    if cfg.stage == "rpo":
        return rpo_loss(err_w, err_l, ref_w, ref_l, weights, cfg.beta)
    return orrpo_loss(err_w, err_l, weights, cfg.orpo_beta, cfg.lam)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather of a 1-D tensor (in rank order) whose backward returns, to each process, the gradient
    its entries received on every process (an all-reduce, which unlike reduce-scatter gloo supports)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def _step_metrics(cfg: TrainConfig, accelerator: Accelerator, records: list[tuple[Tensor, dict[str, Tensor]]]
                  ) -> dict[str, float]:
    """Loss and preference metrics of one optimizer step over all micro-batches and processes.

    For orpo and orrpo (no reference) ``implicit_acc`` is the share of pairs with e(w) < e(l)
    and ``reward_margin`` the mean ORPO logit orpo_beta * (e(l) - e(w)). For sft (winners only): ``mse_w``.
    """
    losses = accelerator.gather(torch.stack([loss.float() for loss, _ in records]))
    errors = {k: accelerator.gather(torch.cat([e[k] for _, e in records]).float()) for k in records[0][1]}
    if cfg.stage == "sft":
        metrics = {"mse_w": errors["err_w"].mean().item()}
    elif cfg.stage == "improve":
        metrics = {"mse_w": errors["err_w"].mean().item(), **task_metrics(errors["err_w"], errors["task"])}
    elif cfg.stage in REFERENCE_STAGES:
        metrics = preference_metrics(errors["err_w"], errors["err_l"], errors["ref_err_w"], errors["ref_err_l"],
                                     cfg.beta)
    else:
        zeros = torch.zeros_like(errors["err_w"])
        metrics = preference_metrics(errors["err_w"], errors["err_l"], zeros, zeros, 2 * cfg.orpo_beta)
        metrics = {k: v for k, v in metrics.items() if not k.startswith(("ref_", "reward_w", "reward_l"))}
    return {"loss": losses.mean().item(), **metrics}


def _optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if cfg.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, weight_decay=cfg.weight_decay, relative_step=False,
                         scale_parameter=False, warmup_init=False)
    if cfg.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)


def _resume_point(cfg: TrainConfig, out: Path) -> Path | None:
    """The checkpoint to resume from; refuse to start over in a folder that holds a run."""
    checkpoints = list_checkpoints(out)
    if cfg.resume:
        if not checkpoints:
            console.print(f"--resume: no checkpoint in {out / 'checkpoints'}, starting from step 0")
        return checkpoints[-1] if checkpoints else None
    if checkpoints or (out / METRICS).exists() or (out / "model_index.json").exists():
        raise StyleprefsError(f"{out} already holds a training run: pass --resume to continue it, or choose a new --out")
    return None


def _start_files(cfg: TrainConfig, out: Path, step: int) -> None:
    """Write train_config.yaml; on resume, drop metrics of steps after the checkpoint (they are redone)."""
    write_text(cfg.to_yaml(), out / CONFIG_FILE)
    metrics = out / METRICS
    if metrics.exists():
        kept = [line for line in metrics.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line)["step"] < step]
        write_text("".join(line + "\n" for line in kept), metrics)


def learning_rate_lines(cfg: TrainConfig, num_processes: int) -> list[str]:
    """The start banner's learning-rate line (the rate and how it was derived), then any warnings about it."""
    lr = cfg.optimizer_learning_rate(num_processes)
    if cfg.scale_lr:
        how = (f"{cfg.learning_rate:g} x {cfg.batch_size} batch x {cfg.gradient_accumulation_steps} accum x "
               f"{num_processes} processes (--scale-lr)")
    else:
        how = "as given (--no-scale-lr)"
    lines = [f"lr {lr:g} = {how}; {cfg.lr_scheduler}, {cfg.warmup_steps} warm-up steps"]
    if lr < MIN_MOVING_LR:
        lines.append(f"[yellow]warning:[/yellow] lr {lr:g} is below {MIN_MOVING_LR:g}: {cfg.optimizer} moves a "
                     f"weight by at most ~lr per step, so {cfg.max_steps} steps barely change the model; raise "
                     f"--learning-rate" + ("" if cfg.scale_lr else " or use --scale-lr"))
    if cfg.lr_scheduler != "constant" and cfg.warmup_steps >= cfg.max_steps:
        lines.append(f"[yellow]warning:[/yellow] the run ({cfg.max_steps} steps) is shorter than the warm-up "
                     f"({cfg.warmup_steps} steps): the lr never exceeds {lr * cfg.max_steps / cfg.warmup_steps:g}; "
                     f"lower --warmup-steps")
    return lines


def _print_start(cfg: TrainConfig, accelerator: Accelerator, n_pairs: int, resume_from: Path | None,
                 family: Family) -> None:
    per_step = cfg.pairs_per_step(accelerator.num_processes)
    reference = {"sft": "none", "orpo": "none", "orrpo": "none", "improve": "none"}.get(
        cfg.stage, _reference_source(cfg) or f"{cfg.init or cfg.model} (policy with LoRA adapters disabled)")
    console.print(f"[bold]styleprefs train[/bold] stage {cfg.stage}: base {cfg.model}, policy from "
                  f"{cfg.init or cfg.model}, "
                  f"reference {reference}; {n_pairs} pairs, {cfg.batch_size} pairs x "
                  f"{accelerator.num_processes} processes x {cfg.gradient_accumulation_steps} accumulation = "
                  f"{per_step} pairs per step, {cfg.max_steps} steps; model family {family.name}"
                  + (f"; resuming from {resume_from}" if resume_from else ""))
    for line in learning_rate_lines(cfg, accelerator.num_processes):
        console.print(line)
    if cfg.stage in REFERENCE_STAGES:
        target = "velocity (noise - x0)" if family.denoiser_folder == "transformer" else "noise (or v)"
        console.print(f"beta {cfg.beta:g} (the {family.name} default is {family.default_beta:g}) on Diffusion-DPO's "
                      f"official scale: logit = -(beta/2) * ((e_theta(w) - e_ref(w)) - (e_theta(l) - e_ref(l))), "
                      f"e = per-element mean squared error of the {target} prediction; the paper's beta*T on "
                      f"summed errors = beta / (2*C*H*W)")
    elif cfg.stage == "improve":
        console.print(f"tasks per pair: improve (winner | loser, prompt) "
                      f"{1 - cfg.reconstruct_prob - cfg.unconditional_prob:.3g}, reconstruct (x | x) "
                      f"{cfg.reconstruct_prob:.3g}, unconditional {cfg.unconditional_prob:.3g}")
    elif cfg.stage in ("orpo", "orrpo"):
        console.print(f"orpo_beta {cfg.orpo_beta:g}, lambda {cfg.lam:g}: loss = mean e(w) + lambda * "
                      f"mean -log sigmoid(orpo_beta * (e(l) - e(w))), e = per-element mean squared error")
    if cfg.report_to == "tensorboard" and _tracker(cfg) is None:
        console.print("note: tensorboard is not installed, so no TensorBoard logs (metrics.jsonl has every step)")


def _tracker(cfg: TrainConfig) -> str | None:
    if cfg.report_to == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        return None
    return None if cfg.report_to == "none" else cfg.report_to


def _tracker_config(cfg: TrainConfig) -> dict:
    """The config as tracker hyperparameters (scalars and strings only)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in dataclasses.asdict(cfg).items()}


def _log(accelerator: Accelerator, out: Path, record: dict) -> None:
    clean = {k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in record.items()}
    with open(out / METRICS, "a", encoding="utf-8") as f:
        f.write(json.dumps(clean) + "\n")
    numeric = {k: float(v) for k, v in clean.items() if isinstance(v, (int, float)) and k != "step"}
    accelerator.log(numeric, step=record["step"])


@contextlib.contextmanager
def _progress(total: int, done: int, enabled: bool):
    with Progress(TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]} acc {task.fields[acc]}"), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, disable=not enabled) as progress:
        task = progress.add_task("train", total=total, completed=done, loss="-", acc="-")

        def advance(record: dict) -> None:
            acc = record.get("implicit_acc")
            progress.update(task, advance=1, loss=f"{record['loss']:.4g}", acc="-" if acc is None else f"{acc:.2f}")

        yield advance


def _validate(cfg: TrainConfig, accelerator: Accelerator, components: Components, model: torch.nn.Module,
              step: int) -> None:
    """Draw the validation prompts with fixed seeds (seed + prompt number) into out/validation/step-XXXXXX.png."""
    if accelerator.is_main_process:
        family = components.family
        modules = {family.denoiser_folder: model, "vae": components.vae, **components.text}
        pipe = base_pipeline(resolve_model(cfg.model), **modules)
        pipe.set_progress_bar_config(disable=True)
        model.eval()
        with torch.no_grad(), accelerator.autocast():
            images = [pipe(prompt, height=cfg.resolution, width=cfg.resolution,
                           num_inference_steps=VALIDATION_INFERENCE_STEPS,
                           guidance_scale=family.validation_guidance, **family.sampling_kwargs(pipe),
                           generator=torch.Generator().manual_seed(cfg.seed + i)).images[0]
                      for i, prompt in enumerate(cfg.validation_prompts)]
        model.train()
        save_grid(images, Path(cfg.out) / "validation" / f"step-{step:06d}.png")
    accelerator.wait_for_everyone()


def _finish(cfg: TrainConfig, out: Path, model: torch.nn.Module, family: Family,
            state: dict[str, Tensor] | None) -> None:
    """Save the final pipeline (LoRA merged into the denoiser, and beside it for LoRA runs; ``state``: the full
    weights of a sharded model) and the curves."""
    missing = save_pipeline(cfg.model, model.eval(), out, family, state)
    if missing:
        console.print(f"note: {cfg.model} lists {', '.join(missing)} but they are not stored locally, so the saved "
                      f"pipeline has none")
    if (out / METRICS).exists() and not plot_curves(out / METRICS, out / "curves.png"):
        console.print("note: matplotlib is not installed, so no curves.png (metrics.jsonl has every step)")
