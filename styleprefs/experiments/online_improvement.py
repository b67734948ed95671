"""``styleprefs experiment online-improvement``: "Iterative DPO with an improvement model", in the miniature world.

For each seed, on the style's pairs: an improvement model (``--stage improve``) is trained, and scored alone
by editing the base's generations (the paper's Table 3). Then, with equal step budgets of ``iterations x
iteration_steps`` DPO steps:

- iterative DPO from the ``mini`` base and from an SFT model: each iteration generates ``online_pairs`` images
  with the current model, the improver turns each into its winner, and DPO trains on those pairs against
  the base;
- SPIN-Diffusion from the base: the dataset's winners against the previous iteration's own images, with
  the previous iteration as reference;
- offline DPO from the base and from SFT on the fixed dataset, evaluated at the same step counts.

Every model is scored after every iteration (mini FID/KID against the dataset's preferred images, the style
score, implicit accuracy against the base on held-out pairs, Vendi diversity), with a grid per iteration.
Every run and every result is kept, so a rerun resumes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console

from styleprefs.experiments.common import (MODEL, MiniPlan, build_datasets, evaluate, over_seeds, plural, render_rows,
                                           save_results, summarise, train_run)

BASE, SFT, IMPROVER = "base", "SFT", "improver alone"


@dataclass(frozen=True)
class Method:
    name: str
    stage: str  # iterative, spin or dpo (offline)
    from_sft: bool

    @property
    def slug(self) -> str:
        return f"{self.stage}-from-{'sft' if self.from_sft else 'base'}"


METHODS = (Method("iterative DPO (from base)", "iterative", False), Method("iterative DPO (from SFT)", "iterative", True),
           Method("SPIN (from base)", "spin", False), Method("offline DPO (from base)", "dpo", False),
           Method("offline DPO (from SFT)", "dpo", True))


@dataclass(frozen=True)
class OnlinePlan(MiniPlan):
    seeds: tuple[int, ...] = (0,)
    prompts: int = 32
    generation_steps: int = 15
    improver_steps: int = 400
    sft_steps: int = 120
    iterations: int = 3
    iteration_steps: int = 60  # DPO steps per iteration; offline DPO runs iterations x this
    online_pairs: int = 128  # per iteration
    text_guidance: float = 3.5
    image_guidance: float = 3.0

    @classmethod
    def quick(cls) -> OnlinePlan:
        return cls(num_pairs=16, heldout_pairs=4, prompts=2, generation_steps=2, batch_size=2, improver_steps=2,
                   sft_steps=2, iterations=2, iteration_steps=1, online_pairs=4)


def run_online_experiment(out: Path, plan: OnlinePlan = OnlinePlan(), console: Console | None = None) -> dict:
    """Train, generate and score everything for every seed under ``out``; write ``results.json`` and
    ``table.md``; return the results."""
    from styleprefs.eval.improve import improve_folder
    from styleprefs.eval.report import make_report

    console = console or Console()
    out = Path(out)
    data, heldout = build_datasets(out, plan)
    for seed in plan.seeds:
        runs, gen = out / f"seed-{seed}" / "runs", out / f"seed-{seed}" / "gen"
        console.rule(f"[bold]seed {seed}: improver and SFT")
        improver = train_run("improve", data, runs / "improver", plan, seed, plan.improver_steps)
        sft = train_run("sft", data, runs / "sft", plan, seed, plan.sft_steps)
        fixed = {BASE: evaluate(MODEL, gen / "base", data, heldout, plan, seed),
                 SFT: evaluate(sft, gen / "sft", data, heldout, plan, seed)}
        improve_folder(gen / "base", improver, gen / "improver", steps=plan.generation_steps,
                       text_guidance=plan.text_guidance, image_guidance=plan.image_guidance, device="cpu",
                       show_progress=False)
        fixed[IMPROVER] = evaluate(None, gen / "improver", data, heldout, plan, seed)
        for method in METHODS:
            console.rule(f"[bold]seed {seed}: {method.name}")
            _train(method, data, runs, plan, seed, improver, sft)
            for k in range(1, plan.iterations + 1):
                evaluate(_model_at(method, runs, plan, k), gen / f"{method.slug}-iter-{k}", data, heldout, plan, seed)
        if seed == plan.seeds[0]:
            for k in range(1, plan.iterations + 1):
                folders = {**fixed, **{m.name: gen / f"{m.slug}-iter-{k}" for m in METHODS}}
                make_report(list(folders.values()), out / "grid" / f"iter-{k}" / "report.md", names=list(folders),
                            grid_prompts=6)
    results = _aggregate(out, plan)
    return save_results(out, results, render_table(results))


def _train(method: Method, data: Path, runs: Path, plan: OnlinePlan, seed: int, improver: str, sft: str) -> None:
    init = sft if method.from_sft else None
    if method.stage == "dpo":
        train_run("dpo", data, runs / method.slug, plan, seed, plan.iterations * plan.iteration_steps, init=init,
                  checkpoint_every=plan.iteration_steps, checkpoints_total_limit=None)
        return
    options = {"improver": improver, "text_guidance": plan.text_guidance,
               "image_guidance": plan.image_guidance} if method.stage == "iterative" else {}
    train_run(method.stage, data, runs / method.slug, plan, seed, plan.iteration_steps, init=init,
              iterations=plan.iterations, online_pairs=plan.online_pairs, sample_steps=plan.generation_steps,
              **options)


def _model_at(method: Method, runs: Path, plan: OnlinePlan, k: int) -> str:
    """The model after iteration ``k``: the iteration's DPO run, or offline DPO's checkpoint at the same step."""
    from styleprefs.trainer.checkpoint import checkpoint_dir
    from styleprefs.trainer.iterative import iteration_dir

    if method.stage == "dpo":
        return str(checkpoint_dir(runs / method.slug, k * plan.iteration_steps))
    return str(iteration_dir(runs / method.slug, k) / "train")


def _aggregate(out: Path, plan: OnlinePlan) -> dict:
    def folders(slug: str) -> list[Path]:
        return [out / f"seed-{s}" / "gen" / slug for s in plan.seeds]

    rows = {BASE: summarise(folders("base"), plan.style), SFT: summarise(folders("sft"), plan.style),
            IMPROVER: summarise(folders("improver"), plan.style)}
    for k in range(1, plan.iterations + 1):
        rows.update({f"{m.name}, iteration {k}": summarise(folders(f"{m.slug}-iter-{k}"), plan.style)
                     for m in METHODS})
    return {"plan": asdict(plan), "rows": rows}


def render_table(results: dict) -> str:
    plan = results["plan"]
    lines = render_rows(results["rows"], plan["style"])
    lines.append(f"\n{over_seeds(plan['seeds'])}; every method spends {plural(plan['iteration_steps'], 'DPO step')} "
                 f"at {plural(plan['batch_size'], 'pair')} per iteration; the online methods generate "
                 f"{plural(plan['online_pairs'], 'pair')} per iteration. The improver alone edits the base's images. mini FID/KID on mini-clip "
                 "features (comparable only within the miniature world); implicit accuracy against the base mini "
                 "on held-out pairs.")
    return "\n".join(lines) + "\n"
