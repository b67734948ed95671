"""``styleprefs quickstart``: the whole pipeline, offline, on the trained mini models, on CPU, in a few minutes.

build (sample source, classic editor; a train split and held-out pairs) -> filter-unsafe -> cache ->
train SFT -> train RPO from SFT -> generate from base, SFT and SFT+RPO with the same seeds -> mini
FID/KID, the style score (``mini-clip`` zero-shot) and implicit accuracy on held-out pairs ->
``report.md`` and ``report.html``. Every stage is resumable, so a second run reuses what is done.
In the miniature world the base draws summer scenes, so a Winter dataset is a real shift.
"""

from __future__ import annotations

import html
import json
import math
import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from rich.console import Console

from styleprefs.io import read_json, write_text

if TYPE_CHECKING:
    from styleprefs.trainer.config import TrainConfig

RESOLUTION = 64
MODEL, CLIP = "mini", "mini-clip"
# The trained base models the quickstart runs on (``--model``), and how the report describes them.
MODELS = {"mini": "a 64 px Stable Diffusion 1.5-layout model",
          "mini-flow": "a 64 px Stable Diffusion 3-layout rectified-flow model"}
# Classifier-free guidance of every generation. At 3 SFT's winter shift shows most and the base's images are about as
# close to real scenes (mini FID) as they get; higher guidance re-saturates the colours that the winter wash takes
# out (README, "Guidance in the miniature").
GUIDANCE = 3.0
IMPLICIT_DRAWS = 4  # (t, noise) draws per held-out pair


@dataclass(frozen=True)
class Plan:
    """How much work each stage does. Learning rates are per pair (``--scale-lr``): the rate applied is
    ``lr x batch_size``."""

    num_pairs: int = 256
    heldout_pairs: int = 48
    prompts: int = 32  # captions generated from, per model; style FID compares as many images with as many
    images_per_prompt: int = 2  # seeds per caption: the spread of every mean over seeds is reported
    generation_steps: int = 15
    guidance: float = GUIDANCE
    batch_size: int = 8
    sft_steps: int = 120
    rpo_steps: int = 60
    sft_lr: float = 2.5e-5
    sft_snr_gamma: float | None = 5.0  # Min-SNR weighting of the SFT loss (``--snr-gamma``)
    rpo_lr: float = 2.5e-6
    beta: float | None = 5000.0  # None: the model family's default (``styleprefs train --beta``)

    @classmethod
    def reduced(cls) -> Plan:
        """For tests: the same training set and SFT run, fewer captions, sampling steps and RPO steps."""
        return cls(heldout_pairs=16, prompts=16, generation_steps=10, rpo_steps=10)

    @classmethod
    def for_model(cls, model: str) -> Plan:
        """The plan for base ``model``: mini's as measured; on mini-flow no Min-SNR weighting (an epsilon-loss
        weighting) and the flow family's own DPO/RPO beta."""
        return cls() if model == MODEL else cls(sft_snr_gamma=None, beta=None)


def run_labels(model: str) -> dict[str, str]:
    """The report's row label of each run."""
    return {"base": f"base ({model})", "sft": "SFT", "rpo": "SFT+RPO"}


@dataclass(frozen=True)
class Stage:
    name: str
    command: str  # the real command this stage stands for
    run: Callable[[], object]
    done: Callable[[], bool]


def quickstart(out: Path, *, model: str = MODEL, style: str = "winter", inception: str | None = None,
               plan: Plan | None = None, console: Console | None = None) -> Path:
    """Run every stage into ``out`` on base ``model`` (one of ``MODELS``; skipping finished stages) and return the
    HTML report's path. ``plan`` defaults to ``Plan.for_model(model)``."""
    from styleprefs.errors import StyleprefsError

    if model not in MODELS:
        raise StyleprefsError(f"--model must be one of {', '.join(MODELS)} (the trained mini models), got {model!r}")
    console = console or Console()
    out = Path(out)
    stages = _stages(out, model, style, inception, plan or Plan.for_model(model))
    for i, stage in enumerate(stages, 1):
        status = "reused" if stage.done() else None
        if status is None:
            console.rule(f"[bold]{i}/{len(stages)} {stage.name}")
            stage.run()
            status = "done"
        console.print(f"[green]✓[/green] {i}/{len(stages)} {stage.name} ({status})")
    page = _write_html(out, model, style)
    console.print(f"\nReport: {out / 'report.md'}\nPage:   {page}\n")
    console.print(f"Each stage corresponds to a real command (use your own models for {model} and {CLIP}, e.g. "
                  "stable-diffusion-v1-5/stable-diffusion-v1-5 and openai/clip-vit-large-patch14, on a GPU):")
    for stage in stages:
        console.print(f"  {stage.command}", markup=False, highlight=False)
    console.print(f"\nLook at the dataset's pairs and drop or flip them by eye: styleprefs review {out / 'data'}",
                  markup=False, highlight=False)
    return page


def _stages(out: Path, model: str, style: str, inception: str | None, plan: Plan) -> list[Stage]:
    from styleprefs.build import BuildConfig, build_dataset
    from styleprefs.filter_unsafe import SafetyOptions, filter_unsafe

    data, heldout, runs, gen = out / "data", out / "data-heldout", out / "runs", out / "generated"
    models = {"base": model, "sft": str(runs / "sft"), "rpo": str(runs / "rpo")}
    fid_flag = f"--inception {inception}" if inception else "--features mini"
    build = "styleprefs build --style {style} --source sample --split {split} --num-pairs {n} --shard-size {n} --out {out}"
    sft = _train_config("sft", data, runs / "sft", plan, model)
    rpo = _train_config("rpo", data, runs / "rpo", plan, model, runs / "sft")
    stages = [
        Stage("build the training set (sample scenes, train split)",
              build.format(style=style, split="train", n=plan.num_pairs, out=data),
              lambda: build_dataset(BuildConfig(style=style, source="sample", split="train", num_pairs=plan.num_pairs,
                                                shard_size=plan.num_pairs), data),
              lambda: (data / "manifest.json").is_file()),
        Stage("build held-out pairs (scenes training never sees)",
              build.format(style=style, split="test", n=plan.heldout_pairs, out=heldout),
              lambda: build_dataset(BuildConfig(style=style, source="sample", split="test",
                                                num_pairs=plan.heldout_pairs, shard_size=plan.heldout_pairs), heldout),
              lambda: (heldout / "manifest.json").is_file()),
        Stage("filter unsafe rows", f"styleprefs filter-unsafe {data}",
              lambda: filter_unsafe(data, SafetyOptions(images=True)), lambda: _filtered(data)),
        Stage("cache latents and embeddings",
              f"styleprefs cache {data} --model {model} --resolution {RESOLUTION} --clip-model {CLIP}",
              lambda: _cache(data, model), lambda: False),
        Stage("train SFT", sft.command_line(), lambda: _train(sft), lambda: (runs / "sft" / "model_index.json").is_file()),
        Stage("train RPO from the SFT model", rpo.command_line(), lambda: _train(rpo),
              lambda: (runs / "rpo" / "model_index.json").is_file()),
    ]
    for name, folder in models.items():
        stages.append(Stage(f"generate from {name}", f"styleprefs eval generate --model {folder} --prompts {data} "
                            f"--images-per-prompt {plan.images_per_prompt} --seed 0 --steps {plan.generation_steps} "
                            f"--guidance {plan.guidance} --resolution {RESOLUTION} --limit {plan.prompts} "
                            f"--batch-size 16 --device cpu --out {gen / name}",
                            lambda folder=folder, name=name: _generate(folder, data, gen / name, plan), lambda: False))
    for name in models:
        stages += [
            Stage(f"style FID of {name}", f"styleprefs eval style-fid --data {data} --generated {gen / name} {fid_flag} "
                  f"--kid-subset-size {plan.prompts // 2} --device cpu",
                  lambda name=name: _fid(data, gen / name, inception, plan),
                  lambda name=name: (gen / name / "style_fid.json").is_file()),
            Stage(f"{style} score of {name}", f"styleprefs eval rewards {gen / name} --scorer {style}={CLIP} --device cpu",
                  lambda name=name: _style_score(gen / name, style),
                  lambda name=name: style in read_json(gen / name / "rewards.json")),
        ]
    for name, ref in (("sft", "base"), ("rpo", "sft")):
        stages.append(Stage(f"implicit accuracy of {name} against {ref} on held-out pairs",
                            f"styleprefs eval implicit-acc --model {models[name]} --ref {models[ref]} --data {heldout} "
                            f"--base {model} --draws {IMPLICIT_DRAWS} --resolution {RESOLUTION} --device cpu "
                            f"--out {gen / name / 'implicit_acc.json'}",
                            lambda name=name, ref=ref: _implicit(models[name], models[ref], model, heldout, gen / name),
                            lambda name=name: (gen / name / "implicit_acc.json").is_file()))
    names = " ".join(f"--name {shlex.quote(label)}" for label in run_labels(model).values())
    stages.append(Stage("report", f"styleprefs eval report {gen / 'base'} {gen / 'sft'} {gen / 'rpo'} {names} "
                        f"--out {out / 'report.md'}", lambda: _report(out, gen, model), lambda: False))
    return stages


def _filtered(data: Path) -> bool:
    return bool(read_json(data / "manifest.json").get("safety", {}).get("runs"))


def _cache(data: Path, model: str) -> None:
    from styleprefs.trainer.cache import build_cache

    build_cache(data, model, RESOLUTION, clip_model=CLIP)


def _train_config(stage: str, data: Path, out: Path, plan: Plan, model: str, init: Path | None = None) -> TrainConfig:
    """The stage's run; its ``command_line`` is the command printed for it."""
    from styleprefs.trainer.config import TrainConfig

    steps = plan.sft_steps if stage == "sft" else plan.rpo_steps
    return TrainConfig(stage=stage, data=str(data), out=str(out), model=None if init else model,
                       init=str(init) if init else None, clip_model=CLIP, resolution=RESOLUTION,
                       batch_size=plan.batch_size, gradient_accumulation_steps=1, max_steps=steps,
                       learning_rate=plan.sft_lr if stage == "sft" else plan.rpo_lr, scale_lr=True,
                       snr_gamma=plan.sft_snr_gamma if stage == "sft" else None,
                       warmup_steps=steps // 10, beta=plan.beta, tau=1.0, checkpoint_every=steps,
                       validation_every=steps, validation_prompts=["a red house on a grass field at sunset"],
                       report_to="tensorboard")


def _train(cfg: TrainConfig) -> None:
    from styleprefs.trainer.loop import train

    train(replace(cfg, resume=(Path(cfg.out) / "checkpoints").is_dir()))


def _generate(model: str, data: Path, out: Path, plan: Plan) -> None:
    from styleprefs.eval.generate import generate

    generate(model, str(data), out, images_per_prompt=plan.images_per_prompt, seed=0, steps=plan.generation_steps,
             guidance=plan.guidance, resolution=RESOLUTION, limit=plan.prompts, batch_size=16, device="cpu")


def _fid(data: Path, generated: Path, inception: str | None, plan: Plan) -> None:
    from styleprefs.eval.fid import style_fid

    style_fid(data, generated, inception=inception, features="fid" if inception else "mini",
              kid_subset_size=plan.prompts // 2, device="cpu")


def _style_score(generated: Path, style: str) -> None:
    from styleprefs.eval.rewards import score_folder

    score_folder(generated, [f"{style}={CLIP}"], device="cpu")


def _implicit(model: str, ref: str, base: str, data: Path, out: Path) -> None:
    from styleprefs.eval.implicit_acc import implicit_accuracy

    implicit_accuracy(model, ref, data, base=base, num_draws=IMPLICIT_DRAWS, resolution=RESOLUTION, device="cpu",
                      out=out / "implicit_acc.json")


def _report(out: Path, gen: Path, model: str) -> None:
    from styleprefs.eval.report import make_report
    from styleprefs.inspect import save_grid

    labels = run_labels(model)
    make_report([gen / name for name in labels], out / "report.md", names=list(labels.values()))
    save_grid(out / "data", out / "dataset_grid.png", rows=6)


def seed_spread(generated: Path, scorer: str) -> dict:
    """Mean score per generation seed (image index) and their spread (max - min)."""
    import numpy as np

    from styleprefs.eval.rewards import read_scores

    table = read_scores(generated)
    index, values = np.asarray(table["index"]), np.asarray(table[scorer], dtype=np.float64)
    means = [float(values[index == i].mean()) for i in sorted(set(index.tolist()))]
    return {"per_seed": means, "spread": max(means) - min(means), "mean": float(values.mean())}


def _write_html(out: Path, model: str, style: str) -> Path:
    """One self-contained page (images by relative path): dataset grid, curves, generations, metrics."""
    report = json.loads((out / "report.json").read_text())
    table, columns = report["table"], report["columns"]
    rows = "".join(f"<tr><th>{html.escape(label)}</th>" + "".join(
        f"<td>{_cell(table[label].get(c))}</td>" for c in columns) + "</tr>" for label in report["labels"])
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    labels = run_labels(model)
    counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in manifest["counts"].items())
    spreads = "".join(f"<li>{html.escape(label)}: " + ", ".join(f"{v:.3f}" for v in spread["per_seed"])
                      + f" (spread {spread['spread']:.3f})</li>"
                      for label, spread in ((labels[n], seed_spread(out / "generated" / n, style)) for n in labels))
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
<p class="note">The miniature world: {model} ({MODELS[model]}) and {CLIP}, trained on the bundled
sample scenes, fine-tuned for a few minutes on CPU. FID/KID here are mini FID ({CLIP} features), comparable only within
the miniature, unless real Inception weights were given. Implicit accuracy is measured on held-out pairs.</p>
<h2>Metrics</h2><table><tr><th>method</th>{''.join(f'<th>{html.escape(c)}</th>' for c in columns)}</tr>{rows}</table>
<p>{html.escape(style)} score per generation seed:</p><ul>{spreads}</ul>
{body}</body></html>"""
    path = out / "report.html"
    write_text(page, path)
    return path


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else "n/a"
    return "" if value is None else html.escape(str(value))
