"""Benchmark: pairs/s of a tiny-model training step from the cache against one that re-encodes every step and against the floor of a DPO step, and RPO's cost over DPO.

    python bench/train_step.py [--pairs 32] [--batch-size 4] [--resolution 64] [--steps 8] [--rounds 9] [--threads 1]
                               [--e2e-steps 10 210] [--e2e-rounds 3]

Baselines, measured in the same run on the same data and model: a DPO step that decodes both images
of each pair and encodes them with the VAE and the caption with the text encoder every step (as the
Diffusion-DPO / Diffusion-RPO reference scripts do), against the trainer's cached step, which reads
latents and embeddings from ``styleprefs cache``. RPO (the B x B CLIP-weighted matrix, embeddings from
the cache) is timed against the same cached DPO step. The floor of a DPO step is only the necessary
work on inputs prepared once (noised latents, timesteps, prompt embeddings and targets already on the
device): the policy forward and backward and the reference forward on 2B latents, the DPO loss and the
AdamW update (no clipping, metrics or data reading); goals: cached DPO at most 1.10x the floor, RPO at
most 1.10x cached DPO. Each step is one optimizer step of ``--batch-size`` pairs (no accumulation): the
policy forward and backward and the reference forward on 2B latents, clipping and AdamW. Variants are
timed in turns (``--rounds`` of ``--steps`` steps each,
after a warm-up step; the order rotates); throughput is the median round, ratios the median of
per-round ratios, with their range as the noise floor.

End to end, the same steps run through ``styleprefs train`` (a subprocess per command, on the cache built
above, ``--gradient-accumulation-steps 1``): each round times a DPO and an RPO command at two step counts
(``--e2e-steps``), and the difference of the two counts' wall times, divided by the difference of the counts,
is a step's cost with everything the command does once (imports, loading, saving) cancelled. Goal: the RPO
command's step at most 1.05x the DPO command's (median of ``--e2e-rounds`` rounds; range printed).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from rich.console import Console
from rich.table import Table

from styleprefs.build import BuildConfig, build_dataset
from styleprefs.trainer import loop
from styleprefs.trainer.cache import build_cache
from styleprefs.trainer.config import TrainConfig
from styleprefs.trainer.losses import dpo_loss, per_sample_error
from styleprefs.trainer.models import quiet_loading

VARIANTS = {  # name: (stage, use_cache)
    "dpo re-encode": ("dpo", False),
    "dpo cached": ("dpo", True),
    "rpo cached": ("rpo", True),
    "dpo floor": ("dpo", True),
}


def make_run(name: str, args: argparse.Namespace, data: Path, tmp: Path):
    stage, use_cache = VARIANTS[name]
    cfg = TrainConfig(stage=stage, data=str(data), out=str(tmp / name.replace(" ", "-")), model=args.model,
                      clip_model="tiny", resolution=args.resolution, batch_size=args.batch_size,
                      gradient_accumulation_steps=1, max_steps=10**6, learning_rate=1e-6, scale_lr=False, warmup_steps=0,
                      checkpoint_every=0, report_to="none", use_cache=use_cache).resolved()
    AcceleratorState._reset_state(reset_partial_state=False)
    return cfg, loop._setup(cfg, Accelerator(), show_progress=False)


def command_seconds(stage: str, steps: int, args: argparse.Namespace, data: Path, out: Path) -> float:
    """Wall time of one whole ``styleprefs train`` command of ``steps`` steps."""
    command = [sys.executable, "-m", "styleprefs.cli", "train", "--stage", stage, "--data", str(data), "--out", str(out),
               "--model", args.model, "--resolution", str(args.resolution), "--batch-size", str(args.batch_size),
               "--gradient-accumulation-steps", "1", "--max-steps", str(steps), "--clip-model", "tiny",
               "--learning-rate", "1e-6", "--warmup-steps", "0", "--checkpoint-every", "0"]
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def end_to_end(args: argparse.Namespace, data: Path, tmp: Path) -> dict[str, list[float]]:
    """Seconds per step of the DPO and RPO commands, per round: the difference of two step counts' wall times."""
    few, many = args.e2e_steps
    runs = [(stage, steps) for stage in ("dpo", "rpo") for steps in (few, many)]
    per_step: dict[str, list[float]] = {"dpo": [], "rpo": []}
    for r in range(args.e2e_rounds):
        order = runs[r % len(runs):] + runs[:r % len(runs)]
        seconds = {(stage, steps): command_seconds(stage, steps, args, data, tmp / f"e2e-{r}-{stage}-{steps}")
                   for stage, steps in order}
        for stage in per_step:
            per_step[stage].append((seconds[stage, many] - seconds[stage, few]) / (many - few))
    return per_step


def trainer_step(cfg: TrainConfig, run) -> Callable[[int], None]:
    return lambda step: loop._train_step(cfg, run, step)


def floor_step(cfg: TrainConfig, run) -> Callable[[int], None]:
    """The necessary work of a DPO step on one batch prepared once (see the module docstring)."""
    device, family = run.accelerator.device, run.components.family
    batch = {k: v.to(device) for k, v in run.pairs.batch(list(range(cfg.batch_size)), 0).items()}
    draws = loop.draw_pairs(cfg.seed, 0, list(range(cfg.batch_size)), tuple(batch["latent_mean"].shape[1:]),
                            lambda gen: family.draw_time(gen, run.components), cfg.caption_dropout)
    draws = loop.PairDraws(*(t.to(device) for t in dataclasses.astuple(draws)))
    inputs, target = family.model_inputs(batch, draws, run.components)
    optimizer = run.optimizer.optimizer  # the bare AdamW

    def step(_: int) -> None:
        err_w, err_l = per_sample_error(family.predict(run.policy, inputs), target).chunk(2)
        with torch.no_grad():
            ref_w, ref_l = per_sample_error(family.predict(run.reference, inputs), target).chunk(2)
        dpo_loss(err_w, err_l, ref_w, ref_l, cfg.beta).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=8, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--e2e-steps", type=int, nargs=2, default=(10, 210), metavar=("FEW", "MANY"),
                        help="step counts of the two styleprefs train commands per stage")
    parser.add_argument("--e2e-rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp_name, quiet_loading():
        tmp = Path(tmp_name)
        data = build_dataset(BuildConfig(source="sample", num_pairs=args.pairs, shard_size=args.pairs), tmp / "data",
                             show_progress=False).out
        start = time.perf_counter()
        build_cache(data, args.model, args.resolution, clip_model="tiny", show_progress=False)
        cache_s = time.perf_counter() - start
        steps = {name: (floor_step if name == "dpo floor" else trainer_step)(*make_run(name, args, data, tmp))
                 for name in VARIANTS}
        step = 0
        for run_step in steps.values():  # warm-up: first-call allocations, the cache's shard handles
            run_step(step)
        seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
        names = list(VARIANTS)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order: no variant always first
                start = time.perf_counter()
                for k in range(args.steps):
                    steps[name](step + 1 + k)
                seconds[name].append((time.perf_counter() - start) / args.steps)
            step += args.steps
        e2e = end_to_end(args, data, tmp)

    per_step = {name: statistics.median(s) for name, s in seconds.items()}
    pairs_per_s = {name: args.batch_size / s for name, s in per_step.items()}

    def ratio(a: str, b: str) -> str:
        """Median and range over rounds of time(a) / time(b) measured in the same round (drift cancels)."""
        each = [x / y for x, y in zip(seconds[a], seconds[b])]
        return f"{statistics.median(each):.2f} (rounds {min(each):.2f}-{max(each):.2f})"

    table = Table(title=f"one optimizer step of {args.batch_size} pairs, {args.model} at {args.resolution} px, "
                        f"{args.threads} CPU thread(s); median of {args.rounds} rounds x {args.steps} steps")
    for col in ("measure", "value"):
        table.add_column(col)
    table.add_row("DPO step re-encoding images (VAE) and text every step, pairs/s", f"{pairs_per_s['dpo re-encode']:.1f}")
    table.add_row("DPO step from the cache, pairs/s", f"{pairs_per_s['dpo cached']:.1f}")
    table.add_row("cached speed-up: re-encoding step time / cached step time", ratio("dpo re-encode", "dpo cached"))
    table.add_row("RPO step from the cache, pairs/s", f"{pairs_per_s['rpo cached']:.1f}")
    table.add_row("RPO step time / DPO step time (both cached; goal <= 1.10)", ratio("rpo cached", "dpo cached"))
    table.add_row("floor of a DPO step (prepared inputs: forwards, backward, AdamW), pairs/s",
                  f"{pairs_per_s['dpo floor']:.1f}")
    table.add_row("cached DPO step time / floor (goal <= 1.10)", ratio("dpo cached", "dpo floor"))
    table.add_row("one-off cache build (VAE, text, tiny CLIP; incl. loading them), pairs/s", f"{args.pairs / cache_s:.1f}")
    e2e_ratios = [r / d for r, d in zip(e2e["rpo"], e2e["dpo"])]
    table.add_row(f"styleprefs train, s per step ({args.e2e_steps[1]} - {args.e2e_steps[0]} steps): DPO, RPO",
                  f"{statistics.median(e2e['dpo']):.3f}, {statistics.median(e2e['rpo']):.3f}")
    table.add_row(f"styleprefs train: RPO step / DPO step (goal <= 1.05; {args.e2e_rounds} rounds)",
                  f"{statistics.median(e2e_ratios):.2f} (rounds {min(e2e_ratios):.2f}-{max(e2e_ratios):.2f})")
    table.caption = f"load average at the end {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    Console().print(table)


if __name__ == "__main__":
    main()
