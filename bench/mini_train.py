"""Benchmark: how `python -m styleprefs.mini train` uses two cores, against doing it the plain way.

    python bench/mini_train.py [--scenes 512] [--unet-steps 10 40] [--clip-steps 5 20] [--vae-per-clip 2.5]

- mini-clip and the VAE: one after the other on two threads (baseline) against side by side, each on one thread
  in its own process (what `train` does). A unit is one mini-clip step plus ``--vae-per-clip`` VAE steps, the
  ratio of the two stages' step counts in the default configuration.
- UNet: one process on two threads (baseline) against two one-thread processes training it by DDP over gloo
  (what `train` does on 2 threads).

Each variant runs the training functions themselves at two step counts on the same scenes; the difference of the
wall times divided by the difference of the counts is the cost of a step (or unit) with loading, encoding and
model set-up cancelled. Prints a table with the load average before and after: on a shared machine compare
ratios from one run, not seconds across runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from styleprefs.mini.train import MiniConfig, Pool, text_encoder_of, train_clip, train_unet, train_vae  # noqa: E402
from styleprefs.parallel import beside  # noqa: E402
from styleprefs.resolve import offline_or_path  # noqa: E402
from styleprefs.tiny import bpe_tokenizer  # noqa: E402


def per_step(run: Callable[[int], None], counts: list[int]) -> float:
    seconds = []
    for count in counts:
        start = time.perf_counter()
        run(count)
        seconds.append(time.perf_counter() - start)
    return (seconds[1] - seconds[0]) / (counts[1] - counts[0])


def clip_and_vae(cfg: MiniConfig, pool: Pool, vae_per_clip: float, side_by_side: bool) -> Callable[[int], None]:
    tokenizer = bpe_tokenizer()

    def run(units: int) -> None:
        steps = dataclasses.replace(cfg, clip_steps=units, vae_steps=round(units * vae_per_clip), curves={})
        if not side_by_side:
            torch.set_num_threads(2)
            train_clip(steps, pool, tokenizer)
            train_vae(steps, pool, show=False)
            return
        def vae() -> None:
            torch.set_num_threads(1)
            train_vae(steps, pool, show=False)

        with beside(vae) as wait:
            torch.set_num_threads(1)
            train_clip(steps, pool, tokenizer)
            wait()

    return run


def unet(cfg: MiniConfig, pool: Pool, ddp: bool) -> Callable[[int], None]:
    from diffusers import AutoencoderKL
    from transformers import CLIPModel

    vae = AutoencoderKL.from_pretrained(offline_or_path("mini"), subfolder="vae")
    text_encoder = text_encoder_of(CLIPModel.from_pretrained(offline_or_path("mini-clip")))
    store = Path(tempfile.mkdtemp()) / "store" if ddp else None

    def run(steps: int) -> None:
        torch.set_num_threads(2)
        train_unet(dataclasses.replace(cfg, unet_steps=steps, threads=2, curves={}), pool, vae, text_encoder,
                   bpe_tokenizer(), store)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=512)
    parser.add_argument("--unet-steps", type=int, nargs=2, default=[10, 40])
    parser.add_argument("--clip-steps", type=int, nargs=2, default=[5, 20])
    parser.add_argument("--vae-per-clip", type=float, default=2.5)
    args = parser.parse_args()
    cfg = MiniConfig(scenes=args.scenes, warmup=1)
    load = os.getloadavg()[0]
    pool = Pool(cfg)
    rows = [("mini-clip + VAE, per unit", per_step(clip_and_vae(cfg, pool, args.vae_per_clip, False), args.clip_steps),
             per_step(clip_and_vae(cfg, pool, args.vae_per_clip, True), args.clip_steps)),
            ("UNet, per step", per_step(unet(cfg, pool, False), args.unet_steps),
             per_step(unet(cfg, pool, True), args.unet_steps))]
    print(f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}; {args.scenes} scenes, batch sizes as in `train`")
    print("| stage | baseline: one process, 2 threads (s) | as `train` runs it: two 1-thread processes (s) | ratio |")
    print("|---|---|---|---|")
    for name, base, variant in rows:
        print(f"| {name} | {base:.3f} | {variant:.3f} | {variant / base:.2f} |")


if __name__ == "__main__":
    main()
