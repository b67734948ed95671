"""``styleprefs experiment``: experiments that show behaviour in the miniature world."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer
from rich.console import Console

experiment_app = typer.Typer(no_args_is_help=True, help="Experiments in the miniature world (mini, mini-clip).")
console = Console()


@experiment_app.command("style-alignment")
def style_alignment(
    out: Path = typer.Option(Path("out/style-alignment"), help="Folder for datasets, runs, generations and results."),
    style: str = typer.Option("winter", help="Built-in style."),
    seeds: int | None = typer.Option(None, help="Seeds to run (0, 1, ...); 3, or 2 with --quick, if not given."),
    quick: bool = typer.Option(False, help="A few steps: a check that everything runs (minutes)."),
    model: str = typer.Option("mini", help="The trained base: mini (SD1.5 layout) or mini-flow (SD3 layout, rectified flow)."),
    beta: float | None = typer.Option(None, help="DPO/RPO beta (default: 5000 on mini, the SD3 family's 500 on mini-flow)."),
) -> None:
    """SFT, SFT+SFT, SFT+DPO, SFT+RPO (tau 0.01, 1, 5), DPO and RPO from the mini base: mean ± std table over seeds."""
    from styleprefs.experiments.style_alignment import ExperimentPlan, render_table, run_experiment

    if model not in ("mini", "mini-flow"):
        raise typer.BadParameter("must be mini or mini-flow", param_hint="--model")

    plan = ExperimentPlan.quick() if quick else ExperimentPlan()
    if seeds is not None and seeds < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--seeds")
    chosen = plan.seeds if seeds is None else tuple(range(seeds))
    if beta is not None and not beta > 0:
        raise typer.BadParameter("must be a positive number", param_hint="--beta")
    plan = replace(plan, style=style, seeds=chosen).on(model)
    if beta is not None:
        plan = replace(plan, beta=beta)
    results = run_experiment(out, plan, console=console)
    console.print(render_table(results), markup=False, highlight=False, soft_wrap=True)  # a markdown row per line
    console.print(f"results: {out / 'results.json'}, grid: {out / 'grid' / 'report_grid.png'}")


@experiment_app.command("online-improvement")
def online_improvement(
    out: Path = typer.Option(Path("out/online-improvement"), help="Folder for datasets, runs, generations and results."),
    style: str = typer.Option("winter", help="Built-in style."),
    seeds: int = typer.Option(1, help="Seeds to run (0, 1, ...)."),
    quick: bool = typer.Option(False, help="A few steps and images: a check that everything runs (minutes)."),
) -> None:
    """The improver alone; iterative DPO from the base and from SFT; SPIN; offline DPO with the same steps."""
    from styleprefs.experiments.online_improvement import OnlinePlan, render_table, run_online_experiment

    plan = OnlinePlan.quick() if quick else OnlinePlan()
    if seeds < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--seeds")
    results = run_online_experiment(out, OnlinePlan(**{**plan.__dict__, "style": style, "seeds": tuple(range(seeds))}),
                                    console=console)
    console.print(render_table(results), markup=False, highlight=False, soft_wrap=True)  # a markdown row per line
    console.print(f"results: {out / 'results.json'}, grids: {out / 'grid'}")
