"""Benchmark on a CUDA machine: editor, cache and training throughput and peak memory for SD1.5 and SDXL, and GPU-hours;
written-out memory and GPU-hour estimates for SD3.5, FLUX.1-dev and the instruction editors.

    python bench/gpu.py                                  # SD1.5 at 512 px and SDXL at 1024 px, fp16, real models
    python bench/gpu.py --model tiny --device cpu --editor-steps 1 --batches 1 --pairs 8 --train-batch 2 --steps 1
    python bench/gpu.py --estimate-only                  # the estimates alone, any machine (= bench/estimates.py)

Rows, per model: InstructPix2Pix and Prompt Diffusion images/s at the style's steps (``--editor-steps`` overrides)
for each of ``--batches`` (the editors are SD1.5 models: SDXL's rows say so); the cache's pairs/s (VAE, text
encoders and CLIP); DPO, RPO and SFT pairs/s per GPU from the cache and re-encoding every step, each without and
with ``--compile``; the peak CUDA memory of each (``-`` on CPU); then GPU-hours extrapolated for a 10k-pair build
(edits at the fastest batch, without the CLIP gate's retries) plus its cache, and for a 2000-step run at a global
batch of ``--global-batch`` pairs per step (Diffusion-DPO's 2048).

Everything runs through the library: editors from ``styleprefs.editors.load_editor``, the cache from
``build_cache``, training steps from the trainer's ``_setup`` and ``_train_step`` (as ``bench/train_step.py``).
Training uses fp16 mixed precision on CUDA (fp32 on CPU), one micro-batch per optimizer step; SDXL uses
Diffusion-DPO's SDXL settings (Adafactor, gradient checkpointing) and the fp16-safe VAE
(madebyollin/sdxl-vae-fp16-fix). ``--model tiny`` swaps every model for the offline tiny ones (tiny, tiny-ip2p,
tiny-prompt-diffusion, tiny-sdxl, tiny CLIP) at 64 px: a smoke run that prints every row.

Then the instruction editors (``--instruction-editors``, FLUX.1 Kontext [dev] and Qwen-Image-Edit-2509): images/s
and peak memory at 1024 px in bf16, all on the GPU and with model CPU offload, beside the estimated peak; a row
says why it was skipped when the editor, or offload (CUDA only), is not available. Last, the estimates of
``styleprefs.memory_estimate`` (its docstring states every assumption and source): training memory per model and
recipe with whether it fits one 80 GB GPU, editing memory against 24 and 80 GB cards, the cross-checks against
reported figures, and the GPU-hours of one iteration of iterative DPO with each improver at ``--mfu``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from PIL import Image

from estimates import parse_mfu, print_estimates  # bench/estimates.py, beside this file
from styleprefs import memory_estimate as est
from styleprefs.build import BuildConfig, build_dataset
from styleprefs.editors import load_editor
from styleprefs.editors.loading import clear_cache
from styleprefs.errors import StyleprefsError
from styleprefs.style import load_style
from styleprefs.trainer import loop
from styleprefs.trainer.cache import build_cache
from styleprefs.trainer.config import TrainConfig
from styleprefs.trainer.models import quiet_loading

BUILD_PAIRS, RUN_STEPS = 10_000, 2000
EDITORS = ("instruct-pix2pix", "prompt-diffusion")
INSTRUCTION_EDITORS = tuple(est.EDITORS)
OFFLOADS = ("none", "model")
STAGES = ("dpo", "rpo", "sft")


@dataclass(frozen=True)
class Setup:
    """One model family as benchmarked: its base, editors (None: the editors' default models), CLIP and size."""

    name: str
    base: str
    resolution: int
    clip: str
    editors: dict[str, str | None] | None  # None: no editor of this family
    vae: str | None = None
    sdxl: bool = False


REAL = (
    Setup("SD1.5", "stable-diffusion-v1-5/stable-diffusion-v1-5", 512, "openai/clip-vit-large-patch14",
          {"instruct-pix2pix": None, "prompt-diffusion": None}),
    Setup("SDXL", "stabilityai/stable-diffusion-xl-base-1.0", 1024, "openai/clip-vit-large-patch14", None,
          vae="madebyollin/sdxl-vae-fp16-fix", sdxl=True),
)
TINY = (
    Setup("SD1.5 (tiny)", "tiny", 64, "tiny", {"instruct-pix2pix": "tiny-ip2p", "prompt-diffusion": "tiny-prompt-diffusion"}),
    Setup("SDXL (tiny)", "tiny-sdxl", 64, "tiny", None, sdxl=True),
)


def cuda(device: str) -> bool:
    return torch.device(device).type == "cuda"


def reset_peak(device: str) -> None:
    if cuda(device):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_memory(device: str) -> str:
    return f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda(device) else "-"


def measure(fn: Callable[[int], object], repeats: int, device: str) -> tuple[float, str]:
    """Median seconds per ``fn(i)`` call after one warm-up call (compilation, allocations), and the peak memory."""
    reset_peak(device)
    fn(0)
    seconds = []
    for i in range(1, repeats + 1):
        start = time.perf_counter()
        fn(i)
        if cuda(device):
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), peak_memory(device)


def images(n: int, size: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def editor_rows(setup: Setup, args: argparse.Namespace) -> list[tuple[str, float | None, str]]:
    """(measure, images/s or None, peak) per editor and batch size."""
    rows = []
    for name in EDITORS:
        for batch in args.batches:
            label = f"{name} images/s, batch {batch}"
            if setup.editors is None:
                rows.append((label + " (n/a: the editors are SD1.5 models)", None, "-"))
                continue
            options = {"steps": args.editor_steps} if args.editor_steps else {}
            editor = load_editor(name, load_style(args.style), model=setup.editors[name], device=args.device,
                                 dtype=args.dtype, **options)
            batch_images = images(batch, editor.resolution)
            seconds, peak = measure(lambda i: editor.edit(batch_images, ["a photo"] * batch, list(range(batch))),
                                    args.repeats, args.device)
            rows.append((f"{label}, {editor.steps} steps", batch / seconds, peak))
    clear_cache()
    return rows


def cache_row(setup: Setup, args: argparse.Namespace, data: Path) -> tuple[str, float, str]:
    dtype = torch.float16 if cuda(args.device) else torch.float32
    reset_peak(args.device)
    start = time.perf_counter()
    build_cache(data, setup.base, setup.resolution, clip_model=setup.clip, device=args.device, dtype=dtype,
                show_progress=False, vae=setup.vae)
    seconds = time.perf_counter() - start
    return "cache pairs/s (VAE, text encoders, CLIP; incl. loading)", args.pairs / seconds, peak_memory(args.device)


def train_config(setup: Setup, args: argparse.Namespace, data: Path, out: Path, stage: str, use_cache: bool,
                 compile: bool) -> TrainConfig:
    return TrainConfig(
        stage=stage, data=str(data), out=str(out), model=setup.base, clip_model=setup.clip, vae=setup.vae,
        resolution=setup.resolution, batch_size=args.train_batch, gradient_accumulation_steps=1, max_steps=10**6,
        learning_rate=1e-6, scale_lr=False, warmup_steps=0, checkpoint_every=0, report_to="none", use_cache=use_cache,
        compile=compile, mixed_precision="fp16" if cuda(args.device) else "no",
        optimizer="adafactor" if setup.sdxl else "adamw", gradient_checkpointing=setup.sdxl)


def train_rows(setup: Setup, args: argparse.Namespace, data: Path, tmp: Path) -> list[tuple[str, float, str]]:
    """Pairs/s per GPU and peak memory of one optimizer step, per stage, cache use and --compile."""
    rows = []
    for stage in STAGES:
        for use_cache in (True, False):
            for compile in (False, True):
                cfg = loop.training_config(train_config(setup, args, data, tmp / f"{stage}-{use_cache}-{compile}",
                                                        stage, use_cache, compile))
                AcceleratorState._reset_state(reset_partial_state=False)
                run = loop._setup(cfg, Accelerator(cpu=not cuda(args.device)), show_progress=False)
                seconds, peak = measure(lambda i: loop._train_step(cfg, run, i), args.steps, args.device)
                rows.append((f"{stage.upper()} pairs/s per GPU, {'cached' if use_cache else 're-encoding'}, "
                             f"{'--compile' if compile else 'eager'}", args.train_batch / seconds, peak))
                del run
                torch._dynamo.reset()
    return rows


def hours_rows(rows: list[tuple[str, float | None, str]], args: argparse.Namespace) -> list[tuple[str, float, str]]:
    """GPU-hours of a 10k-pair build (per editor, its fastest batch, plus the cache) and of a 2000-step run."""
    rate = {label: value for label, value, _ in rows if value}
    cache = next(v for k, v in rate.items() if k.startswith("cache"))
    out = []
    for name in EDITORS:
        edits = [v for k, v in rate.items() if k.startswith(name)]
        if edits:
            out.append((f"GPU-hours, {BUILD_PAIRS} pairs built with {name} (fastest batch) + cached",
                        (BUILD_PAIRS / max(edits) + BUILD_PAIRS / cache) / 3600, "-"))
    for stage in STAGES:
        best = max(v for k, v in rate.items() if k.startswith(stage.upper()) and "cached" in k)
        out.append((f"GPU-hours, {RUN_STEPS}-step {stage.upper()} run at {args.global_batch} pairs/step (cached, "
                    f"faster of eager/--compile)", RUN_STEPS * args.global_batch / best / 3600, "-"))
    return out


def instruction_editor_rows(args: argparse.Namespace) -> list[tuple[str, float | None, str]]:
    """(measure, images/s or None, peak) per instruction editor, offload and batch size; a skipped row says why."""
    tiny = args.model == "tiny"
    options = {"steps": args.editor_steps} if args.editor_steps else {}
    rows = []
    for name, offload in ((name, offload) for name in args.instruction_editors for offload in OFFLOADS):
        estimate = est.inference_memory(est.EDITORS[name].arch, offload == "model") / est.GB
        note = "" if tiny else f" (estimated peak at batch 1: {estimate:.1f} GB)"
        for batch in args.batches:
            label = f"{name} images/s, batch {batch}, offload {offload}"
            try:
                editor = load_editor(name, load_style(args.style), model="tiny" if tiny else None, device=args.device,
                                     dtype="bf16" if cuda(args.device) else "fp32", offload=offload, **options)
            except StyleprefsError as exc:
                rows.append((f"{label} (skipped: {exc})", None, "-"))
                break
            batch_images = images(batch, 64 if tiny else 1024)
            seconds, peak = measure(lambda i: editor.edit(batch_images, ["a photo"] * batch, list(range(batch))),
                                    args.repeats, args.device)
            rows.append((f"{label}, {editor.params().get('num_inference_steps')} steps{note}", batch / seconds, peak))
        clear_cache()
    return rows


def print_table(title: str, rows: list[tuple[str, float | None, str]]) -> None:
    width = max(len(label) for label, _, _ in rows)
    print(f"\n{title}")
    print(f"{'measure':<{width}}  {'value':>10}  peak memory")
    for label, value, peak in rows:
        print(f"{label:<{width}}  {'n/a' if value is None else f'{value:10.3f}':>10}  {peak}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("real", "tiny"), default="real",
                        help="real: the Hub models (SD1.5, SDXL, InstructPix2Pix, Prompt Diffusion); tiny: offline")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--style", default="winter")
    parser.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=[1, 8, 16],
                        help="editor batch sizes, comma-separated")
    parser.add_argument("--editor-steps", type=int, default=None, help="default: the style's steps")
    parser.add_argument("--pairs", type=int, default=64, help="pairs in the benchmark dataset (cached once per model)")
    parser.add_argument("--train-batch", type=int, default=4, help="pairs per GPU per training step")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps after one warm-up step")
    parser.add_argument("--repeats", type=int, default=1, help="timed editor calls after one warm-up call")
    parser.add_argument("--global-batch", type=int, default=2048, help="pairs per optimizer step of the extrapolated "
                        "2000-step run (Diffusion-DPO: 2048)")
    parser.add_argument("--instruction-editors", type=lambda s: [e for e in s.split(",") if e],
                        default=list(INSTRUCTION_EDITORS),
                        help=f"comma-separated, of {', '.join(INSTRUCTION_EDITORS)}; empty: none")
    parser.add_argument("--estimate-only", action="store_true",
                        help="print the written-out estimates only (no model is loaded; any machine)")
    parser.add_argument("--mfu", type=parse_mfu, default=est.DEFAULT_MFU,
                        help="model FLOP utilisation assumed for the GPU-hour estimates")
    args = parser.parse_args()
    args.dtype = "fp16" if cuda(args.device) else "fp32"
    unknown = sorted(set(args.instruction_editors) - set(INSTRUCTION_EDITORS))
    if unknown:
        parser.error(f"unknown --instruction-editors {', '.join(unknown)}: use {', '.join(INSTRUCTION_EDITORS)}")
    if args.estimate_only:
        print_estimates(args.mfu)
        return
    if args.model == "real" and not torch.cuda.is_available():
        parser.error("the real models need CUDA; use --model tiny --device cpu for a smoke run, or --estimate-only")

    with tempfile.TemporaryDirectory() as tmp_name, quiet_loading():
        tmp = Path(tmp_name)
        data = build_dataset(BuildConfig(source="sample", num_pairs=args.pairs, shard_size=args.pairs), tmp / "data",
                             show_progress=False).out
        for setup in TINY if args.model == "tiny" else REAL:
            rows = editor_rows(setup, args)
            rows.append(cache_row(setup, args, data))
            rows += train_rows(setup, args, data, tmp / setup.name.replace(" ", "-"))
            rows += hours_rows(rows, args)
            print_table(f"{setup.name} at {setup.resolution} px, {args.dtype} on {args.device}; training batch "
                        f"{args.train_batch} pairs/GPU, global batch assumed {args.global_batch}", rows)
        if args.instruction_editors:
            size = 64 if args.model == "tiny" else 1024
            print_table(f"Instruction editors{' (tiny)' if args.model == 'tiny' else ''} at {size} px, "
                        f"{'bf16' if cuda(args.device) else 'fp32'} on {args.device}", instruction_editor_rows(args))
    print_estimates(args.mfu)


if __name__ == "__main__":
    main()
