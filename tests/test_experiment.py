"""`styleprefs experiment style-alignment --quick`: every method trained, generated and scored, a finite table."""

from __future__ import annotations

import math

import pytest
from rich.console import Console

from styleprefs.experiments.common import METRICS
from styleprefs.experiments.style_alignment import ExperimentPlan, run_experiment


@pytest.mark.parametrize("model", ["mini", "mini-flow"])
def test_quick_style_alignment_gives_a_finite_table(model, tmp_path):
    plan = ExperimentPlan.quick().on(model)
    results = run_experiment(tmp_path, plan, console=Console(quiet=True))
    assert list(results["rows"]) == ["base", *plan.methods]
    for name, row in results["rows"].items():
        expected = [m for m in METRICS if not (name == "base" and m == "Implicit acc")]
        assert sorted(row) == sorted(expected), name
        for metric in expected:
            assert len(row[metric]["values"]) == len(plan.seeds)
            assert math.isfinite(row[metric]["mean"]) and math.isfinite(row[metric]["std"]), (name, metric)
    table = (tmp_path / "table.md").read_text()
    assert all(f"| {name} |" in table for name in results["rows"])
    assert (tmp_path / "grid" / "report_grid.png").is_file()
    # Two-stage methods share their first stage (one SFT-half run per seed) and chain from it.
    runs = {p.name for p in (tmp_path / "seed-0" / "runs").iterdir()}
    assert runs == {"sft-4", "sft-2", "sft-2+sft-2", "sft-2+dpo-2", "sft-2+rpo-tau1-2", "dpo-4", "rpo-tau1-4"}


@pytest.mark.parametrize(("args", "beta"), [([], 500.0), (["--beta", "100"], 100.0)])
def test_beta_on_mini_flow_is_the_familys_unless_given(args, beta, monkeypatch, tmp_path):
    from styleprefs.cli.app import main
    from styleprefs.experiments import style_alignment
    from styleprefs.trainer.models import family_of

    plans = []
    monkeypatch.setattr(style_alignment, "run_experiment", lambda out, plan, console: plans.append(plan) or {})
    monkeypatch.setattr(style_alignment, "render_table", lambda results: "")
    main(["experiment", "style-alignment", "--model", "mini-flow", "--seeds", "1", "--out", str(tmp_path), *args])
    assert (plans[0].beta or family_of("mini-flow").default_beta) == beta  # None: the trainer takes the family's


def test_a_beta_that_is_not_positive_is_one_line(tmp_path, capsys):
    from styleprefs.cli.app import main

    with pytest.raises(SystemExit) as exc:
        main(["experiment", "style-alignment", "--model", "mini-flow", "--beta", "0", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--beta" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())
