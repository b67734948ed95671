"""``styleprefs quickstart``: the whole pipeline, offline, on tiny models, on CPU, in a few minutes.

build (sample source, classic editor) -> filter-unsafe -> cache -> train SFT -> train RPO from SFT
-> generate from base, SFT and SFT+RPO with the same seeds -> style FID/KID and implicit accuracy
-> ``report.md`` and ``report.html``. Every stage is resumable, so a second run reuses what is done.
The tiny models have random weights: the numbers show the machinery works, not that styles are learnt.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rich.console import Console

from styleprefs.io import write_text

RESOLUTION = 64
NUM_PAIRS = 64
PROMPTS = 32  # generated images per model (one per caption); style FID compares 32 with 32
GENERATION_STEPS = 6


@dataclass(frozen=True)
class Stage:
    name: str
    command: str  # the real command this stage stands for
    run: Callable[[], object]
    done: Callable[[], bool]


def quickstart(out: Path, *, style: str = "winter", inception: str | None = None, console: Console | None = None) -> Path:
    """Run every stage into ``out`` (skipping finished ones) and return the HTML report's path."""
    console = console or Console()
    out = Path(out)
    data, runs, gen = out / "data", out / "runs", out / "generated"
    stages = _stages(out, style, inception)
    for i, stage in enumerate(stages, 1):
        status = "reused" if stage.done() else None
        if status is None:
            console.rule(f"[bold]{i}/{len(stages)} {stage.name}")
            stage.run()
            status = "done"
        console.print(f"[green]✓[/green] {i}/{len(stages)} {stage.name} ({status})")
    page = _write_html(out, data, runs, gen)
    console.print(f"\nReport: {out / 'report.md'}\nPage:   {page}\n")
    console.print("Each stage corresponds to a real command (drop --model tiny for Stable Diffusion 1.5 on a GPU):")
    for stage in stages:
        console.print(f"  {stage.command}", markup=False, highlight=False)
    return page


def _stages(out: Path, style: str, inception: str | None) -> list[Stage]:
    from styleprefs.build import BuildConfig, build_dataset
    from styleprefs.filter_unsafe import filter_unsafe

    data, runs, gen = out / "data", out / "runs", out / "generated"
    models = {"base": "tiny", "sft": str(runs / "sft"), "rpo": str(runs / "rpo")}
    fid_flag = f"--inception {inception}" if inception else "--features random"
    stages = [
        Stage("build a sample dataset", f"styleprefs build --style {style} --source sample --num-pairs {NUM_PAIRS} --out {data}",
              lambda: build_dataset(BuildConfig(style=style, source="sample", num_pairs=NUM_PAIRS, shard_size=NUM_PAIRS), data),
              lambda: (data / "manifest.json").is_file()),
        Stage("filter unsafe rows", f"styleprefs filter-unsafe {data}",
              lambda: filter_unsafe(data), lambda: _filtered(data)),
        Stage("cache latents and embeddings", f"styleprefs cache {data} --model tiny --resolution {RESOLUTION} --clip-model tiny",
              lambda: _cache(data), lambda: False),
        Stage("train SFT", f"styleprefs train --stage sft --data {data} --model tiny --out {runs / 'sft'}",
              lambda: _train("sft", data, runs / "sft"), lambda: (runs / "sft" / "model_index.json").is_file()),
        Stage("train RPO from the SFT model", f"styleprefs train --stage rpo --data {data} --init {runs / 'sft'} --out {runs / 'rpo'}",
              lambda: _train("rpo", data, runs / "rpo", init=runs / "sft"),
              lambda: (runs / "rpo" / "model_index.json").is_file()),
    ]
    for name, model in models.items():
        stages.append(Stage(f"generate from {name}", f"styleprefs eval generate --model {model} --prompts {data} --out {gen / name}",
                            lambda model=model, name=name: _generate(model, data, gen / name), lambda: False))
    for name in models:
        stages.append(Stage(f"style FID of {name}", f"styleprefs eval style-fid --data {data} --generated {gen / name} {fid_flag}",
                            lambda name=name: _fid(data, gen / name, inception),
                            lambda name=name: (gen / name / "style_fid.json").is_file()))
    for name, ref in (("sft", "base"), ("rpo", "sft")):
        stages.append(Stage(f"implicit accuracy of {name} against {ref}",
                            f"styleprefs eval implicit-acc --model {models[name]} --ref {models[ref]} --data {data}",
                            lambda name=name, ref=ref: _implicit(models[name], models[ref], data, gen / name),
                            lambda name=name: (gen / name / "implicit_acc.json").is_file()))
    stages.append(Stage("report", f"styleprefs eval report {gen / 'base'} {gen / 'sft'} {gen / 'rpo'} --out {out / 'report.md'}",
                        lambda: _report(out, gen), lambda: False))
    return stages


def _filtered(data: Path) -> bool:
    manifest = json.loads((data / "manifest.json").read_text())
    return bool(manifest.get("safety", {}).get("runs"))


def _cache(data: Path) -> None:
    from styleprefs.trainer.cache import build_cache

    build_cache(data, "tiny", RESOLUTION, clip_model="tiny")


def _train(stage: str, data: Path, out: Path, init: Path | None = None) -> None:
    from styleprefs.trainer.config import TrainConfig
    from styleprefs.trainer.loop import train

    # A tiny random model needs a large learning rate to move visibly in a few dozen steps.
    cfg = TrainConfig(stage=stage, data=str(data), out=str(out), model="tiny", init=str(init) if init else None,
                      clip_model="tiny", resolution=RESOLUTION, batch_size=8, gradient_accumulation_steps=1,
                      max_steps=40 if stage == "sft" else 20, learning_rate=1e-4 if stage == "sft" else 1e-5,
                      warmup_steps=0, beta=5000.0, tau=1.0, checkpoint_every=20, validation_every=20,
                      validation_prompts=["a red house on a grass field at sunset"], report_to="tensorboard",
                      resume=(out / "checkpoints").is_dir())
    train(cfg)


def _generate(model: str, data: Path, out: Path) -> None:
    from styleprefs.eval.generate import generate

    generate(model, str(data), out, images_per_prompt=1, seed=0, steps=GENERATION_STEPS, resolution=RESOLUTION,
             limit=PROMPTS, batch_size=16, device="cpu")


def _fid(data: Path, generated: Path, inception: str | None) -> None:
    from styleprefs.eval.fid import style_fid

    style_fid(data, generated, inception=inception, features="fid" if inception else "random",
              kid_subset_size=PROMPTS // 2, device="cpu")


def _implicit(model: str, ref: str, data: Path, out: Path) -> None:
    from styleprefs.eval.implicit_acc import implicit_accuracy

    implicit_accuracy(model, ref, data, base="tiny", num_draws=2, resolution=RESOLUTION, device="cpu",
                      out=out / "implicit_acc.json")


def _report(out: Path, gen: Path) -> None:
    from styleprefs.eval.report import make_report
    from styleprefs.inspect import save_grid

    make_report([gen / "base", gen / "sft", gen / "rpo"], out / "report.md", names=["base (tiny)", "SFT", "SFT+RPO"])
    save_grid(out / "data", out / "dataset_grid.png", rows=6)


def _write_html(out: Path, data: Path, runs: Path, gen: Path) -> Path:
    """One self-contained page (images by relative path): dataset grid, curves, generations, metrics."""
    report = json.loads((out / "report.json").read_text())
    table, columns = report["table"], report["columns"]
    rows = "".join(f"<tr><th>{html.escape(label)}</th>" + "".join(
        f"<td>{_cell(table[label].get(c))}</td>" for c in columns) + "</tr>" for label in report["labels"])
    manifest = json.loads((data / "manifest.json").read_text())
    counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in manifest["counts"].items())
    figures = [("Dataset: rejected original | preferred edit", "dataset_grid.png"),
               ("SFT training curves", "runs/sft/curves.png"), ("RPO training curves (reference: SFT)", "runs/rpo/curves.png"),
               ("Generations, same prompt and seed per row", "report_grid.png"), ("Metrics", "report_bars.png")]
    body = "".join(f"<figure><figcaption>{html.escape(t)}</figcaption><img src='{src}'></figure>"
                   for t, src in figures if (out / src).is_file())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>styleprefs quickstart</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}img{{max-width:100%;border:1px solid #ccc}}
table{{border-collapse:collapse}}td,th{{border:1px solid #bbb;padding:4px 8px;text-align:right}}figure{{margin:1.5em 0}}
figcaption{{font-weight:bold;margin-bottom:.4em}}.note{{color:#a33}}</style></head><body>
<h1>styleprefs quickstart</h1>
<p>Style <b>{html.escape(manifest['config']['build']['style'])}</b>; dataset: {html.escape(counts)}.</p>
<p class="note">Tiny models with random weights, trained for a few steps on CPU: these figures show the pipeline runs
end to end, not what fine-tuning achieves. FID/KID use an untrained Inception unless real weights were given:
not comparable to published FID.</p>
<h2>Metrics</h2><table><tr><th>method</th>{''.join(f'<th>{html.escape(c)}</th>' for c in columns)}</tr>{rows}</table>
{body}</body></html>"""
    path = out / "report.html"
    write_text(page, path)
    return path


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else "n/a"
    return "" if value is None else html.escape(str(value))
