"""``styleprefs eval winrate``: how often model A beats model B under a reward model, per prompt.

As in Diffusion-RPO (Appendix D): each model has several images per prompt (5 by default, on the same
seeds, see ``generate.image_seed``); for each prompt the **median** score of A's images is compared with
the median of B's. A prompt is a win (1), a tie (1/2, equal medians) or a loss (0); the win rate is
the mean over the prompts both folders hold. Ties are also counted separately (the paper does not
say how it treated them). The confidence interval is a percentile bootstrap over prompts
(``n_bootstrap`` resamples with replacement, ``default_rng(seed)``).

A model against itself wins exactly 0.5 (every prompt a tie).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from styleprefs.errors import StyleprefsError


def win_rate(scores_a: Mapping[str, Sequence[float]], scores_b: Mapping[str, Sequence[float]], *,
             n_bootstrap: int = 10000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Win rate of A over B from per-prompt score lists (only prompts present in both count)."""
    _check_confidence(confidence)
    prompts = [p for p in scores_a if p in scores_b and len(scores_a[p]) and len(scores_b[p])]
    if not prompts:
        raise StyleprefsError("the two image sets share no prompt: generate both from the same prompt list")
    med_a = np.array([np.median(scores_a[p]) for p in prompts], dtype=np.float64)
    med_b = np.array([np.median(scores_b[p]) for p in prompts], dtype=np.float64)
    outcome = np.where(med_a > med_b, 1.0, np.where(med_a < med_b, 0.0, 0.5))
    rng = np.random.default_rng(seed)
    n = len(prompts)
    rates = outcome[rng.integers(0, n, size=(n_bootstrap, n))].mean(axis=1) if n_bootstrap > 0 else np.array([])
    alpha = (1 - confidence) / 2
    low, high = (float(np.quantile(rates, alpha)), float(np.quantile(rates, 1 - alpha))) if rates.size else (None, None)
    return {
        "win_rate": float(outcome.mean()), "ci_low": low, "ci_high": high, "confidence": confidence,
        "n_bootstrap": n_bootstrap, "n_prompts": n, "wins": int((outcome == 1).sum()), "ties": int((outcome == 0.5).sum()),
        "losses": int((outcome == 0).sum()), "ties_count_as": 0.5,
        "only_in_a": sum(p not in scores_b for p in scores_a), "only_in_b": sum(p not in scores_a for p in scores_b),
        "mean_median_a": float(med_a.mean()), "mean_median_b": float(med_b.mean()),
    }


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:  # also refuses NaN
        raise StyleprefsError(f"--confidence must be in (0, 1), got {confidence}")


def _scores_by_prompt(folder: Path, scorer: str, score_options: dict) -> tuple[dict[str, list[float]], dict]:
    """Per-prompt scores of ``scorer`` from ``scores.parquet``, scoring the folder first if the column is missing."""
    from styleprefs.eval.rewards import SCORES_FILE, parse_scorer, read_scores, score_folder

    name, _ = parse_scorer(scorer)
    columns = read_scores(folder) if (folder / SCORES_FILE).is_file() else {}
    if name not in columns or any(v is None for v in columns[name]) or "=" in scorer:
        score_folder(folder, [scorer], **score_options)
        columns = read_scores(folder)
    by_prompt: dict[str, list[float]] = {}
    seeds: dict[tuple[str, int], int] = {}
    for prompt, index, seed, value in zip(columns["prompt"], columns["index"], columns["seed"], columns[name]):
        by_prompt.setdefault(prompt, []).append(float(value))
        seeds[(prompt, index)] = seed
    return by_prompt, seeds


def winrate_folders(dir_a: str | Path, dir_b: str | Path, scorers: Sequence[str], *, n_bootstrap: int = 10000,
                    confidence: float = 0.95, seed: int = 0, out: str | Path | None = None,
                    **score_options) -> dict:
    """Win rate of folder A over folder B for each scorer (``NAME`` or ``NAME=SOURCE``).

    Scores come from each folder's ``scores.parquet`` (computed with ``eval rewards`` options in
    ``score_options`` when missing). Writes ``out`` (default ``A/winrate_vs_<B>.json``) and returns
    ``{scorer: result}`` plus ``"same_seeds"``: whether every shared (prompt, index) used the same seed.
    """
    from styleprefs.eval.rewards import parse_scorer
    from styleprefs.io import write_json

    dir_a, dir_b = Path(dir_a), Path(dir_b)
    if not scorers:
        raise StyleprefsError("give at least one --scorer")
    _check_confidence(confidence)  # before scoring
    results: dict = {"a": str(dir_a), "b": str(dir_b)}
    mismatched = 0
    for scorer in scorers:
        name, _ = parse_scorer(scorer)
        a, seeds_a = _scores_by_prompt(dir_a, scorer, score_options)
        b, seeds_b = _scores_by_prompt(dir_b, scorer, score_options)
        mismatched = sum(seeds_b[k] != s for k, s in seeds_a.items() if k in seeds_b)
        results[name] = win_rate(a, b, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    results["same_seeds"] = mismatched == 0
    results["warnings"] = ([] if mismatched == 0 else
                           [f"{mismatched} shared (prompt, index) image(s) used different seeds: the models were not "
                            "compared on the same noise (generate both with the same --seed)"])
    write_json(results, Path(out) if out else dir_a / f"winrate_vs_{dir_b.resolve().name}.json")
    return results
