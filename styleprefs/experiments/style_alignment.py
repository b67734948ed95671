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

from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console

from styleprefs.experiments.common import (MiniPlan, build_datasets, evaluate, over_seeds, plural, render_rows,
                                           save_results, summarise, train_run)


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
class ExperimentPlan(MiniPlan):
    steps: int = 240  # optimizer steps per method, split across its stages
    taus: tuple[float, ...] = (0.01, 1.0, 5.0)

    @classmethod
    def quick(cls) -> ExperimentPlan:
        return cls(seeds=(0, 1), steps=4, num_pairs=16, heldout_pairs=4, prompts=2, generation_steps=2,
                   batch_size=2, taus=(1.0,))

    @property
    def methods(self) -> dict[str, tuple[Step, ...]]:
        return _methods(self.taus)


def run_experiment(out: Path, plan: ExperimentPlan = ExperimentPlan(), console: Console | None = None) -> dict:
    """Train, generate and score every method for every seed under ``out``; write ``results.json`` and
    ``table.md``; return the results."""
    console = console or Console()
    out = Path(out)
    data, heldout = build_datasets(out, plan)
    for seed in plan.seeds:
        folders = {"base": evaluate(plan.model, out / f"seed-{seed}" / "gen" / "base", data, heldout, plan, seed)}
        for name, chain in plan.methods.items():
            console.rule(f"[bold]seed {seed}: {name}")
            model = _train_chain(chain, data, out / f"seed-{seed}" / "runs", plan, seed)
            folders[name] = evaluate(model, out / f"seed-{seed}" / "gen" / _slug(name), data, heldout, plan, seed)
        if seed == plan.seeds[0]:
            from styleprefs.eval.report import make_report

            make_report(list(folders.values()), out / "grid" / "report.md", names=list(folders), grid_prompts=6)
    results = _aggregate(out, plan)
    return save_results(out, results, render_table(results))


def _train_chain(chain: tuple[Step, ...], data: Path, runs: Path, plan: ExperimentPlan, seed: int) -> str:
    """Train each stage from the previous one's model (shared prefixes are trained once); the last model."""
    init, key = None, ""
    for step in chain:
        key = f"{key}+{step.key(plan.steps)}" if key else step.key(plan.steps)
        init = train_run(step.stage, data, runs / key, plan, seed, round(step.fraction * plan.steps), init=init,
                         tau=step.tau)
    return init


def _slug(name: str) -> str:
    return name.lower().replace("+", "-then-").replace(" tau=", "-tau")


def _aggregate(out: Path, plan: ExperimentPlan) -> dict:
    rows = {name: summarise([out / f"seed-{s}" / "gen" / ("base" if name == "base" else _slug(name))
                             for s in plan.seeds], plan.style) for name in ["base", *plan.methods]}
    return {"plan": asdict(plan), "rows": rows}


def render_table(results: dict) -> str:
    plan = results["plan"]
    lines = render_rows(results["rows"], plan["style"])
    lines.append(f"\n{over_seeds(plan['seeds'])}; {plural(plan['steps'], 'optimizer step')} per method at "
                 f"{plural(plan['batch_size'], 'pair')}; mini FID/KID on mini-clip features (comparable only within the "
                 f"miniature world); implicit accuracy against the base {plan.get('model', 'mini')} on held-out pairs.")
    return "\n".join(lines) + "\n"
