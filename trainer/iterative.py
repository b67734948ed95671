"""The iterative stages (DESIGN.md, "Online improvement"): rounds of (generate pairs, DPO-train).

Iteration k starts from the current model (``--init``, else ``--model``, for k = 1; iteration k-1's
trained pipeline after). It generates ``online_pairs`` images with that model from the dataset's prompts
(``eval generate``; seeds from ``seed + k``), turns them into preference pairs, and runs the ordinary
training loop (``--stage dpo``) on them:

- ``iterative`` (Iterative DPO with an improvement model): loser = the image, winner = the
  ``--improver``'s improvement of it (the ``improve`` editor through ``styleprefs build``; with
  ``kontext[:MODEL]`` or ``qwen-image-edit[:MODEL]``, that instruction editor with the dataset style's
  instruction, an off-the-shelf improver); the reference is the base (``--ref``, else ``--model``), the paper's
  choice.
- ``spin`` (SPIN-Diffusion): winner = a dataset winner with the same prompt, loser = the image; the
  reference is the model the iteration starts from.
``--iteration-reference`` overrides either reference. Layout of ``--out``::

    train_config.yaml    the command's options; a rerun must give the same ones
    iterations.json      per finished iteration: dataset, trained model, reference, last step's metrics
    iter-k/generated/    the current model's images (an `eval generate` folder)
    iter-k/pairs.parquet iterative: each image in both slots, the source the improve editor edits
    iter-k/data/         the iteration's dataset (Pick-a-Pic format with manifest.json)
    iter-k/train/        the DPO run: metrics.jsonl, checkpoints/, the trained pipeline

Every step resumes (generation skips finished images, the build finished parts, training continues at
its newest checkpoint) and finished iterations are skipped, so the same command run again after a kill,
even ``kill -9``, continues at the same iteration and step. One process: generation and improvement are
not split across processes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
from rich.console import Console

from styleprefs.errors import StyleprefsError
from styleprefs.io import atomic_dir, read_json, write_json, write_text
from styleprefs.schema import DATASET_SCHEMA
from styleprefs.trainer.config import CONFIG_FILE, TrainConfig

SUMMARY = "iterations.json"
ROWS_PER_TABLE = 256  # generated images held in memory while writing pairs
SHARD_ROWS = 1000
console = Console(stderr=True, soft_wrap=True)


def train_iterations(cfg: TrainConfig, *, show_progress: bool = True) -> Path:
    """Run (or resume) ``cfg.iterations`` iterations of ``cfg.stage`` into ``cfg.out``; returns the last model."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise StyleprefsError(f"--stage {cfg.stage} runs in one process: start it without torchrun or accelerate")
    cfg = cfg.resolved()
    if cfg.stage == "iterative":
        from styleprefs.editors import improver_editor
        from styleprefs.editors.improve import resolve_improver

        editor, model = improver_editor(cfg.improver)
        if editor == "improve":
            resolve_improver(model)  # before generating anything
    out = Path(cfg.out)
    _check_same_run(cfg, out)
    policy = cfg.init or cfg.model
    for k in range(1, cfg.iterations + 1):
        policy = _iteration(cfg, k, policy, show_progress)
        _write_summary(cfg, out)
    return Path(policy)


def iteration_dir(out: Path | str, k: int) -> Path:
    return Path(out) / f"iter-{k}"


def _check_same_run(cfg: TrainConfig, out: Path) -> None:
    """Record the options in ``out``, or check that a rerun gives the ones recorded."""
    recorded = out / CONFIG_FILE
    if recorded.is_file():
        before = TrainConfig.from_yaml_and_overrides(recorded)
        if before.weights_hash() != cfg.weights_hash():
            raise StyleprefsError(f"{out} holds a --stage {before.stage} run with other options: rerun it with the "
                                  f"options in {recorded}, or choose a new --out")
    elif out.is_dir() and any(out.iterdir()):
        raise StyleprefsError(f"{out} exists and holds no --stage {cfg.stage} run: choose a new or empty --out")
    write_text(cfg.to_yaml(), recorded)


def _iteration(cfg: TrainConfig, k: int, policy: str, show_progress: bool) -> str:
    """Iteration ``k`` from ``policy``; returns its trained pipeline folder."""
    from styleprefs.editors.loading import clear_cache
    from styleprefs.trainer.loop import train

    folder = iteration_dir(cfg.out, k)
    inner = _inner_config(cfg, k, policy)
    if (Path(inner.out) / "model_index.json").is_file():
        return inner.out
    console.print(f"[bold]iteration {k}/{cfg.iterations}[/bold] ({cfg.stage}): pairs from {policy}")
    records = _generate(cfg, k, policy, folder / "generated", show_progress)
    if cfg.stage == "iterative":
        _improved_dataset(cfg, k, policy, records, folder, show_progress)
    else:
        _spin_dataset(cfg, k, policy, records, folder / "data")
    clear_cache()  # the generating and improving pipelines
    train(inner, show_progress=show_progress)
    return inner.out


def _inner_config(cfg: TrainConfig, k: int, policy: str) -> TrainConfig:
    """The DPO run of iteration ``k``: from ``policy``, on the iteration's dataset, always resuming."""
    reference = cfg.iteration_reference or ("base" if cfg.stage == "iterative" else "previous")
    folder = iteration_dir(cfg.out, k)
    return dataclasses.replace(cfg, stage="dpo", data=str(folder / "data"), out=str(folder / "train"), init=policy,
                               ref=policy if reference == "previous" else cfg.ref or cfg.model, resume=True)


def _generate(cfg: TrainConfig, k: int, policy: str, out: Path, show_progress: bool) -> list:
    """``cfg.online_pairs`` images of ``policy`` from the dataset's prompts, each prompt's image 0 first."""
    from styleprefs.eval.generate import generate, read_index
    from styleprefs.eval.prompts import load_prompts

    n_prompts = len(load_prompts(cfg.data))
    generate(policy, cfg.data, out, images_per_prompt=math.ceil(cfg.online_pairs / n_prompts), seed=cfg.seed + k,
             steps=cfg.sample_steps, resolution=cfg.resolution, limit=min(n_prompts, cfg.online_pairs),
             batch_size=cfg.batch_size, show_progress=show_progress)
    records = sorted(read_index(out), key=lambda r: (r.index, r.prompt_id))
    return records[: cfg.online_pairs]


def _improved_dataset(cfg: TrainConfig, k: int, policy: str, records: list, folder: Path,
                      show_progress: bool) -> None:
    """iterative: each image as the loser, its improvement as the winner, through ``styleprefs build``."""
    from styleprefs.build import BuildConfig, build_dataset
    from styleprefs.editors import improver_editor

    def row(j: int, r) -> dict:
        image = _png(folder / "generated", r)
        return _row(r.prompt, image, image, _uid(k, r), _uid(k, r), j, k, *[_policy_name(k, policy)] * 2)

    pairs = folder / "pairs"
    _write_rows(records, row, pairs)
    editor, model = improver_editor(cfg.improver)
    build = BuildConfig(style=_dataset_style(cfg.data), source=str(pairs), editor=editor, num_pairs=len(records),
                        seed=cfg.seed + k, safety=False, editor_model=model, editor_steps=cfg.sample_steps,
                        quality_gate=False)
    guidance = {"text_guidance": cfg.text_guidance, "image_guidance": cfg.image_guidance}
    build_dataset(build, folder / "data", batch_size=cfg.batch_size, show_progress=show_progress,
                  editor_options=guidance if editor == "improve" else None)


def _spin_dataset(cfg: TrainConfig, k: int, policy: str, records: list, out: Path) -> None:
    """spin: a dataset winner of the same prompt against each image, the winner's slot drawn from (seed, k, row)."""
    from styleprefs.trainer.data import read_pairs

    if out.is_dir():
        return
    winners: dict[str, list[bytes]] = {}
    for pair in read_pairs(cfg.data, ties="drop", seed=cfg.seed)[0]:
        winners.setdefault(pair.caption.strip(), []).append(pair.winner)

    def row(j: int, r) -> dict:
        choices = winners.get(r.prompt)
        if not choices:
            raise StyleprefsError(f"--stage spin: prompt {r.prompt[:60]!r} of {cfg.data} has only tied pairs, so no "
                                  f"winner; drop its rows or label them")
        images = (choices[r.index % len(choices)], _png(out.parent / "generated", r))
        uids = (f"{cfg.data}:winner-{r.prompt_id}-{r.index % len(choices)}", _uid(k, r))
        models = (f"dataset winner ({cfg.data})", _policy_name(k, policy))
        order = (1, 0) if np.random.default_rng([cfg.seed, k, j]).random() < 0.5 else (0, 1)
        return _row(r.prompt, *(images[i] for i in order), *(uids[i] for i in order), j, k,
                    *(models[i] for i in order), winner_slot=order.index(0))

    _write_rows(records, row, out, {
        "config": {"stage": "spin", "iteration": k, "policy": policy, "data": cfg.data, "seed": cfg.seed + k,
                   "steps": cfg.sample_steps},
        "counts": {"read": len(records), "kept": len(records), "rejected": 0, "quarantined": 0}})


def _write_rows(records: list, row: Callable[[int, object], dict], out: Path, manifest: dict | None = None) -> None:
    """``row(j, record)`` of every record as shards in ``out/data/`` (``ROWS_PER_TABLE`` rows in memory at a time),
    and ``manifest`` with the shards added as ``out/manifest.json`` if given; written beside ``out`` and renamed
    into place, so ``out`` is complete if it exists (then nothing is done)."""
    from styleprefs.shards import write_shards

    if out.is_dir():
        return
    tables = (pa.Table.from_pylist([row(j, r) for j, r in enumerate(records[start:start + ROWS_PER_TABLE], start)],
                                   schema=DATASET_SCHEMA) for start in range(0, len(records), ROWS_PER_TABLE))
    with atomic_dir(out) as partial:
        shards = write_shards(tables, len(records), partial / "data", SHARD_ROWS)
        if manifest is not None:
            write_json(manifest | {"shards": shards}, partial / "manifest.json")


def _row(caption: str, jpg_0: bytes, jpg_1: bytes, uid_0: str, uid_1: str, j: int, k: int, model_0: str,
         model_1: str, winner_slot: int | None = None) -> dict:
    """Row ``j`` of iteration ``k`` in the dataset schema; ``winner_slot`` None is a tie (one image in both slots:
    the source the improve editor edits)."""
    tie = winner_slot is None
    return {"caption": caption, "jpg_0": jpg_0, "jpg_1": jpg_1,
            "label_0": 0.5 if tie else float(winner_slot == 0), "label_1": 0.5 if tie else float(winner_slot == 1),
            "image_0_uid": uid_0, "image_1_uid": uid_1, "best_image_uid": None if tie else (uid_0, uid_1)[winner_slot],
            "model_0": model_0, "model_1": model_1, "ranking_id": j, "user_id": 0,
            "num_example_per_prompt": 1,
            "has_label": not tie, "are_different": not tie, "editor": None if tie else "spin",
            "source": f"iter-{k}:{j}", "source_preferred": "tie" if tie else f"jpg_{winner_slot}"}


def _policy_name(k: int, policy: str) -> str:
    return f"iter-{k} policy {policy}"


def _uid(k: int, record) -> str:
    return f"iter-{k}-gen-{record.prompt_id}-{record.index}"


def _png(folder: Path, record) -> bytes:
    return (folder / record.path).read_bytes()


def _dataset_style(data: str) -> str:
    """The style the dataset was built with (the style column of the new pairs), else ``build``'s default."""
    from styleprefs.build import BuildConfig

    manifest = Path(data) / "manifest.json"
    if manifest.is_file():
        return read_json(manifest).get("config", {}).get("build", {}).get("style", BuildConfig.style)
    return BuildConfig.style


def _write_summary(cfg: TrainConfig, out: Path) -> None:
    """``iterations.json``: every finished iteration's dataset, model, reference and last step's metrics."""
    finished = []
    for k in range(1, cfg.iterations + 1):
        inner = _inner_config(cfg, k, "")
        run = Path(inner.out)
        if not (run / "model_index.json").is_file():
            break
        lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        recorded = TrainConfig.from_yaml_and_overrides(run / CONFIG_FILE)
        finished.append({"iteration": k, "dataset": inner.data, "model": str(run), "init": recorded.init,
                         "reference": recorded.ref, "last_step": json.loads(lines[-1]) if lines else None})
    write_json({"stage": cfg.stage, "iterations": finished}, out / SUMMARY)
