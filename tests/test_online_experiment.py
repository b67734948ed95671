"""`styleprefs experiment online-improvement --quick`: the improver alone, every method at every iteration, a table."""

from __future__ import annotations

import math

from rich.console import Console

from styleprefs.eval.generate import read_index
from styleprefs.experiments.common import METRICS
from styleprefs.experiments.online_improvement import IMPROVER, METHODS, OnlinePlan, run_online_experiment
from styleprefs.io import read_json


def test_quick_online_improvement_scores_every_method_after_every_iteration(tmp_path):
    plan = OnlinePlan.quick()
    results = run_online_experiment(tmp_path, plan, console=Console(quiet=True))
    iterations = range(1, plan.iterations + 1)
    assert list(results["rows"]) == ["base", "SFT", IMPROVER, *[f"{m.name}, iteration {k}" for k in iterations
                                                                for m in METHODS]]
    for name, row in results["rows"].items():
        expected = [m for m in METRICS if not (name in ("base", IMPROVER) and m == "Implicit acc")]
        assert sorted(row) == sorted(expected), name
        assert all(math.isfinite(row[m]["mean"]) for m in expected), name
    table = (tmp_path / "table.md").read_text()
    assert all(f"| {name} |" in table for name in results["rows"])
    assert all((tmp_path / "grid" / f"iter-{k}" / "report_grid.png").is_file() for k in iterations)

    gen, runs = tmp_path / "seed-0" / "gen", tmp_path / "seed-0" / "runs"
    # The improver alone edits each of the base's images, with its prompt and seed.
    base, improved = read_index(gen / "base"), read_index(gen / "improver")
    assert [(r.prompt, r.seed) for r in improved] == [(r.prompt, r.seed) for r in base]
    # Online methods keep every iteration's dataset and model; offline DPO is scored at the same step counts.
    for slug in ("iterative-from-base", "iterative-from-sft", "spin-from-base"):
        summary = read_json(runs / slug / "iterations.json")
        assert [it["iteration"] for it in summary["iterations"]] == list(iterations), slug
    for slug in ("dpo-from-base", "dpo-from-sft"):
        assert all((runs / slug / "checkpoints" / f"step-{k * plan.iteration_steps:06d}" / "model_index.json").is_file()
                   for k in iterations)
    # Iterative from SFT starts from the SFT model and keeps the base as its DPO reference.
    first = read_json(runs / "iterative-from-sft" / "iterations.json")["iterations"][0]
    assert first["init"] == str(runs / "sft") and first["reference"] == "mini"
