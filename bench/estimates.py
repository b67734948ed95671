"""The written-out estimates of ``styleprefs.memory_estimate``, as tables: training memory per model and recipe and
whether it fits one 80 GB GPU, editing memory against 24 and 80 GB cards, the cross-checks against reported
figures, and the A100-hours of one iteration of iterative DPO with each improver. No model is loaded.

    python bench/estimates.py [--mfu 0.35]         # also printed by python bench/gpu.py (--estimate-only: alone)
"""

from __future__ import annotations

import argparse

from styleprefs import memory_estimate as est


def print_grid(title: str, header: list[str], rows: list[list[str]], text_columns: int = 1) -> None:
    """A table whose first ``text_columns`` columns are left-aligned and the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    for row in [header, *rows]:
        print("  ".join(f"{c:<{w}}" if i < text_columns else f"{c:>{w}}"
                        for i, (c, w) in enumerate(zip(row, widths))).rstrip())


def gb(n_bytes: float) -> str:
    return f"{n_bytes / est.GB:.1f}"


def print_training(mfu: float) -> None:
    parts = list(est.PARTS)
    print_grid(f"Estimated training memory, GB: 1024 px, batch 1 preference pair (2 images through the policy), "
               f"bf16, one GPU; seconds per step on an A100 at MFU {mfu}",
               ["model", "recipe", *parts, "total", "fits 80 GB", "s/step"],
               [[arch.name, recipe.label(), *(gb(getattr(b, p)) for p in parts), gb(b.total), est.fit(b.total, 80),
                 f"{est.step_seconds(arch, recipe, mfu):.2f}"]
                for arch, recipe, b in est.training_rows()], text_columns=2)


def print_editing() -> None:
    print_grid("Estimated editing memory, GB: bf16 inference at 1024 px, batch 1",
               ["editor", "setting", "peak", "fits 24 GB", "fits 80 GB"],
               [[name, setting, gb(total), est.fit(total, 24), est.fit(total, 80)]
                for name, setting, total in est.editing_rows()], text_columns=2)


def print_cross_checks() -> None:
    print_grid("Estimate against reported figures", ["reported", "source", "estimate GB", "agrees"],
               [[c.what, c.source, gb(c.estimate()), "yes" if c.agrees() else "no"] for c in est.CROSS_CHECKS],
               text_columns=2)


def print_hours(mfu: float) -> None:
    it = est.Iteration(policy_tflops=0, improve_tflops=0)  # the recipe's sizes
    print_grid(f"Estimated A100-hours per iteration of iterative DPO: {it.images:,} images generated "
               f"({it.sample_steps} steps, CFG) and improved, {it.dpo_steps} DPO steps x {it.global_batch} pairs "
               f"({est.PAIR_FORWARDS} forward passes a pair); hours = TFLOPs / ({est.A100_BF16_TFLOPS:.0f} TFLOP/s x "
               f"MFU {mfu}) / 3600", ["policy; improver", "generate", "improve", "train", "total"],
               [[recipe, *(f"{hours[k]:.0f}" for k in ("generate", "improve", "train", "total"))]
                for recipe, hours in est.iteration_rows(mfu)])
    sd15 = est.FORWARD_TFLOPS["SD1.5", 512]
    t = est.IMPROVER_TRAINING
    print(f"Training the improver once ({t['steps']:,} steps x {t['global_batch']} pairs, forward + backward on one "
          f"512 px image): {est.improver_training_hours(mfu):.0f} A100-hours.")
    print(f"Check: the formula gives SD1.5 DPO {est.pairs_per_second(sd15, mfu):.1f} pairs/s per A100; Diffusion-DPO's "
          f"SD1.5 launcher reports ~24 h per 2000 steps of 2048 pairs on 16 GPUs = "
          f"{est.OFFICIAL_SD15_DPO_PAIRS_PER_S:.1f} pairs/s (no caching, batch 1 per GPU), i.e. MFU "
          f"{est.implied_mfu(est.OFFICIAL_SD15_DPO_PAIRS_PER_S, sd15):.2f}: rerun with --mfu to match a measured rate.")


def print_estimates(mfu: float) -> None:
    """The written-out estimates (styleprefs.memory_estimate): memory, cross-checks and GPU-hours."""
    print_training(mfu)
    print_editing()
    print_cross_checks()
    print_hours(mfu)


def parse_mfu(value: str) -> float:
    mfu = float(value)
    if not 0 < mfu <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return mfu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mfu", type=parse_mfu, default=est.DEFAULT_MFU,
                        help="model FLOP utilisation assumed for the GPU-hour estimates")
    print_estimates(parser.parse_args().mfu)


if __name__ == "__main__":
    main()
