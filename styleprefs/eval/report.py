"""``styleprefs eval report``: one Markdown table (rows: methods, columns: metrics), image grids and bar plots.

Each RUN is a generation folder (``eval generate``) in which the other commands left their results:
``style_fid.json`` (``eval style-fid``), ``rewards.json`` + ``scores.parquet`` (``eval rewards``),
``vendi.json`` (``eval vendi``) and, if written there with ``--out``, ``implicit_acc.json``
(``eval implicit-acc``). Missing results are blank cells. Win rates against the first run (the
baseline) are computed from the runs' ``scores.parquet`` (per-prompt medians, ties 1/2; see ``winrate``).

Files written beside ``report.md``: ``<stem>.json`` (every number), ``<stem>_grid.png`` (rows: prompts;
columns: runs; image 0 of each prompt, i.e. the same seed for every model) and ``<stem>_bars.png``
(one bar chart per metric). FID numbers from random features are starred and footnoted.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from styleprefs.errors import StyleprefsError
from styleprefs.io import read_json

SCORER_LABELS = {"pickscore": "PickScore", "hpsv2": "HPSv2", "aesthetic": "Aesthetic", "clip": "CLIP",
                 "imagereward": "ImageReward", "winter": "Winter score", "van_gogh": "Van Gogh score",
                 "sketch": "Sketch score"}
LOWER_IS_BETTER = {"Style FID", "KID"}
RANDOM_FID = "random (untrained) Inception features"
MINI_FID = "mini-clip features (mini FID, comparable only within the miniature world)"


def collect(run: Path) -> dict:
    """Every metric found in one run folder: {column label: value}, plus notes."""
    from styleprefs.eval.fid import RESULT_FILE as FID_FILE
    from styleprefs.eval.rewards import RESULT_FILE as REWARDS_FILE
    from styleprefs.eval.vendi import RESULT_FILE as VENDI_FILE

    metrics: dict[str, float] = {}
    notes: list[str] = []
    fid = read_json(run / FID_FILE)
    if fid:
        metrics["Style FID"], metrics["KID"] = fid["fid"], fid["kid"]
        if not fid.get("comparable_to_published", True):
            notes.append(MINI_FID if str(fid.get("features", {}).get("name", "")).startswith("mini") else RANDOM_FID)
        if fid.get("n", 0) < 2048:
            notes.append(f"FID at N = {fid.get('n')}")
    for scorer, values in read_json(run / REWARDS_FILE).items():
        if isinstance(values, dict) and "mean" in values:
            metrics[SCORER_LABELS.get(scorer, scorer)] = values["mean"]
    vendi = read_json(run / VENDI_FILE)
    if vendi:
        metrics["Vendi"] = vendi["vendi"]
        if vendi.get("comparable") is False:
            notes.append("random-embedding Vendi")
    acc = read_json(run / "implicit_acc.json")
    if acc:
        metrics["Implicit acc"] = acc["implicit_acc"]
    return {"metrics": metrics, "notes": notes, "random_fid": bool(fid) and not fid.get("comparable_to_published", True)}


def _win_rates(runs: Sequence[Path], labels: Sequence[str]) -> dict[str, dict[str, dict]]:
    """{run label: {column label: win-rate result}} against runs[0], for scorers both runs hold."""
    from styleprefs.eval.rewards import SCORES_FILE, read_scores
    from styleprefs.eval.winrate import win_rate

    if len(runs) < 2 or not (runs[0] / SCORES_FILE).is_file():
        return {}
    base = read_scores(runs[0])
    out: dict[str, dict[str, dict]] = {}
    for run, label in zip(runs[1:], labels[1:]):
        if not (run / SCORES_FILE).is_file():
            continue
        other = read_scores(run)
        for scorer in SCORER_LABELS:
            if scorer in base and scorer in other:
                a = _group(other, scorer)
                b = _group(base, scorer)
                try:
                    result = win_rate(a, b, n_bootstrap=2000)
                except StyleprefsError:
                    continue
                out.setdefault(label, {})[f"Win vs {labels[0]} ({SCORER_LABELS[scorer]})"] = result
    return out


def _group(columns: dict, scorer: str) -> dict[str, list[float]]:
    groups: dict[str, list[float]] = {}
    for prompt, value in zip(columns["prompt"], columns[scorer]):
        if value is not None:
            groups.setdefault(prompt, []).append(float(value))
    return groups


def _fmt(value: float | None, column: str) -> str:
    if value is None:
        return ""
    if column.startswith("Win") or column == "Implicit acc":
        return f"{100 * value:.1f}%"
    if column == "KID":
        return f"{value:.4f}"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"


def image_grid(runs: Sequence[Path], labels: Sequence[str], out: Path, *, n_prompts: int = 4, cell: int = 160) -> dict:
    """PNG grid: one row per prompt (shared by every run), one column per run, image index 0 (same seed)."""
    from styleprefs.eval.generate import INDEX, read_index

    if not all((run / INDEX).is_file() for run in runs):
        return {"written": False, "reason": "a run folder has no index.jsonl (not written by `eval generate`)"}
    indexes = [{(r.prompt, r.index): r for r in read_index(run)} for run in runs]
    first = [key for key in indexes[0] if key[1] == 0 and all(key in idx for idx in indexes[1:])]
    rows = first[:n_prompts]
    if not rows:
        return {"written": False, "reason": "the runs share no prompt with an image 0"}
    same_seed = all(len({idx[key].seed for idx in indexes}) == 1 for key in rows)
    font = ImageFont.load_default(size=12)
    header, side = 28, 200
    grid = Image.new("RGB", (side + cell * len(runs), header + cell * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for c, label in enumerate(labels):
        draw.text((side + c * cell + 4, 6), label[: cell // 7], fill="black", font=font)
    for r, key in enumerate(rows):
        y = header + r * cell
        text = "\n".join(textwrap.wrap(key[0], width=side // 7)[: cell // 16])
        draw.text((4, y + 4), text, fill="black", font=font)
        for c, (run, idx) in enumerate(zip(runs, indexes)):
            with Image.open(run / idx[key].path) as img:
                grid.paste(img.convert("RGB").resize((cell, cell), Image.Resampling.BICUBIC), (side + c * cell, y))
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return {"written": True, "prompts": [k[0] for k in rows], "same_seed": same_seed}


def bar_plots(table: dict[str, dict[str, float]], columns: Sequence[str], out: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [c for c in columns if any(c in row for row in table.values())]
    if not columns:
        return False
    cols = min(3, len(columns))
    rows = (len(columns) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    labels = list(table)
    for ax, column in zip(axes.flat, columns):
        values = [table[label].get(column, np.nan) for label in labels]
        ax.bar(range(len(labels)), values, color=[f"C{i}" for i in range(len(labels))])
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        arrow = " (lower is better)" if column in LOWER_IS_BETTER else ""
        ax.set_title(column + arrow, fontsize=9)
        if column.startswith("Win"):
            ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def make_report(runs: Sequence[str | Path], out: str | Path, *, names: Sequence[str] | None = None,
                grid_prompts: int = 4) -> dict:
    """Write ``out`` (Markdown) and its JSON, grid and bar-plot files; return the JSON content."""
    from styleprefs.eval.generate import read_settings
    from styleprefs.io import write_json, write_text

    runs = [Path(r) for r in runs]
    if not runs:
        raise StyleprefsError("give at least one run folder")
    for run in runs:
        if not run.is_dir():
            raise StyleprefsError(f"run folder {run} does not exist")
    if names and len(names) != len(runs):
        raise StyleprefsError(f"--name given {len(names)} time(s) for {len(runs)} run(s)")
    labels = list(names) if names else [_label(run, read_settings(run)) for run in runs]
    if len(set(labels)) != len(labels):
        labels = [f"{label} ({i + 1})" for i, label in enumerate(labels)]
    out = Path(out)
    collected = {label: collect(run) for label, run in zip(labels, runs)}
    table = {label: dict(c["metrics"]) for label, c in collected.items()}
    wins = _win_rates(runs, labels)
    for label, results in wins.items():
        for column, result in results.items():
            table[label][column] = result["win_rate"]
    order = ["Style FID", "KID", *SCORER_LABELS.values(), "Vendi", "Implicit acc"]
    columns = [c for c in order if any(c in row for row in table.values())]
    columns += sorted({c for row in table.values() for c in row if c not in columns})
    if not columns:
        raise StyleprefsError(f"no metrics found in {', '.join(str(r) for r in runs)}: run `styleprefs eval "
                              "style-fid`, `rewards` or `vendi` on them first")
    lines = ["# Evaluation report", "", f"Runs: {', '.join(f'`{r}`' for r in runs)}", ""]
    heads = [c + (" ↓" if c in LOWER_IS_BETTER else " ↑") for c in columns]
    lines += ["| Method | " + " | ".join(heads) + " |", "|---|" + "---|" * len(columns)]
    for label in labels:
        star = "*" if collected[label]["random_fid"] else ""
        cells = [_fmt(table[label].get(c), c) + (star if c in LOWER_IS_BETTER and c in table[label] else "")
                 for c in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    footnotes = []
    kinds = {note for c in collected.values() for note in c["notes"] if note in (RANDOM_FID, MINI_FID)}
    if kinds:
        footnotes.append(f"\\* FID/KID from {' and '.join(sorted(kinds))}: not comparable to published FID.")
    for label, c in collected.items():
        for note in c["notes"]:
            if note not in (RANDOM_FID, MINI_FID):
                footnotes.append(f"{label}: {note}.")
    for label, results in wins.items():
        for column, r in results.items():
            footnotes.append(f"{label}, {column}: {100 * r['win_rate']:.1f}% (95% CI {100 * r['ci_low']:.1f}–"
                             f"{100 * r['ci_high']:.1f}%), {r['wins']} wins / {r['ties']} ties / {r['losses']} losses "
                             f"over {r['n_prompts']} prompts.")
    if footnotes:
        lines += [""] + [f"- {f}" for f in footnotes]
    grid_path, bars_path = out.with_name(f"{out.stem}_grid.png"), out.with_name(f"{out.stem}_bars.png")
    grid = image_grid(runs, labels, grid_path, n_prompts=grid_prompts)
    if grid["written"]:
        seed_note = "same seed in every column" if grid["same_seed"] else "WARNING: seeds differ between columns"
        lines += ["", f"## Samples (image 0 of each prompt; {seed_note})", "", f"![samples]({grid_path.name})"]
    if bar_plots(table, columns, bars_path):
        lines += ["", "## Metrics", "", f"![metrics]({bars_path.name})"]
    write_text("\n".join(lines) + "\n", out)
    result = {"runs": [str(r) for r in runs], "labels": labels, "columns": columns, "table": table,
              "win_rates": wins, "notes": {k: v["notes"] for k, v in collected.items()}, "grid": grid,
              "markdown": str(out)}
    write_json(result, out.with_suffix(".json"))
    return result


def _label(run: Path, settings: dict) -> str:
    """The run folder's name (``gen/rpo`` -> ``rpo``), as the user named it."""
    return run.resolve().name or str(run)
