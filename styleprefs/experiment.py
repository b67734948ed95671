"""``styleprefs experiment style-alignment``: the Diffusion-RPO paper's style table, in the miniature world.

From the same ``mini`` base and with equal step budgets, for each seed: SFT; SFT then SFT again; SFT then
DPO; SFT then RPO at several temperatures; DPO alone; RPO alone (each two-stage method spends half its
steps per stage, and its second stage's reference is its first stage's model). Every model generates from
the same training captions with the same seeds and is scored by mini FID/KID against the style's preferred
images, the style score (``mini-clip`` zero-shot), implicit accuracy against the base on held-out pairs
(scenes of the sample's test split), and Vendi diversity on ``mini-clip`` features. The table gives mean
and standard deviation over seeds. Every run and every result is kept, so a rerun resumes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console

from styleprefs.io import read_json, write_json, write_text

MODEL, CLIP = "mini", "mini-clip"
RESOLUTION = 64
METRICS = ("Style FID", "KID", "style score", "Implicit acc", "Vendi")


@dataclass(frozen=True)
class Step:
    stage: str
    fraction: float  # of the method's step budget
    tau: float = 1.0

    def key(self, steps: int) -> str:
        return f"{self.stage}{f'-tau{self.tau:g}' if self.stage == 'rpo' else ''}-{round(self.fraction * steps)}"


def _methods(taus: tuple[float, ...]) -> dict[str, tuple[Step, ...]]:
    half = 0.5
    methods = {"SFT": (Step("sft", 1.0),), "SFT+SFT": (Step("sft", half), Step("sft", half)),
               "SFT+DPO": (Step("sft", half), Step("dpo", half))}
    methods.update({f"SFT+RPO tau={tau:g}": (Step("sft", half), Step("rpo", half, tau)) for tau in taus})
    methods.update({"DPO": (Step("dpo", 1.0),), "RPO tau=1": (Step("rpo", 1.0, 1.0),)})
    return methods


@dataclass(frozen=True)
class ExperimentPlan:
    """Sizes and rates. Learning rates are per pair (``--scale-lr``: applied rate = lr x batch size)."""

    style: str = "winter"
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 240  # optimizer steps per method, split across its stages
    num_pairs: int = 384
    heldout_pairs: int = 64
    prompts: int = 48
    images_per_prompt: int = 2
    generation_steps: int = 20
    batch_size: int = 8
    lr: dict = field(default_factory=lambda: {"sft": 2.5e-5, "dpo": 2.5e-6, "rpo": 2.5e-6})
    beta: float = 5000.0
    taus: tuple[float, ...] = (0.01, 1.0, 5.0)

    @classmethod
    def quick(cls) -> ExperimentPlan:
        return cls(seeds=(0, 1), steps=8, num_pairs=48, heldout_pairs=8, prompts=6, generation_steps=4,
                   batch_size=4, taus=(1.0,))

    @property
    def methods(self) -> dict[str, tuple[Step, ...]]:
        return _methods(self.taus)


def run_experiment(out: Path, plan: ExperimentPlan = ExperimentPlan(), console: Console | None = None) -> dict:
    """Train, generate and score every method for every seed under ``out``; write ``results.json`` and
    ``table.md``; return the results."""
    console = console or Console()
    out = Path(out)
    data, heldout = _datasets(out, plan)
    for seed in plan.seeds:
        folders = {"base": _evaluate(MODEL, out / f"seed-{seed}" / "gen" / "base", data, heldout, plan, seed)}
        for name, chain in plan.methods.items():
            console.rule(f"[bold]seed {seed}: {name}")
            model = _train_chain(chain, data, out / f"seed-{seed}" / "runs", plan, seed)
            folders[name] = _evaluate(model, out / f"seed-{seed}" / "gen" / _slug(name), data, heldout, plan, seed)
        if seed == plan.seeds[0]:
            from styleprefs.eval.report import make_report

            make_report(list(folders.values()), out / "grid" / "report.md", names=list(folders), grid_prompts=6)
    results = _aggregate(out, plan)
    write_json(results, out / "results.json")
    write_text(render_table(results), out / "table.md")
    return results


def _datasets(out: Path, plan: ExperimentPlan) -> tuple[Path, Path]:
    from styleprefs.build import BuildConfig, build_dataset
    from styleprefs.trainer.cache import build_cache

    data, heldout = out / "data", out / "data-heldout"
    for folder, split, n in ((data, "train", plan.num_pairs), (heldout, "test", plan.heldout_pairs)):
        build_dataset(BuildConfig(style=plan.style, source="sample", split=split, num_pairs=n, shard_size=n), folder)
    build_cache(data, MODEL, RESOLUTION, clip_model=CLIP)
    return data, heldout


def _train_chain(chain: tuple[Step, ...], data: Path, runs: Path, plan: ExperimentPlan, seed: int) -> str:
    """Train each stage from the previous one's model (shared prefixes are trained once); the last model."""
    from styleprefs.trainer.config import TrainConfig
    from styleprefs.trainer.loop import train

    init, key = None, ""
    for step in chain:
        key = f"{key}+{step.key(plan.steps)}" if key else step.key(plan.steps)
        folder = runs / key
        if not (folder / "model_index.json").is_file():
            steps = round(step.fraction * plan.steps)
            train(TrainConfig(stage=step.stage, data=str(data), out=str(folder), model=None if init else MODEL,
                              init=init, clip_model=CLIP, resolution=RESOLUTION, batch_size=plan.batch_size,
                              gradient_accumulation_steps=1, max_steps=steps, learning_rate=plan.lr[step.stage],
                              scale_lr=True, warmup_steps=steps // 10, beta=plan.beta, tau=step.tau, seed=seed,
                              checkpoint_every=steps, validation_every=0, report_to="none",
                              resume=(folder / "checkpoints").is_dir()), show_progress=False)
        init = str(folder)
    return init


def _evaluate(model: str, folder: Path, data: Path, heldout: Path, plan: ExperimentPlan, seed: int) -> Path:
    from styleprefs.eval.fid import style_fid
    from styleprefs.eval.generate import generate
    from styleprefs.eval.implicit_acc import implicit_accuracy
    from styleprefs.eval.rewards import score_folder
    from styleprefs.eval.vendi import vendi_folder

    generate(model, str(data), folder, images_per_prompt=plan.images_per_prompt, seed=seed,
             steps=plan.generation_steps, resolution=RESOLUTION, limit=plan.prompts, batch_size=32, device="cpu",
             show_progress=False)
    if not (folder / "style_fid.json").is_file():
        style_fid(data, folder, features="mini", kid_subset_size=plan.prompts, seed=seed, device="cpu",
                  show_progress=False)
    if plan.style not in read_json(folder / "rewards.json"):
        score_folder(folder, [f"{plan.style}={CLIP}"], device="cpu", show_progress=False)
    if not (folder / "vendi.json").is_file():
        vendi_folder(folder, embedding="clip", clip_model=CLIP, device="cpu")
    if model != MODEL and not (folder / "implicit_acc.json").is_file():
        implicit_accuracy(model, MODEL, heldout, base=MODEL, num_draws=4, resolution=RESOLUTION, seed=seed,
                          device="cpu", out=folder / "implicit_acc.json", show_progress=False)
    return folder


def _slug(name: str) -> str:
    return name.lower().replace("+", "-then-").replace(" tau=", "-tau")


def _aggregate(out: Path, plan: ExperimentPlan) -> dict:
    from styleprefs.eval.report import SCORER_LABELS, collect

    style_label = SCORER_LABELS.get(plan.style, plan.style)
    rows = {}
    for name in ["base", *plan.methods]:
        per_seed = [collect(out / f"seed-{s}" / "gen" / ("base" if name == "base" else _slug(name)))["metrics"]
                    for s in plan.seeds]
        rows[name] = {}
        for metric in METRICS:
            label = style_label if metric == "style score" else metric
            values = [m[label] for m in per_seed if label in m]
            if values:
                rows[name][metric] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}
    return {"plan": asdict(plan), "rows": rows}


def render_table(results: dict) -> str:
    plan = results["plan"]
    head = ["mini FID ↓", "KID ↓", f"{plan['style']} score ↑", "implicit acc (held-out) ↑", "Vendi ↑"]
    lines = ["| method | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for name, row in results["rows"].items():
        cells = [f"{row[m]['mean']:.4g} ± {row[m]['std']:.2g}" if m in row else "" for m in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(f"\nMean ± std over seeds {plan['seeds']}; {plan['steps']} optimizer steps per method at "
                 f"{plan['batch_size']} pairs; mini FID/KID on mini-clip features (comparable only within the "
                 "miniature world); implicit accuracy against the base mini on held-out pairs.")
    return "\n".join(lines) + "\n"
