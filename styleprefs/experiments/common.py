"""What the miniature-world experiments share: the plan's common sizes, the datasets, training one run,
scoring one model, and the mean ± std table."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from styleprefs.io import read_json, write_json, write_text

MODEL, CLIP = "mini", "mini-clip"
RESOLUTION = 64
METRICS = ("Style FID", "KID", "style score", "Implicit acc", "Vendi")


@dataclass(frozen=True)
class MiniPlan:
    """Sizes and rates every experiment has. Learning rates are per pair (``--scale-lr``: applied rate = lr x
    batch size)."""

    style: str = "winter"
    seeds: tuple[int, ...] = (0, 1, 2)
    num_pairs: int = 384
    heldout_pairs: int = 64
    prompts: int = 48
    images_per_prompt: int = 2
    generation_steps: int = 20
    batch_size: int = 8
    lr: dict = field(default_factory=lambda: {"sft": 2.5e-5, "dpo": 2.5e-6, "rpo": 2.5e-6, "improve": 2.5e-5})
    beta: float | None = 5000.0  # None: the model family's default
    model: str = MODEL  # the trained base every method starts from: mini, or mini-flow (SD3 layout, flow matching)

    def on(self, model: str) -> MiniPlan:
        """This plan from base ``model``; on mini-flow with the flow family's own DPO/RPO beta."""
        return replace(self, model=model, beta=self.beta if model == MODEL else None)


def build_datasets(out: Path, plan: MiniPlan) -> tuple[Path, Path]:
    """The style's pairs from the sample's train split (cached with ``mini-clip`` embeddings) and held-out pairs
    from its test split; built once, reused by a rerun."""
    from styleprefs.build import BuildConfig, build_dataset
    from styleprefs.trainer.cache import build_cache

    data, heldout = out / "data", out / "data-heldout"
    for folder, split, n in ((data, "train", plan.num_pairs), (heldout, "test", plan.heldout_pairs)):
        build_dataset(BuildConfig(style=plan.style, source="sample", split=split, num_pairs=n, shard_size=n), folder)
    build_cache(data, plan.model, RESOLUTION, clip_model=CLIP)
    return data, heldout


def train_run(stage: str, data: Path, folder: Path, plan: MiniPlan, seed: int, steps: int, *,
              init: str | None = None, checkpoint_every: int | None = None, **options) -> str:
    """Train ``stage`` for ``steps`` steps into ``folder`` from ``init`` (else the mini base), unless it is
    finished; resumes an interrupted run. ``options`` are further TrainConfig fields. Returns the folder."""
    from styleprefs.trainer.config import TrainConfig
    from styleprefs.trainer.loop import train

    if not (folder / "model_index.json").is_file():
        lr = plan.lr["dpo" if stage in ("iterative", "spin") else stage]
        train(TrainConfig(stage=stage, data=str(data), out=str(folder), model=None if init else plan.model, init=init,
                          clip_model=CLIP, resolution=RESOLUTION, batch_size=plan.batch_size,
                          gradient_accumulation_steps=1, max_steps=steps, learning_rate=lr, scale_lr=True,
                          warmup_steps=steps // 10, beta=plan.beta, seed=seed,
                          checkpoint_every=checkpoint_every or steps, validation_every=0, report_to="none",
                          resume=(folder / "checkpoints").is_dir(), **options), show_progress=False)
    return str(folder)


def evaluate(model: str | None, folder: Path, data: Path, heldout: Path, plan: MiniPlan, seed: int) -> Path:
    """Generate from ``model`` (None: ``folder`` already holds images) and score the images: mini FID/KID against
    the dataset's preferred images, the style score, Vendi, and, for a trained model, implicit accuracy
    against the base on the held-out pairs. Finished parts are skipped."""
    from styleprefs.eval.fid import style_fid
    from styleprefs.eval.generate import generate
    from styleprefs.eval.implicit_acc import implicit_accuracy
    from styleprefs.eval.rewards import score_folder
    from styleprefs.eval.vendi import vendi_folder

    if model is not None:
        generate(model, str(data), folder, images_per_prompt=plan.images_per_prompt, seed=seed,
                 steps=plan.generation_steps, resolution=RESOLUTION, limit=plan.prompts, batch_size=32,
                 device="cpu", show_progress=False)
    if not (folder / "style_fid.json").is_file():
        style_fid(data, folder, features="mini", kid_subset_size=plan.prompts, seed=seed, device="cpu",
                  show_progress=False)
    if plan.style not in read_json(folder / "rewards.json"):
        score_folder(folder, [f"{plan.style}={CLIP}"], device="cpu", show_progress=False)
    if not (folder / "vendi.json").is_file():
        vendi_folder(folder, embedding="clip", clip_model=CLIP, device="cpu")
    if model not in (None, plan.model) and not (folder / "implicit_acc.json").is_file():
        implicit_accuracy(model, plan.model, heldout, base=plan.model, num_draws=4, resolution=RESOLUTION, seed=seed,
                          device="cpu", out=folder / "implicit_acc.json", show_progress=False)
    return folder


def summarise(folders: Sequence[Path], style: str) -> dict:
    """{metric: {mean, std, values}} of one method's scored folders (one per seed)."""
    from styleprefs.eval.report import SCORER_LABELS, collect

    label = {"style score": SCORER_LABELS.get(style, style)}
    per_seed = [collect(folder)["metrics"] for folder in folders]
    row = {}
    for metric in METRICS:
        values = [m[label.get(metric, metric)] for m in per_seed if label.get(metric, metric) in m]
        if values:
            row[metric] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}
    return row


def render_rows(rows: dict[str, dict], style: str, first: str = "method") -> list[str]:
    """Markdown table lines: one row per method, mean ± std of every metric (the value alone from one seed)."""
    head = ["mini FID ↓", "KID ↓", f"{style} score ↑", "implicit acc (held-out) ↑", "Vendi ↑"]
    lines = [f"| {first} | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for name, row in rows.items():
        cells = [_cell(row[m]) if m in row else "" for m in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _cell(metric: dict) -> str:
    if len(metric["values"]) == 1:
        return f"{metric['mean']:.4g}"
    return f"{metric['mean']:.4g} ± {metric['std']:.2g}"


def over_seeds(seeds: Sequence[int]) -> str:
    """How the table's cells were made: "One seed (0)" or "Mean ± std over seeds (0, 1)"."""
    listed = ", ".join(map(str, seeds))
    return f"One seed ({listed})" if len(seeds) == 1 else f"Mean ± std over seeds ({listed})"


def plural(n: int, noun: str) -> str:
    """``1 DPO step``, ``60 DPO steps``."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def save_results(out: Path, results: dict, table: str) -> dict:
    """``results.json`` and ``table.md`` in ``out``; returns ``results``."""
    write_json(results, out / "results.json")
    write_text(table, out / "table.md")
    return results
