"""``styleprefs experiment``: experiments that show behaviour in the miniature world."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

experiment_app = typer.Typer(no_args_is_help=True, help="Experiments in the miniature world (mini, mini-clip).")
console = Console()


@experiment_app.command("style-alignment")
def style_alignment(
    out: Path = typer.Option(Path("out/style-alignment"), help="Folder for datasets, runs, generations and results."),
    style: str = typer.Option("winter", help="Built-in style."),
    quick: bool = typer.Option(False, help="Two seeds, a few steps: a check that everything runs (minutes)."),
) -> None:
    """SFT, SFT+SFT, SFT+DPO, SFT+RPO (tau 0.01, 1, 5), DPO and RPO from the mini base, 3 seeds: mean ± std table."""
    from styleprefs.experiment import ExperimentPlan, render_table, run_experiment

    plan = ExperimentPlan.quick() if quick else ExperimentPlan()
    results = run_experiment(out, ExperimentPlan(**{**plan.__dict__, "style": style}), console=console)
    console.print(render_table(results), markup=False, highlight=False)
    console.print(f"results: {out / 'results.json'}, grid: {out / 'grid' / 'report_grid.png'}")
